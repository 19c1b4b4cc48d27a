//! Spare buffers, one small stack per worker thread.
//!
//! A session's write buffer and its batch of queued deliveries exist only while it has
//! something to write: an idle connection holds neither (memory per idle connection is a
//! goal). Allocating them afresh on every wake-up costs a malloc, a few reallocs and a free
//! per message, so an emptied buffer goes back to its thread's stack and the next wake-up on
//! that thread takes it again.

use std::cell::RefCell;
use std::sync::Arc;

use crate::server::outbox::Live;

/// Spare buffers kept per thread and kind.
const KEEP: usize = 32;
/// Larger write buffers (a long backlog page) are freed, not kept.
const KEEP_BYTES: usize = 64 * 1024;
/// Larger delivery batches are freed, not kept.
const KEEP_LIVES: usize = 1024;

thread_local! {
    static BYTES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static LIVES: RefCell<Vec<Vec<Arc<Live>>>> = const { RefCell::new(Vec::new()) };
}

/// An empty write buffer, spare if there is one.
pub fn bytes() -> Vec<u8> {
    BYTES.with(|s| s.borrow_mut().pop()).unwrap_or_default()
}

/// Gives an emptied write buffer back.
pub fn give_bytes(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > KEEP_BYTES {
        return;
    }
    buf.clear();
    BYTES.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEEP {
            s.push(buf);
        }
    });
}

/// An empty batch of deliveries, spare if there is one.
pub fn lives() -> Vec<Arc<Live>> {
    LIVES.with(|s| s.borrow_mut().pop()).unwrap_or_default()
}

/// Gives a batch back (emptied here, so its deliveries are released at once).
pub fn give_lives(mut batch: Vec<Arc<Live>>) {
    batch.clear();
    if batch.capacity() == 0 || batch.capacity() > KEEP_LIVES {
        return;
    }
    LIVES.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEEP {
            s.push(batch);
        }
    });
}
