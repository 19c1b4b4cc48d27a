//! Faults that must not leave wrong state behind (issue 8, section 3): a login that fails half
//! way, a half-open Redis connection, a node that dies before its first heartbeat or opens a
//! session after its final reap. Real redis-server, real nodes; the faults are made with Redis
//! ACLs, key type conflicts and a TCP relay that can swallow traffic without closing sockets.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Node, Redis, register, settings, uname};
use serde_json::json;

/// Creates a Redis ACL user `name` (password `pw`) allowed everything except `denied` commands,
/// and returns the URL a node uses to connect as that user.
fn acl_user(redis: &Redis, name: &str, denied: &[&str]) -> String {
    let mut args = vec!["ACL", "SETUSER", name, "reset", "on", ">pw", "~*", "&*", "+@all"];
    let minus: Vec<String> = denied.iter().map(|c| format!("-{c}")).collect();
    args.extend(minus.iter().map(String::as_str));
    assert_eq!(redis.cli(&args), "OK");
    format!("redis://{name}:pw@127.0.0.1:{}", redis.port)
}

/// Polls `check` every 50 ms until it holds or `limit` has passed; the time it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Whether `id` is online, asked through a fresh session on `addr`.
async fn online(addr: std::net::SocketAddr, asker: &str, id: u64) -> bool {
    let mut c = Client::connect(addr).await;
    c.login(asker).await;
    let r = c.ok(json!({"op": "whois", "id": id})).await;
    r["user"]["online"].as_bool().unwrap()
}

/// A login whose `login_state` fails (the user's friends key has the wrong type) and whose
/// clean-up `session_close` fails too (the node's Redis user may not run HDEL at that moment)
/// used to leave its session record behind for good: the user showed online and one of their
/// session slots was taken. Once Redis accepts the removal again, the deferred retry (the
/// same one as for a normal close) must take the record out within a few heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_fails_after_session_open_leaves_no_session_record() {
    let redis = Redis::start();
    let ttl = 2;
    let mut s = settings("fl", Some(&redis));
    s.redis_url = Some(acl_user(&redis, "fl", &[]));
    s.presence_ttl_secs = ttl;
    let node = Node::start(s).await;
    let name = uname("fl");
    let id = register(node.addr, &name).await;
    let asker = uname("fa");
    register(node.addr, &asker).await;
    let sessions = format!("sb:{{u:{id}}}:sessions");
    let friends = format!("sb:{{u:{id}}}:friends");

    // The two faults: login_state fails (WRONGTYPE), then so does the removal (NOPERM).
    assert_eq!(redis.cli(&["SET", &friends, "not a set"]), "OK");
    acl_user(&redis, "fl", &["hdel"]);
    let mut c = Client::connect(node.addr).await;
    let code = c
        .err(json!({"op": "login", "name": name, "password": common::PASSWORD}))
        .await;
    assert_eq!(code, "unavailable");
    assert_eq!(redis.cli(&["HLEN", &sessions]), "1", "the fault left a record");

    // Redis is fine again: the record must go, as after any removal that failed.
    assert_eq!(redis.cli(&["DEL", &friends]), "1");
    acl_user(&redis, "fl", &[]);
    let took = within(Duration::from_secs(3 * ttl), async || {
        redis.cli(&["EXISTS", &sessions]) == "0"
    })
    .await;
    assert!(
        took.is_some(),
        "the failed login's session record was never removed"
    );
    eprintln!("failed login's record removed {took:?} after Redis recovered");
    assert!(!online(node.addr, &asker, id).await);
    node.stop().await;
}
