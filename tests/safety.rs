//! Account safety (protocol 1.1): `block`, `unblock`, `block.list`, `password.change` and
//! `account.delete`, across two nodes on Redis and on the embedded backend; and a node killed
//! in the middle of a deletion.

mod common;

use std::time::Duration;

use common::{Client, Cluster, PASSWORD, Proc, Redis, register, uname, user};
use serde_json::json;

on_both_backends!(
    block_stops_messages_friendship_and_presence,
    unblock_restores_messages_not_friendship,
    password_change_revokes_every_token,
    account_delete_ends_everything,
);

/// A third password for the tests that change it.
const NEW_PASSWORD: &str = "another-secret-9";
/// Time enough for an event that must not come.
const QUIET: Duration = Duration::from_millis(300);

async fn block_stops_messages_friendship_and_presence(c: Cluster) {
    let mut a = user(c.addr(0), "bla").await;
    let mut b = user(c.addr(1), "blb").await;
    let mut d = user(c.addr(0), "bld").await;
    // Friends, and all three in one small group (which carries presence).
    a.ok(json!({"op": "friend.add", "user": b.id})).await;
    b.event("friend_added").await;
    let gid = a
        .ok(json!({"op": "group.create", "name": uname("blg")}))
        .await["group"]["id"]
        .as_u64()
        .unwrap();
    b.ok(json!({"op": "group.join", "group": gid})).await;
    d.ok(json!({"op": "group.join", "group": gid})).await;

    assert_eq!(
        a.err(json!({"op": "block", "user": a.id})).await,
        "bad_request"
    );
    assert_eq!(
        a.err(json!({"op": "block", "user": 99_999_999})).await,
        "no_such_user"
    );
    assert_eq!(a.err(json!({"op": "block"})).await, "bad_request");
    a.ok(json!({"op": "block", "user": b.id})).await;
    // The friendship ends as by friend.remove, for both; each sees the other go offline.
    assert_eq!(a.event("friend_removed").await["user"]["id"], b.id);
    assert_eq!(b.event("friend_removed").await["user"]["id"], a.id);
    let p = a.event("presence").await;
    assert_eq!(
        p["user"],
        json!({"id": b.id, "name": p["user"]["name"], "online": false})
    );
    let p = b.event("presence").await;
    assert_eq!(
        (p["user"]["id"].as_u64(), p["user"]["online"].as_bool()),
        (Some(a.id), Some(false))
    );
    assert_eq!(
        a.ok(json!({"op": "friend.list"})).await["friends"],
        json!([])
    );
    assert_eq!(
        b.ok(json!({"op": "friend.list"})).await["friends"],
        json!([])
    );
    // Idempotent, and silent the second time.
    a.ok(json!({"op": "block", "user": b.id})).await;
    b.no_event("friend_removed", QUIET).await;
    let list = a.ok(json!({"op": "block.list"})).await;
    assert_eq!(list["users"].as_array().unwrap().len(), 1);
    assert_eq!(list["users"][0]["id"], b.id);
    assert_eq!(b.ok(json!({"op": "block.list"})).await["users"], json!([]));

    // b can neither message nor befriend a; nothing is stored.
    assert_eq!(
        b.err(json!({"op": "send", "to": a.id, "text": "let me in", "client_id": "x1"}))
            .await,
        "blocked"
    );
    assert_eq!(
        b.err(json!({"op": "friend.add", "user": a.id})).await,
        "blocked"
    );
    // Nor does a befriend b while blocking.
    assert_eq!(
        a.err(json!({"op": "friend.add", "user": b.id})).await,
        "blocked"
    );
    a.no_event("message", QUIET).await;
    let h = a.ok(json!({"op": "history", "with": {"user": b.id}})).await;
    assert_eq!(h["messages"], json!([]));
    // One-way: a may still write to b.
    a.ok(json!({"op": "send", "to": b.id, "text": "bye"})).await;
    assert_eq!(b.event("message").await["msg"]["text"], "bye");

    // Neither sees the other online; a third user sees both.
    let w = b.ok(json!({"op": "whois", "id": a.id})).await;
    assert_eq!(w["user"]["online"], false);
    let w = a.ok(json!({"op": "whois", "id": b.id})).await;
    assert_eq!(w["user"]["online"], false);
    let w = d.ok(json!({"op": "whois", "id": a.id})).await;
    assert_eq!(w["user"]["online"], true);
    let online_in = |reply: &serde_json::Value, id: u64| {
        reply["groups"][0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()["online"]
            .as_bool()
            .unwrap()
    };
    assert!(!online_in(&b.ok(json!({"op": "group.list"})).await, a.id));
    assert!(!online_in(&a.ok(json!({"op": "group.list"})).await, b.id));
    assert!(online_in(&d.ok(json!({"op": "group.list"})).await, b.id));

    // Group messages are not affected.
    b.ok(json!({"op": "group.send", "group": gid, "text": "to all"}))
        .await;
    assert_eq!(a.event("message").await["msg"]["text"], "to all");

    // b's presence no longer reaches a; it still reaches d.
    let b_name = b.login_name().await;
    b.ok(json!({"op": "logout"})).await;
    let p = d.event("presence").await;
    assert_eq!(
        (p["user"]["id"].as_u64(), p["user"]["online"].as_bool()),
        (Some(b.id), Some(false))
    );
    a.no_event("presence", QUIET).await;
    // A new session of b: a's login reply and views keep showing b offline.
    let mut b2 = Client::connect(c.addr(0)).await;
    b2.login(&b_name).await;
    assert_eq!(d.event("presence").await["user"]["online"], true);
    a.no_event("presence", QUIET).await;
    let mut a2 = Client::connect(c.addr(1)).await;
    let r = a2
        .ok(json!({"op": "login", "token": a.token.clone().unwrap()}))
        .await;
    let member = r["groups"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == b.id)
        .unwrap()
        .clone();
    assert_eq!(member["online"], false);
}

async fn unblock_restores_messages_not_friendship(c: Cluster) {
    let mut a = user(c.addr(0), "uba").await;
    let mut b = user(c.addr(1), "ubb").await;
    a.ok(json!({"op": "friend.add", "user": b.id})).await;
    b.event("friend_added").await;
    let gid = a
        .ok(json!({"op": "group.create", "name": uname("ubg")}))
        .await["group"]["id"]
        .as_u64()
        .unwrap();
    b.ok(json!({"op": "group.join", "group": gid})).await;
    a.ok(json!({"op": "block", "user": b.id})).await;
    b.event("friend_removed").await;
    assert_eq!(a.event("presence").await["user"]["online"], false);
    assert_eq!(b.event("presence").await["user"]["online"], false);
    assert_eq!(
        a.err(json!({"op": "unblock", "user": 99_999_999})).await,
        "no_such_user"
    );
    a.ok(json!({"op": "unblock", "user": b.id})).await;
    // Presence flows again through the small group, both ways.
    let p = a.event("presence").await;
    assert_eq!(
        (p["user"]["id"].as_u64(), p["user"]["online"].as_bool()),
        (Some(b.id), Some(true))
    );
    let p = b.event("presence").await;
    assert_eq!(
        (p["user"]["id"].as_u64(), p["user"]["online"].as_bool()),
        (Some(a.id), Some(true))
    );
    // Idempotent; unblocking someone never blocked is fine too.
    a.ok(json!({"op": "unblock", "user": b.id})).await;
    b.ok(json!({"op": "unblock", "user": a.id})).await;
    assert_eq!(a.ok(json!({"op": "block.list"})).await["users"], json!([]));
    b.ok(json!({"op": "send", "to": a.id, "text": "hello again"}))
        .await;
    assert_eq!(a.event("message").await["msg"]["text"], "hello again");
    assert_eq!(
        b.ok(json!({"op": "whois", "id": a.id})).await["user"]["online"],
        true
    );
    // The friendship does not come back by itself, but may be made again.
    assert_eq!(
        a.ok(json!({"op": "friend.list"})).await["friends"],
        json!([])
    );
    b.ok(json!({"op": "friend.add", "user": a.id})).await;
    assert_eq!(a.event("friend_added").await["friend"]["id"], b.id);
}

async fn password_change_revokes_every_token(c: Cluster) {
    let name = uname("pw");
    register(c.addr(0), &name).await;
    let mut a1 = Client::connect(c.addr(0)).await;
    a1.login(&name).await;
    a1.backlog().await;
    let mut a2 = Client::connect(c.addr(1)).await;
    a2.login(&name).await;
    a2.backlog().await;
    let (t1, t2) = (a1.token.clone().unwrap(), a2.token.clone().unwrap());
    assert_eq!(
        a1.err(json!({"op": "password.change", "old": "wrong-password", "new": NEW_PASSWORD}))
            .await,
        "bad_credentials"
    );
    assert_eq!(
        a1.err(json!({"op": "password.change", "old": PASSWORD, "new": "short"}))
            .await,
        "invalid_password"
    );
    assert_eq!(
        a1.err(json!({"op": "password.change", "old": PASSWORD}))
            .await,
        "bad_request"
    );
    let mut anon = Client::connect(c.addr(1)).await;
    assert_eq!(
        anon.err(json!({"op": "password.change", "old": PASSWORD, "new": NEW_PASSWORD}))
            .await,
        "not_logged_in"
    );
    let r = a1
        .ok(json!({"op": "password.change", "old": PASSWORD, "new": NEW_PASSWORD}))
        .await;
    let t3 = r["token"].as_str().unwrap().to_string();
    assert!(t3 != t1 && t3 != t2);
    // Every earlier token is dead, on every node; the new one works.
    for (i, token) in [(0, &t1), (1, &t2), (1, &t1)] {
        let mut c2 = Client::connect(c.addr(i)).await;
        assert_eq!(
            c2.err(json!({"op": "login", "token": token})).await,
            "bad_credentials"
        );
    }
    let mut c3 = Client::connect(c.addr(1)).await;
    c3.ok(json!({"op": "login", "token": t3})).await;
    // The old password is refused, the new one accepted.
    let mut c4 = Client::connect(c.addr(0)).await;
    assert_eq!(
        c4.err(json!({"op": "login", "name": name, "password": PASSWORD}))
            .await,
        "bad_credentials"
    );
    c4.ok(json!({"op": "login", "name": name, "password": NEW_PASSWORD}))
        .await;
    // The other session stays connected.
    a2.ok(json!({"op": "ping"})).await;
    // This session's logout revokes the new token.
    a1.ok(json!({"op": "logout"})).await;
    let mut c5 = Client::connect(c.addr(0)).await;
    assert_eq!(
        c5.err(json!({"op": "login", "token": t3})).await,
        "bad_credentials"
    );
}

async fn account_delete_ends_everything(c: Cluster) {
    let name = uname("del");
    let id = register(c.addr(0), &name).await;
    let mut a1 = Client::connect(c.addr(0)).await;
    a1.login(&name).await;
    a1.backlog().await;
    let mut a2 = Client::connect(c.addr(1)).await;
    a2.ok(json!({"op": "login", "token": a1.token.clone().unwrap()}))
        .await;
    a2.backlog().await;
    let mut f = user(c.addr(1), "delf").await;
    let mut m = user(c.addr(0), "delm").await;
    let mut blocker = user(c.addr(1), "delb").await;
    a1.ok(json!({"op": "friend.add", "user": f.id})).await;
    f.event("friend_added").await;
    let shared = uname("dels");
    let gid = a1.ok(json!({"op": "group.create", "name": shared})).await["group"]["id"]
        .as_u64()
        .unwrap();
    m.ok(json!({"op": "group.join", "group": gid})).await;
    let alone = uname("dela");
    a1.ok(json!({"op": "group.create", "name": alone})).await;
    m.ok(json!({"op": "send", "to": id, "text": "in the inbox", "client_id": "m1"}))
        .await;
    blocker.ok(json!({"op": "block", "user": id})).await;
    a1.ok(json!({"op": "block", "user": m.id})).await;
    a1.ok(json!({"op": "send", "to": f.id, "text": "stays with f"}))
        .await;
    assert_eq!(f.event("message").await["msg"]["text"], "stays with f");

    assert_eq!(
        a1.err(json!({"op": "account.delete", "password": "wrong-password"}))
            .await,
        "bad_credentials"
    );
    assert_eq!(a1.err(json!({"op": "account.delete"})).await, "bad_request");
    a1.ok(json!({"op": "account.delete", "password": PASSWORD}))
        .await;
    // Every session: goaway account_deleted, then the end of the connection.
    for s in [&mut a1, &mut a2] {
        let g = s.event("goaway").await;
        assert_eq!(g["reason"], "account_deleted");
        assert!(s.closed().await, "session not closed");
    }
    assert_eq!(f.event("friend_removed").await["user"]["id"], id);
    let left = m.event("member_left").await;
    assert_eq!(
        (left["group"]["id"].as_u64(), left["user"]["id"].as_u64()),
        (Some(gid), Some(id))
    );
    // Gone by name and id; tokens and password dead; messages it sent stay with others.
    let mut x = Client::connect(c.addr(0)).await;
    assert_eq!(
        x.err(json!({"op": "whois", "name": name})).await,
        "no_such_user"
    );
    assert_eq!(
        x.err(json!({"op": "whois", "id": id})).await,
        "no_such_user"
    );
    assert_eq!(
        x.err(json!({"op": "login", "token": a1.token.clone().unwrap()}))
            .await,
        "bad_credentials"
    );
    assert_eq!(
        x.err(json!({"op": "login", "name": name, "password": PASSWORD}))
            .await,
        "bad_credentials"
    );
    assert_eq!(
        f.err(json!({"op": "send", "to": id, "text": "anyone?"}))
            .await,
        "no_such_user"
    );
    let h = f.ok(json!({"op": "history", "with": {"user": id}})).await;
    assert_eq!(h["messages"][0]["msg"]["text"], "stays with f");
    assert_eq!(
        f.ok(json!({"op": "friend.list"})).await["friends"],
        json!([])
    );
    assert_eq!(
        blocker.ok(json!({"op": "block.list"})).await["users"],
        json!([])
    );
    // The shared group lives on with m alone.
    let g = m.ok(json!({"op": "group.list"})).await;
    assert_eq!(g["groups"][0]["members"].as_array().unwrap().len(), 1);
    // The group left empty is gone and its name free; the user's name is free, its id not reused.
    m.ok(json!({"op": "group.create", "name": alone})).await;
    let again = register(c.addr(1), &name).await;
    assert!(again > id, "ids are never reused");
    if let Some(redis) = &c.redis {
        let keys = redis.cli(&["--scan", "--pattern", &format!("sb:{{u:{id}}}*")]);
        assert_eq!(keys.trim(), "", "keys left of the deleted user");
        let byname = redis.cli(&["HGET", "sb:users:byname", &name.to_ascii_lowercase()]);
        assert_eq!(byname.trim(), again.to_string());
    }
}

/// Failed checks of `password.change` and `account.delete` count like failed logins, per
/// name and address, and the limit then refuses even the right password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_checks_count_as_login_failures() {
    for c in [
        Cluster::memory_with(|s| s.login_failures_max = 3).await,
        Cluster::redis_with(2, |s| s.login_failures_max = 3).await,
    ] {
        let name = uname("lim");
        register(c.addr(0), &name).await;
        let mut a = Client::connect(c.addr(0)).await;
        a.login(&name).await;
        a.backlog().await;
        let wrong = json!({"op": "password.change", "old": "wrong-password", "new": NEW_PASSWORD});
        assert_eq!(a.err(wrong.clone()).await, "bad_credentials");
        assert_eq!(a.err(wrong).await, "bad_credentials");
        assert_eq!(
            a.err(json!({"op": "account.delete", "password": "wrong-again"}))
                .await,
            "bad_credentials"
        );
        assert_eq!(
            a.err(json!({"op": "account.delete", "password": PASSWORD}))
                .await,
            "rate_limited"
        );
        assert_eq!(
            a.err(json!({"op": "password.change", "old": PASSWORD, "new": NEW_PASSWORD}))
                .await,
            "rate_limited"
        );
        // A password login of the name is limited as well, from any node.
        let mut b = Client::connect(c.addr(1)).await;
        assert_eq!(
            b.err(json!({"op": "login", "name": name, "password": PASSWORD}))
                .await,
            "rate_limited"
        );
        // Still logged in, the account intact.
        a.ok(json!({"op": "ping"})).await;
        let mut w = Client::connect(c.addr(1)).await;
        w.ok(json!({"op": "whois", "name": name})).await;
    }
}

/// A token written by a node of 0.3.0 (not recorded in the user's token set) logs in until
/// the user's tokens are revoked, and not after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_earlier_releases_are_revoked_too() {
    let c = Cluster::redis(1).await;
    let redis = c.redis.as_ref().unwrap();
    let name = uname("old");
    let id = register(c.addr(0), &name).await;
    let token = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let digest = switchboard::server::auth::token_digest(token);
    redis.cli(&[
        "SET",
        &format!("sb:token:{digest}"),
        &id.to_string(),
        "EX",
        "600",
    ]);
    let mut old = Client::connect(c.addr(0)).await;
    old.ok(json!({"op": "login", "token": token})).await;
    old.backlog().await;
    old.ok(json!({"op": "password.change", "old": PASSWORD, "new": NEW_PASSWORD}))
        .await;
    let mut again = Client::connect(c.addr(0)).await;
    assert_eq!(
        again.err(json!({"op": "login", "token": token})).await,
        "bad_credentials"
    );
}

/// A node killed while it deletes an account leaves all of it or none of it: the account
/// either still works (and a retry through another node deletes it) or is wholly gone, and
/// it never shows as online afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_account_delete_leaves_no_half_state() {
    let redis = Redis::start();
    let ttl = [("SWITCHBOARD_PRESENCE_TTL_SECS", "2")];
    let mut survivor = Proc::start(&redis, &uname("keep"), &ttl);
    for round in 0..4u64 {
        let mut victim = Proc::start(&redis, &uname("kill"), &ttl);
        let name = uname("kd");
        let id = register(survivor.addr, &name).await;
        let mut a = Client::connect(survivor.addr).await;
        a.login(&name).await;
        a.backlog().await;
        // Enough relations that the deletion has work to do.
        let mut friends = Vec::new();
        for _ in 0..20 {
            let f = user(survivor.addr, "kdf").await;
            a.ok(json!({"op": "friend.add", "user": f.id})).await;
            friends.push(f.id);
        }
        for _ in 0..10 {
            a.ok(json!({"op": "group.create", "name": uname("kdg")}))
                .await;
        }
        let mut doomed = Client::connect(victim.addr).await;
        doomed
            .ok(json!({"op": "login", "token": a.token.clone().unwrap()}))
            .await;
        doomed.backlog().await;
        doomed
            .send(json!({"op": "account.delete", "password": PASSWORD}))
            .await;
        // Kill it at a different moment each round: before, during or after the deletion.
        tokio::time::sleep(Duration::from_millis(round * 4)).await;
        victim.signal("-KILL");
        let _ = victim.child.wait();
        let exists = redis.cli(&["EXISTS", &format!("sb:{{u:{id}}}")]).trim() == "1";
        if exists {
            // All of it is still there: consistent friendships both ways, and a retry works.
            for f in &friends {
                let mine = redis.cli(&[
                    "SISMEMBER",
                    &format!("sb:{{u:{id}}}:friends"),
                    &f.to_string(),
                ]);
                let theirs = redis.cli(&[
                    "SISMEMBER",
                    &format!("sb:{{u:{f}}}:friends"),
                    &id.to_string(),
                ]);
                assert_eq!((mine.trim(), theirs.trim()), ("1", "1"), "round {round}");
            }
            let mut retry = Client::connect(survivor.addr).await;
            retry.login(&name).await;
            retry.backlog().await;
            retry
                .ok(json!({"op": "account.delete", "password": PASSWORD}))
                .await;
        }
        // Wholly gone now: no key of the user, no friend pointing at it, name free.
        let keys = redis.cli(&["--scan", "--pattern", &format!("sb:{{u:{id}}}*")]);
        assert_eq!(keys.trim(), "", "round {round}: keys left");
        for f in &friends {
            let theirs = redis.cli(&[
                "SISMEMBER",
                &format!("sb:{{u:{f}}}:friends"),
                &id.to_string(),
            ]);
            assert_eq!(theirs.trim(), "0", "round {round}");
        }
        assert_eq!(
            redis
                .cli(&["HEXISTS", "sb:users:byname", &name.to_ascii_lowercase()])
                .trim(),
            "0"
        );
        let mut w = Client::connect(survivor.addr).await;
        assert_eq!(
            w.err(json!({"op": "whois", "id": id})).await,
            "no_such_user"
        );
        // The survivor's session of the user was closed with goaway.
        assert_eq!(a.event("goaway").await["reason"], "account_deleted");
    }
    survivor.signal("-TERM");
    let _ = survivor.child.wait();
}
