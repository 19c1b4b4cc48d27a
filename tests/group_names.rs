//! Group views take member names from the group's copy (`sb:{g:ID}:names`, standalone Redis):
//! right for new groups, right for a group written before the copy existed (read from the
//! user hashes, then filled in by the next join), and the copy follows leaves and account
//! deletions.

mod common;

use std::collections::BTreeMap;

use common::{Client, Cluster, PASSWORD, register, uname};
use serde_json::{Value, json};

/// A logged-in user and its name.
async fn named(addr: std::net::SocketAddr, prefix: &str) -> (Client, String) {
    let name = uname(prefix);
    register(addr, &name).await;
    let mut c = Client::connect(addr).await;
    c.login(&name).await;
    c.backlog().await;
    (c, name)
}

/// Member id → name of a group view.
fn names(group: &Value) -> BTreeMap<u64, String> {
    group["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_views_name_every_member_from_old_and_new_data() {
    let c = Cluster::redis(1).await;
    let redis = c.redis.as_ref().unwrap();
    let addr = c.addr(0);
    let (mut a, an) = named(addr, "ga").await;
    let (mut b, bn) = named(addr, "gb").await;
    let (mut d, dn) = named(addr, "gd").await;
    let r = a
        .ok(json!({"op": "group.create", "name": uname("Names")}))
        .await;
    let gid = r["group"]["id"].as_u64().unwrap();
    let copy = format!("sb:{{g:{gid}}}:names");
    let view = b.ok(json!({"op": "group.join", "group": gid})).await;
    let mut expected = BTreeMap::from([(a.id, an.clone()), (b.id, bn.clone())]);
    assert_eq!(names(&view["group"]), expected);
    assert_eq!(redis.cli(&["HLEN", &copy]).trim(), "2");

    // A group of the previous release has no copy: names come from the user hashes.
    redis.cli(&["DEL", &copy]);
    let list = a.ok(json!({"op": "group.list"})).await;
    assert_eq!(names(&list["groups"][0]), expected);
    // The next join fills the copy in for every member.
    let view = d.ok(json!({"op": "group.join", "group": gid})).await;
    expected.insert(d.id, dn.clone());
    assert_eq!(names(&view["group"]), expected);
    assert_eq!(redis.cli(&["HLEN", &copy]).trim(), "3");
    // A token login's reply reads the copy too.
    let mut again = Client::connect(addr).await;
    let r = again
        .ok(json!({"op": "login", "token": a.token.clone().unwrap()}))
        .await;
    assert_eq!(names(&r["groups"][0]), expected);

    // Leaves and deletions take the name out; the last leave deletes the copy.
    b.ok(json!({"op": "group.leave", "group": gid})).await;
    assert_eq!(
        redis.cli(&["HEXISTS", &copy, &b.id.to_string()]).trim(),
        "0"
    );
    d.ok(json!({"op": "account.delete", "password": PASSWORD}))
        .await;
    assert_eq!(
        redis.cli(&["HEXISTS", &copy, &d.id.to_string()]).trim(),
        "0"
    );
    assert_eq!(redis.cli(&["HLEN", &copy]).trim(), "1");
    a.ok(json!({"op": "group.leave", "group": gid})).await;
    assert_eq!(redis.cli(&["EXISTS", &copy]).trim(), "0");
}
