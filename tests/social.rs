//! Friends, groups, presence and their live events, on both backends.

mod common;

use std::time::Duration;

use common::{Client, Cluster, register, uname, user};
use serde_json::json;

on_both_backends!(
    friendship_is_mutual_with_events,
    friend_remove_both_ways,
    group_lifecycle_and_membership_events,
    group_send_fans_out_to_members_only,
    presence_for_friends_and_group_members,
);

async fn friendship_is_mutual_with_events(c: Cluster) {
    let mut a = user(c.addr(0), "fa").await;
    let mut b = user(c.addr(1), "fb").await;
    let bname = b.login_name().await;
    // a's second session: gets friend_added too.
    let mut a2 = Client::connect(c.addr(1)).await;
    a2.ok(json!({"op": "login", "token": a.token.clone().unwrap()}))
        .await;
    a2.backlog().await;
    let r = a.ok(json!({"op": "friend.add", "user": b.id})).await;
    assert_eq!(
        r["friend"],
        json!({"id": b.id, "name": bname, "online": true})
    );
    let ev = b.event("friend_added").await;
    assert_eq!(ev["friend"]["id"], a.id);
    assert_eq!(ev["friend"]["online"], true);
    let ev = a2.event("friend_added").await;
    assert_eq!(ev["friend"]["id"], b.id);
    a.no_event("friend_added", Duration::from_millis(200)).await;
    // Both see each other; adding again is ok and silent.
    let fl = b.ok(json!({"op": "friend.list"})).await;
    assert_eq!(fl["friends"].as_array().unwrap().len(), 1);
    assert_eq!(fl["friends"][0]["id"], a.id);
    b.ok(json!({"op": "friend.add", "user": a.id})).await;
    a.no_event("friend_added", Duration::from_millis(200)).await;
    assert_eq!(
        a.err(json!({"op": "friend.add", "user": a.id})).await,
        "bad_request"
    );
    assert_eq!(
        a.err(json!({"op": "friend.add", "user": 99_999_999})).await,
        "no_such_user"
    );
    assert_eq!(a.err(json!({"op": "friend.add"})).await, "bad_request");
    // The login reply lists friends with presence.
    let mut b2 = Client::connect(c.addr(0)).await;
    let r = b2
        .ok(json!({"op": "login", "token": b.token.clone().unwrap()}))
        .await;
    assert_eq!(r["friends"][0]["id"], a.id);
    assert_eq!(r["friends"][0]["online"], true);
}

async fn friend_remove_both_ways(c: Cluster) {
    let mut a = user(c.addr(0), "ra").await;
    let mut b = user(c.addr(1), "rb").await;
    a.ok(json!({"op": "friend.add", "user": b.id})).await;
    b.event("friend_added").await;
    b.ok(json!({"op": "friend.remove", "user": a.id})).await;
    let ev = a.event("friend_removed").await;
    assert_eq!(ev["user"]["id"], b.id);
    assert_eq!(
        a.ok(json!({"op": "friend.list"})).await["friends"],
        json!([])
    );
    assert_eq!(
        b.ok(json!({"op": "friend.list"})).await["friends"],
        json!([])
    );
    assert_eq!(
        a.err(json!({"op": "friend.remove", "user": b.id})).await,
        "no_such_user"
    );
    assert_eq!(
        a.err(json!({"op": "friend.remove", "user": a.id})).await,
        "no_such_user"
    );
    assert_eq!(
        a.err(json!({"op": "friend.remove", "user": 99_999_999}))
            .await,
        "no_such_user"
    );
}

async fn group_lifecycle_and_membership_events(c: Cluster) {
    let mut a = user(c.addr(0), "ga").await;
    let mut a2 = Client::connect(c.addr(1)).await;
    a2.ok(json!({"op": "login", "token": a.token.clone().unwrap()}))
        .await;
    a2.backlog().await;
    let mut b = user(c.addr(1), "gb").await;
    let gname = uname("Rust");
    let r = a
        .ok(json!({"op": "group.create", "name": gname, "desc": "crabs"}))
        .await;
    let g = &r["group"];
    let gid = g["id"].as_u64().unwrap();
    assert_eq!(g["name"], gname);
    assert_eq!(g["desc"], "crabs");
    assert_eq!(g["role"], "creator");
    assert_eq!(
        g["members"],
        json!([{"id": a.id, "name": g["members"][0]["name"], "role": "creator", "online": true}])
    );
    // The creator's other session hears of it; the creating session does not.
    let ev = a2.event("member_joined").await;
    assert_eq!(ev["group"], json!({"id": gid, "name": gname}));
    assert_eq!(ev["user"]["id"], a.id);
    assert_eq!(
        b.err(json!({"op": "group.create", "name": gname.to_lowercase()}))
            .await,
        "name_taken"
    );
    assert_eq!(
        b.err(json!({"op": "group.create", "name": "no spaces"}))
            .await,
        "invalid_name"
    );
    assert_eq!(
        b.err(json!({"op": "group.create", "name": uname("d"), "desc": "x".repeat(257)}))
            .await,
        "bad_request"
    );
    let r = b.ok(json!({"op": "group.join", "group": gid})).await;
    assert_eq!(r["group"]["role"], "member");
    assert_eq!(r["group"]["members"].as_array().unwrap().len(), 2);
    for s in [&mut a, &mut a2] {
        let ev = s.event("member_joined").await;
        assert_eq!(ev["user"]["id"], b.id);
    }
    b.no_event("member_joined", Duration::from_millis(200))
        .await;
    assert_eq!(
        b.err(json!({"op": "group.join", "group": gid})).await,
        "already_member"
    );
    assert_eq!(
        b.err(json!({"op": "group.join", "group": 99_999_999}))
            .await,
        "no_such_group"
    );
    let gl = b.ok(json!({"op": "group.list"})).await;
    assert_eq!(gl["groups"][0]["id"], gid);
    // The creator may leave like anyone; the others hear of it.
    a.ok(json!({"op": "group.leave", "group": gid})).await;
    let ev = b.event("member_left").await;
    assert_eq!(ev["user"]["id"], a.id);
    assert_eq!(a2.event("member_left").await["user"]["id"], a.id);
    assert_eq!(
        a.err(json!({"op": "group.leave", "group": gid})).await,
        "not_a_member"
    );
    assert_eq!(a.ok(json!({"op": "group.list"})).await["groups"], json!([]));
    // The last member leaving deletes the group; its name is free again.
    b.ok(json!({"op": "group.leave", "group": gid})).await;
    assert_eq!(
        b.err(json!({"op": "group.join", "group": gid})).await,
        "no_such_group"
    );
    assert_eq!(
        b.err(json!({"op": "group.leave", "group": gid})).await,
        "no_such_group"
    );
    let r = b.ok(json!({"op": "group.create", "name": gname})).await;
    assert_ne!(r["group"]["id"], gid, "group ids are not reused");
}

async fn group_send_fans_out_to_members_only(c: Cluster) {
    let mut a = user(c.addr(0), "sa").await;
    let mut b = user(c.addr(1), "sb").await;
    let mut d = user(c.addr(0), "sd").await;
    let mut outsider = user(c.addr(1), "so").await;
    let gname = uname("G");
    let gid = a.ok(json!({"op": "group.create", "name": gname})).await["group"]["id"]
        .as_u64()
        .unwrap();
    b.ok(json!({"op": "group.join", "group": gid})).await;
    d.ok(json!({"op": "group.join", "group": gid})).await;
    let r = b
        .ok(json!({"op": "group.send", "group": gid, "text": "hello all", "client_id": "g1"}))
        .await;
    for s in [&mut a, &mut d] {
        let ev = s.event("message").await;
        assert_eq!(ev["msg"]["id"], r["msg"]["id"]);
        assert_eq!(ev["msg"]["to"], json!({"group": gid, "name": gname}));
        assert_eq!(ev["msg"]["from"]["id"], b.id);
        assert_eq!(ev["msg"]["text"], "hello all");
    }
    b.no_event("message", Duration::from_millis(200)).await;
    outsider
        .no_event("message", Duration::from_millis(200))
        .await;
    // Idempotent like 1:1 sends.
    let again = b
        .ok(json!({"op": "group.send", "group": gid, "text": "hello all", "client_id": "g1"}))
        .await;
    assert_eq!(again["msg"], r["msg"]);
    a.no_event("message", Duration::from_millis(200)).await;
    assert_eq!(
        outsider
            .err(json!({"op": "group.send", "group": gid, "text": "x"}))
            .await,
        "not_a_member"
    );
    assert_eq!(
        outsider
            .err(json!({"op": "group.send", "group": 99_999_999, "text": "x"}))
            .await,
        "no_such_group"
    );
    assert_eq!(
        b.err(json!({"op": "group.send", "group": gid, "text": ""}))
            .await,
        "bad_request"
    );
    assert_eq!(
        b.err(json!({"op": "group.send", "group": gid, "text": "x".repeat(4097)}))
            .await,
        "text_too_long"
    );
    // Members at send time only: a later joiner does not get older messages.
    let late = uname("late");
    register(c.addr(0), &late).await;
    let mut l = Client::connect(c.addr(0)).await;
    l.login(&late).await;
    l.backlog().await;
    l.ok(json!({"op": "group.join", "group": gid})).await;
    let mut l2 = Client::connect(c.addr(1)).await;
    l2.login(&late).await;
    assert_eq!(l2.backlog().await.0.len(), 0);
}

async fn presence_for_friends_and_group_members(c: Cluster) {
    let mut a = user(c.addr(0), "pa").await;
    let bname = uname("pb");
    let bid = register(c.addr(1), &bname).await;
    let mut member = user(c.addr(1), "pm").await;
    let mut stranger = user(c.addr(0), "ps").await;
    a.ok(json!({"op": "friend.add", "user": bid})).await;
    let gid = member
        .ok(json!({"op": "group.create", "name": uname("P")}))
        .await["group"]["id"]
        .as_u64()
        .unwrap();
    let mut b = Client::connect(c.addr(1)).await;
    b.login(&bname).await;
    b.backlog().await;
    b.ok(json!({"op": "group.join", "group": gid})).await;
    let ev = a.event("presence").await;
    assert_eq!(
        ev["user"],
        json!({"id": bid, "name": bname, "online": true})
    );
    // A second session changes nothing; the last one leaving is "offline".
    let mut b2 = Client::connect(c.addr(0)).await;
    b2.login(&bname).await;
    a.no_event("presence", Duration::from_millis(200)).await;
    b2.ok(json!({"op": "logout"})).await;
    a.no_event("presence", Duration::from_millis(200)).await;
    drop(b);
    let ev = a.event("presence").await;
    assert_eq!(ev["user"]["online"], false);
    let ev = member.event("presence").await;
    assert_eq!(
        ev["user"],
        json!({"id": bid, "name": bname, "online": false})
    );
    stranger
        .no_event("presence", Duration::from_millis(200))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_skips_groups_over_presence_group_max_memory() {
    presence_skips_big_groups(Cluster::memory_with(|s| s.presence_group_max = 2).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_skips_groups_over_presence_group_max_redis() {
    presence_skips_big_groups(Cluster::redis_with(2, |s| s.presence_group_max = 2).await).await;
}

/// Protocol revision 1.1: no presence events through groups larger than `presence_group_max`
/// (here 2); friends and small groups unchanged.
async fn presence_skips_big_groups(c: Cluster) {
    let quiet = Duration::from_millis(300);
    let mut owner = user(c.addr(0), "go").await;
    let mut member = user(c.addr(1), "gm").await;
    let uname_ = uname("gu");
    let uid = register(c.addr(0), &uname_).await;
    let big = owner
        .ok(json!({"op": "group.create", "name": uname("B")}))
        .await["group"]["id"]
        .as_u64()
        .unwrap();
    member.ok(json!({"op": "group.join", "group": big})).await;
    let mut u = Client::connect(c.addr(1)).await;
    u.login(&uname_).await;
    u.backlog().await;
    u.ok(json!({"op": "group.join", "group": big})).await;
    // Three members: over the limit, so leaving is announced to nobody.
    drop(u);
    owner.no_event("presence", quiet).await;
    member.no_event("presence", quiet).await;
    // A friend hears of it whatever the groups; a group of two carries it.
    owner.ok(json!({"op": "friend.add", "user": uid})).await;
    let small = member
        .ok(json!({"op": "group.create", "name": uname("S")}))
        .await["group"]["id"]
        .as_u64()
        .unwrap();
    let mut u = Client::connect(c.addr(0)).await;
    u.login(&uname_).await;
    u.backlog().await;
    assert_eq!(owner.event("presence").await["user"]["online"], true);
    member.no_event("presence", quiet).await;
    u.ok(json!({"op": "group.join", "group": small})).await;
    drop(u);
    assert_eq!(owner.event("presence").await["user"]["online"], false);
    let ev = member.event("presence").await;
    assert_eq!(
        ev["user"],
        json!({"id": uid, "name": uname_, "online": false})
    );
}
