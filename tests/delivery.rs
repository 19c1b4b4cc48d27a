//! The delivery guarantees of the protocol (1–7), each exercised on both backends; cross-node
//! wherever the deployment has two nodes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Client, Cluster, metric, register, uname, user};
use serde_json::{Value, json};

on_both_backends!(
    live_delivery_across_nodes,
    backlog_then_synced_with_unread,
    own_messages_reach_other_sessions_only,
    ack_moves_forward_only,
    idempotent_send,
    order_is_preserved_live_and_in_backlog,
    no_gap_no_duplicate_while_backlog_is_read,
    logout_while_message_in_flight,
    same_user_on_two_nodes,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_outbound_queue_loses_nothing_memory() {
    full_outbound_queue_loses_nothing(Cluster::memory_with(small_queue).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_outbound_queue_loses_nothing_redis() {
    full_outbound_queue_loses_nothing(Cluster::redis_with(2, small_queue).await).await;
}

fn texts(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["msg"]["text"].as_str().unwrap().to_string())
        .collect()
}

async fn live_delivery_across_nodes(c: Cluster) {
    let mut a = user(c.addr(0), "la").await;
    let mut b = user(c.addr(1), "lb").await;
    let r = a
        .ok(json!({"op": "send", "ref": 1, "to": b.id, "text": "hi", "client_id": "c-1"}))
        .await;
    let sent = &r["msg"];
    let ev = b.event("message").await;
    let m = &ev["msg"];
    assert_eq!(m["id"], sent["id"]);
    assert_eq!(m["ts"], sent["ts"]);
    assert_eq!(m["from"]["id"], a.id);
    assert!(m["from"]["name"].as_str().unwrap().starts_with("la"));
    assert_eq!(m["to"], json!({"user": b.id}));
    assert_eq!(m["text"], "hi");
    assert_eq!(m["client_id"], "c-1");
    assert!(ev["seq"].as_str().is_some());
    // The reply's seq is the sender's own copy; the sending session gets no event for it.
    assert!(sent["seq"].as_str().is_some());
    a.no_event("message", Duration::from_millis(300)).await;
    // Without client_id the field is absent.
    a.ok(json!({"op": "send", "to": b.id, "text": "plain"}))
        .await;
    let ev = b.event("message").await;
    assert!(ev["msg"].get("client_id").is_none());
}

async fn backlog_then_synced_with_unread(c: Cluster) {
    let mut a = user(c.addr(0), "ba").await;
    let bname = uname("bb");
    let bid = register(c.addr(1), &bname).await;
    for t in ["one", "two", "three"] {
        a.ok(json!({"op": "send", "to": bid, "text": t})).await;
    }
    let mut b = Client::connect(c.addr(1)).await;
    let r = b.login(&bname).await;
    assert_eq!(r["re"], "login");
    let (msgs, unread) = b.backlog().await;
    assert_eq!(texts(&msgs), ["one", "two", "three"]);
    assert_eq!(unread, 3);
    // b replies; b's own message is in b's next backlog but not counted as unread.
    b.ok(json!({"op": "send", "to": a.id, "text": "four"}))
        .await;
    let mut b2 = Client::connect(c.addr(0)).await;
    b2.login(&bname).await;
    let (msgs, unread) = b2.backlog().await;
    assert_eq!(texts(&msgs), ["one", "two", "three", "four"]);
    assert_eq!(unread, 3);
    // Seqs are distinct and strictly increasing in the order delivered.
    let seqs: Vec<(u64, u64)> = msgs
        .iter()
        .map(|m| {
            let s = m["seq"].as_str().unwrap();
            let (a, b) = s.split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

async fn own_messages_reach_other_sessions_only(c: Cluster) {
    let name = uname("own");
    register(c.addr(0), &name).await;
    let mut a1 = Client::connect(c.addr(0)).await;
    a1.login(&name).await;
    a1.backlog().await;
    let mut a2 = Client::connect(c.addr(1)).await;
    a2.login(&name).await;
    a2.backlog().await;
    let b = user(c.addr(1), "ob").await;
    let r = a1
        .ok(json!({"op": "send", "to": b.id, "text": "from a1"}))
        .await;
    let ev = a2.event("message").await;
    assert_eq!(ev["msg"]["text"], "from a1");
    assert_eq!(
        ev["seq"], r["msg"]["seq"],
        "a2 sees a1's copy at the same inbox position"
    );
    a1.no_event("message", Duration::from_millis(300)).await;
    // Not acknowledged: it comes again in the next login's backlog.
    let mut a3 = Client::connect(c.addr(0)).await;
    a3.login(&name).await;
    let (msgs, unread) = a3.backlog().await;
    assert_eq!(texts(&msgs), ["from a1"]);
    assert_eq!(unread, 0);
    // Acknowledged via the reply's seq: gone from the next backlog.
    a1.ok(json!({"op": "ack", "seq": r["msg"]["seq"]})).await;
    let mut a4 = Client::connect(c.addr(1)).await;
    a4.login(&name).await;
    assert_eq!(a4.backlog().await.0.len(), 0);
}

async fn ack_moves_forward_only(c: Cluster) {
    let mut a = user(c.addr(0), "aa").await;
    let bname = uname("ab");
    let bid = register(c.addr(1), &bname).await;
    for t in ["m1", "m2", "m3"] {
        a.ok(json!({"op": "send", "to": bid, "text": t})).await;
    }
    let mut b = Client::connect(c.addr(1)).await;
    b.login(&bname).await;
    let (msgs, _) = b.backlog().await;
    let seqs: Vec<String> = msgs
        .iter()
        .map(|m| m["seq"].as_str().unwrap().to_string())
        .collect();
    b.ok(json!({"op": "ack", "seq": seqs[1]})).await;
    // Older positions are accepted and change nothing.
    b.ok(json!({"op": "ack", "seq": seqs[0]})).await;
    b.ok(json!({"op": "ack", "seq": "0-0"})).await;
    b.ok(json!({"op": "ack", "seq": "1-0"})).await;
    // Positions the inbox never held are bad requests.
    let (ms, n) = seqs[2].split_once('-').unwrap();
    let never = format!("{ms}-{}", n.parse::<u64>().unwrap() + 7);
    assert_eq!(
        b.err(json!({"op": "ack", "seq": never})).await,
        "bad_request"
    );
    let future = format!("{}-0", ms.parse::<u64>().unwrap() + 1_000_000);
    assert_eq!(
        b.err(json!({"op": "ack", "seq": future})).await,
        "bad_request"
    );
    assert_eq!(
        b.err(json!({"op": "ack", "seq": "12-x"})).await,
        "bad_request"
    );
    // The acknowledgement is per user, seen by every later session.
    let mut b2 = Client::connect(c.addr(0)).await;
    b2.login(&bname).await;
    let (msgs, unread) = b2.backlog().await;
    assert_eq!(texts(&msgs), ["m3"]);
    assert_eq!(unread, 1);
    // A user with an empty inbox cannot ack anything but the start.
    let mut e = user(c.addr(0), "ae").await;
    assert_eq!(
        e.err(json!({"op": "ack", "seq": seqs[0]})).await,
        "bad_request"
    );
    e.ok(json!({"op": "ack", "seq": "0-0"})).await;
}

async fn idempotent_send(c: Cluster) {
    let mut a = user(c.addr(0), "ia").await;
    let bname = uname("ib");
    let bid = register(c.addr(1), &bname).await;
    let first = a
        .ok(json!({"op": "send", "to": bid, "text": "once", "client_id": "k1"}))
        .await;
    let again = a
        .ok(json!({"op": "send", "to": bid, "text": "once", "client_id": "k1"}))
        .await;
    assert_eq!(first["msg"], again["msg"]);
    // From another session of the same user, on another node: still the same message.
    let mut a2 = Client::connect(c.addr(1)).await;
    let token = a.token.clone().unwrap();
    a2.ok(json!({"op": "login", "token": token})).await;
    let third = a2
        .ok(json!({"op": "send", "to": bid, "text": "once", "client_id": "k1"}))
        .await;
    assert_eq!(first["msg"], third["msg"]);
    // A different key is a different message; another user's same key is independent.
    a.ok(json!({"op": "send", "to": bid, "text": "twice", "client_id": "k2"}))
        .await;
    let mut d = user(c.addr(0), "id").await;
    let other = d
        .ok(json!({"op": "send", "to": bid, "text": "d", "client_id": "k1"}))
        .await;
    assert_ne!(other["msg"]["id"], first["msg"]["id"]);
    let mut b = Client::connect(c.addr(1)).await;
    b.login(&bname).await;
    let (msgs, _) = b.backlog().await;
    assert_eq!(texts(&msgs), ["once", "twice", "d"]);
}

async fn order_is_preserved_live_and_in_backlog(c: Cluster) {
    let mut a = user(c.addr(0), "oa").await;
    let mut b = user(c.addr(1), "ob").await;
    let n = 200;
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend(
            serde_json::to_vec(&json!({"op": "send", "to": b.id, "text": format!("{i}")})).unwrap(),
        );
        batch.push(b'\n');
    }
    a.raw(&batch).await;
    for _ in 0..n {
        assert_eq!(a.reply().await["ok"], true);
    }
    let mut live = Vec::new();
    for _ in 0..n {
        live.push(b.event("message").await);
    }
    let expected: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(texts(&live), expected);
    let mut b2 = Client::connect(c.addr(0)).await;
    b2.ok(json!({"op": "login", "token": b.token.clone().unwrap()}))
        .await;
    let (backlog, unread) = b2.backlog().await;
    assert_eq!(texts(&backlog), expected);
    assert_eq!(unread, n as u64);
}

async fn no_gap_no_duplicate_while_backlog_is_read(c: Cluster) {
    let mut a = user(c.addr(0), "ga").await;
    let bname = uname("gb");
    let bid = register(c.addr(1), &bname).await;
    let before = 600; // more than two backlog pages
    let during = 400;
    let mut batch = Vec::new();
    for i in 0..before {
        batch.extend(
            serde_json::to_vec(&json!({"op": "send", "to": bid, "text": format!("{i}")})).unwrap(),
        );
        batch.push(b'\n');
    }
    a.raw(&batch).await;
    for _ in 0..before {
        assert_eq!(a.reply().await["ok"], true);
    }
    // The recipient logs in while the sender keeps sending.
    let sender = tokio::spawn(async move {
        for i in before..before + during {
            a.ok(json!({"op": "send", "to": bid, "text": format!("{i}")}))
                .await;
        }
        a
    });
    let mut b = Client::connect(c.addr(1)).await;
    b.login(&bname).await;
    let (mut msgs, _) = b.backlog().await;
    let _a = sender.await.unwrap();
    while msgs.len() < before + during {
        msgs.push(b.event("message").await);
    }
    b.no_event("message", Duration::from_millis(300)).await;
    let expected: Vec<String> = (0..before + during).map(|i| i.to_string()).collect();
    assert_eq!(
        texts(&msgs),
        expected,
        "every message exactly once, in order"
    );
    let ids: HashSet<&str> = msgs
        .iter()
        .map(|m| m["msg"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), before + during);
}

async fn logout_while_message_in_flight(c: Cluster) {
    let mut a = user(c.addr(0), "fa").await;
    for round in 0..20 {
        let bname = uname("fb");
        register(c.addr(1), &bname).await;
        let mut b = Client::connect(c.addr(1)).await;
        b.login(&bname).await;
        b.backlog().await;
        // Logout and a send race; the message is either live before the logout or in the backlog.
        b.send(json!({"op": "logout"})).await;
        a.ok(json!({"op": "send", "to": b.id, "text": format!("r{round}")}))
            .await;
        let mut live = Vec::new();
        loop {
            let f = b.frame().await.unwrap();
            if f["re"] == "logout" {
                break;
            }
            if f["event"] == "message" {
                live.push(f);
            }
        }
        b.no_event("message", Duration::from_millis(50)).await;
        let mut b2 = Client::connect(c.addr(round)).await;
        b2.login(&bname).await;
        let (backlog, _) = b2.backlog().await;
        assert_eq!(
            texts(&backlog),
            [format!("r{round}")],
            "unacknowledged, so it comes again"
        );
        assert!(live.len() <= 1);
    }
}

async fn same_user_on_two_nodes(c: Cluster) {
    let name = uname("two");
    register(c.addr(0), &name).await;
    let mut s0 = Client::connect(c.addr(0)).await;
    s0.login(&name).await;
    s0.backlog().await;
    let mut s1 = Client::connect(c.addr(1)).await;
    s1.login(&name).await;
    s1.backlog().await;
    let mut a = user(c.addr(1), "ta").await;
    let r = a
        .ok(json!({"op": "send", "to": s0.id, "text": "both"}))
        .await;
    let e0 = s0.event("message").await;
    let e1 = s1.event("message").await;
    assert_eq!(e0, e1);
    assert_eq!(e0["msg"]["id"], r["msg"]["id"]);
    // One session leaving does not stop delivery to the other.
    s0.ok(json!({"op": "logout"})).await;
    a.ok(json!({"op": "send", "to": s1.id, "text": "still"}))
        .await;
    assert_eq!(s1.event("message").await["msg"]["text"], "still");
    s0.no_event("message", Duration::from_millis(200)).await;
}

fn small_queue(s: &mut switchboard::Settings) {
    s.outbound_queue = 2;
    s.max_text_chars = 60_000;
    s.max_frame_bytes = 1 << 20;
}

async fn full_outbound_queue_loses_nothing(c: Cluster) {
    // The recipient does not read while ~10 MB arrive, so its socket buffers fill, its session
    // blocks in a write and its queue overflows: the rest must come from its inbox, in order.
    let mut a = user(c.addr(0), "qa").await;
    let mut b = user(c.addr(1), "qb").await;
    let n = 200;
    let pad = "x".repeat(50_000);
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend(
            serde_json::to_vec(&json!({"op": "send", "to": b.id, "text": format!("{i} {pad}")}))
                .unwrap(),
        );
        batch.push(b'\n');
    }
    a.raw(&batch).await;
    for _ in 0..n {
        assert_eq!(a.reply().await["ok"], true);
    }
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(b.event("message").await);
    }
    b.no_event("message", Duration::from_millis(300)).await;
    let expected: Vec<String> = (0..n).map(|i| format!("{i} {pad}")).collect();
    assert!(
        texts(&got) == expected,
        "lost, doubled or reordered deliveries"
    );
    let (_, body) = c.nodes[1 % c.nodes.len()].get("/metrics").await;
    let overflows = metric(&body, "switchboard_outbound_queue_overflows_total");
    assert!(
        overflows > 0.0,
        "the queue bound was never hit, so this test proved nothing"
    );
}

/// The `M` payload that the real send.lua publishes on `sb:{u:ID}:ch` parses with the node's
/// parser (`store::payload`), field for field: the two builders of the format agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_lua_payload_parses() {
    use switchboard::protocol::Seq;
    use switchboard::server::outbox::Live;
    use switchboard::store::payload;

    let c = Cluster::redis(1).await;
    let redis = c.redis.as_ref().unwrap();
    let mut a = user(c.addr(0), "al").await;
    let mut b = user(c.addr(0), "bo").await;
    // A subscriber of our own, next to the node's (RESP3: pushes arrive on the channel).
    let client = redis::Client::open(format!("{}?protocol=resp3", redis.url())).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let config = redis::AsyncConnectionConfig::new().set_push_sender(tx);
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    con.subscribe(format!("sb:{{u:{}}}:ch", b.id))
        .await
        .unwrap();

    // Spaces (runs of them, and field-like words) in the JSON must stay in the last field.
    let text = "two  spaces - 7 M 1-0 end ";
    let sent = a.ok(json!({"op": "send", "to": b.id, "text": text})).await;
    let payload = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let push = rx.recv().await.expect("subscriber connection closed");
            if push.kind != redis::PushKind::Message {
                continue;
            }
            if let [_, redis::Value::BulkString(p)] = &push.data[..] {
                return p.clone();
            }
        }
    })
    .await
    .expect("no payload published within 5 s");
    let live = payload::parse(&payload)
        .unwrap_or_else(|| panic!("{:?} does not parse", String::from_utf8_lossy(&payload)));
    let delivered = b.event("message").await;
    let Live::Message {
        seq,
        origin,
        ts,
        trace,
        line,
    } = live
    else {
        panic!("not a message: {live:?}");
    };
    let node = &c.nodes[0].name;
    assert!(origin.starts_with(&format!("{node}-")), "origin {origin}");
    assert_eq!(ts, sent["msg"]["ts"].as_u64().unwrap());
    assert_eq!(trace, None);
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line, delivered);
    assert_eq!(line["msg"]["text"], text);
    assert_eq!(
        seq,
        delivered["seq"].as_str().unwrap().parse::<Seq>().unwrap()
    );
}
