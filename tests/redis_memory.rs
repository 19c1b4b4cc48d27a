//! A full Redis (`maxmemory` reached, policy `noeviction`, as the chart configures it):
//! every op that must write answers `unavailable` saying so, nothing is half-written, the
//! nodes keep running, and everything works again once memory is freed.

mod common;

use std::time::Duration;

use common::{Client, Cluster, PASSWORD, uname, user};
use serde_json::{Value, json};

/// Bytes per filler value (redis-cli takes it as one argument).
const FILL_VALUE: usize = 64 * 1024;

fn used_memory(redis: &common::Redis) -> u64 {
    redis
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .expect("used_memory in INFO")
        .trim()
        .parse()
        .unwrap()
}

/// Caps Redis a little above what it uses and writes filler until it refuses writes.
fn fill(redis: &common::Redis) -> usize {
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
        "OK"
    );
    let cap = used_memory(redis) + (2 << 20);
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "maxmemory", &cap.to_string()]),
        "OK"
    );
    let value = "x".repeat(FILL_VALUE);
    for i in 0..200 {
        let r = redis.cli(&["SET", &format!("filler:{i}"), &value]);
        if r.contains("OOM") {
            // Redis refuses a write only while used_memory is above maxmemory when the
            // command starts (this one was, counting its own 64 KiB argument); freed client
            // buffers could let a small write in again. A cap 1 MiB below what is used keeps
            // Redis full for the whole test.
            let cap = used_memory(redis) - (1 << 20);
            assert_eq!(
                redis.cli(&["CONFIG", "SET", "maxmemory", &cap.to_string()]),
                "OK"
            );
            assert!(redis.cli(&["SET", "filler:small", "x"]).contains("OOM"));
            return i;
        }
        assert_eq!(r, "OK");
    }
    panic!("Redis never refused a write under maxmemory {cap}");
}

/// A snapshot of the keys every refused op would have touched.
fn state(redis: &common::Redis, ids: &[u64], gid: u64) -> Vec<String> {
    let mut out = vec![
        redis.cli(&["GET", "sb:users:next"]),
        redis.cli(&["HLEN", "sb:users:byname"]),
        redis.cli(&["GET", "sb:groups:next"]),
        redis.cli(&["HLEN", &format!("sb:{{g:{gid}}}:members")]),
        redis
            .cli(&["KEYS", "sb:token:*"])
            .lines()
            .count()
            .to_string(),
    ];
    for id in ids {
        for (cmd, suffix) in [
            ("XLEN", ":inbox"),
            ("SCARD", ":friends"),
            ("SCARD", ":groups"),
            ("HLEN", ":sessions"),
            ("GET", ":acked"),
        ] {
            out.push(format!(
                "{id}{suffix}={}",
                redis.cli(&[cmd, &format!("sb:{{u:{id}}}{suffix}")])
            ));
        }
    }
    out
}

/// The request fails with `unavailable` and a message naming Redis' memory.
async fn out_of_memory(c: &mut Client, req: Value) {
    let r = c.req(req.clone()).await;
    assert_eq!(r["ok"], false, "{req} must fail while Redis is full: {r}");
    assert_eq!(r["error"]["code"], "unavailable", "{req}: {r}");
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(msg.contains("out of memory"), "{req}: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_answers_unavailable_and_recovers() {
    let c = Cluster::redis(2).await;
    let redis = c.redis.as_ref().unwrap();
    let mut alice = user(c.addr(0), "om").await;
    let mut bob = user(c.addr(1), "om").await;
    let mut carol = user(c.addr(0), "om").await;
    let mut dave = user(c.addr(1), "om").await;
    let mut erin = user(c.addr(0), "om").await;
    let r = alice
        .ok(json!({"op": "group.create", "name": uname("omg"), "desc": ""}))
        .await;
    let gid = r["group"]["id"].as_u64().unwrap();
    bob.ok(json!({"op": "group.join", "group": gid})).await;
    carol.ok(json!({"op": "group.join", "group": gid})).await;
    erin.ok(json!({"op": "group.join", "group": gid})).await;
    let r = alice
        .ok(json!({"op": "send", "to": bob.id, "text": "before"}))
        .await;
    let seq = bob.event("message").await["seq"].clone();
    assert!(r["ok"] == true);
    let ids = [alice.id, bob.id, carol.id, dave.id];
    let dave_token = dave.token.clone().unwrap();

    // A quota bucket older than the window: deleting it is a write that frees memory, and a
    // script that wrote once is no longer refused, so send.lua must not delete it first.
    let quota = format!("sb:{{u:{}}}:quota", alice.id);
    assert_eq!(redis.cli(&["HSET", &quota, "1", "5"]), "1");

    let filled = fill(redis);
    eprintln!(
        "Redis refused writes after {filled} x {FILL_VALUE} B of filler (used_memory {})",
        used_memory(redis)
    );
    let before = state(redis, &ids, gid);

    out_of_memory(
        &mut alice,
        json!({"op": "send", "to": bob.id, "text": "lost?"}),
    )
    .await;
    out_of_memory(
        &mut alice,
        json!({"op": "group.send", "group": gid, "text": "to all"}),
    )
    .await;
    out_of_memory(&mut bob, json!({"op": "ack", "seq": seq})).await;
    out_of_memory(&mut dave, json!({"op": "friend.add", "user": alice.id})).await;
    out_of_memory(&mut dave, json!({"op": "group.join", "group": gid})).await;
    out_of_memory(
        &mut dave,
        json!({"op": "group.create", "name": uname("omg"), "desc": ""}),
    )
    .await;
    let mut fresh = Client::connect(c.addr(1)).await;
    out_of_memory(
        &mut fresh,
        json!({"op": "register", "name": uname("om"), "password": PASSWORD}),
    )
    .await;
    let mut again = Client::connect(c.addr(0)).await;
    out_of_memory(
        &mut again,
        json!({"op": "login", "name": "nobody-at-all", "password": PASSWORD}),
    )
    .await;
    out_of_memory(&mut again, json!({"op": "login", "token": dave_token})).await;
    // Reads still work.
    alice.ok(json!({"op": "group.list"})).await;
    alice.ok(json!({"op": "friend.list"})).await;
    fresh.ok(json!({"op": "whois", "id": bob.id})).await;
    // Nothing was half-written: no inbox got a copy, no half user, group or session.
    assert_eq!(state(redis, &ids, gid), before);
    for (i, node) in c.nodes.iter().enumerate() {
        assert_eq!(node.get("/livez").await.0, 200, "node {i} still lives");
    }
    // Longer than the presence TTL (2 s): heartbeats fail meanwhile, and must do no harm.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(state(redis, &ids, gid), before);
    for (i, node) in c.nodes.iter().enumerate() {
        // Still ready: the live path (PUBLISH, SUBSCRIBE) needs no memory-growing write, and
        // taking every node out of the load balancer would not free any memory.
        assert_eq!(node.get("/readyz").await.0, 200, "node {i} ready");
        assert_eq!(node.get("/livez").await.0, 200, "node {i} still lives");
    }
    // Ops that only delete still work (and free memory): leaving a group, logging out.
    let members = format!("sb:{{g:{gid}}}:members");
    assert_eq!(redis.cli(&["HLEN", &members]), "4");
    erin.ok(json!({"op": "group.leave", "group": gid})).await;
    erin.ok(json!({"op": "logout"})).await;
    assert_eq!(redis.cli(&["HLEN", &members]), "3");
    let erin_sessions = format!("sb:{{u:{}}}:sessions", erin.id);
    assert_eq!(redis.cli(&["EXISTS", &erin_sessions]), "0");

    // Memory freed: everything works again, on the same connections.
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    alice
        .ok(json!({"op": "send", "to": bob.id, "text": "after"}))
        .await;
    alice
        .ok(json!({"op": "group.send", "group": gid, "text": "to all"}))
        .await;
    bob.ok(json!({"op": "ack", "seq": seq})).await;
    dave.ok(json!({"op": "group.join", "group": gid})).await;
    fresh
        .ok(json!({"op": "register", "name": uname("om"), "password": PASSWORD}))
        .await;
    again.ok(json!({"op": "login", "token": dave_token})).await;
    let inbox = |id: u64| redis.cli(&["XLEN", &format!("sb:{{u:{id}}}:inbox")]);
    // alice: before, after, to all; bob: before, after, to all; carol: to all; erin left.
    assert_eq!(
        [
            inbox(alice.id),
            inbox(bob.id),
            inbox(carol.id),
            inbox(erin.id)
        ],
        ["3", "3", "1", "0"]
    );
    let texts: Vec<String> = {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let m = bob.event("message").await;
            seen.push(m["msg"]["text"].as_str().unwrap().to_string());
        }
        seen
    };
    assert_eq!(texts, ["after", "to all"]);
}
