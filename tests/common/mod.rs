//! Shared test harness: a real redis-server per test, in-process nodes on free loopback ports,
//! and a line-JSON client with bounded waits (over the library's client). Nothing here stands
//! in for the code under test.
#![allow(dead_code)]

pub mod redis_cluster;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use switchboard::client::{Client as LibClient, ClientError, Options};
use switchboard::{Server, Settings};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest wait for any expected frame.
pub const WAIT: Duration = Duration::from_secs(10);
/// Default password of test users.
pub const PASSWORD: &str = "correct horse";

/// A free TCP port on 127.0.0.1 (bound and released; the caller binds it right away).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `redis-server` on a free port, killed on drop.
pub struct Redis {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    /// Starts redis-server; panics (never skips) when it is not installed.
    pub fn start() -> Redis {
        Self::start_on(free_port(), None)
    }

    /// Starts redis-server on `port`, with AOF in `dir` when given.
    pub fn start_on(port: u16, dir: Option<std::path::PathBuf>) -> Redis {
        let dir = dir.unwrap_or_else(|| {
            let d = std::env::temp_dir().join(format!("sb-redis-{port}-{}", std::process::id()));
            std::fs::create_dir_all(&d).unwrap();
            d
        });
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        let r = Redis { child, port, dir };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return r;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {port}");
    }

    /// The URL nodes use.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Process id of the redis-server (for `switchboard bench --redis-pids`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server (SIGKILL, and any AOF rewrite child it forked) and waits for it.
    pub fn stop(&mut self) {
        stop_tree(&mut self.child, "-KILL", Duration::ZERO);
    }

    /// Restarts on the same port and data directory (AOF keeps the data).
    pub fn restart(&mut self) {
        self.stop();
        let fresh = Redis::start_on(self.port, Some(self.dir.clone()));
        let old = std::mem::replace(self, fresh);
        std::mem::forget(old);
    }

    /// Runs a redis-cli command and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Settings for a test node: loopback, free ports, cheap password hashing.
pub fn settings(name: &str, redis: Option<&Redis>) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        node_name: name.to_string(),
        redis_url: redis.map(|r| r.url()),
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        presence_ttl_secs: 2,
        drain_timeout_secs: 2,
        // Every test client comes from 127.0.0.1: one address registering many users, and
        // logging many in at once (a login in progress holds one of the address's
        // `login_failures_max` slots). Tests of these limits set them low again.
        register_per_address_per_hour: 1_000_000,
        login_failures_max: 1000,
        // Tests put their clients on nodes deliberately (often all on one) and treat a
        // `goaway` as a drain; rebalancing is tested on its own (tests/topology.rs).
        rebalance: false,
        ..Settings::default()
    }
}

/// An in-process node.
pub struct Node {
    pub addr: SocketAddr,
    pub http: SocketAddr,
    pub name: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Node {
    /// Binds and starts a node with `settings`.
    pub async fn start(settings: Settings) -> Node {
        let name = settings.node_name.clone();
        let server = Server::bind(settings).await.expect("bind");
        let addr = server.chat_addr();
        let http = server.http_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        let node = Node {
            addr,
            http,
            name,
            shutdown,
            task: Some(task),
        };
        // Ready when /readyz says so (the Redis canary has gone round once).
        for _ in 0..500 {
            if node.get("/readyz").await.0 == 200 {
                return node;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("node {} never became ready", node.name);
    }

    /// Drains the node (as on SIGTERM) and waits until it has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("node stops within its drain timeout")
                .unwrap()
                .unwrap();
        }
    }

    /// True while the node's task has not ended (it has neither returned nor panicked).
    pub fn running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Begins draining without waiting.
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    /// An HTTP GET on the node's HTTP port: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path).await
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A minimal HTTP/1.1 GET over a raw socket.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(Ok(mut s)) = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ =
        tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf)).await;
    http_response(&buf)
}

/// (status, body) of a whole HTTP response read to its end (status 0 when there is none).
pub fn http_response(buf: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of an unlabelled (or fully labelled) series in a /metrics body.
pub fn metric(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A protocol client with bounded waits; events that arrive while waiting for a reply are kept.
///
/// A thin layer over the library's [`switchboard::client::Client`] (framing, reading) that
/// speaks `serde_json::Value`s, so tests can write any request (also broken ones) and compare
/// whole frames.
pub struct Client {
    inner: LibClient,
    events: VecDeque<Value>,
    pub hello: Value,
    pub token: Option<String>,
    pub id: u64,
}

impl Client {
    /// Connects and reads `hello`.
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Self::over(stream).await
    }

    async fn over(stream: TcpStream) -> Client {
        let mut c = Self::raw_over(stream);
        c.hello = c.frame().await.expect("hello");
        assert_eq!(c.hello["event"], "hello");
        c
    }

    /// A client on `stream` that has read nothing yet.
    fn raw_over(stream: TcpStream) -> Client {
        Client {
            inner: LibClient::raw(stream, Options::default()),
            events: VecDeque::new(),
            hello: Value::Null,
            token: None,
            id: 0,
        }
    }

    /// Connects from the local address `from` (any of 127.0.0.0/8) and reads `hello`.
    pub async fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> Client {
        let mut c = Self::connect_raw_from(addr, from).await;
        c.hello = c.frame().await.expect("hello");
        assert_eq!(c.hello["event"], "hello");
        c
    }

    /// Connects from the local address `from` without reading anything.
    pub async fn connect_raw_from(addr: SocketAddr, from: std::net::IpAddr) -> Client {
        let sock = match from {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .unwrap();
        sock.bind((from, 0).into()).unwrap();
        let stream = tokio::time::timeout(WAIT, sock.connect(addr))
            .await
            .unwrap()
            .unwrap();
        Self::raw_over(stream)
    }

    /// The library client underneath (typed calls; frames read through it bypass this
    /// wrapper's queue of events).
    pub fn lib(&mut self) -> &mut LibClient {
        &mut self.inner
    }

    /// Writes raw bytes.
    pub async fn raw(&mut self, bytes: &[u8]) {
        self.inner.send_raw(bytes).await.unwrap();
    }

    /// Writes one request object.
    pub async fn send(&mut self, v: Value) {
        let mut line = serde_json::to_vec(&v).unwrap();
        line.push(b'\n');
        self.raw(&line).await;
    }

    /// Reads the next frame; `None` at end of stream. Panics after [`WAIT`].
    pub async fn frame(&mut self) -> Option<Value> {
        self.frame_within(WAIT)
            .await
            .expect("timed out waiting for a frame")
    }

    /// Reads the next frame within `limit`: `Err` on timeout, `Ok(None)` at end of stream
    /// (or a connection reset).
    pub async fn frame_within(&mut self, limit: Duration) -> Result<Option<Value>, ()> {
        match tokio::time::timeout(limit, self.inner.next_frame()).await {
            Err(_) => Err(()),
            Ok(Ok(None)) | Ok(Err(ClientError::Io(_))) => Ok(None),
            Ok(Err(e)) => panic!("bad frame: {e}"),
            Ok(Ok(Some(f))) => {
                Ok(Some(serde_json::from_str(f.line()).unwrap_or_else(|e| {
                    panic!("bad frame {:?}: {e}", f.line())
                })))
            }
        }
    }

    /// Sends a request and returns its reply (events before it are kept for later).
    pub async fn req(&mut self, v: Value) -> Value {
        self.send(v).await;
        self.reply().await
    }

    /// The next reply.
    pub async fn reply(&mut self) -> Value {
        loop {
            let f = self
                .frame()
                .await
                .expect("connection closed before the reply");
            if f.get("re").is_some() {
                return f;
            }
            self.events.push_back(f);
        }
    }

    /// Sends a request that must succeed; returns the reply.
    pub async fn ok(&mut self, v: Value) -> Value {
        let r = self.req(v.clone()).await;
        assert_eq!(r["ok"], true, "request {v} failed: {r}");
        r
    }

    /// Sends a request that must fail; returns the error code.
    pub async fn err(&mut self, v: Value) -> String {
        let r = self.req(v.clone()).await;
        assert_eq!(r["ok"], false, "request {v} should fail: {r}");
        r["error"]["code"].as_str().unwrap().to_string()
    }

    /// The next event of `kind`, skipping none of the others (they stay queued).
    pub async fn event(&mut self, kind: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["event"] == kind) {
            return self.events.remove(i).unwrap();
        }
        loop {
            let f = self
                .frame()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for {kind}"));
            if f["event"] == kind {
                return f;
            }
            self.events.push_back(f);
        }
    }

    /// Asserts that no event of `kind` arrives within `limit`.
    pub async fn no_event(&mut self, kind: &str, limit: Duration) {
        assert!(
            !self.events.iter().any(|e| e["event"] == kind),
            "unexpected {kind}: {:?}",
            self.events
        );
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.frame_within(left).await {
                Err(()) | Ok(None) => return,
                Ok(Some(f)) => {
                    assert_ne!(f["event"], kind, "unexpected {kind}: {f}");
                    self.events.push_back(f);
                }
            }
        }
    }

    /// Message events up to `synced`: (messages, unread).
    pub async fn backlog(&mut self) -> (Vec<Value>, u64) {
        let mut msgs = Vec::new();
        loop {
            let f = match self.events.pop_front() {
                Some(f) => f,
                None => self.frame().await.expect("closed during backlog"),
            };
            match f["event"].as_str() {
                Some("message") => msgs.push(f),
                Some("synced") => return (msgs, f["unread"].as_u64().unwrap()),
                _ => {}
            }
        }
    }

    /// Waits until the server closes the connection; true if it did within [`WAIT`].
    pub async fn closed(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.frame_within(left).await {
                Ok(None) => return true,
                Err(()) => return false,
                Ok(Some(f)) => self.events.push_back(f),
            }
        }
    }

    /// Events received so far and not consumed.
    pub fn pending(&self) -> &VecDeque<Value> {
        &self.events
    }

    /// This session's user name (asked with `whois`).
    pub async fn login_name(&mut self) -> String {
        let r = self.ok(json!({"op": "whois", "id": self.id})).await;
        r["user"]["name"].as_str().unwrap().to_string()
    }

    /// Logs in with a password; consumes the backlog. Returns the login reply.
    pub async fn login(&mut self, name: &str) -> Value {
        let r = self
            .ok(json!({"op": "login", "name": name, "password": PASSWORD}))
            .await;
        self.token = r["token"].as_str().map(String::from);
        self.id = r["user"]["id"].as_u64().unwrap();
        r
    }
}

/// A unique user name for this test.
pub fn uname(prefix: &str) -> String {
    format!("{prefix}{:06}", rand::random::<u32>() % 1_000_000)
}

/// Registers `name` through `node`; returns the id.
pub async fn register(addr: SocketAddr, name: &str) -> u64 {
    let mut c = Client::connect(addr).await;
    let r = c
        .ok(json!({"op": "register", "name": name, "password": PASSWORD}))
        .await;
    r["user"]["id"].as_u64().unwrap()
}

/// Registers and logs in a new user; the backlog (empty) is consumed.
pub async fn user(addr: SocketAddr, prefix: &str) -> Client {
    let name = uname(prefix);
    register(addr, &name).await;
    let mut c = Client::connect(addr).await;
    c.login(&name).await;
    let (msgs, _) = c.backlog().await;
    assert!(msgs.is_empty());
    c
}

/// A deployment under test: one node on the embedded backend, or nodes sharing a Redis or a
/// Redis Cluster.
pub struct Cluster {
    pub redis: Option<Redis>,
    pub nodes: Vec<Node>,
    /// Last: dropped after the nodes.
    pub redis_cluster: Option<redis_cluster::RedisCluster>,
}

impl Cluster {
    /// The embedded backend: one node.
    pub async fn memory() -> Cluster {
        Self::memory_with(|_| {}).await
    }

    /// The embedded backend with adjusted settings.
    pub async fn memory_with(f: impl Fn(&mut Settings)) -> Cluster {
        let mut s = settings("mem", None);
        f(&mut s);
        Cluster {
            redis: None,
            nodes: vec![Node::start(s).await],
            redis_cluster: None,
        }
    }

    /// `n` nodes sharing one real Redis.
    pub async fn redis(n: usize) -> Cluster {
        Self::redis_with(n, |_| {}).await
    }

    /// `n` nodes sharing one real Redis, with adjusted settings.
    pub async fn redis_with(n: usize, f: impl Fn(&mut Settings)) -> Cluster {
        let redis = Redis::start();
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut s = settings(&format!("node{i}-{}", rand::random::<u16>()), Some(&redis));
            f(&mut s);
            nodes.push(Node::start(s).await);
        }
        Cluster {
            redis: Some(redis),
            nodes,
            redis_cluster: None,
        }
    }

    /// `n` nodes on a real 6-process Redis Cluster (3 masters + 3 replicas).
    pub async fn redis_cluster(n: usize) -> Cluster {
        let rc = tokio::task::spawn_blocking(redis_cluster::RedisCluster::start)
            .await
            .unwrap();
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut s = settings(&format!("cnode{i}-{}", rand::random::<u16>()), None);
            s.redis_cluster_nodes = Some(rc.seeds());
            nodes.push(Node::start(s).await);
        }
        Cluster {
            redis: None,
            nodes,
            redis_cluster: Some(rc),
        }
    }

    /// The address of node `i` (wrapping, so single-node backends serve every index).
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i % self.nodes.len()].addr
    }
}

/// Defines one `#[tokio::test]` per backend (embedded, Redis, Redis Cluster) for an
/// `async fn(Cluster)` scenario.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory_backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(common::Cluster::memory().await).await;
                }
            )*
        }
        mod redis_backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(common::Cluster::redis(2).await).await;
                }
            )*
        }
        mod redis_cluster_backend {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(common::Cluster::redis_cluster(2).await).await;
                }
            )*
        }
    };
}

/// A node as a separate `switchboard serve` process.
pub struct Proc {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
}

impl Proc {
    /// Starts a node process on free ports.
    pub fn start(redis: &Redis, name: &str, extra: &[(&str, &str)]) -> Proc {
        Self::start_on(redis, name, free_port(), free_port(), extra)
    }

    /// Starts a node process on the given chat and HTTP ports.
    pub fn start_on(
        redis: &Redis,
        name: &str,
        port: u16,
        http: u16,
        extra: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("serve")
            .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("SWITCHBOARD_HTTP_LISTEN", format!("127.0.0.1:{http}"))
            .env("SWITCHBOARD_REDIS_URL", redis.url())
            .env("SWITCHBOARD_NODE_NAME", name)
            .env("SWITCHBOARD_ARGON2_MEMORY_KIB", "64")
            .env("SWITCHBOARD_ARGON2_ITERATIONS", "1")
            // One client address for everything, as in `settings()`.
            .env("SWITCHBOARD_REGISTER_PER_ADDRESS_PER_HOUR", "1000000")
            .env("SWITCHBOARD_LOGIN_FAILURES_MAX", "1000")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let p = Proc {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            http: ([127, 0, 0, 1], http).into(),
        };
        for _ in 0..500 {
            if std::net::TcpStream::connect(p.addr).is_ok() {
                return p;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("node process did not start");
    }

    /// Sends a signal (`-TERM`, `-KILL`).
    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pids of the processes whose parent is `pid`, with their command names (from /proc).
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let (ppid, comm, _) = proc_stat(p)?;
            (ppid == pid).then_some((p, comm))
        })
        .collect()
}

/// (parent pid, command name, state) of `pid`, if it exists.
fn proc_stat(pid: u32) -> Option<(u32, String, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …": the name may hold spaces and parentheses, so split at the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    Some((ppid, comm, state))
}

/// Sends `sig` (`-TERM`, `-KILL`, …) to `pid`.
pub fn signal_pid(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Stops `child` and the processes it forked (nginx workers, a Redis AOF rewrite): `sig` to
/// the child, up to `grace` for it to exit, then SIGKILL to it and to every process it had
/// forked that is still there. Killing only the parent would orphan its children, which
/// then keep running and holding ports.
pub fn stop_tree(child: &mut Child, sig: &str, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let forked = children_of(child.id());
    signal_pid(child.id(), sig);
    let deadline = std::time::Instant::now() + grace;
    while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    for (pid, comm) in forked {
        // Same pid and name as when forked, and not a zombie: still that process.
        if proc_stat(pid).is_some_and(|(_, c, state)| c == comm && state != 'Z') {
            signal_pid(pid, "-KILL");
        }
    }
}

/// A child process that is stopped (with everything it forked) when this guard drops, also
/// when the test panics before it would have stopped it.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Guards `child`.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(Some(child))
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("guarded").id()
    }

    /// Takes the child out (for `wait_with_output`); the caller now owns its end.
    pub fn take(mut self) -> Child {
        self.0.take().expect("guarded")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            stop_tree(c, "-KILL", Duration::ZERO);
        }
    }
}
