//! A session's bounded queue of live deliveries, filled by the bus and drained by the session.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::protocol::{Seq, UserRef};

/// Capacity kept by an emptied queue; above it the buffer is released so idle sessions stay small.
const KEEP_CAPACITY: usize = 16;

/// One live delivery, parsed once per Redis publish and shared by every local session.
#[derive(Debug)]
pub enum Live {
    /// A stored message: its inbox position, the session that sent it, and the event line.
    Message {
        /// Position in the recipient's inbox.
        seq: Seq,
        /// Global id of the sending session.
        origin: Box<str>,
        /// When it was stored (ms), for the delivery latency.
        ts: u64,
        /// W3C `traceparent` of the sending span, if traced.
        trace: Option<Box<str>>,
        /// The complete `message` event, without newline.
        line: Box<str>,
    },
    /// A live-only event (presence, friends, membership) and the session that caused it.
    Event {
        /// Global id of the session that must not get it (`-` when none).
        origin: Box<str>,
        /// The complete event, without newline.
        line: Box<str>,
    },
    /// The end of every session of the user (its account was deleted): write the event, then
    /// close.
    Close {
        /// Global id of the session that must not get it (it ends by itself).
        origin: Box<str>,
        /// The complete event (a `goaway`), without newline.
        line: Box<str>,
    },
}

/// The queue between the bus and one session.
///
/// Bounded: when full, the delivery is dropped and the session marked *lagged*; a lagged
/// session re-reads its inbox from the last position it wrote, so a full queue costs
/// latency, never a message (live-only events may be dropped, as the protocol allows).
#[derive(Debug)]
pub struct Outbox {
    /// Global session id (`node-boot-n`), compared with a delivery's origin.
    pub session: Arc<str>,
    /// The logged-in user.
    pub user: UserRef,
    queue: Mutex<VecDeque<Arc<Live>>>,
    capacity: usize,
    lagged: AtomicBool,
    /// The node asked this session to reconnect elsewhere (rebalancing).
    leave: AtomicBool,
    notify: Notify,
}

impl Outbox {
    /// A new empty outbox for `session` holding at most `capacity` deliveries.
    pub fn new(session: Arc<str>, user: UserRef, capacity: usize) -> Outbox {
        Outbox {
            session,
            user,
            queue: Mutex::new(VecDeque::new()),
            capacity,
            lagged: AtomicBool::new(false),
            leave: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// Queues a delivery; `false` when the queue was full (the session is now lagged).
    pub fn push(&self, live: Arc<Live>) -> bool {
        let accepted = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= self.capacity {
                false
            } else {
                q.push_back(live);
                true
            }
        };
        if !accepted {
            self.lagged.store(true, Ordering::Release);
        }
        self.notify.notify_one();
        accepted
    }

    /// Marks the session as having possibly missed deliveries (it will re-read its inbox).
    pub fn mark_lagged(&self) {
        self.lagged.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Asks the session to send `goaway` and reconnect elsewhere; false if asked before.
    pub fn ask_to_leave(&self) -> bool {
        let first = !self.leave.swap(true, Ordering::AcqRel);
        if first {
            self.notify.notify_one();
        }
        first
    }

    /// Whether the session was asked to leave (see [`Outbox::ask_to_leave`]).
    pub fn asked_to_leave(&self) -> bool {
        self.leave.load(Ordering::Acquire)
    }

    /// Whether the session may have missed deliveries (without clearing the flag).
    pub fn is_lagged(&self) -> bool {
        self.lagged.load(Ordering::Acquire)
    }

    /// Clears and returns the lagged flag.
    pub fn take_lagged(&self) -> bool {
        self.lagged.swap(false, Ordering::AcqRel)
    }

    /// Moves every queued delivery into `into`.
    pub fn drain_into(&self, into: &mut Vec<Arc<Live>>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        into.extend(q.drain(..));
        if q.capacity() > KEEP_CAPACITY {
            *q = VecDeque::new();
        }
    }

    /// Waits until something was pushed or the session was marked lagged.
    pub async fn ready(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev() -> Arc<Live> {
        Arc::new(Live::Event {
            origin: "-".into(),
            line: "{}".into(),
        })
    }

    #[test]
    fn full_queue_marks_lagged_and_keeps_bound() {
        let o = Outbox::new(
            "s".into(),
            UserRef {
                id: 1,
                name: "a".into(),
            },
            2,
        );
        assert!(o.push(ev()));
        assert!(o.push(ev()));
        assert!(!o.take_lagged());
        assert!(!o.push(ev()));
        assert!(o.take_lagged());
        assert!(!o.take_lagged());
        let mut v = Vec::new();
        o.drain_into(&mut v);
        assert_eq!(v.len(), 2);
    }
}
