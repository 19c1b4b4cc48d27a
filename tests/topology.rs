//! The cluster topology for real on loopback: redis-server (AOF), N node processes, and nginx
//! (stream) running the configuration the Helm chart renders, with static loopback upstreams
//! because Debian's nginx lacks `resolve`. Load comes from `switchboard bench` through nginx;
//! each scenario must end with zero acknowledged messages lost and every client logged in.
//!
//! The scenarios share the machine's two cores, so they run one at a time.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{ChildGuard, Proc, Redis, free_port, http_get, metric, stop_tree};
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Drain window of the nodes under test.
const DRAIN_SECS: &str = "3";

struct Topology {
    redis: Redis,
    dir: PathBuf,
    /// (chat port, http port, process) per node slot; `None` while a slot is down.
    nodes: Vec<(u16, u16, Option<Proc>)>,
    /// Slots nginx sends new connections to.
    upstream: Vec<usize>,
    lb_port: u16,
    /// `login_failures_max` of the nodes: high, as bench clients all log in from 127.0.0.1
    /// at once; low where a test checks the per-address limit.
    failures_max: &'static str,
    /// The nginx master (its workers are its children); `None` until started.
    nginx: Option<Child>,
    /// `SWITCHBOARD_REBALANCE` of the nodes: off except where rebalancing is under test (the
    /// other scenarios count reconnects and logins that moved clients would add to).
    rebalance: &'static str,
}

impl Topology {
    fn start(n: usize) -> Topology {
        Self::start_with(n, "1000")
    }

    fn start_with(n: usize, failures_max: &'static str) -> Topology {
        Self::start_full(n, n, failures_max, "false")
    }

    /// `n` node slots behind nginx of which the first `running` are started: the others are
    /// pods to come, which nginx finds without a reload (as it does by DNS in a cluster) once
    /// their failure window (`fail_timeout`, 10 s) has passed.
    fn start_full(
        n: usize,
        running: usize,
        failures_max: &'static str,
        rebalance: &'static str,
    ) -> Topology {
        let redis = Redis::start();
        let dir =
            std::env::temp_dir().join(format!("sb-topo-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        for i in 0..n {
            let (port, http) = (free_port(), free_port());
            let p =
                (i < running).then(|| start_node(&redis, i, port, http, failures_max, rebalance));
            nodes.push((port, http, p));
        }
        let lb_port = free_port();
        let mut t = Topology {
            redis,
            dir,
            nodes,
            upstream: (0..n).collect(),
            lb_port,
            failures_max,
            nginx: None,
            rebalance,
        };
        t.render_nginx();
        let conf = t.dir.join("nginx.conf");
        let out = Command::new("nginx")
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .output()
            .expect("nginx installed");
        assert!(
            out.status.success(),
            "nginx -t: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.nginx = Some(
            Command::new("nginx")
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_port(lb_port);
        t
    }

    /// Renders nginx.conf from the chart with the current upstream slots.
    fn render_nginx(&self) {
        let servers: Vec<String> = self
            .upstream
            .iter()
            .map(|&i| format!("127.0.0.1:{}", self.nodes[i].0))
            .collect();
        let out = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/render-nginx.sh"
            ))
            .args(["--static", &servers.join(",")])
            .args([
                "--load-module",
                "/usr/lib/nginx/modules/ngx_stream_module.so",
            ])
            .args(["--listen", &format!("127.0.0.1:{}", self.lb_port)])
            .arg("--pid")
            .arg(self.dir.join("nginx.pid"))
            .arg("--error-log")
            .arg(format!("{} notice", self.dir.join("error.log").display()))
            .args(["--access-log", "off"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "render-nginx: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(self.dir.join("nginx.conf"), out.stdout).unwrap();
    }

    /// Re-renders the config and reloads nginx (what a Deployment change does in a cluster).
    fn reload_nginx(&self) {
        self.render_nginx();
        let st = Command::new("nginx")
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .args(["-s", "reload"])
            .status()
            .unwrap();
        assert!(st.success());
        std::thread::sleep(Duration::from_millis(300));
    }

    fn lb(&self) -> String {
        format!("127.0.0.1:{}", self.lb_port)
    }

    /// Adds a node slot and puts it behind nginx.
    fn scale_up(&mut self) -> usize {
        let (port, http) = (free_port(), free_port());
        let i = self.nodes.len();
        let p = start_node(
            &self.redis,
            i,
            port,
            http,
            self.failures_max,
            self.rebalance,
        );
        self.nodes.push((port, http, Some(p)));
        self.upstream.push(i);
        self.reload_nginx();
        i
    }

    /// Takes a slot out of nginx, then drains it (SIGTERM) and waits for it to exit.
    fn scale_down(&mut self, i: usize) {
        self.upstream.retain(|&u| u != i);
        self.reload_nginx();
        self.stop(i);
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    fn stop(&mut self, i: usize) {
        let mut p = self.nodes[i].2.take().expect("node running");
        p.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                assert!(status.success(), "node {i} exited with {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self, i: usize) {
        let mut p = self.nodes[i].2.take().expect("node running");
        p.signal("-KILL");
        let _ = p.child.wait();
    }

    /// Starts slot `i` again on its ports (a restarted pod behind the same Service).
    fn restart(&mut self, i: usize) {
        let (port, http, _) = self.nodes[i];
        self.nodes[i].2 = Some(start_node(
            &self.redis,
            i,
            port,
            http,
            self.failures_max,
            self.rebalance,
        ));
    }

    fn http_port(&self, i: usize) -> u16 {
        self.nodes[i].1
    }

    /// Starts `switchboard bench chat` through nginx; returns the process (JSON on stdout),
    /// killed if the test fails before [`finish`] waits for it.
    fn bench(&self, clients: usize, seconds: f64, rate: f64) -> ChildGuard {
        self.bench_with(clients, seconds, rate, &[])
    }

    /// [`Topology::bench`] with extra `switchboard bench` arguments.
    fn bench_with(&self, clients: usize, seconds: f64, rate: f64, extra: &[String]) -> ChildGuard {
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["bench", "chat", "--json", "--quiet", "--addr", &self.lb()])
            .args(extra)
            .env("SWITCHBOARD_BENCH_DEBUG", "1")
            .args([
                "-c",
                &clients.to_string(),
                "-d",
                &seconds.to_string(),
                "--rate",
                &rate.to_string(),
            ])
            .args(["--settle", "20"])
            .arg("--users-file")
            .arg(self.dir.join("users.jsonl"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        ChildGuard::new(child)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown: the master stops its workers (also those still
        // finishing connections after a reload) and waits for them. A SIGKILLed master
        // leaves its workers running, listening on the load balancer port.
        if let Some(nginx) = self.nginx.as_mut() {
            stop_tree(nginx, "-TERM", Duration::from_secs(10));
        }
        // Node processes and Redis stop in their own Drop (fields drop after this).
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_node(
    redis: &Redis,
    i: usize,
    port: u16,
    http: u16,
    failures_max: &str,
    rebalance: &str,
) -> Proc {
    let p = Proc::start_on(
        redis,
        &format!("node{i}-{port}"),
        port,
        http,
        &[
            ("SWITCHBOARD_DRAIN_TIMEOUT_SECS", DRAIN_SECS),
            ("SWITCHBOARD_PRESENCE_TTL_SECS", "3"),
            ("SWITCHBOARD_REDIS_TIMEOUT_MS", "1000"),
            ("SWITCHBOARD_LOG", "warn"),
            // As the chart sets it: nginx sends PROXY headers, believed from nginx only.
            ("SWITCHBOARD_PROXY_PROTOCOL", "true"),
            ("SWITCHBOARD_PROXY_TRUSTED_CIDRS", "127.0.0.0/8"),
            // Every simulated client shares 127.0.0.1, and reconnect waves after a drain
            // are hundreds of connections at once.
            ("SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS", "100000"),
            ("SWITCHBOARD_LOGIN_FAILURES_MAX", failures_max),
            ("SWITCHBOARD_REBALANCE", rebalance),
        ],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..300 {
            if http_get(p.http, "/readyz").await.0 == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("node {i} never became ready");
    });
    p
}

fn wait_port(port: u16) {
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("port {port} never opened");
}

/// Waits for the bench and checks the loss accounting.
fn finish(bench: ChildGuard, clients: usize) -> Value {
    let out = bench.take().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{report}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        report["acknowledged"].as_u64().unwrap() > 0,
        "nothing was sent: {report}"
    );
    assert_eq!(report["lost"], 0, "acknowledged messages lost: {report}");
    assert_eq!(
        report["duplicated"], 0,
        "duplicates within a session: {report}"
    );
    assert_eq!(
        report["logged_in_at_end"], clients,
        "every client logged in again: {report}"
    );
    report
}

/// One series of node `i`'s /metrics, read from blocking code.
fn node_metric(t: &Topology, i: usize, series: &str) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_, body) = rt.block_on(http_get(
        ([127, 0, 0, 1], t.http_port(i)).into(),
        "/metrics",
    ));
    metric(&body, series)
}

fn open_connections(t: &Topology, i: usize) -> f64 {
    node_metric(t, i, "switchboard_connections_open")
}

#[test]
fn chat_across_nodes_through_nginx() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::start(2);
    // The bench also reports the CPU the nodes and Redis spent per delivered message: the
    // node pids given one per flag, Redis by `--redis-pids`.
    let node_pids: Vec<u32> = t
        .nodes
        .iter()
        .map(|n| n.2.as_ref().unwrap().child.id())
        .collect();
    let mut extra = Vec::new();
    for pid in &node_pids {
        extra.extend(["--pids".to_string(), pid.to_string()]);
    }
    extra.extend(["--redis-pids".to_string(), t.redis.pid().to_string()]);
    let bench = t.bench_with(200, 6.0, 2000.0, &extra);
    // least_conn spreads the clients over both nodes (polled: on a loaded machine the 200
    // clients take a while to connect).
    let mut counts = (0.0, 0.0);
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        counts = (open_connections(&t, 0), open_connections(&t, 1));
        if counts.0 + counts.1 >= 200.0 {
            break;
        }
    }
    let (a, b) = counts;
    assert!(a >= 50.0 && b >= 50.0, "connections per node: {a} / {b}");
    let r = finish(bench, 200);
    assert_eq!(r["reconnects"], 0);
    let cpu = &r["cpu"];
    assert_eq!(cpu["window_seconds"], r["seconds"], "{cpu}");
    // The CPU window ends when sending stops: deliveries during the settle time after it are
    // not in it, so at most all of them are.
    let in_window = cpu["messages"].as_u64().unwrap();
    assert!(
        in_window > 0 && in_window <= r["delivered"].as_u64().unwrap(),
        "{cpu}"
    );
    // Each node and Redis did work for the ~12,000 messages: some CPU, but below the window
    // times this machine's cores (a unit error, e.g. ticks taken for seconds, would not be).
    let cores = std::thread::available_parallelism().map_or(64, |n| n.get()) as f64;
    let positive = |v: &Value, what: &str| {
        let us = v["us_per_message"].as_f64().unwrap_or(0.0);
        let secs = v["cpu_seconds"].as_f64().unwrap_or(0.0);
        assert!(us > 0.0 && secs > 0.0, "{what}: no CPU per message: {cpu}");
        assert!(v["cores"].as_f64().unwrap() <= cores, "{what}: {cpu}");
    };
    let nodes = cpu["nodes"].as_array().expect("per node figures");
    assert_eq!(nodes.len(), 2, "{cpu}");
    for (n, pid) in nodes.iter().zip(&node_pids) {
        assert_eq!(n["pid"], *pid, "{cpu}");
        positive(n, "node");
    }
    assert_eq!(cpu["redis"][0]["pid"], t.redis.pid(), "{cpu}");
    positive(&cpu["redis"][0], "redis");
    positive(&cpu["total"], "total");
    let sum = cpu["nodes_total"]["cpu_seconds"].as_f64().unwrap()
        + cpu["redis_total"]["cpu_seconds"].as_f64().unwrap();
    assert!(
        (cpu["total"]["cpu_seconds"].as_f64().unwrap() - sum).abs() < 1e-9,
        "{cpu}"
    );
}

#[test]
fn scale_up_then_down_under_load() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topology::start(2);
    let bench = t.bench(100, 10.0, 1000.0);
    std::thread::sleep(Duration::from_secs(3));
    let fresh = t.scale_up();
    // New connections reach the new node (it has the fewest).
    let extra: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(t.lb()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // After a reload nginx balances the new connections over all three servers.
    let taken = open_connections(&t, fresh);
    assert!(
        taken >= 5.0,
        "the new node takes new connections ({taken} of 20)"
    );
    drop(extra);
    // Scale down: node 0 leaves nginx and drains; its clients move on through nginx.
    t.scale_down(0);
    let r = finish(bench, 100);
    assert!(r["reconnects"].as_u64().unwrap() >= 1, "{r}");
}

#[test]
fn rolling_restart_under_load() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topology::start(3);
    let bench = t.bench(150, 14.0, 1500.0);
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..3 {
        t.stop(i);
        t.restart(i);
        std::thread::sleep(Duration::from_millis(500));
    }
    let r = finish(bench, 150);
    assert!(
        r["reconnects"].as_u64().unwrap() >= 100,
        "every node's clients reconnected: {r}"
    );
}

#[test]
fn kill_9_of_a_node_under_load() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topology::start(2);
    let bench = t.bench(100, 8.0, 1000.0);
    std::thread::sleep(Duration::from_secs(3));
    t.kill(0);
    std::thread::sleep(Duration::from_secs(1));
    t.restart(0);
    let r = finish(bench, 100);
    assert!(r["reconnects"].as_u64().unwrap() >= 1, "{r}");
}

#[test]
fn redis_restart_with_aof_under_load() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut t = Topology::start(2);
    let bench = t.bench(100, 8.0, 1000.0);
    std::thread::sleep(Duration::from_secs(3));
    t.redis.restart();
    let r = finish(bench, 100);
    // Sends during the outage were refused (`unavailable`), never acknowledged and lost.
    eprintln!("errors during the Redis restart: {}", r["errors"]);
}

#[test]
fn client_addresses_reach_the_nodes_through_nginx() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t = Topology::start_with(2, "10");
    let lb: std::net::SocketAddr = t.lb().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use common::Client;
        use serde_json::json;
        let bad_login = |from: [u8; 4], n: usize| async move {
            let mut c = Client::connect_from(lb, from.into()).await;
            let r = c
                .req(json!({"op": "login", "name": format!("nobody{n}"), "password": "wrong pass"}))
                .await;
            r["error"]["code"].as_str().unwrap().to_string()
        };
        // The failed-login limit counts the client's address, not nginx's: ten failures
        // from 127.0.0.5 block that address only.
        for n in 0..10 {
            assert_eq!(bad_login([127, 0, 0, 5], n).await, "bad_credentials");
        }
        assert_eq!(bad_login([127, 0, 0, 5], 10).await, "rate_limited");
        assert_eq!(bad_login([127, 0, 0, 6], 11).await, "bad_credentials");
        // A node refuses a connection that bypasses nginx (no PROXY header).
        let direct: std::net::SocketAddr = ([127, 0, 0, 1], t.nodes[0].0).into();
        let mut c = Client::connect_raw_from(direct, [127, 0, 0, 1].into()).await;
        c.raw(b"{\"op\":\"ping\"}\n").await;
        assert!(c.closed().await);
        assert!(c.pending().is_empty(), "served without a PROXY header");
    });
}

/// `goaway` events a node sent to rebalance.
fn rebalance_goaways(t: &Topology, i: usize) -> f64 {
    node_metric(t, i, "switchboard_goaway_sent_total{reason=\"rebalance\"}")
}

/// Clients of [`rebalance_after_scale_up`]: 120 in CI; `SB_REBALANCE_CLIENTS=400` for the
/// full run recorded in docs/benchmarks.md.
fn rebalance_clients() -> usize {
    std::env::var("SB_REBALANCE_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120)
}

#[test]
fn rebalance_after_scale_up() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let clients = rebalance_clients();
    // Four slots in nginx, two running: scaling up starts the other two without reloading
    // nginx. A reload would not do: the new worker's least_conn knows nothing of the old
    // worker's connections and sends moved clients back to the old nodes, and the old
    // worker closes every connection after workerShutdownTimeoutSeconds, which rebalances
    // by itself. In a cluster nginx finds new pods by DNS, without a reload.
    let mut t = Topology::start_full(4, 2, "1000", "true");
    // Sends all along: clients move while messages are in flight to and from them.
    let seconds = 40.0 + clients as f64 / 20.0;
    let bench = t.bench(clients, seconds, clients as f64 * 2.0);
    let total = |t: &Topology, n: usize| (0..n).map(|i| open_connections(t, i)).sum::<f64>();
    let deadline = Instant::now() + Duration::from_secs(30);
    while total(&t, 2) < clients as f64 {
        assert!(
            Instant::now() < deadline,
            "the bench clients never all connected"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before: Vec<f64> = (0..2).map(|i| open_connections(&t, i)).collect();
    t.restart(2);
    t.restart(3);
    let scaled = Instant::now();
    // Every node within ±25 % of the mean, within 60 s (default rate: 5 clients/s a node).
    let (counts, took) = loop {
        let counts: Vec<f64> = (0..4).map(|i| open_connections(&t, i)).collect();
        let mean = counts.iter().sum::<f64>() / 4.0;
        if mean > 0.0 && counts.iter().all(|c| (c - mean).abs() <= 0.25 * mean) {
            break (counts, scaled.elapsed());
        }
        assert!(
            scaled.elapsed() < Duration::from_secs(60),
            "not balanced 60 s after scale-up: {counts:?} (before: {before:?})"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let moved: f64 = (0..4).map(|i| rebalance_goaways(&t, i)).sum();
    let r = finish(bench, clients);
    let reconnects = r["reconnects"].as_u64().unwrap();
    eprintln!(
        "rebalance: {clients} clients, before {before:?}, balanced {counts:?} after {:.1} s; \
         {moved} rebalance goaways, {reconnects} reconnects ({:.1}/s over the move)",
        took.as_secs_f64(),
        reconnects as f64 / took.as_secs_f64().max(1.0)
    );
    // Rebalancing did it, and without a storm: never faster than rebalance_rate_per_sec
    // (default 5) on each of the two old nodes, and about the excess (half the clients)
    // moved, some twice while nginx did not know the new nodes yet.
    assert!(moved > 0.0, "no rebalance goaway: {r}");
    assert!(
        moved <= 2.0 * 5.0 * (took.as_secs_f64() + 2.0) && moved <= clients as f64,
        "{moved} rebalance goaways for {clients} clients in {took:?}: {r}"
    );
}
