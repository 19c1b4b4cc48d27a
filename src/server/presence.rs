//! Node liveness: heartbeats in Redis, and reaping the sessions of nodes that stopped beating.
//!
//! A node killed with SIGKILL cannot remove its sessions. Every node beats every
//! `presence_ttl / 3`; a node whose last beat is older than the TTL is dead, and the first node
//! to notice removes its sessions atomically and announces the users who are offline now. So a
//! dead node's users go offline within TTL + TTL/3, inside the protocol's 2 × TTL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::protocol::UserRef;
use crate::server::node::Node;
use crate::store::{Beat, Store};

/// Removes the sessions a previous run of this node left behind (same node name).
pub async fn reap_own<S: Store>(node: &Node<S>) {
    let _ = reap(node, &node.settings.node_name).await;
}

/// Reaps `dead`'s sessions; true when the store removed them.
async fn reap<S: Store>(node: &Node<S>, dead: &str) -> bool {
    match node.store.reap(dead).await {
        Ok(users) => {
            if !users.is_empty() {
                tracing::info!(
                    node = dead,
                    users = users.len(),
                    "reaped sessions of a dead node"
                );
            }
            // One step per batch of users, not two round trips per user: a dead node may have
            // held thousands.
            let offline: Vec<_> = users
                .iter()
                .map(|u| (u.id, crate::server::closer::presence_line(u, false)))
                .collect();
            crate::server::closer::announce(node, &offline).await;
            true
        }
        Err(e) => {
            tracing::warn!(node = dead, error = %e, "reaping failed");
            false
        }
    }
}

/// A local session to register again: its user and global session id.
type Restore = (UserRef, Arc<str>);

/// Beats until the node has drained (a draining node's sessions are still live).
pub async fn heartbeat<S: Store>(node: Arc<Node<S>>) {
    let ttl_ms = node.settings.presence_ttl_secs * 1000;
    let mut ticker = tokio::time::interval(Duration::from_millis((ttl_ms / 3).max(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let me = node.settings.node_name.clone();
    // Putting sessions back after this node was reaped while alive runs off the heartbeat task
    // (a slow Redis must not delay our own beat, or we would be reaped again), one restore at a
    // time. The mutex holds the sessions a restore could not put back (retried each tick);
    // `reaped` remembers a reap seen while a restore was running.
    let owed: Arc<tokio::sync::Mutex<Vec<Restore>>> = Default::default();
    let reaped = Arc::new(AtomicBool::new(false));
    loop {
        tokio::select! {
            _ = node.closing.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = crate::clock::now_ms();
        let mine = node.connections();
        match node.store.heartbeat(&me, now, ttl_ms, mine).await {
            Ok(Beat {
                registered,
                dead,
                connections,
            }) => {
                node.set_cluster_connections(mine, &connections);
                if !registered {
                    if !node.local_sessions().is_empty() {
                        node.metrics.ops.reaped_while_alive.inc();
                        tracing::warn!(
                            "this node was reaped while alive; re-registering its sessions"
                        );
                    }
                    reaped.store(true, Ordering::Release);
                }
                if let Ok(mut pending) = owed.clone().try_lock_owned() {
                    let full = reaped.swap(false, Ordering::AcqRel);
                    if full || !pending.is_empty() {
                        let node = node.clone();
                        tokio::spawn(async move {
                            let retried = std::mem::take(&mut *pending);
                            let todo = if full {
                                node.local_sessions()
                            } else {
                                retried.clone()
                            };
                            *pending = restore(&node, todo, &retried).await;
                        });
                    }
                }
                // Off the heartbeat task: reaping a big node must not delay our own beat.
                for d in dead.into_iter().filter(|d| *d != me) {
                    let node = node.clone();
                    tokio::spawn(async move {
                        if reap(&node, &d).await {
                            node.metrics.ops.dead_nodes_reaped.inc();
                        }
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        node.retry_orphans().await;
    }
}

/// Re-registers `todo`; returns the sessions that could not be (retried next tick). A session
/// is announced online when it is its user's first again, or when an earlier attempt failed
/// (that attempt may have registered it without anyone hearing of it; a second announcement
/// is harmless).
async fn restore<S: Store>(
    node: &Node<S>,
    todo: Vec<Restore>,
    retried: &[Restore],
) -> Vec<Restore> {
    let s = &node.settings;
    let mut failed = Vec::new();
    for (user, session) in todo {
        match node
            .store
            .session_open(user.id, &session, &s.node_name, u32::MAX)
            .await
        {
            // The session may have ended while it was being restored: then take it out again.
            Ok(_) if !node.registry.has_session(user.id, &session) => {
                node.close_session(&user, session).await;
            }
            Ok(first) => {
                if first || retried.iter().any(|(_, r)| *r == session) {
                    node.announce_presence(&user, true).await;
                }
            }
            // The account was deleted meanwhile: its sessions are being closed.
            Err(e) if e.code == crate::error::Code::NoSuchUser => {}
            Err(e) => {
                tracing::warn!(user = user.id, error = %e, "session not restored; retrying");
                failed.push((user, session));
            }
        }
    }
    failed
}
