//! `redis_wait_replicas` (issue 11): a send is acknowledged only once `WAIT` confirms that many
//! replicas have it. A real primary and replica on loopback; the replica is killed and brought
//! back, and the client's retry with its `client_id` stores no second copy.

mod common;

use std::time::{Duration, Instant};

use common::{Node, Redis, register, settings, uname, user};
use serde_json::json;

/// Makes `replica` a replica of `primary` and waits until the link is up.
fn attach(replica: &Redis, primary: &Redis) {
    assert_eq!(
        replica.cli(&["REPLICAOF", "127.0.0.1", &primary.port.to_string()]),
        "OK"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !replica
        .cli(&["INFO", "replication"])
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "replica link did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Entries of `user`'s inbox on `redis`.
fn inbox_len(redis: &Redis, user: u64) -> u64 {
    redis
        .cli(&["XLEN", &format!("sb:{{u:{user}}}:inbox")])
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_wait_for_a_replica_and_retries_store_one_copy() {
    let primary = Redis::start();
    let mut replica = Redis::start();
    attach(&replica, &primary);
    let mut s = settings("wait", Some(&primary));
    s.redis_wait_replicas = 1;
    s.redis_wait_timeout_ms = 500;
    s.validate().unwrap();
    let node = Node::start(s).await;
    let mut a = user(node.addr, "wa").await;
    let bid = register(node.addr, &uname("wb")).await;

    // With the replica up: acknowledged, and the replica has the copy when the reply comes.
    let first = json!({"op": "send", "to": bid, "text": "one", "client_id": "c1"});
    a.ok(first.clone()).await;
    assert_eq!(inbox_len(&replica, bid), 1);

    // Replica gone: stored on the primary, but not acknowledged, within the WAIT time-out.
    replica.stop();
    let second = json!({"op": "send", "to": bid, "text": "two", "client_id": "c2"});
    let started = Instant::now();
    let r = a.req(second.clone()).await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(inbox_len(&primary, bid), 2);
    // A retry while it is still away is refused the same way, and stores nothing more.
    assert_eq!(a.err(second.clone()).await, "unavailable");
    assert_eq!(inbox_len(&primary, bid), 2);

    // Replica back: the retry is acknowledged with the first attempt's message, one copy.
    replica.restart();
    attach(&replica, &primary);
    let r = a.ok(second.clone()).await;
    assert_eq!(inbox_len(&primary, bid), 2);
    assert_eq!(inbox_len(&replica, bid), 2);
    let again = a.ok(second).await;
    assert_eq!(again["msg"], r["msg"]);
    assert_eq!(inbox_len(&primary, bid), 2);
    // The earlier message keeps its one copy as well.
    a.ok(first).await;
    assert_eq!(inbox_len(&primary, bid), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_replicas_a_send_does_not_wait() {
    // The default: a primary without any replica acknowledges at once.
    let primary = Redis::start();
    let node = Node::start(settings("nowait", Some(&primary))).await;
    let mut a = user(node.addr, "na").await;
    let bid = register(node.addr, &uname("nb")).await;
    a.ok(json!({"op": "send", "to": bid, "text": "x", "client_id": "c"}))
        .await;
    assert_eq!(inbox_len(&primary, bid), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_sends_wait_too() {
    let primary = Redis::start();
    let mut s = settings("gwait", Some(&primary));
    s.redis_wait_replicas = 1;
    s.redis_wait_timeout_ms = 300;
    let node = Node::start(s).await;
    let mut a = user(node.addr, "ga").await;
    let g = a
        .ok(json!({"op": "group.create", "name": uname("gw"), "desc": ""}))
        .await;
    let gid = g["group"]["id"].clone();
    // No replica at all: never acknowledged.
    assert_eq!(
        a.err(json!({"op": "group.send", "group": gid, "text": "x", "client_id": "g1"}))
            .await,
        "unavailable"
    );
}
