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
    let lines: Vec<String> = batch
        .iter()
        .map(|r| presence_line(&r.user, false))
        .collect();
    let sessions: Vec<(UserId, &str, Option<&str>)> = batch
        .iter()
        .zip(&lines)
        .map(|(r, line)| (r.user.id, &*r.session, Some(line.as_str())))
        .collect();
    node.metrics.close_batch.observe(batch.len() as f64);
    let group_max = node.settings.presence_group_max;
    match node
        .store
        .sessions_close(&node.settings.node_name, &sessions, group_max)
        .await
    {
        Ok(_) => {}
        Err(e) => {
            for r in batch.iter() {
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
