//! Every op's replies and errors, before and after login, on both backends.

mod common;

use common::{Client, Cluster, PASSWORD, register, uname, user};
use serde_json::json;

on_both_backends!(
    hello_then_ping_with_ref,
    register_validates_and_rejects_duplicates,
    login_errors,
    ops_before_login,
    whois_by_name_and_id,
    token_login_and_logout_revokes,
    replies_keep_request_order,
    too_many_sessions,
    send_validation,
);

async fn hello_then_ping_with_ref(c: Cluster) {
    let mut a = Client::connect(c.addr(0)).await;
    assert_eq!(a.hello["server"], "switchboard");
    assert_eq!(a.hello["protocol"], 1);
    assert!(a.hello["node"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(a.hello["version"].as_str().is_some());
    for r in [json!(7), json!("x"), json!(null), json!(true), json!(1.5)] {
        let reply = a.ok(json!({"op": "ping", "ref": r})).await;
        assert_eq!(reply, json!({"re": "ping", "ref": r, "ok": true}));
    }
    assert_eq!(
        a.ok(json!({"op": "ping"})).await,
        json!({"re": "ping", "ok": true})
    );
}

async fn register_validates_and_rejects_duplicates(c: Cluster) {
    let mut a = Client::connect(c.addr(0)).await;
    let name = uname("Reg");
    let r = a
        .ok(json!({"op": "register", "name": name, "password": PASSWORD}))
        .await;
    assert_eq!(r["user"]["name"], name);
    assert!(r["user"]["id"].as_u64().unwrap() > 0);
    // Unique case-insensitively, across nodes.
    let mut b = Client::connect(c.addr(1)).await;
    let upper = name.to_uppercase();
    assert_eq!(
        b.err(json!({"op": "register", "name": upper, "password": PASSWORD}))
            .await,
        "name_taken"
    );
    for bad in ["", "has space", "ümlaut", &"x".repeat(33), "semi;colon"] {
        assert_eq!(
            a.err(json!({"op": "register", "name": bad, "password": PASSWORD}))
                .await,
            "invalid_name",
            "{bad:?}"
        );
    }
    let ok32 = format!("{}{}", uname("L"), "a".repeat(25));
    a.ok(json!({"op": "register", "name": &ok32[..32], "password": PASSWORD}))
        .await;
    for bad in ["short", &"p".repeat(129)] {
        assert_eq!(
            a.err(json!({"op": "register", "name": uname("p"), "password": bad}))
                .await,
            "invalid_password"
        );
    }
    a.ok(json!({"op": "register", "name": uname("p"), "password": "12345678"}))
        .await;
    assert_eq!(
        a.err(json!({"op": "register", "name": 5, "password": PASSWORD}))
            .await,
        "bad_request"
    );
    assert_eq!(
        a.err(json!({"op": "register", "name": uname("p")})).await,
        "bad_request"
    );
    // Ids are never reused and grow.
    let id1 = register(c.addr(0), &uname("i")).await;
    let id2 = register(c.addr(1), &uname("i")).await;
    assert!(id2 > id1);
}

async fn login_errors(c: Cluster) {
    let name = uname("le");
    let id = register(c.addr(0), &name).await;
    let mut a = Client::connect(c.addr(0)).await;
    assert_eq!(
        a.err(json!({"op": "login", "name": name, "password": "wrong password"}))
            .await,
        "bad_credentials"
    );
    assert_eq!(
        a.err(json!({"op": "login", "name": "nobody-here", "password": PASSWORD}))
            .await,
        "bad_credentials"
    );
    assert_eq!(
        a.err(json!({"op": "login", "id": 999_999, "password": PASSWORD}))
            .await,
        "bad_credentials"
    );
    assert_eq!(
        a.err(json!({"op": "login", "token": "not-a-token"})).await,
        "bad_credentials"
    );
    assert_eq!(
        a.err(json!({"op": "login", "name": name})).await,
        "bad_request"
    );
    assert_eq!(
        a.err(json!({"op": "login", "password": PASSWORD})).await,
        "bad_request"
    );
    // Login by id, case-insensitive name.
    let r = a
        .ok(json!({"op": "login", "id": id, "password": PASSWORD}))
        .await;
    assert_eq!(r["user"], json!({"id": id, "name": name}));
    assert_eq!(r["friends"], json!([]));
    assert_eq!(r["groups"], json!([]));
    assert!(r["token"].as_str().unwrap().len() >= 32);
    assert_eq!(a.backlog().await, (vec![], 0));
    assert_eq!(
        a.err(json!({"op": "login", "name": name, "password": PASSWORD}))
            .await,
        "already_logged_in"
    );
    let mut b = Client::connect(c.addr(1)).await;
    b.ok(json!({"op": "login", "name": name.to_uppercase(), "password": PASSWORD}))
        .await;
}

async fn ops_before_login(c: Cluster) {
    let mut a = Client::connect(c.addr(0)).await;
    for op in [
        json!({"op": "logout"}),
        json!({"op": "send", "to": 1, "text": "x"}),
        json!({"op": "ack", "seq": "1-0"}),
        json!({"op": "friend.add", "user": 1}),
        json!({"op": "friend.remove", "user": 1}),
        json!({"op": "friend.list"}),
        json!({"op": "group.create", "name": "g"}),
        json!({"op": "group.join", "group": 1}),
        json!({"op": "group.leave", "group": 1}),
        json!({"op": "group.list"}),
        json!({"op": "group.send", "group": 1, "text": "x"}),
    ] {
        assert_eq!(a.err(op.clone()).await, "not_logged_in", "{op}");
    }
    let r = a.req(json!({"op": "fly", "ref": 3})).await;
    assert_eq!(r["re"], "fly");
    assert_eq!(r["ref"], 3);
    assert_eq!(r["error"]["code"], "unknown_op");
    assert!(r["error"]["message"].as_str().is_some());
}

async fn whois_by_name_and_id(c: Cluster) {
    let name = uname("Who");
    let id = register(c.addr(0), &name).await;
    let mut a = Client::connect(c.addr(1)).await;
    let r = a
        .ok(json!({"op": "whois", "name": name.to_lowercase()}))
        .await;
    assert_eq!(r["user"], json!({"id": id, "name": name, "online": false}));
    let mut s = Client::connect(c.addr(0)).await;
    s.login(&name).await;
    let r = a.ok(json!({"op": "whois", "id": id})).await;
    assert_eq!(r["user"]["online"], true);
    assert_eq!(
        a.err(json!({"op": "whois", "name": "nobody-x"})).await,
        "no_such_user"
    );
    assert_eq!(
        a.err(json!({"op": "whois", "id": 123_456_789})).await,
        "no_such_user"
    );
    assert_eq!(a.err(json!({"op": "whois"})).await, "bad_request");
    s.ok(json!({"op": "logout"})).await;
    let r = a.ok(json!({"op": "whois", "id": id})).await;
    assert_eq!(r["user"]["online"], false);
}

async fn token_login_and_logout_revokes(c: Cluster) {
    let name = uname("tok");
    register(c.addr(0), &name).await;
    let mut a = Client::connect(c.addr(0)).await;
    let r = a.login(&name).await;
    let token = r["token"].as_str().unwrap().to_string();
    // Token login on another node: same user, same token.
    let mut b = Client::connect(c.addr(1)).await;
    let r2 = b.ok(json!({"op": "login", "token": token})).await;
    assert_eq!(r2["user"], r["user"]);
    assert_eq!(r2["token"], token);
    // Logout from the token session revokes the token; both sessions stay usable otherwise.
    b.ok(json!({"op": "logout"})).await;
    assert_eq!(b.err(json!({"op": "friend.list"})).await, "not_logged_in");
    assert_eq!(b.err(json!({"op": "logout"})).await, "not_logged_in");
    let mut d = Client::connect(c.addr(0)).await;
    assert_eq!(
        d.err(json!({"op": "login", "token": token})).await,
        "bad_credentials"
    );
    a.ok(json!({"op": "friend.list"})).await;
    // The connection can log in again after logout.
    b.ok(json!({"op": "login", "name": name, "password": PASSWORD}))
        .await;
}

async fn replies_keep_request_order(c: Cluster) {
    let mut a = user(c.addr(0), "ord").await;
    let mut batch = Vec::new();
    for i in 0..50 {
        let op = match i % 3 {
            0 => json!({"op": "ping", "ref": i}),
            1 => json!({"op": "friend.list", "ref": i}),
            _ => json!({"op": "whois", "id": a.id, "ref": i}),
        };
        batch.extend(serde_json::to_vec(&op).unwrap());
        batch.push(b'\n');
    }
    a.raw(&batch).await;
    for i in 0..50 {
        let r = a.reply().await;
        assert_eq!(r["ref"], i);
        assert_eq!(r["ok"], true);
    }
}

async fn too_many_sessions(c: Cluster) {
    let name = uname("many");
    register(c.addr(0), &name).await;
    let mut sessions = Vec::new();
    for i in 0..8 {
        let mut s = Client::connect(c.addr(i)).await;
        s.login(&name).await;
        sessions.push(s);
    }
    let mut ninth = Client::connect(c.addr(0)).await;
    assert_eq!(
        ninth
            .err(json!({"op": "login", "name": name, "password": PASSWORD}))
            .await,
        "too_many_sessions"
    );
    // Closing one frees a slot.
    let mut gone = sessions.pop().unwrap();
    gone.ok(json!({"op": "logout"})).await;
    ninth
        .ok(json!({"op": "login", "name": name, "password": PASSWORD}))
        .await;
}

async fn send_validation(c: Cluster) {
    let mut a = user(c.addr(0), "sv").await;
    let b = user(c.addr(1), "sv").await;
    assert_eq!(
        a.err(json!({"op": "send", "to": b.id, "text": ""})).await,
        "bad_request"
    );
    assert_eq!(
        a.err(json!({"op": "send", "to": a.id, "text": "me"})).await,
        "bad_request"
    );
    assert_eq!(
        a.err(json!({"op": "send", "to": 987_654_321, "text": "x"}))
            .await,
        "no_such_user"
    );
    assert_eq!(
        a.err(json!({"op": "send", "to": "2", "text": "x"})).await,
        "bad_request"
    );
    assert_eq!(
        a.err(json!({"op": "send", "to": b.id})).await,
        "bad_request"
    );
    assert_eq!(
        a.err(json!({"op": "send", "to": b.id, "text": 5})).await,
        "bad_request"
    );
    let long: String = "é".repeat(4097);
    assert_eq!(
        a.err(json!({"op": "send", "to": b.id, "text": long})).await,
        "text_too_long"
    );
    let max: String = "é".repeat(4096);
    a.ok(json!({"op": "send", "to": b.id, "text": max})).await;
    assert_eq!(
        a.err(json!({"op": "send", "to": b.id, "text": "x", "client_id": ""}))
            .await,
        "bad_request"
    );
    assert_eq!(
        a.err(json!({"op": "send", "to": b.id, "text": "x", "client_id": 7}))
            .await,
        "bad_request"
    );
    // Unknown fields are ignored.
    a.ok(json!({"op": "send", "to": b.id, "text": "x", "color": "red"}))
        .await;
    assert_eq!(
        a.err(json!({"op": "ack", "seq": "garbage"})).await,
        "bad_request"
    );
    assert_eq!(a.err(json!({"op": "ack", "seq": 5})).await, "bad_request");
}
