//! Operational behaviour: idle timeout, slow consumers, drain without loss, catching up after
//! the live path was down.

mod common;

use std::time::Duration;

use common::{Client, Cluster, metric, register, uname, user};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_and_pings_keep_them() {
    let c = Cluster::memory_with(|s| s.idle_timeout_secs = 1).await;
    let mut pinger = Client::connect(c.addr(0)).await;
    let mut idle = Client::connect(c.addr(0)).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        pinger.ok(json!({"op": "ping"})).await;
    }
    assert!(idle.closed().await, "idle connection closed");
    pinger.ok(json!({"op": "ping"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_and_loses_nothing() {
    let c = Cluster::redis_with(2, |s| {
        s.write_timeout_secs = 1;
        s.max_text_chars = 60_000;
        s.max_frame_bytes = 1 << 20;
    })
    .await;
    let mut a = user(c.addr(0), "sa").await;
    let bname = uname("sb");
    register(c.addr(1), &bname).await;
    let mut b = Client::connect(c.addr(1)).await;
    b.login(&bname).await;
    // b reads nothing more while ~10 MB are sent to it.
    let pad = "z".repeat(50_000);
    for i in 0..200 {
        a.ok(json!({"op": "send", "to": b.id, "text": format!("{i} {pad}")}))
            .await;
    }
    let mut gone = false;
    for _ in 0..100 {
        let (_, body) = c.nodes[1].get("/metrics").await;
        if metric(&body, "switchboard_slow_consumer_disconnects_total") == 1.0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the stalled session was disconnected");
    drop(b);
    let mut b2 = Client::connect(c.addr(0)).await;
    b2.login(&bname).await;
    let (msgs, unread) = b2.backlog().await;
    assert_eq!(msgs.len(), 200);
    assert_eq!(unread, 200);
    assert!(msgs.iter().enumerate().all(|(i, m)| {
        m["msg"]["text"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{i} "))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_client_relogs_elsewhere_and_gets_everything_unacked() {
    let c = Cluster::redis_with(2, |s| s.drain_timeout_secs = 5).await;
    let mut a = user(c.addr(1), "ra").await;
    let bname = uname("rb");
    register(c.addr(0), &bname).await;
    let mut b = Client::connect(c.addr(0)).await;
    b.login(&bname).await;
    b.backlog().await;
    let mut seqs = Vec::new();
    for i in 0..5 {
        a.ok(json!({"op": "send", "to": b.id, "text": format!("{i}")}))
            .await;
        seqs.push(b.event("message").await["seq"].clone());
    }
    b.ok(json!({"op": "ack", "seq": seqs[1]})).await;
    c.nodes[0].begin_stop();
    let ev = b.event("goaway").await;
    let wait = ev["reconnect_after_ms"].as_u64().unwrap();
    assert!(wait <= 2500);
    // Messages sent while b is between nodes are kept too.
    a.ok(json!({"op": "send", "to": b.id, "text": "5"})).await;
    let token = b.token.clone().unwrap();
    drop(b);
    let mut b2 = Client::connect(c.addr(1)).await;
    b2.ok(json!({"op": "login", "token": token})).await;
    let (msgs, _) = b2.backlog().await;
    let texts: Vec<&str> = msgs
        .iter()
        .map(|m| m["msg"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["2", "3", "4", "5"]);
    // The drained node is not ready and stops accepting.
    assert_ne!(c.nodes[0].get("/readyz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_catch_up_after_a_redis_restart() {
    let mut c = Cluster::redis_with(2, |s| s.redis_timeout_ms = 500).await;
    let mut a = user(c.addr(0), "ca").await;
    let mut b = user(c.addr(1), "cb").await;
    c.redis.as_mut().unwrap().restart();
    // Send as soon as Redis answers again, before subscriptions are necessarily restored.
    for i in 0..20 {
        let mut stored = false;
        for _ in 0..200 {
            let r = a.req(json!({"op": "send", "to": b.id, "text": format!("{i}"), "client_id": format!("c{i}")})).await;
            if r["ok"] == true {
                stored = true;
                break;
            }
            assert_eq!(r["error"]["code"], "unavailable");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(stored, "send {i} never succeeded");
    }
    let mut texts = Vec::new();
    for _ in 0..20 {
        texts.push(
            b.event("message").await["msg"]["text"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    b.no_event("message", Duration::from_millis(500)).await;
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(
        texts, expected,
        "every message once, in order, on the same connection"
    );
}
