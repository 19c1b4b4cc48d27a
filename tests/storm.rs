//! Many sessions ending at once (a drain, a mass disconnect): their removals are committed in
//! batches, every user goes offline in the store, and every friend hears of it.

mod common;

use std::time::Duration;

use common::{Client, Cluster, WAIT, metric, user};
use serde_json::json;

/// Sessions that end at the same moment.
const USERS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_disconnect_is_removed_in_batches_and_announced() {
    let c = Cluster::redis(2).await;
    let redis = c.redis.as_ref().unwrap();
    let mut watcher = user(c.addr(1), "watch").await;
    let mut clients: Vec<Client> = Vec::new();
    for _ in 0..USERS {
        let mut u = user(c.addr(0), "storm").await;
        u.ok(json!({"op": "friend.add", "user": watcher.id})).await;
        clients.push(u);
    }
    let ids: std::collections::HashSet<u64> = clients.iter().map(|c| c.id).collect();
    // Everything so far (friend_added events) is out of the way.
    while watcher
        .frame_within(Duration::from_millis(300))
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    let node = &c.nodes[0];
    let sessions_key = format!("sb:{{n:{}}}:sessions", node.name);
    assert_eq!(
        redis.cli(&["SCARD", &sessions_key]).trim(),
        USERS.to_string()
    );

    drop(clients);

    // Every one of them is announced offline to the friend on the other node.
    let mut offline = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while offline.len() < USERS {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = watcher
            .frame_within(left)
            .await
            .unwrap_or_else(|_| panic!("{} of {USERS} announced offline", offline.len()))
            .expect("watcher connection open");
        if f["event"] == "presence" && f["user"]["online"] == false {
            let id = f["user"]["id"].as_u64().unwrap();
            assert!(ids.contains(&id), "presence of a stranger {f}");
            offline.insert(id);
        }
    }
    assert_eq!(redis.cli(&["SCARD", &sessions_key]).trim(), "0");
    let (_, body) = node.get("/metrics").await;
    let removed = metric(&body, "switchboard_session_close_batch_size_sum");
    let batches = metric(&body, "switchboard_session_close_batch_size_count");
    assert_eq!(removed, USERS as f64, "every session removed once");
    assert!(
        batches < removed,
        "{batches} batches for {removed} sessions: none was batched"
    );
    let mut w = Client::connect(c.addr(1)).await;
    for id in ids.iter().take(5) {
        let r = w.ok(json!({"op": "whois", "id": id})).await;
        assert_eq!(r["user"]["online"], false);
    }
}
