//! The delivery path, top to bottom: how inbox positions reach a session.
//!
//! - **Live**: the store publishes every stored copy on the owner's channel; the node's
//!   [`Registry`](super::registry::Registry) queues it in each session's bounded
//!   [`Outbox`](super::outbox::Outbox), and [`Session::write_queued`] writes it.
//! - **Catch-up**: when the live path may have missed something (login backlog, a full
//!   outbox, a lost or paused bus), [`Session::catch_up`] re-reads the inbox after `last_seq`.
//! - **Prefix** (guarantee 8): before a send's reply hands out its `seq`, [`Session::reach`]
//!   makes sure every earlier inbox position has reached this session.
//! - **Acks** move the stored acknowledged position (`ops::messages`); `last_seq` starts there.
//!
//! `last_seq` only moves forward ([`advance`]), so nothing is written twice or out of order.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::protocol::event::write_message_event;
use crate::protocol::{Event, Seq};
use crate::server::outbox::Live;
use crate::server::session::{LoggedIn, Session};
use crate::server::spare;
use crate::store::Store;

/// Inbox entries read per request while sending a backlog or catching up.
const INBOX_PAGE: usize = 256;
/// How often a session looks again while the live path is paused.
const PAUSED_POLL: Duration = Duration::from_millis(100);
/// Delay before retrying a catch-up that failed because the store was down.
const CATCH_UP_RETRY: Duration = Duration::from_millis(500);

impl<S: Store> Session<S> {
    /// Protocol guarantee 8: before a reply hands out an own `seq`, every earlier position of
    /// the user's inbox (up to `prev`, the entry just before it) has reached this session. What
    /// is queued is written first; if that is not enough (a paused bus, a full queue, a catch-up
    /// owed) the inbox itself is read. If it cannot be read, the send answers `unavailable`:
    /// it is stored, and a retry with its `client_id` gets the same `msg` once Redis answers.
    pub(super) async fn reach(&mut self, prev: Option<Seq>) -> Result<()> {
        if self.needs_catch_up() {
            self.deliver().await;
        } else {
            let registry = &self.node.registry;
            let (losses, paused) = (registry.losses(), registry.paused());
            self.write_queued(losses, paused);
        }
        let login = self.login.as_ref().expect("checked");
        // An own send needs nothing more: it was answered `ok` under this same rule (a send
        // whose reply failed is taken out of `own`).
        let behind = prev.is_some_and(|p| p > login.last_seq && !login.own.contains(&p));
        if behind {
            self.node.metrics.prefix_catch_ups.inc();
            self.catch_up().await?;
        }
        if self.broken {
            return Err(Error::unavailable("connection lost"));
        }
        Ok(())
    }

    /// Writes what the outbox holds; first re-reads the inbox when deliveries may have been
    /// missed (login backlog, full queue, bus outage). Nothing is written out of order.
    pub(super) async fn deliver(&mut self) {
        let Some(login) = self.login.as_mut() else {
            return;
        };
        // While the live path is broken nothing queued may be written (it could jump over a
        // message that only the inbox has); a catch-up is owed for when it is back.
        let registry = self.node.registry.clone();
        let losses = registry.losses();
        let paused = registry.paused();
        if paused && !login.syncing {
            login.retry_at = Some(Instant::now() + PAUSED_POLL);
            return;
        }
        // A failed catch-up stays owed (retry_at set) until one succeeds: the lagged flag was
        // already taken, and writing queued deliveries first would skip the missed ones.
        let owed = login.retry_at.take().is_some();
        let lagged = login.outbox.take_lagged();
        if (lagged || owed || login.syncing)
            && let Err(e) = self.catch_up().await
        {
            tracing::warn!(error = %e, "inbox catch-up failed; retrying");
            if let Some(login) = self.login.as_mut() {
                login.retry_at = Some(Instant::now() + CATCH_UP_RETRY);
            }
            return;
        }
        self.write_queued(losses, paused);
    }

    /// Whether the next delivery must first re-read the inbox (the slow, awaiting path).
    pub(super) fn needs_catch_up(&self) -> bool {
        self.login
            .as_ref()
            .is_some_and(|l| l.syncing || l.retry_at.is_some() || l.outbox.is_lagged())
            || self.node.registry.paused()
    }

    /// Writes the queued live deliveries: the common case of [`Session::deliver`], synchronous,
    /// so a wake-up for one message costs no boxed future. `losses` and `paused` are the live
    /// path's state from before any catch-up this follows.
    pub(super) fn write_queued(&mut self, losses: u64, paused: bool) {
        let registry = self.node.registry.clone();
        self.take_buffer();
        let Some(login) = self.login.as_mut() else {
            return;
        };
        let mut queued = spare::lives();
        login.outbox.drain_into(&mut queued);
        // Checked after draining: a live message that arrived after a loss of the live path
        // is in this batch only if that loss is already counted. Then the catch-up above may
        // have missed what was published during the loss; the messages are all in the inbox,
        // so drop them here and catch up again once the channels are back.
        // Likewise if the session was marked lagged meanwhile (an overflow, or a resume that
        // marks every session): the catch-up that the mark asks for must come first.
        let lost = paused || registry.losses() != losses;
        if lost || login.outbox.is_lagged() {
            queued.retain(|live| matches!(**live, Live::Event { .. } | Live::Close { .. }));
            let wait = if lost { PAUSED_POLL } else { Duration::ZERO };
            login.retry_at = Some(Instant::now() + wait);
        }
        let metrics = &self.node.metrics;
        let now = crate::clock::now_ms();
        for live in queued.drain(..) {
            match &*live {
                Live::Message {
                    seq,
                    origin,
                    line,
                    ts,
                    trace,
                } => {
                    if advance(login, *seq) && **origin != *self.id {
                        if let Some(parent) = trace {
                            // One trace per message: this span's parent is the sender's span.
                            let span = tracing::info_span!("message.deliver", user = login.user.id, seq = %seq);
                            crate::telemetry::set_remote_parent(&span, parent);
                        }
                        self.out.extend_from_slice(line.as_bytes());
                        self.out.push(b'\n');
                        let local = origin_node(origin) == self.node.settings.node_name;
                        let path = if local {
                            &metrics.hot.live_local
                        } else {
                            &metrics.hot.live_remote
                        };
                        path.inc();
                        metrics
                            .delivery_latency
                            .observe(now.saturating_sub(*ts) as f64 / 1000.0);
                    }
                }
                Live::Event { origin, line } => {
                    if **origin != *self.id {
                        self.out.extend_from_slice(line.as_bytes());
                        self.out.push(b'\n');
                    }
                }
                Live::Close { origin, line } => {
                    if **origin != *self.id && !self.kicked {
                        self.out.extend_from_slice(line.as_bytes());
                        self.out.push(b'\n');
                        self.kicked = true;
                    }
                }
            }
        }
        spare::give_lives(queued);
    }

    /// Writes every inbox entry after `last_seq`, page by page; ends a login backlog with `synced`.
    pub(super) async fn catch_up(&mut self) -> Result<()> {
        let node = self.node.clone();
        let mut unread = 0u64;
        loop {
            let (user, after) = {
                let login = self.login.as_ref().expect("logged in");
                (login.user.id, login.last_seq)
            };
            let page = node.store.inbox_after(user, after, INBOX_PAGE).await?;
            let login = self.login.as_mut().expect("logged in");
            let mut delivered = 0;
            for entry in &page {
                if advance(login, entry.seq) {
                    write_message_event(&mut self.out, entry.seq, &entry.json);
                    delivered += 1;
                    if entry.from != user {
                        unread += 1;
                    }
                }
            }
            node.metrics.hot.backlog.inc_by(delivered);
            if page.len() < INBOX_PAGE {
                break;
            }
            if !self.flush().await {
                // The page is lost with the connection; the run loop closes it.
                return Err(Error::unavailable("connection lost"));
            }
        }
        let login = self.login.as_mut().expect("logged in");
        if login.syncing {
            login.syncing = false;
            Event::Synced { unread }.write(&mut self.out);
        }
        Ok(())
    }
}

/// The node part of a global session id (`node-boot-n`).
fn origin_node(origin: &str) -> &str {
    origin.rsplitn(3, '-').nth(2).unwrap_or("")
}

/// Moves `last_seq` to `seq` if it is new; true when the entry must be written (it is new and
/// not one of this session's own sends).
fn advance(login: &mut LoggedIn, seq: Seq) -> bool {
    if seq <= login.last_seq {
        return false;
    }
    login.last_seq = seq;
    while login.own.front().is_some_and(|&o| o < seq) {
        login.own.pop_front();
    }
    if login.own.front() == Some(&seq) {
        login.own.pop_front();
        return false;
    }
    true
}
