//! `history` (paging, filters, limits, the scan bound, read-only) and `group.join` by name, on
//! both backends. Real sockets, real Redis.

mod common;

use std::time::Duration;

use common::{Client, Cluster, uname, user};
use serde_json::{Value, json};
use switchboard::protocol::With;

on_both_backends!(
    paging_yields_every_message_once_newest_first,
    with_filters_user_both_ways_and_group,
    limits_and_bad_arguments,
    history_is_read_only,
    group_join_by_name,
);

/// A seq as an ordered pair (tests may order them; clients must not need to).
fn pos(seq: &Value) -> (u64, u64) {
    let s = seq.as_str().expect("seq is a string");
    let (ms, n) = s.split_once('-').expect("ms-n");
    (ms.parse().unwrap(), n.parse().unwrap())
}

/// Texts of a history reply's messages, in reply order.
fn texts(r: &Value) -> Vec<String> {
    r["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["msg"]["text"].as_str().unwrap().to_string())
        .collect()
}

/// Every page of `req` (a history request without `before`), following `next`: the texts
/// in order, and the number of pages.
async fn all_pages(c: &mut Client, req: Value) -> (Vec<String>, usize) {
    let mut all = Vec::new();
    let mut pages = 0;
    let mut req = req;
    loop {
        let r = c.ok(req.clone()).await;
        pages += 1;
        assert!(pages < 100, "history does not end");
        all.extend(texts(&r));
        if r["more"] == false {
            assert!(r.get("next").is_none(), "next only with more: {r}");
            return (all, pages);
        }
        assert_eq!(r["more"], true, "{r}");
        req["before"] = r["next"].clone();
    }
}

async fn paging_yields_every_message_once_newest_first(c: Cluster) {
    let mut a = user(c.addr(0), "ha").await;
    let mut b = user(c.addr(1), "hb").await;
    let mut sent = Vec::new();
    for i in 0..12 {
        let text = format!("m{i}");
        if i % 3 == 2 {
            b.ok(json!({"op": "send", "to": a.id, "text": text})).await;
        } else {
            a.ok(json!({"op": "send", "to": b.id, "text": text})).await;
        }
        sent.push(text);
    }
    // a's inbox holds all twelve (own copies and received ones); newest first.
    let r = a.ok(json!({"op": "history"})).await;
    let newest_first: Vec<String> = sent.iter().rev().cloned().collect();
    assert_eq!(texts(&r), newest_first);
    assert_eq!(r["more"], false);
    assert!(r.get("next").is_none());
    let msgs = r["messages"].as_array().unwrap();
    for pair in msgs.windows(2) {
        assert!(pos(&pair[0]["seq"]) > pos(&pair[1]["seq"]), "newest first");
    }
    // m11 came from b, m10 went to b.
    assert_eq!(msgs[0]["msg"]["from"]["id"], b.id);
    assert_eq!(msgs[0]["msg"]["to"], json!({"user": a.id}));
    assert_eq!(msgs[1]["msg"]["from"]["id"], a.id);
    assert_eq!(msgs[1]["msg"]["to"], json!({"user": b.id}));
    // Pages of 5: 5, 5, 2, each message exactly once.
    let r = a.ok(json!({"op": "history", "limit": 5})).await;
    assert_eq!(texts(&r), newest_first[..5]);
    assert_eq!(r["more"], true);
    assert_eq!(r["next"], r["messages"][4]["seq"]);
    let (all, pages) = all_pages(&mut a, json!({"op": "history", "limit": 5})).await;
    assert_eq!(all, newest_first);
    assert_eq!(pages, 3);
    // A page that ends exactly at the oldest message says so.
    let (all, pages) = all_pages(&mut a, json!({"op": "history", "limit": 4})).await;
    assert_eq!(all, newest_first);
    assert_eq!(pages, 3);
    // b's inbox: the same twelve, from the other side.
    let (all, _) = all_pages(&mut b, json!({"op": "history", "limit": 7})).await;
    assert_eq!(all, newest_first);
    // `before` any seq: strictly older.
    let r = a.ok(json!({"op": "history", "limit": 200})).await;
    let sixth = r["messages"][5]["seq"].clone();
    let r = a
        .ok(json!({"op": "history", "before": sixth, "limit": 2}))
        .await;
    assert_eq!(texts(&r), newest_first[6..8]);
    // The typed client reads the same reply.
    let page = a.lib().history(None, None, Some(3)).await.unwrap();
    let got: Vec<&str> = page.messages.iter().map(|m| m.msg.text.as_str()).collect();
    assert_eq!(got, ["m11", "m10", "m9"]);
    assert!(page.more);
    assert_eq!(page.next, Some(page.messages[2].seq));
    let page = a
        .lib()
        .history(Some(With::User(b.id)), page.next, Some(200))
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 9);
    assert!(!page.more && page.next.is_none());
}

async fn with_filters_user_both_ways_and_group(c: Cluster) {
    let mut a = user(c.addr(0), "wa").await;
    let mut b = user(c.addr(1), "wb").await;
    let mut d = user(c.addr(0), "wd").await;
    let gname = uname("wg");
    let g = a.ok(json!({"op": "group.create", "name": gname})).await["group"]["id"]
        .as_u64()
        .unwrap();
    b.ok(json!({"op": "group.join", "group": g})).await;
    a.ok(json!({"op": "send", "to": b.id, "text": "ab1"})).await;
    b.ok(json!({"op": "send", "to": a.id, "text": "ba1"})).await;
    a.ok(json!({"op": "send", "to": d.id, "text": "ad1"})).await;
    d.ok(json!({"op": "send", "to": a.id, "text": "da1"})).await;
    a.ok(json!({"op": "group.send", "group": g, "text": "g1"}))
        .await;
    b.ok(json!({"op": "group.send", "group": g, "text": "g2"}))
        .await;
    b.ok(json!({"op": "send", "to": d.id, "text": "bd1"})).await;
    a.ok(json!({"op": "send", "to": b.id, "text": "ab2"})).await;

    let with = |w: Value| json!({"op": "history", "with": w});
    let r = a.ok(with(json!({"user": b.id}))).await;
    assert_eq!(texts(&r), ["ab2", "ba1", "ab1"]);
    assert_eq!(r["more"], false);
    let r = b.ok(with(json!({"user": a.id}))).await;
    assert_eq!(texts(&r), ["ab2", "ba1", "ab1"], "the same from b's side");
    let r = a.ok(with(json!({"user": d.id}))).await;
    assert_eq!(texts(&r), ["da1", "ad1"]);
    let r = a.ok(with(json!({"group": g}))).await;
    assert_eq!(texts(&r), ["g2", "g1"]);
    let r = b.ok(with(json!({"user": d.id}))).await;
    assert_eq!(texts(&r), ["bd1"]);
    let r = a.ok(json!({"op": "history"})).await;
    assert_eq!(
        texts(&r),
        ["ab2", "g2", "g1", "da1", "ad1", "ba1", "ab1"],
        "bd1 is not in a's inbox"
    );
    // Filtered pages continue like unfiltered ones.
    let (all, pages) = all_pages(
        &mut a,
        json!({"op": "history", "with": {"user": b.id}, "limit": 1}),
    )
    .await;
    assert_eq!(all, ["ab2", "ba1", "ab1"]);
    assert!(pages >= 3);
    // Nobody, no such group, oneself, a group of others: empty lists, never an error.
    for w in [
        json!({"user": 99_999_999}),
        json!({"group": 99_999_999}),
        json!({"user": a.id}),
    ] {
        let r = a.ok(with(w.clone())).await;
        assert_eq!(r["messages"], json!([]), "{w}");
        assert_eq!(r["more"], false, "{w}");
    }
    // d sees the group's messages only from when it joined (by name, in another case).
    d.ok(json!({"op": "group.join", "name": gname.to_uppercase()}))
        .await;
    let r = d.ok(with(json!({"group": g}))).await;
    assert_eq!(r["messages"], json!([]));
    a.ok(json!({"op": "group.send", "group": g, "text": "g3"}))
        .await;
    let r = d.ok(with(json!({"group": g}))).await;
    assert_eq!(texts(&r), ["g3"]);
    assert_eq!(r["messages"][0]["msg"]["to"]["name"], gname.as_str());
    // A malformed `with`.
    for w in [
        json!({"user": b.id, "group": g}),
        json!({"nobody": 1}),
        json!(5),
        json!({"user": "x"}),
    ] {
        assert_eq!(a.err(with(w.clone())).await, "bad_request", "{w}");
    }
}

async fn limits_and_bad_arguments(c: Cluster) {
    // Before login: not_logged_in, whatever the arguments.
    let mut anon = Client::connect(c.addr(0)).await;
    assert_eq!(anon.err(json!({"op": "history"})).await, "not_logged_in");
    assert_eq!(
        anon.err(json!({"op": "history", "limit": 0})).await,
        "not_logged_in"
    );
    let mut a = user(c.addr(0), "la").await;
    let b = user(c.addr(1), "lb").await;
    for i in 0..3 {
        a.ok(json!({"op": "send", "to": b.id, "text": format!("t{i}")}))
            .await;
    }
    for bad in [
        json!({"op": "history", "limit": 0}),
        json!({"op": "history", "limit": 201}),
        json!({"op": "history", "limit": -1}),
        json!({"op": "history", "limit": 1.5}),
        json!({"op": "history", "limit": "5"}),
        json!({"op": "history", "before": "nonsense"}),
        json!({"op": "history", "before": 5}),
        json!({"op": "history", "before": "1-2-3"}),
    ] {
        assert_eq!(a.err(bad.clone()).await, "bad_request", "{bad}");
    }
    let r = a.ok(json!({"op": "history", "limit": 1})).await;
    assert_eq!(texts(&r), ["t2"]);
    assert_eq!(r["more"], true);
    let r = a.ok(json!({"op": "history", "limit": 200})).await;
    assert_eq!(texts(&r), ["t2", "t1", "t0"]);
    // Before the first position, and before the oldest message: nothing.
    let r = a.ok(json!({"op": "history", "before": "0-0"})).await;
    assert_eq!(r["messages"], json!([]));
    assert_eq!(r["more"], false);
    let all = a.ok(json!({"op": "history"})).await;
    let first = all["messages"][2]["seq"].clone();
    let r = a.ok(json!({"op": "history", "before": first})).await;
    assert_eq!(r["messages"], json!([]));
    assert_eq!(r["more"], false);
    // `before` need not be a position of the inbox: a far-future one reads from the newest.
    let r = a
        .ok(json!({"op": "history", "before": "99999999999999-0", "limit": 1}))
        .await;
    assert_eq!(texts(&r), ["t2"]);
    // ref is echoed; unknown fields are ignored.
    let r = a
        .ok(json!({"op": "history", "ref": "h1", "limit": 1, "x": [1]}))
        .await;
    assert_eq!(r["ref"], "h1");
    assert_eq!(r["re"], "history");
}

async fn history_is_read_only(c: Cluster) {
    let mut a = user(c.addr(0), "ra").await;
    let mut b = user(c.addr(1), "rb").await;
    for i in 0..3 {
        b.ok(json!({"op": "send", "to": a.id, "text": format!("r{i}")}))
            .await;
    }
    let first = a.event("message").await;
    a.ok(json!({"op": "ack", "seq": first["seq"]})).await;
    // The stored message as delivered: the same seq and msg as the live event.
    let r = a.ok(json!({"op": "history", "with": {"user": b.id}})).await;
    assert_eq!(r["messages"][2]["seq"], first["seq"]);
    assert_eq!(r["messages"][2]["msg"], first["msg"]);
    for req in [
        json!({"op": "history"}),
        json!({"op": "history", "limit": 1}),
        json!({"op": "history", "with": {"user": b.id}}),
    ] {
        a.ok(req).await;
    }
    // The acknowledged position did not move: a new session gets the two unacknowledged ones.
    let mut a2 = Client::connect(c.addr(1)).await;
    a2.ok(json!({"op": "login", "token": a.token.clone().unwrap()}))
        .await;
    let (msgs, unread) = a2.backlog().await;
    let got: Vec<&str> = msgs
        .iter()
        .map(|m| m["msg"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["r1", "r2"]);
    assert_eq!(unread, 2);
    // And no message events came from the history requests.
    a2.ok(json!({"op": "history"})).await;
    a2.no_event("message", Duration::from_millis(200)).await;
}

async fn group_join_by_name(c: Cluster) {
    let mut a = user(c.addr(0), "ja").await;
    let mut b = user(c.addr(1), "jb").await;
    let gname = uname("Crab");
    let g = a.ok(json!({"op": "group.create", "name": gname})).await["group"]["id"]
        .as_u64()
        .unwrap();
    let r = b
        .ok(json!({"op": "group.join", "name": gname.to_lowercase()}))
        .await;
    assert_eq!(r["group"]["id"], g);
    assert_eq!(r["group"]["name"], gname.as_str(), "as registered");
    assert_eq!(r["group"]["role"], "member");
    let ev = a.event("member_joined").await;
    assert_eq!(ev["group"]["id"], g);
    assert_eq!(ev["user"]["id"], b.id);
    assert_eq!(
        b.err(json!({"op": "group.join", "name": gname.to_uppercase()}))
            .await,
        "already_member"
    );
    for name in [
        uname("nogroup"),
        "no spaces here".to_string(),
        String::new(),
    ] {
        assert_eq!(
            b.err(json!({"op": "group.join", "name": name})).await,
            "no_such_group",
            "{name:?}"
        );
    }
    assert_eq!(b.err(json!({"op": "group.join"})).await, "bad_request");
    assert_eq!(
        b.err(json!({"op": "group.join", "name": 5})).await,
        "bad_request"
    );
    // Both given: the id counts.
    let other = uname("Other");
    let o = a.ok(json!({"op": "group.create", "name": other})).await["group"]["id"]
        .as_u64()
        .unwrap();
    let r = b
        .ok(json!({"op": "group.join", "group": o, "name": uname("nogroup")}))
        .await;
    assert_eq!(r["group"]["id"], o);
    // A deleted group's name is unknown again; a new group of that name is another id.
    b.ok(json!({"op": "group.leave", "group": o})).await;
    a.ok(json!({"op": "group.leave", "group": o})).await;
    assert_eq!(
        b.err(json!({"op": "group.join", "name": other})).await,
        "no_such_group"
    );
    let o2 = a.ok(json!({"op": "group.create", "name": other})).await["group"]["id"]
        .as_u64()
        .unwrap();
    assert_ne!(o2, o);
    // The typed client.
    let joined = b
        .lib()
        .group_join_name(&other.to_lowercase())
        .await
        .unwrap();
    assert_eq!(joined.group.id, o2);
}

/// With `history_scan_max` 4: a sparse conversation answers fewer than `limit` with `more`,
/// and continuing from `next` finds the rest.
async fn scan_bound(c: Cluster) {
    let mut a = user(c.addr(0), "sa").await;
    let mut b = user(c.addr(1), "sb").await;
    let mut d = user(c.addr(0), "sd").await;
    b.ok(json!({"op": "send", "to": a.id, "text": "b0"})).await;
    for i in 0..6 {
        d.ok(json!({"op": "send", "to": a.id, "text": format!("d{i}")}))
            .await;
    }
    b.ok(json!({"op": "send", "to": a.id, "text": "b1"})).await;
    // Inbox of a, newest first: b1 d5 d4 d3 | d2 d1 d0 b0.
    let r = a
        .ok(json!({"op": "history", "with": {"user": b.id}, "limit": 10}))
        .await;
    assert_eq!(texts(&r), ["b1"], "only four entries read");
    assert_eq!(r["more"], true);
    let r2 = a
        .ok(json!({"op": "history", "with": {"user": b.id}, "limit": 10, "before": r["next"]}))
        .await;
    assert_eq!(texts(&r2), ["b0"]);
    let (all, _) = all_pages(
        &mut a,
        json!({"op": "history", "with": {"user": b.id}, "limit": 10}),
    )
    .await;
    assert_eq!(all, ["b1", "b0"]);
    // Unfiltered: at most four per request too, whatever the limit.
    let r = a.ok(json!({"op": "history", "limit": 10})).await;
    assert_eq!(texts(&r), ["b1", "d5", "d4", "d3"]);
    assert_eq!(r["more"], true);
    assert_eq!(r["next"], r["messages"][3]["seq"]);
    let (all, _) = all_pages(&mut a, json!({"op": "history", "limit": 3})).await;
    assert_eq!(all, ["b1", "d5", "d4", "d3", "d2", "d1", "d0", "b0"]);
    // With a limit below the bound, the limit counts.
    let r = a.ok(json!({"op": "history", "limit": 2})).await;
    assert_eq!(texts(&r), ["b1", "d5"]);
    assert_eq!(r["more"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_bound_memory() {
    scan_bound(Cluster::memory_with(|s| s.history_scan_max = 4).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_bound_redis() {
    scan_bound(Cluster::redis_with(2, |s| s.history_scan_max = 4).await).await;
}
