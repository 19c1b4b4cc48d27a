//! Password guessing and sign-up limits under concurrency: every attempt is reserved in one
//! atomic store step before the password is hashed or verified.

mod common;

use std::collections::HashMap;
use std::net::IpAddr;

use common::{Client, Cluster, PASSWORD, register, uname};
use serde_json::json;
use tokio::task::JoinSet;

/// Connections guessing at once.
const GUESSERS: usize = 60;

fn guessing(s: &mut switchboard::Settings) {
    s.login_failures_max = 10;
    s.login_failure_window_secs = 60;
    // Verification costs a little (and runs off the async threads), so guesses overlap.
    s.argon2_memory_kib = 256;
}

fn sign_up(s: &mut switchboard::Settings) {
    s.register_per_address_per_hour = 3;
}

/// Error codes (or "ok") of `reqs`, each sent on its own already-connected client at once.
async fn at_once(clients: Vec<Client>, reqs: Vec<serde_json::Value>) -> HashMap<String, usize> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients.len()));
    let mut set = JoinSet::new();
    for (mut c, req) in clients.into_iter().zip(reqs) {
        let barrier = barrier.clone();
        set.spawn(async move {
            barrier.wait().await;
            let r = c.req(req).await;
            if r["ok"] == true {
                "ok".to_string()
            } else {
                r["error"]["code"].as_str().unwrap().to_string()
            }
        });
    }
    let mut tally = HashMap::new();
    while let Some(code) = set.join_next().await {
        *tally.entry(code.unwrap()).or_default() += 1;
    }
    tally
}

async fn parallel_guesses_are_checked_at_most_max_times(c: Cluster) {
    let name = uname("pg");
    register(c.addr(0), &name).await;
    let mut clients = Vec::new();
    for i in 0..GUESSERS {
        clients.push(Client::connect(c.addr(i)).await);
    }
    let reqs = (0..GUESSERS)
        .map(|i| json!({"op": "login", "name": name, "password": format!("guess {i:04}")}))
        .collect();
    let tally = at_once(clients, reqs).await;
    eprintln!("{GUESSERS} parallel wrong-password logins: {tally:?}");
    let checked = tally.get("bad_credentials").copied().unwrap_or(0);
    let limited = tally.get("rate_limited").copied().unwrap_or(0);
    assert!(
        (1..=10).contains(&checked),
        "at most login_failures_max guesses may be verified: {tally:?}"
    );
    assert_eq!(checked + limited, GUESSERS, "{tally:?}");
    // The window is full: even the right password is refused now.
    let mut late = Client::connect(c.addr(1)).await;
    assert_eq!(
        late.err(json!({"op": "login", "name": name, "password": PASSWORD}))
            .await,
        "rate_limited"
    );
    if let Some(redis) = &c.redis {
        let key = format!("sb:loginfail:name:{}", name.to_ascii_lowercase());
        assert_eq!(redis.cli(&["ZCARD", &key]), checked.to_string());
    }
}

async fn a_correct_password_is_not_a_failure(c: Cluster) {
    let name = uname("ok");
    register(c.addr(0), &name).await;
    // Another address, so this test's failures do not count against the others'.
    let from: IpAddr = [127, 0, 0, 2].into();
    let mut a = Client::connect_from(c.addr(0), from).await;
    for _ in 0..2 {
        assert_eq!(
            a.err(json!({"op": "login", "name": name, "password": "wrong pass"}))
                .await,
            "bad_credentials"
        );
    }
    // Two failures of three: the right password still gets in, and is not counted.
    let mut b = Client::connect_from(c.addr(1), from).await;
    b.ok(json!({"op": "login", "name": name, "password": PASSWORD}))
        .await;
    if let Some(redis) = &c.redis {
        let key = format!("sb:loginfail:name:{}", name.to_ascii_lowercase());
        assert_eq!(redis.cli(&["ZCARD", &key]), "2");
        assert_eq!(redis.cli(&["ZCARD", "sb:loginfail:addr:127.0.0.2"]), "2");
    }
    // So one more wrong guess is verified (the third failure), and only then the limit holds.
    assert_eq!(
        a.err(json!({"op": "login", "name": name, "password": "wrong pass"}))
            .await,
        "bad_credentials"
    );
    let mut d = Client::connect_from(c.addr(0), from).await;
    assert_eq!(
        d.err(json!({"op": "login", "name": name, "password": PASSWORD}))
            .await,
        "rate_limited"
    );
}

async fn registrations_are_limited_per_address(c: Cluster) {
    let from: IpAddr = [127, 0, 0, 3].into();
    let taken = uname("rg");
    let mut a = Client::connect_from(c.addr(0), from).await;
    let reg = |name: &str| json!({"op": "register", "name": name, "password": PASSWORD});
    a.ok(reg(&taken)).await;
    // A refused registration (name taken, bad name) does not count.
    assert_eq!(a.err(reg(&taken)).await, "name_taken");
    assert_eq!(a.err(reg("no spaces")).await, "invalid_name");
    // A burst from one address: the two left of three get through, however it interleaves.
    let names: Vec<String> = (0..10).map(|_| uname("rg")).collect();
    let mut clients = Vec::new();
    for i in 0..names.len() {
        clients.push(Client::connect_from(c.addr(i), from).await);
    }
    let tally = at_once(clients, names.iter().map(|n| reg(n)).collect()).await;
    eprintln!("10 parallel registrations with 2 of 3 left: {tally:?}");
    assert_eq!(tally.get("ok"), Some(&2), "{tally:?}");
    assert_eq!(tally.get("rate_limited"), Some(&8), "{tally:?}");
    // Nothing is stored for the refused ones.
    let mut w = Client::connect(c.addr(1)).await;
    let mut found = 0;
    for n in &names {
        let r = w.req(json!({"op": "whois", "name": n})).await;
        if r["ok"] == true {
            found += 1;
        } else {
            assert_eq!(r["error"]["code"], "no_such_user", "{r}");
        }
    }
    assert_eq!(found, 2);
    if let Some(redis) = &c.redis {
        assert_eq!(redis.cli(&["HLEN", "sb:users:byname"]), "3");
        assert_eq!(redis.cli(&["ZCARD", "sb:register:addr:127.0.0.3"]), "3");
    }
    // Another address is not affected.
    let mut b = Client::connect_from(c.addr(1), [127, 0, 0, 4].into()).await;
    b.ok(reg(&uname("rg"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_memory() {
    parallel_guesses_are_checked_at_most_max_times(Cluster::memory_with(guessing).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_redis() {
    parallel_guesses_are_checked_at_most_max_times(Cluster::redis_with(2, guessing).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_password_memory() {
    a_correct_password_is_not_a_failure(Cluster::memory_with(|s| s.login_failures_max = 3).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correct_password_redis() {
    a_correct_password_is_not_a_failure(Cluster::redis_with(2, |s| s.login_failures_max = 3).await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_memory() {
    registrations_are_limited_per_address(Cluster::memory_with(sign_up).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_redis() {
    registrations_are_limited_per_address(Cluster::redis_with(2, sign_up).await).await;
}
