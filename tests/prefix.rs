//! Protocol guarantee 8 (prefix) and the send-side rules of revision 1.1: a `seq` reaches a
//! session only after every earlier position of the user's inbox; `client_id_conflict`;
//! `send_bytes_per_day`; `inbox_hard_max_len`. Real sockets, real Redis, both backends.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Client, Cluster, metric, register, uname, user};
use serde_json::{Value, json};

on_both_backends!(repeated_client_id_with_other_content_conflicts);

/// `ms-n` as a comparable pair.
fn seq(s: &str) -> (u64, u64) {
    let (ms, n) = s.split_once('-').expect("seq is ms-n");
    (ms.parse().unwrap(), n.parse().unwrap())
}

/// The `seq` a frame gives the session: a message event's, or an ok send reply's own copy.
fn given(f: &Value) -> Option<(u64, u64)> {
    if f["event"] == "message" {
        f["seq"].as_str().map(seq)
    } else if (f["re"] == "send" || f["re"] == "group.send") && f["ok"] == true {
        f["msg"]["seq"].as_str().map(seq)
    } else {
        None
    }
}

/// Checks guarantee 8 on one session's transcript (every frame it read, in order) against the
/// user's whole inbox: when a `seq` arrives (a message event, or the reply to this session's own
/// send), every earlier inbox position has arrived before it or is this session's own send.
fn check_prefix(transcript: &[Value], inbox: &[(u64, u64)]) -> Result<usize, String> {
    let mut seen: HashSet<(u64, u64)> = transcript
        .iter()
        .filter(|f| f.get("re").is_some())
        .filter_map(given)
        .collect();
    let mut checked = 0;
    for f in transcript {
        let Some(s) = given(f) else { continue };
        if let Some(missing) = inbox.iter().find(|&&p| p < s && !seen.contains(&p)) {
            return Err(format!(
                "{s:?} reached the session before {missing:?}, in frame {f}"
            ));
        }
        seen.insert(s);
        checked += 1;
    }
    Ok(checked)
}

/// Every position of a user's inbox, read through a fresh session's backlog (nothing acked).
async fn whole_inbox(c: &Cluster, node: usize, name: &str) -> Vec<(u64, u64)> {
    let mut s = Client::connect(c.addr(node)).await;
    s.login(name).await;
    let (msgs, _) = s.backlog().await;
    msgs.iter()
        .map(|m| seq(m["seq"].as_str().unwrap()))
        .collect()
}

fn small_queue(s: &mut switchboard::Settings) {
    s.outbound_queue = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_never_overtake_deliveries_memory() {
    replies_never_overtake_deliveries(Cluster::memory_with(small_queue).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_never_overtake_deliveries_redis() {
    replies_never_overtake_deliveries(Cluster::redis_with(2, small_queue).await).await;
}

/// Alice pipelines sends while Bob floods her: replies to her sends must not jump over Bob's
/// messages still queued for her (a full queue, the request-first select), so acknowledging
/// any seq she was given can never skip one of them.
async fn replies_never_overtake_deliveries(c: Cluster) {
    let aname = uname("pa");
    register(c.addr(0), &aname).await;
    let mut a = Client::connect(c.addr(0)).await;
    a.login(&aname).await;
    a.backlog().await;
    let mut b = user(c.addr(1), "pb").await;
    let (n, m) = (300, 300);
    let batch = |to: u64, who: &str, count: usize| {
        let mut bytes = Vec::new();
        for i in 0..count {
            let req = json!({"op": "send", "to": to, "text": format!("{who} {i}")});
            bytes.extend(serde_json::to_vec(&req).unwrap());
            bytes.push(b'\n');
        }
        bytes
    };
    let (from_b, from_a) = (batch(a.id, "b", m), batch(b.id, "a", n));
    // Interleave the two floods in chunks so Bob's messages keep arriving while Alice's
    // requests are being answered.
    for (cb, ca) in from_b
        .chunks(from_b.len() / 10 + 1)
        .zip(from_a.chunks(from_a.len() / 10 + 1))
    {
        b.raw(cb).await;
        a.raw(ca).await;
    }
    let mut transcript = Vec::new();
    let (mut replies, mut messages) = (0, 0);
    while replies < n || messages < m {
        let f = a.frame().await.expect("alice's connection stays open");
        if f.get("re").is_some() {
            assert_eq!(f["ok"], true, "{f}");
            replies += 1;
        } else if f["event"] == "message" {
            messages += 1;
        }
        transcript.push(f);
    }
    for _ in 0..m {
        assert_eq!(b.reply().await["ok"], true);
    }
    let inbox = whole_inbox(&c, 1, &aname).await;
    assert_eq!(inbox.len(), n + m, "alice's inbox holds both directions");
    let checked = check_prefix(&transcript, &inbox).unwrap();
    assert_eq!(checked, n + m);
    let (_, body) = c.nodes[0].get("/metrics").await;
    let overflows = metric(&body, "switchboard_outbound_queue_overflows_total");
    let catch_ups = metric(&body, "switchboard_send_catch_ups_total");
    eprintln!("queue overflows {overflows}, send catch-ups {catch_ups}");
    assert!(
        overflows > 0.0,
        "the queue never overflowed, so this test proved nothing"
    );
}

/// The scenario of issue 8: Alice's node loses its subscriber connection and cannot get it
/// back for a while. Bob's message to Alice is stored; then Alice sends. The reply's seq comes
/// after Bob's message in her inbox, so Bob's message must reach her first; acknowledging the
/// reply's seq then loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_waits_for_messages_missed_during_a_bus_outage() {
    let c = Cluster::redis(2).await;
    let redis = c.redis.as_ref().unwrap();
    let aname = uname("oa");
    register(c.addr(0), &aname).await;
    let mut a = Client::connect(c.addr(0)).await;
    a.login(&aname).await;
    a.backlog().await;
    let mut b = user(c.addr(1), "ob").await;

    // Cut every subscriber connection and keep them from coming back: no client slot is free.
    let admin = redis::Client::open(redis.url()).unwrap();
    let mut admin = admin.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut admin)
        .await
        .unwrap();
    let connected: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The slots are taken away first, then the connections: killed the other way round, a
    // subscriber could reconnect in between.
    let subscribers: String = redis::cmd("CLIENT")
        .arg(&["LIST", "TYPE", "pubsub"])
        .query_async(&mut admin)
        .await
        .unwrap();
    let subscribers = subscribers.lines().filter(|l| !l.is_empty()).count() as u64;
    assert!(subscribers >= 2, "both nodes have a subscriber connection");
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "maxclients", &(connected - subscribers).to_string()])
        .query_async(&mut admin)
        .await
        .unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, subscribers);

    let from_b = b
        .ok(json!({"op": "send", "to": a.id, "text": "while you were away"}))
        .await;
    let mut transcript = Vec::new();
    a.send(json!({"op": "send", "to": b.id, "text": "are you there?"}))
        .await;
    let reply = loop {
        let f = a.frame().await.expect("open");
        transcript.push(f.clone());
        if f.get("re").is_some() {
            break f;
        }
    };
    assert_eq!(reply["ok"], true, "{reply}");
    let got: Vec<&Value> = transcript
        .iter()
        .filter(|f| f["event"] == "message")
        .collect();
    assert_eq!(
        got.len(),
        1,
        "bob's message must arrive before the reply: {transcript:?}"
    );
    assert_eq!(got[0]["msg"]["id"], from_b["msg"]["id"]);
    let (_, body) = c.nodes[0].get("/metrics").await;
    assert_eq!(metric(&body, "switchboard_send_catch_ups_total"), 1.0);

    // The live path comes back; the message is not delivered a second time.
    let () = redis::cmd("CONFIG")
        .arg(&["SET", "maxclients", "10000"])
        .query_async(&mut admin)
        .await
        .unwrap();
    for _ in 0..500 {
        if c.nodes[0].get("/readyz").await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.nodes[0].get("/readyz").await.0, 200);
    a.no_event("message", Duration::from_millis(700)).await;

    // Acknowledge the reply's seq (what the bundled client does) and come back: nothing owed,
    // and nothing was skipped.
    let s = reply["msg"]["seq"].as_str().unwrap().to_string();
    a.ok(json!({"op": "ack", "seq": s})).await;
    drop(a);
    let mut again = Client::connect(c.addr(0)).await;
    again.login(&aname).await;
    let (msgs, unread) = again.backlog().await;
    assert!(msgs.is_empty() && unread == 0, "{msgs:?}");
}

async fn repeated_client_id_with_other_content_conflicts(c: Cluster) {
    let mut a = user(c.addr(0), "ca").await;
    let bname = uname("cb");
    let bid = register(c.addr(1), &bname).await;
    let other = register(c.addr(1), &uname("cc")).await;
    let first = a
        .ok(json!({"op": "send", "to": bid, "text": "once", "client_id": "k1"}))
        .await;
    // The same request again: the same message.
    let again = a
        .ok(json!({"op": "send", "to": bid, "text": "once", "client_id": "k1"}))
        .await;
    assert_eq!(first["msg"], again["msg"]);
    // Other text, another recipient, the other op: a conflict, nothing stored.
    for req in [
        json!({"op": "send", "to": bid, "text": "other text", "client_id": "k1"}),
        json!({"op": "send", "to": other, "text": "once", "client_id": "k1"}),
    ] {
        assert_eq!(a.err(req).await, "client_id_conflict");
    }
    let g = a
        .ok(json!({"op": "group.create", "name": uname("cg")}))
        .await;
    let gid = g["group"]["id"].as_u64().unwrap();
    assert_eq!(
        a.err(json!({"op": "group.send", "group": gid, "text": "once", "client_id": "k1"}))
            .await,
        "client_id_conflict"
    );
    let mut b = Client::connect(c.addr(1)).await;
    b.login(&bname).await;
    let (msgs, _) = b.backlog().await;
    let texts: Vec<&str> = msgs
        .iter()
        .map(|m| m["msg"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["once"]);
}

/// A client_id record written by the previous release ("id ts seq", no fingerprint) still
/// answers the repeated send with the original message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_records_of_the_previous_release_still_dedupe() {
    let c = Cluster::redis(1).await;
    let redis = c.redis.as_ref().unwrap();
    let mut a = user(c.addr(0), "ra").await;
    let bid = register(c.addr(0), &uname("rb")).await;
    let first = a
        .ok(json!({"op": "send", "to": bid, "text": "old", "client_id": "k-old"}))
        .await;
    let m = &first["msg"];
    let key = format!("sb:{{u:{}}}:cid:k-old", a.id);
    let record = format!(
        "{} {} {}",
        m["id"].as_str().unwrap(),
        m["ts"],
        m["seq"].as_str().unwrap()
    );
    // This release writes the record in the same three fields, so nodes of 0.1.x (a rolling
    // upgrade, a rollback) still read it; the fingerprint has a key of its own.
    assert_eq!(redis.cli(&["GET", &key]), record);
    // A record of 0.1.x has no fingerprint key.
    let fp = format!("sb:{{u:{}}}:cidfp:k-old", a.id);
    assert_eq!(redis.cli(&["DEL", &fp]), "1");
    assert_eq!(redis.cli(&["SET", &key, &record, "EX", "100"]), "OK");
    let again = a
        .ok(json!({"op": "send", "to": bid, "text": "old", "client_id": "k-old"}))
        .await;
    assert_eq!(first["msg"], again["msg"]);
}

fn quota(s: &mut switchboard::Settings) {
    s.send_bytes_per_day = 1000;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_quota_counts_every_stored_copy() {
    for c in [
        Cluster::memory_with(quota).await,
        Cluster::redis_with(2, quota).await,
    ] {
        let mut a = user(c.addr(0), "qa").await;
        let bname = uname("qb");
        let bid = register(c.addr(1), &bname).await;
        let text = "x".repeat(100);
        // 1:1 costs two copies (Bob's and Alice's own): 5 × 200 bytes fit, the 6th does not.
        for i in 0..5 {
            a.ok(json!({"op": "send", "to": bid, "text": text, "client_id": format!("q{i}")}))
                .await;
        }
        assert_eq!(
            a.err(json!({"op": "send", "to": bid, "text": text})).await,
            "rate_limited"
        );
        // A retry of a stored send is not charged again.
        a.ok(json!({"op": "send", "to": bid, "text": text, "client_id": "q0"}))
            .await;
        let mut b = Client::connect(c.addr(1)).await;
        b.login(&bname).await;
        assert_eq!(
            b.backlog().await.0.len(),
            5,
            "nothing stored over the quota"
        );

        // Another sender has a quota of its own; a group message costs one copy per member.
        let mut d = user(c.addr(0), "qd").await;
        let g = d
            .ok(json!({"op": "group.create", "name": uname("qg")}))
            .await;
        let gid = g["group"]["id"].as_u64().unwrap();
        b.ok(json!({"op": "group.join", "group": gid})).await;
        a.ok(json!({"op": "group.join", "group": gid})).await;
        // 3 members × 300 bytes = 900 fit; the next 3 × 40 = 120 does not.
        d.ok(json!({"op": "group.send", "group": gid, "text": "y".repeat(300)}))
            .await;
        assert_eq!(
            d.err(json!({"op": "group.send", "group": gid, "text": "z".repeat(40)}))
                .await,
            "rate_limited"
        );
        // 3 × 33 = 99 still fits.
        d.ok(json!({"op": "group.send", "group": gid, "text": "w".repeat(33)}))
            .await;
    }
}

fn hard_max(s: &mut switchboard::Settings) {
    s.inbox_max_len = 5;
    s.inbox_hard_max_len = 10;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_never_exceeds_its_hard_maximum() {
    for c in [
        Cluster::memory_with(hard_max).await,
        Cluster::redis_with(2, hard_max).await,
    ] {
        let mut a = user(c.addr(0), "ha").await;
        let bname = uname("hb");
        let bid = register(c.addr(1), &bname).await;
        for i in 0..15 {
            a.ok(json!({"op": "send", "to": bid, "text": format!("{i}")}))
                .await;
        }
        // All 15 are younger than the retention period, yet only the newest 10 are kept.
        let mut b = Client::connect(c.addr(1)).await;
        b.login(&bname).await;
        let (msgs, unread) = b.backlog().await;
        let texts: Vec<String> = msgs
            .iter()
            .map(|m| m["msg"]["text"].as_str().unwrap().to_string())
            .collect();
        let expected: Vec<String> = (5..15).map(|i| i.to_string()).collect();
        assert_eq!(texts, expected);
        assert_eq!(unread, 10);
        if let Some(redis) = &c.redis {
            assert_eq!(
                redis.cli(&["XLEN", &format!("sb:{{u:{}}}:inbox", a.id)]),
                "10"
            );
        }
    }
}
