//! Session removals, committed in batches.
//!
//! A drain or a mass disconnect ends thousands of sessions at once. Removed one by one, each
//! costs a script and, for a user's last session, an audience lookup and a publish: three
//! round trips queued behind each other on the command connection, so the last of 10,000
//! waited minutes. Here every removal joins a queue and one task commits whatever is queued in
//! one `sessions_close` step, which also announces everyone now offline: one round trip per
//! batch however many sessions it holds. A removal that arrives alone still goes at once (the
//! batch is what is queued, nothing waits for company).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::protocol::{Event, Friend, UserId, UserRef};
use crate::server::node::Node;
use crate::store::Store;

/// Most removals in one batch (one script call; keeps each call short for Redis).
pub const BATCH: usize = 512;
/// Removals that may wait for the closer before `remove` waits for room.
pub const QUEUE: usize = 8192;

/// One session to remove from the store.
pub struct Removal {
    /// The session's user.
    pub user: UserRef,
    /// Its global id.
    pub session: Arc<str>,
    /// Told when the removal is committed (or deferred).
    pub done: oneshot::Sender<()>,
    /// Hand the session over instead of removing it ([`Store::sessions_handover`]): its
    /// client left a draining node after `goaway` and is expected back on another node.
    pub handover: bool,
}

/// The sending side, held by the node.
pub type Queue = mpsc::Sender<Removal>;

/// A new queue and its receiving end, for [`run`].
pub fn queue() -> (Queue, mpsc::Receiver<Removal>) {
    mpsc::channel(QUEUE)
}

/// Commits removals until the node drops its queue, one batch at a time.
pub async fn run<S: Store>(node: Arc<Node<S>>, mut rx: mpsc::Receiver<Removal>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        commit(&node, &mut batch).await;
    }
}

async fn commit<S: Store>(node: &Node<S>, batch: &mut Vec<Removal>) {
    let me = &node.settings.node_name;
    let handovers: Vec<(UserId, &str)> = batch
        .iter()
        .filter(|r| r.handover)
        .map(|r| (r.user.id, &*r.session))
        .collect();
    // Handed over, or (a backend that cannot) removed with the others below.
    let handed = match node.store.sessions_handover(me, &handovers).await {
        Ok(handed) => handed,
        Err(e) => {
            // The records stay all the same: the users' next logins or the reaper end them.
            tracing::warn!(sessions = handovers.len(), error = %e, "session handover not marked");
            true
        }
    };
    if handed {
        node.handed_over
            .fetch_add(handovers.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    let closing: Vec<&Removal> = batch.iter().filter(|r| !(r.handover && handed)).collect();
    if !closing.is_empty() {
        let lines: Vec<String> = closing
            .iter()
            .map(|r| presence_line(&r.user, false))
            .collect();
        let sessions: Vec<(UserId, &str, Option<&str>)> = closing
            .iter()
            .zip(&lines)
            .map(|(r, line)| (r.user.id, &*r.session, Some(line.as_str())))
            .collect();
        node.metrics.close_batch.observe(closing.len() as f64);
        let group_max = node.settings.presence_group_max;
        if let Err(e) = node.store.sessions_close(me, &sessions, group_max).await {
            for r in &closing {
                node.defer(&r.user, r.session.clone(), &e);
            }
        }
    }
    for r in batch.drain(..) {
        let _ = r.done.send(());
    }
}

/// Publishes `(user, presence line)` pairs to their audiences, [`BATCH`] users per step.
pub async fn announce<S: Store>(node: &Node<S>, events: &[(UserId, String)]) {
    let group_max = node.settings.presence_group_max;
    for chunk in events.chunks(BATCH) {
        if let Err(e) = node.store.announce(chunk, group_max).await {
            tracing::warn!(users = chunk.len(), error = %e, "presence not announced");
        }
    }
}

/// The `presence` event line of `user`.
pub fn presence_line(user: &UserRef, online: bool) -> String {
    Event::Presence {
        user: Friend {
            id: user.id,
            name: user.name.clone(),
            online,
        },
    }
    .line()
}
