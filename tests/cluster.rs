//! Cross-node behaviour that needs Redis: durability across node restarts, dead nodes,
//! Redis outages. Nodes run in-process, or as real processes where a real signal is needed.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Cluster, Node, Proc, Redis, register, settings, uname, user};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_every_node_stopping() {
    let c = Cluster::redis(2).await;
    let mut a = user(c.addr(0), "da").await;
    let bname = uname("db");
    let bid = register(c.addr(1), &bname).await;
    let sent = a.ok(json!({"op": "send", "to": bid, "text": "kept"})).await;
    let Cluster { redis, nodes, .. } = c;
    let redis = redis.unwrap();
    for n in nodes {
        n.stop().await;
    }
    let fresh = Node::start(settings("fresh", Some(&redis))).await;
    let mut b = Client::connect(fresh.addr).await;
    b.login(&bname).await;
    let (msgs, unread) = b.backlog().await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["msg"]["id"], sent["msg"]["id"]);
    assert_eq!(unread, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_message_survives_sigkill_of_its_node() {
    let redis = Redis::start();
    let observer = Node::start(settings("obs", Some(&redis))).await;
    let victim = Proc::start(&redis, "victim", &[]);
    let mut a = Client::connect(victim.addr).await;
    let aname = uname("ka");
    register(victim.addr, &aname).await;
    a.login(&aname).await;
    let bname = uname("kb");
    let bid = register(observer.addr, &bname).await;
    let sent = a
        .ok(json!({"op": "send", "to": bid, "text": "before the crash"}))
        .await;
    victim.signal("-KILL");
    let mut b = Client::connect(observer.addr).await;
    b.login(&bname).await;
    let (msgs, _) = b.backlog().await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["msg"]["id"], sent["msg"]["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_killed_node_go_offline_within_two_ttls() {
    let redis = Redis::start();
    let ttl = 2;
    let mut s = settings("survivor", Some(&redis));
    s.presence_ttl_secs = ttl;
    let survivor = Node::start(s).await;
    let victim = Proc::start(&redis, "doomed", &[("SWITCHBOARD_PRESENCE_TTL_SECS", "2")]);
    let xname = uname("kx");
    let xid = register(victim.addr, &xname).await;
    let mut x = Client::connect(victim.addr).await;
    x.login(&xname).await;
    let mut y = user(survivor.addr, "ky").await;
    y.ok(json!({"op": "friend.add", "user": xid})).await;
    let who = y.ok(json!({"op": "whois", "id": xid})).await;
    assert_eq!(who["user"]["online"], true);
    // Let the victim beat at least once, then kill it without any chance to clean up.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let killed = Instant::now();
    victim.signal("-KILL");
    let ev = y.event("presence").await;
    let took = killed.elapsed();
    assert_eq!(
        ev["user"],
        json!({"id": xid, "name": xname, "online": false})
    );
    assert!(
        took <= Duration::from_secs(2 * ttl),
        "offline after {took:?}, limit {}s",
        2 * ttl
    );
    let who = y.ok(json!({"op": "whois", "id": xid})).await;
    assert_eq!(who["user"]["online"], false);
    // x can log in again elsewhere with its full session quota.
    let mut again = Client::connect(survivor.addr).await;
    again.login(&xname).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_goaway_and_exits() {
    let redis = Redis::start();
    let node = Proc::start(
        &redis,
        "drainer",
        &[("SWITCHBOARD_DRAIN_TIMEOUT_SECS", "2")],
    );
    let mut a = user(node.addr, "dr").await;
    let (status, _) = common::http_get(node.http, "/readyz").await;
    assert_eq!(status, 200);
    let started = Instant::now();
    node.signal("-TERM");
    let ev = a.event("goaway").await;
    assert_eq!(ev["reason"], "shutdown");
    let after = ev["reconnect_after_ms"].as_u64().unwrap();
    assert!(
        after <= 1000,
        "spread over the first half of the drain window: {after}"
    );
    let (status, _) = common::http_get(node.http, "/readyz").await;
    assert!(
        status == 503 || status == 0,
        "not ready while draining: {status}"
    );
    // The client stays connected; the node closes it when the drain time is up, then exits.
    assert!(a.closed().await);
    let mut node = node;
    let code = tokio::task::spawn_blocking(move || node.child.wait().unwrap())
        .await
        .unwrap();
    assert!(code.success(), "{code:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_answers_unavailable_then_recovers() {
    let mut c = Cluster::redis_with(2, |s| s.redis_timeout_ms = 500).await;
    let mut a = user(c.addr(0), "oa").await;
    let mut b = user(c.addr(1), "ob").await;
    c.redis.as_mut().unwrap().stop();
    // Connected sessions stay connected; Redis-free requests still work.
    a.ok(json!({"op": "ping"})).await;
    let started = Instant::now();
    let code = a
        .err(json!({"op": "send", "to": b.id, "text": "lost?", "client_id": "o1"}))
        .await;
    assert_eq!(code, "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let mut not_ready = false;
    for _ in 0..100 {
        if c.nodes[0].get("/readyz").await.0 == 503 {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(not_ready, "/readyz must turn 503 while Redis is down");
    c.redis.as_mut().unwrap().restart();
    let mut ready = false;
    for _ in 0..200 {
        if c.nodes[0].get("/readyz").await.0 == 200 && c.nodes[1].get("/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz must return to 200 when Redis is back");
    // The retried send (same client_id) is stored once and delivered live across nodes.
    let r = a
        .ok(json!({"op": "send", "to": b.id, "text": "lost?", "client_id": "o1"}))
        .await;
    let ev = b.event("message").await;
    assert_eq!(ev["msg"]["id"], r["msg"]["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints() {
    let c = Cluster::redis(1).await;
    let n = &c.nodes[0];
    assert_eq!(n.get("/livez").await.0, 200);
    assert_eq!(n.get("/readyz").await.0, 200);
    assert_eq!(n.get("/nope").await.0, 404);
    let _a = user(n.addr, "m").await;
    let (status, body) = n.get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(common::metric(&body, "switchboard_sessions"), 1.0);
    assert_eq!(
        common::metric(&body, "switchboard_pubsub_subscriptions"),
        1.0
    );
    assert!(common::metric(&body, "switchboard_connections_accepted_total") >= 2.0);
    assert!(body.contains("switchboard_build_info{"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_documented_match_metrics_served() {
    let c = Cluster::redis(1).await;
    let (_, body) = c.nodes[0].get("/metrics").await;
    let served: std::collections::BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
        .unwrap();
    // The node's own families and the process collector's, each a table row.
    let documented: std::collections::BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter(|l| l.starts_with("switchboard_") || l.starts_with("process_"))
        .map(|l| l.split('`').next().unwrap().to_string())
        .collect();
    assert_eq!(served, documented);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_waits_for_redis_at_start_up() {
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut s = settings("early", None);
    s.redis_url = Some(url);
    let server = switchboard::Server::bind(s).await.unwrap();
    let addr = server.chat_addr();
    let http_port = server.http_addr().port();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !task.is_finished(),
        "the node must wait for Redis, not exit"
    );
    // Alive but not ready while it waits (a liveness probe must not restart it).
    let http = ([127, 0, 0, 1], http_port).into();
    assert_eq!(common::http_get(http, "/livez").await.0, 200);
    assert_eq!(
        common::http_get(http, "/readyz").await,
        (503, "starting\n".to_string())
    );
    let _redis = tokio::task::spawn_blocking(move || Redis::start_on(port, None))
        .await
        .unwrap();
    // Once Redis is there the node serves (the listener was bound all along).
    let mut ok = false;
    for _ in 0..100 {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), async {
            let mut c = Client::connect(addr).await;
            c.ok(json!({"op": "register", "name": uname("late"), "password": common::PASSWORD}))
                .await;
            anyhow::Ok(())
        })
        .await
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "node never served after Redis came up");
    assert_eq!(common::http_get(http, "/readyz").await.0, 200);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_do_not_reap_each_other_after_a_redis_outage() {
    let mut c = Cluster::redis_with(2, |s| {
        s.presence_ttl_secs = 2;
        s.redis_timeout_ms = 300;
    })
    .await;
    let mut x = user(c.addr(0), "rx").await;
    let mut y = user(c.addr(1), "ry").await;
    y.ok(json!({"op": "friend.add", "user": x.id})).await;
    x.event("friend_added").await;
    // Redis is away for 2.5 presence TTLs, then comes back with its data.
    c.redis.as_mut().unwrap().stop();
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.redis.as_mut().unwrap().restart();
    // Both nodes were alive all along: nobody is announced offline, and both stay online.
    y.no_event("presence", Duration::from_secs(5)).await;
    x.no_event("presence", Duration::from_millis(10)).await;
    let who = y.ok(json!({"op": "whois", "id": x.id})).await;
    assert_eq!(who["user"]["online"], true, "{who}");
    let who = x.ok(json!({"op": "whois", "id": y.id})).await;
    assert_eq!(who["user"]["online"], true, "{who}");
}
