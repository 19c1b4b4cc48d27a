//! Password hashing memory is bounded: a burst of registrations and password logins against a
//! real node process (its own allocator, its own RSS) leaves the resident memory near where it
//! started, on both backends.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Client, PASSWORD, Redis, free_port};
use serde_json::json;

/// Hashing slots of the node under test.
const SLOTS: u64 = 2;
/// Argon2 memory per hash in KiB: cheaper than the 19 MiB default so the burst takes seconds,
/// but large enough that every hash is far above glibc's mmap threshold, like the default.
const MEMORY_KIB: u64 = 16 * 1024;
/// Registrations, then as many password logins.
const USERS: usize = 2_000;
/// Concurrent clients.
const CLIENTS: usize = 64;
/// The absolute ceiling from issue 14.
const RSS_CEILING: u64 = 128_000_000;

/// A `switchboard serve` process, killed and reaped on drop (also when the test fails).
struct NodeProcess {
    child: Child,
    addr: SocketAddr,
}

impl NodeProcess {
    fn start(redis: Option<&Redis>) -> NodeProcess {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.arg("serve")
            .env("SWITCHBOARD_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "SWITCHBOARD_HTTP_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("SWITCHBOARD_NODE_NAME", "hashing")
            .env(
                "SWITCHBOARD_REDIS_URL",
                redis.map(Redis::url).unwrap_or_default(),
            )
            .env("SWITCHBOARD_ARGON2_MEMORY_KIB", MEMORY_KIB.to_string())
            .env("SWITCHBOARD_ARGON2_ITERATIONS", "1")
            .env("SWITCHBOARD_ARGON2_SLOTS", SLOTS.to_string())
            // Every client comes from 127.0.0.1: the per-address limits (sign-ups, password
            // logins in progress, connections not logged in) must not turn the burst into
            // errors.
            .env("SWITCHBOARD_REGISTER_PER_ADDRESS_PER_HOUR", "1000000")
            .env("SWITCHBOARD_LOGIN_FAILURES_MAX", "1000000")
            .env("SWITCHBOARD_MAX_UNAUTHENTICATED_PER_ADDRESS", "1000000")
            .env("SWITCHBOARD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("starting the node binary");
        let p = NodeProcess {
            child,
            addr: ([127, 0, 0, 1], port).into(),
        };
        for _ in 0..500 {
            if std::net::TcpStream::connect(p.addr).is_ok() {
                return p;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("node process did not start");
    }

    /// Resident set size from /proc/PID/status (VmRSS), in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading /proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line");
        kib * 1024
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `op(i)` for i in 0..USERS from CLIENTS concurrent tasks.
async fn burst<F, Fut>(op: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= USERS {
                    return;
                }
                op(i).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("a burst client failed");
    }
}

async fn registrations_and_logins_keep_memory_bounded(redis: Option<Redis>) {
    let node = NodeProcess::start(redis.as_ref());
    let addr = node.addr;
    let before = node.rss();
    let prefix = format!("h{}", rand::random::<u32>() % 1_000_000);
    let name = move |i: usize| format!("{prefix}_{i}");

    let n = name.clone();
    burst(move |i| {
        let name = n(i);
        async move {
            let mut c = Client::connect(addr).await;
            c.ok(json!({"op": "register", "name": name, "password": PASSWORD}))
                .await;
        }
    })
    .await;
    let after_registrations = node.rss();
    burst(move |i| {
        let name = name(i);
        async move {
            let mut c = Client::connect(addr).await;
            c.login(&name).await;
        }
    })
    .await;
    // Let closed sessions finish their clean-up before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = node.rss();

    let bound = before * 3 / 2 + SLOTS * MEMORY_KIB * 1024;
    let mb = |b: u64| b as f64 / 1e6;
    eprintln!(
        "RSS before {:.1} MB, after {USERS} registrations {:.1} MB, after {USERS} logins {:.1} MB; \
         bound min({:.1} MB, {:.1} MB)",
        mb(before),
        mb(after_registrations),
        mb(after),
        mb(bound),
        mb(RSS_CEILING)
    );
    assert!(
        after <= RSS_CEILING,
        "RSS {:.1} MB after the burst exceeds {:.1} MB",
        mb(after),
        mb(RSS_CEILING)
    );
    assert!(
        after <= bound,
        "RSS {:.1} MB after the burst exceeds 1.5 × {:.1} MB + {SLOTS} slots × {} KiB = {:.1} MB",
        mb(after),
        mb(before),
        MEMORY_KIB,
        mb(bound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_backend_burst_keeps_memory_bounded() {
    registrations_and_logins_keep_memory_bounded(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_backend_burst_keeps_memory_bounded() {
    registrations_and_logins_keep_memory_bounded(Some(Redis::start())).await;
}
