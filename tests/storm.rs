//! Many sessions ending at once (a drain, a mass disconnect): their removals are committed in
//! batches, every user goes offline in the store, and every friend hears of it.

mod common;

use std::time::Duration;

use common::{Client, Cluster, Node, Proc, Redis, WAIT, metric, settings, user};
use serde_json::json;

/// Sessions that end at the same moment.
const USERS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mass_disconnect_is_removed_in_batches_and_announced() {
    let c = Cluster::redis(2).await;
    let redis = c.redis.as_ref().unwrap();
    let mut watcher = user(c.addr(1), "watch").await;
    let mut clients: Vec<Client> = Vec::new();
    for _ in 0..USERS {
        let mut u = user(c.addr(0), "storm").await;
        u.ok(json!({"op": "friend.add", "user": watcher.id})).await;
        clients.push(u);
    }
    let ids: std::collections::HashSet<u64> = clients.iter().map(|c| c.id).collect();
    // Everything so far (friend_added events) is out of the way.
    while watcher
        .frame_within(Duration::from_millis(300))
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    let node = &c.nodes[0];
    let sessions_key = format!("sb:{{n:{}}}:sessions", node.name);
    assert_eq!(
        redis.cli(&["SCARD", &sessions_key]).trim(),
        USERS.to_string()
    );

    drop(clients);

    // Every one of them is announced offline to the friend on the other node.
    let mut offline = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while offline.len() < USERS {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = watcher
            .frame_within(left)
            .await
            .unwrap_or_else(|_| panic!("{} of {USERS} announced offline", offline.len()))
            .expect("watcher connection open");
        if f["event"] == "presence" && f["user"]["online"] == false {
            let id = f["user"]["id"].as_u64().unwrap();
            assert!(ids.contains(&id), "presence of a stranger {f}");
            offline.insert(id);
        }
    }
    assert_eq!(redis.cli(&["SCARD", &sessions_key]).trim(), "0");
    let (_, body) = node.get("/metrics").await;
    let removed = metric(&body, "switchboard_session_close_batch_size_sum");
    let batches = metric(&body, "switchboard_session_close_batch_size_count");
    assert_eq!(removed, USERS as f64, "every session removed once");
    assert!(
        batches < removed,
        "{batches} batches for {removed} sessions: none was batched"
    );
    let mut w = Client::connect(c.addr(1)).await;
    for id in ids.iter().take(5) {
        let r = w.ok(json!({"op": "whois", "id": id})).await;
        assert_eq!(r["user"]["online"], false);
    }
}

/// `login_concurrency` bounds the logins whose store work runs at once: with one slot and
/// Redis paused, the first login holds the slot and the others wait for it (counted in
/// `switchboard_logins_waiting`); when Redis answers again every login succeeds, in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_take_turns_for_the_login_slots() {
    const LOGINS: usize = 4;
    let c = Cluster::redis_with(1, |s| s.login_concurrency = 1).await;
    let redis = c.redis.as_ref().unwrap();
    let mut tokens = Vec::new();
    for _ in 0..LOGINS {
        let u = user(c.addr(0), "turns").await;
        tokens.push(u.token.clone().expect("a password login returns a token"));
    }
    let mut waiting = Vec::new();
    for _ in 0..LOGINS {
        waiting.push(Client::connect(c.addr(0)).await);
    }
    // Every Redis command of every client stalls for 2 s.
    redis.cli(&["CLIENT", "PAUSE", "2000", "ALL"]);
    for (client, token) in waiting.iter_mut().zip(&tokens) {
        client.send(json!({"op": "login", "token": token})).await;
    }
    let node = &c.nodes[0];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut most = 0.0f64;
    while tokio::time::Instant::now() < deadline && most < (LOGINS - 1) as f64 {
        let (_, body) = node.get("/metrics").await;
        most = most.max(metric(&body, "switchboard_logins_waiting"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        most,
        (LOGINS - 1) as f64,
        "one login in its slot, the others waiting"
    );
    for client in &mut waiting {
        let r = client.reply().await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let (_, body) = node.get("/metrics").await;
    assert_eq!(metric(&body, "switchboard_logins_waiting"), 0.0);
}

/// The chat listener's accept queue is `accept_backlog` long (Linux shows a listening
/// socket's queue length as its Send-Q), not the 128 of `TcpListener::bind`: a drained node's
/// clients arriving at once are queued, not dropped into SYN retransmits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_listener_has_the_configured_accept_backlog() {
    let c = Cluster::memory_with(|s| s.accept_backlog = 777).await;
    let port = c.addr(0).port();
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) is installed by scripts/test.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    // State Recv-Q Send-Q Local Peer
    let send_q: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(send_q, ["777"], "ss said {text:?}");
}

/// A drained node's client that is back on another node within seconds causes no presence
/// flap: its session is handed over, not removed, and its next login ends it silently (it
/// does not count against `max_sessions_per_user` either). A client that does not come back
/// is announced offline by the dead-node reaper, within 2 × TTL of the node's exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drained_clients_that_come_back_cause_no_presence_flap() {
    let redis = Redis::start();
    let ttl = 2;
    let mut s = settings("stays", Some(&redis));
    s.presence_ttl_secs = ttl;
    s.max_sessions_per_user = 1;
    let survivor = Node::start(s).await;
    let mut drained = Proc::start(
        &redis,
        "leaves",
        &[
            ("SWITCHBOARD_PRESENCE_TTL_SECS", "2"),
            ("SWITCHBOARD_DRAIN_TIMEOUT_SECS", "2"),
            ("SWITCHBOARD_MAX_SESSIONS_PER_USER", "1"),
        ],
    );
    let mut back = user(drained.addr, "back").await;
    let mut gone = user(drained.addr, "gone").await;
    let mut watcher = user(survivor.addr, "watch").await;
    for id in [back.id, gone.id] {
        watcher.ok(json!({"op": "friend.add", "user": id})).await;
    }
    // A beat of the drained node first, so that it is reaped as a dead node once it is gone.
    tokio::time::sleep(Duration::from_millis(800)).await;
    drained.signal("-TERM");
    for c in [&mut back, &mut gone] {
        assert_eq!(c.event("goaway").await["reason"], "shutdown");
    }
    let (back_id, gone_id) = (back.id, gone.id);
    let token = back.token.clone().unwrap();
    drop(back);
    drop(gone);
    let mut again = Client::connect(survivor.addr).await;
    let r = again.req(json!({"op": "login", "token": token})).await;
    assert_eq!(r["ok"], true, "the handed-over session does not count: {r}");
    let exited = {
        let code = tokio::task::spawn_blocking(move || drained.child.wait().unwrap())
            .await
            .unwrap();
        assert!(code.success(), "{code:?}");
        tokio::time::Instant::now()
    };
    // The one that did not come back goes offline; nothing at all is heard of the other.
    loop {
        let ev = watcher.event("presence").await;
        assert_ne!(
            ev["user"]["id"], back_id,
            "a flap of a client that came back: {ev}"
        );
        if ev["user"]["id"] == gone_id {
            assert_eq!(ev["user"]["online"], false);
            break;
        }
    }
    let took = exited.elapsed();
    assert!(
        took <= Duration::from_secs(2 * ttl),
        "offline {took:?} after the exit"
    );
    watcher.no_event("presence", Duration::from_secs(ttl)).await;
    let who = watcher.ok(json!({"op": "whois", "id": back_id})).await;
    assert_eq!(who["user"]["online"], true);
    let sessions = redis.cli(&["HLEN", &format!("sb:{{u:{back_id}}}:sessions")]);
    assert_eq!(sessions.trim(), "1", "the handed-over record is gone");
}

/// `drain_handover` on both Redis backends: a client of a draining node that logs in again on
/// the other node by token causes no presence event at its friend and stays online throughout;
/// its logout later is announced as usual.
async fn handover_without_flap(c: Cluster) {
    let mut back = user(c.addr(0), "hb").await;
    let mut watcher = user(c.addr(1), "hw").await;
    watcher
        .ok(json!({"op": "friend.add", "user": back.id}))
        .await;
    back.event("friend_added").await;
    c.nodes[0].begin_stop();
    assert_eq!(back.event("goaway").await["reason"], "shutdown");
    let token = back.token.clone().unwrap();
    let id = back.id;
    drop(back);
    // Online throughout, until the drained node has ended (the session handed over).
    while c.nodes[0].running() {
        let who = watcher.ok(json!({"op": "whois", "id": id})).await;
        assert_eq!(who["user"]["online"], true, "offline while on its way back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut again = Client::connect(c.addr(1)).await;
    let r = again.req(json!({"op": "login", "token": token})).await;
    assert_eq!(r["ok"], true, "{r}");
    // Nothing, also once the other node has reaped the drained one (2 × TTL).
    watcher.no_event("presence", Duration::from_secs(4)).await;
    let who = watcher.ok(json!({"op": "whois", "id": id})).await;
    assert_eq!(who["user"]["online"], true);
    again.ok(json!({"op": "logout"})).await;
    let ev = watcher.event("presence").await;
    assert_eq!(
        ev["user"],
        json!({"id": id, "name": ev["user"]["name"], "online": false})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handover_without_flap_on_redis() {
    handover_without_flap(Cluster::redis(2).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handover_without_flap_on_redis_cluster() {
    handover_without_flap(Cluster::redis_cluster(2).await).await;
}
