//! Node liveness: heartbeats in Redis, and reaping the sessions of nodes that stopped beating.
//!
//! A node killed with SIGKILL cannot remove its sessions. Every node beats every
//! `presence_ttl / 3`; a node whose last beat is older than the TTL is dead, and the first node
//! to notice removes its sessions atomically and announces the users who are offline now. So a
//! dead node's users go offline within TTL + TTL/3, inside the protocol's 2 × TTL.

use std::sync::Arc;
use std::time::Duration;

use crate::node::Node;
use crate::store::Store;

/// Removes the sessions a previous run of this node left behind (same node name).
pub async fn reap_own<S: Store>(node: &Node<S>) {
    reap(node, &node.settings.node_name).await;
}

async fn reap<S: Store>(node: &Node<S>, dead: &str) {
    match node.store.reap(dead).await {
        Ok(users) => {
            if !users.is_empty() {
                tracing::info!(
                    node = dead,
                    users = users.len(),
                    "reaped sessions of a dead node"
                );
            }
            for user in users {
                node.announce_presence(&user, false).await;
            }
        }
        Err(e) => tracing::warn!(node = dead, error = %e, "reaping failed"),
    }
}

/// Beats until the node has drained (a draining node's sessions are still live).
pub async fn heartbeat<S: Store>(node: Arc<Node<S>>) {
    let ttl_ms = node.settings.presence_ttl_secs * 1000;
    let mut ticker = tokio::time::interval(Duration::from_millis((ttl_ms / 3).max(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let me = node.settings.node_name.clone();
    // Sessions still to put back after this node was reaped while alive (a restore can fail
    // halfway, right after an outage): retried every tick until all are back.
    let mut restore_owed = false;
    loop {
        tokio::select! {
            _ = node.closing.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = crate::clock::now_ms();
        match node.store.heartbeat(&me, now, ttl_ms).await {
            Ok((registered, dead)) => {
                if !registered || restore_owed {
                    // Another node took us for dead (we lost Redis for longer than the TTL),
                    // or not registered yet: put our sessions back (none on a fresh node).
                    if !registered && !node.local_sessions().is_empty() {
                        tracing::warn!(
                            "this node was reaped while alive; re-registering its sessions"
                        );
                    }
                    restore_owed = !restore(&node).await;
                }
                // Off the heartbeat task: reaping a big node must not delay our own beat.
                for d in dead.into_iter().filter(|d| *d != me) {
                    let node = node.clone();
                    tokio::spawn(async move { reap(&node, &d).await });
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        node.retry_orphans().await;
    }
}

/// Re-registers every local session; false when some could not be (retried next tick).
async fn restore<S: Store>(node: &Node<S>) -> bool {
    let s = &node.settings;
    let mut all = true;
    for (user, session) in node.local_sessions() {
        match node
            .store
            .session_open(user.id, &session, &s.node_name, u32::MAX)
            .await
        {
            // The session may have ended while it was being restored: then take it out again.
            Ok(_) if !node.registry.has_session(user.id, &session) => {
                node.close_session(&user, session).await;
            }
            Ok(true) => node.announce_presence(&user, true).await,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(user = user.id, error = %e, "session not restored; retrying");
                all = false;
            }
        }
    }
    all
}
