//! `switchboard bench`: the load generator. Scenarios `idle`, `chat`, `group` and `logins`
//! against real nodes or a load balancer, with exact loss accounting and HDR latency histograms.
//!
//! Every bench message carries `bench <key> <sent µs>` as text, where `key` is unique per
//! (sender, message); receivers record keys, senders record the keys the server acknowledged,
//! so "lost" is exactly the acknowledged keys that never arrived.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

/// Password of every bench user.
const BENCH_PASSWORD: &str = "bench-password";
/// Longest wait for one reply during set-up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent connections used while registering users.
const SETUP_CONCURRENCY: usize = 32;

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Open and log in N connections, hold them, report memory per connection.
    Idle,
    /// C clients sending 1:1 messages to random other clients.
    Chat,
    /// G members of one group, S of them sending; fan-out deliveries.
    Group,
    /// Password logins/s and token logins/s.
    Logins,
}

/// Options of `switchboard bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Server addresses (a load balancer, or nodes); clients are spread over them.
    #[arg(long = "addr", default_value = "127.0.0.1:6000", value_delimiter = ',')]
    pub addrs: Vec<SocketAddr>,
    /// Clients (chat), connections (idle), members (group), concurrent logins (logins).
    #[arg(long, short = 'c', default_value_t = 100)]
    pub clients: usize,
    /// Seconds to send (chat, group, logins) or to hold (idle).
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Open loop: total messages per second over all senders (0 = closed loop).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Closed loop: sends in flight per sender.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Group scenario: how many members send.
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// File of registered users with tokens (JSON lines), created or extended as needed.
    #[arg(long, default_value = "bench-users.jsonl")]
    pub users_file: PathBuf,
    /// Prefix of bench user names (use another prefix for a fresh set).
    #[arg(long, default_value = "bench")]
    pub prefix: String,
    /// Local source addresses 127.0.0.1 .. 127.0.0.N, for more connections than one address has ports.
    #[arg(long, default_value_t = 1)]
    pub source_ips: u8,
    /// Server process ids whose resident memory is sampled (idle).
    #[arg(long = "pid", value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Seconds to wait for late deliveries after sending stops.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

/// A registered bench user.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BenchUser {
    name: String,
    id: u64,
    token: String,
}

/// Runs the scenario and prints its summary.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let report = match args.scenario {
        Scenario::Idle => idle(&args).await?,
        Scenario::Chat => chat(&args).await?,
        Scenario::Group => group(&args).await?,
        Scenario::Logins => logins(&args).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(report: &Value) {
    let Value::Object(map) = report else { return };
    let width = map.keys().map(|k| k.len()).max().unwrap_or(0);
    for (k, v) in map {
        let v = match v {
            Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!("{k:<width$}  {v}");
    }
}

/// A line-based protocol connection.
struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Conn {
    async fn open(addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<Conn> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream: TcpStream = socket
            .connect(addr)
            .await
            .with_context(|| format!("connecting {addr}"))?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut conn = Conn {
            rd: BufReader::new(rd),
            wr,
        };
        let hello = conn.frame().await?;
        if hello["event"] != "hello" {
            bail!("expected hello, got {hello}");
        }
        Ok(conn)
    }

    async fn frame(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(SETUP_TIMEOUT, self.rd.read_line(&mut line))
            .await
            .context("timed out waiting for the server")??;
        if n == 0 {
            bail!("connection closed");
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Sends a request and returns its reply (events before it are skipped).
    async fn req(&mut self, v: Value) -> anyhow::Result<Value> {
        let mut line = serde_json::to_vec(&v)?;
        line.push(b'\n');
        self.wr.write_all(&line).await?;
        loop {
            let f = self.frame().await?;
            if f.get("re").is_some() {
                return Ok(f);
            }
        }
    }

    /// Logs in with a token and reads through `synced`.
    async fn token_login(&mut self, token: &str) -> anyhow::Result<()> {
        let r = self.req(json!({"op": "login", "token": token})).await?;
        if r["ok"] != true {
            bail!("token login failed: {r}");
        }
        loop {
            if self.frame().await?["event"] == "synced" {
                return Ok(());
            }
        }
    }
}

fn source_ip(args: &BenchArgs, i: usize) -> Option<IpAddr> {
    (args.source_ips > 1)
        .then(|| IpAddr::from([127, 0, 0, 1 + (i % args.source_ips as usize) as u8]))
}

/// Loads the users file and registers more users until there are `n`.
async fn users(args: &BenchArgs, n: usize) -> anyhow::Result<Vec<BenchUser>> {
    let mut users: Vec<BenchUser> = std::fs::read_to_string(&args.users_file)
        .map(|s| {
            s.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default();
    users.retain(|u| u.name.starts_with(&format!("{}_", args.prefix)));
    if users.len() >= n {
        users.truncate(n);
        return Ok(users);
    }
    let start = users.len();
    if !args.quiet {
        eprintln!("registering {} bench users ...", n - start);
    }
    let next = Arc::new(AtomicU64::new(start as u64));
    let made = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..SETUP_CONCURRENCY.min(n - start) {
        let (next, made, addr, prefix) = (
            next.clone(),
            made.clone(),
            args.addrs[w % args.addrs.len()],
            args.prefix.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr, None).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return anyhow::Ok(());
                }
                let name = format!("{prefix}_{i}");
                let r = conn
                    .req(json!({"op": "register", "name": name, "password": BENCH_PASSWORD}))
                    .await?;
                if r["ok"] != true && r["error"]["code"] != "name_taken" {
                    bail!("register {name}: {r}");
                }
                let r = conn
                    .req(json!({"op": "login", "name": name, "password": BENCH_PASSWORD}))
                    .await?;
                if r["ok"] != true {
                    bail!("login {name}: {r}");
                }
                let user = BenchUser {
                    name,
                    id: r["user"]["id"].as_u64().unwrap_or(0),
                    token: r["token"].as_str().unwrap_or_default().to_string(),
                };
                made.lock().unwrap().push((i, user));
                // Closing (not logging out) keeps the token valid; the next user needs a fresh connection.
                conn = Conn::open(addr, None).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut made = std::mem::take(&mut *made.lock().unwrap());
    made.sort_by_key(|(i, _)| *i);
    users.extend(made.into_iter().map(|(_, u)| u));
    let mut file = String::new();
    for u in &users {
        file.push_str(&serde_json::to_string(u)?);
        file.push('\n');
    }
    std::fs::write(&args.users_file, file)
        .with_context(|| format!("writing {}", args.users_file.display()))?;
    Ok(users)
}

/// Opens and logs in one connection per user, spread over the addresses.
async fn connect_all(args: &BenchArgs, users: &[BenchUser]) -> anyhow::Result<Vec<Conn>> {
    let sem = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let (sem, addr, source, token) = (
            sem.clone(),
            args.addrs[i % args.addrs.len()],
            source_ip(args, i),
            u.token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await?;
            let mut c = Conn::open(addr, source).await?;
            c.token_login(&token).await?;
            anyhow::Ok(c)
        }));
    }
    let mut conns = Vec::with_capacity(users.len());
    for t in tasks {
        conns.push(t.await??);
    }
    Ok(conns)
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

async fn idle(args: &BenchArgs) -> anyhow::Result<Value> {
    let users = users(args, args.clients).await?;
    let before: u64 = args.pids.iter().map(|&p| rss_bytes(p)).sum();
    let started = Instant::now();
    let conns = connect_all(args, &users).await?;
    let took = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.duration.min(5.0))).await;
    let after: u64 = args.pids.iter().map(|&p| rss_bytes(p)).sum();
    let per_conn = if args.pids.is_empty() {
        Value::Null
    } else {
        json!((after.saturating_sub(before)) as f64 / conns.len() as f64)
    };
    let mut report = json!({
        "scenario": "idle",
        "connections": conns.len(),
        "connect_and_login_seconds": took,
        "logins_per_sec": conns.len() as f64 / took,
        "server_rss_before_bytes": before,
        "server_rss_after_bytes": after,
        "server_bytes_per_connection": per_conn,
    });
    if args.pids.is_empty() {
        report["note"] = json!("pass --pid to measure server memory");
    }
    tokio::time::sleep(Duration::from_secs_f64((args.duration - 5.0).max(0.0))).await;
    drop(conns);
    Ok(report)
}

/// Shared accounting of one run.
struct Tally {
    started: Instant,
    sent: AtomicU64,
    acked: AtomicU64,
    errors: Mutex<HashMap<String, u64>>,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    /// Per recipient index: keys received.
    received: Vec<Mutex<HashSet<u64>>>,
    /// Per recipient index: keys the server acknowledged.
    expected: Vec<Mutex<Vec<u64>>>,
    latency: Mutex<Histogram<u64>>,
    stop: AtomicBool,
}

impl Tally {
    fn new(n: usize) -> Arc<Tally> {
        Arc::new(Tally {
            started: Instant::now(),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            errors: Mutex::new(HashMap::new()),
            delivered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            received: (0..n).map(|_| Mutex::new(HashSet::new())).collect(),
            expected: (0..n).map(|_| Mutex::new(Vec::new())).collect(),
            latency: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            ),
            stop: AtomicBool::new(false),
        })
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Records a received bench message line for recipient `me`.
    fn receive(&self, me: usize, line: &str) {
        let Some(rest) = line.split_once("\"text\":\"bench ").map(|(_, r)| r) else {
            return;
        };
        let mut parts = rest.split(|c| c == ' ' || c == '"');
        let (Some(key), Some(sent)) = (parts.next(), parts.next()) else {
            return;
        };
        let (Ok(key), Ok(sent)) = (key.parse::<u64>(), sent.parse::<u64>()) else {
            return;
        };
        if self.received[me].lock().unwrap().insert(key) {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            let us = self.now_us().saturating_sub(sent).max(1);
            let _ = self.latency.lock().unwrap().record(us);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn error(&self, line: &str) {
        let code = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(String::from))
            .unwrap_or_else(|| "unparsed".into());
        *self.errors.lock().unwrap().entry(code).or_default() += 1;
    }

    fn lost(&self) -> u64 {
        let mut lost = 0;
        for (exp, rec) in self.expected.iter().zip(&self.received) {
            let rec = rec.lock().unwrap();
            lost += exp
                .lock()
                .unwrap()
                .iter()
                .filter(|k| !rec.contains(k))
                .count() as u64;
        }
        lost
    }
}

/// One sending/receiving bench client: `targets` picks recipients (indices into `ids`).
fn spawn_client(
    me: usize,
    conn: Conn,
    tally: Arc<Tally>,
    send: Option<(Arc<dyn Fn(u64) -> (usize, Value) + Send + Sync>, f64, usize)>,
    fanout: usize,
) -> tokio::task::JoinHandle<()> {
    let Conn { mut rd, mut wr } = conn;
    // Keys of sends awaiting replies, in order (replies come in request order).
    let pending: Arc<Mutex<std::collections::VecDeque<(usize, u64)>>> = Default::default();
    let window = Arc::new(Semaphore::new(send.as_ref().map_or(1, |s| s.2.max(1))));
    let reader = {
        let (tally, pending, window) = (tally.clone(), pending.clone(), window.clone());
        tokio::spawn(async move {
            let mut line = String::new();
            loop {
                line.clear();
                match rd.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line.starts_with("{\"event\":\"message\"") {
                    tally.receive(me, &line);
                } else if line.starts_with("{\"re\":\"send\"")
                    || line.starts_with("{\"re\":\"group.send\"")
                {
                    let Some((to, key)) = pending.lock().unwrap().pop_front() else {
                        continue;
                    };
                    window.add_permits(1);
                    if line.contains("\"ok\":true") {
                        tally.acked.fetch_add(1, Ordering::Relaxed);
                        if fanout == 0 {
                            tally.expected[to].lock().unwrap().push(key);
                        } else {
                            for (i, exp) in tally.expected.iter().enumerate() {
                                if i != me && i < fanout {
                                    exp.lock().unwrap().push(key);
                                }
                            }
                        }
                    } else {
                        tally.error(&line);
                    }
                }
            }
        })
    };
    tokio::spawn(async move {
        if let Some((make, rate, _)) = send {
            let mut n: u64 = 0;
            let mut ticker = (rate > 0.0).then(|| {
                // Random phase: clients ticking in lock-step would send in bursts.
                let period = Duration::from_secs_f64(1.0 / rate);
                let phase = period.mul_f64(rand::random::<f64>());
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            while !tally.stop.load(Ordering::Relaxed) {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => window.acquire().await.map(|p| p.forget()).unwrap_or(()),
                }
                if tally.stop.load(Ordering::Relaxed) {
                    break;
                }
                n += 1;
                let key = ((me as u64) << 32) | n;
                let (to, mut req) = make(key);
                req["text"] = json!(format!("bench {key} {}", tally.now_us()));
                let mut bytes = serde_json::to_vec(&req).unwrap_or_default();
                bytes.push(b'\n');
                pending.lock().unwrap().push_back((to, key));
                tally.sent.fetch_add(1, Ordering::Relaxed);
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        }
        // Keep the writer (and so the connection) open until the run ends.
        while !tally.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), reader).await;
        drop(wr);
    })
}

/// Waits `duration`, printing progress, then stops senders and waits for late deliveries.
async fn drive(
    args: &BenchArgs,
    tally: &Arc<Tally>,
    handles: Vec<tokio::task::JoinHandle<()>>,
) -> f64 {
    let started = Instant::now();
    let mut last = (0u64, 0u64);
    while started.elapsed().as_secs_f64() < args.duration {
        tokio::time::sleep(Duration::from_secs(1).min(Duration::from_secs_f64(args.duration)))
            .await;
        if !args.quiet {
            let (s, d) = (
                tally.sent.load(Ordering::Relaxed),
                tally.delivered.load(Ordering::Relaxed),
            );
            eprint!(
                "\r{:>5.1}s  sent {:>9} ({:>7}/s)  delivered {:>9} ({:>7}/s)   ",
                started.elapsed().as_secs_f64(),
                s,
                s - last.0,
                d,
                d - last.1
            );
            last = (s, d);
        }
    }
    let sending = started.elapsed().as_secs_f64();
    // Stop sending; wait until every acknowledged message arrived or the settle time ran out.
    let deadline = Instant::now() + Duration::from_secs_f64(args.settle);
    let stop_sending = tally.clone();
    stop_sending.stop.store(true, Ordering::Relaxed);
    loop {
        let expected: u64 = tally
            .expected
            .iter()
            .map(|e| e.lock().unwrap().len() as u64)
            .sum();
        if tally.delivered.load(Ordering::Relaxed) >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !args.quiet {
        eprintln!();
    }
    for h in handles {
        h.abort();
    }
    sending
}

fn latency_report(tally: &Tally, report: &mut Value) {
    let h = tally.latency.lock().unwrap();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    report["latency_p50_ms"] = json!(ms(0.5));
    report["latency_p90_ms"] = json!(ms(0.9));
    report["latency_p99_ms"] = json!(ms(0.99));
    report["latency_max_ms"] = json!(h.max() as f64 / 1000.0);
    report["errors"] = json!(*tally.errors.lock().unwrap());
}

async fn chat(args: &BenchArgs) -> anyhow::Result<Value> {
    if args.clients < 2 {
        bail!("chat needs at least 2 clients");
    }
    let users = users(args, args.clients).await?;
    let conns = connect_all(args, &users).await?;
    let ids: Arc<Vec<u64>> = Arc::new(users.iter().map(|u| u.id).collect());
    let tally = Tally::new(users.len());
    let per_client_rate = if args.rate > 0.0 {
        args.rate / users.len() as f64
    } else {
        0.0
    };
    let mut handles = Vec::new();
    for (me, conn) in conns.into_iter().enumerate() {
        let ids = ids.clone();
        let n = ids.len();
        let make: Arc<dyn Fn(u64) -> (usize, Value) + Send + Sync> = Arc::new(move |key| {
            // A cheap, well-spread choice of another client.
            let mut to = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) as usize % (n - 1);
            if to >= me {
                to += 1;
            }
            (to, json!({"op": "send", "to": ids[to], "text": ""}))
        });
        handles.push(spawn_client(
            me,
            conn,
            tally.clone(),
            Some((make, per_client_rate, args.window)),
            0,
        ));
    }
    let secs = drive(args, &tally, handles).await;
    let mut report = json!({
        "scenario": "chat",
        "clients": users.len(),
        "mode": if args.rate > 0.0 { format!("open loop, {} msg/s", args.rate) } else { format!("closed loop, window {}", args.window) },
        "seconds": secs,
        "sent": tally.sent.load(Ordering::Relaxed),
        "acknowledged": tally.acked.load(Ordering::Relaxed),
        "delivered": tally.delivered.load(Ordering::Relaxed),
        "lost": tally.lost(),
        "duplicated": tally.duplicates.load(Ordering::Relaxed),
        "delivered_per_sec": tally.delivered.load(Ordering::Relaxed) as f64 / secs,
    });
    latency_report(&tally, &mut report);
    Ok(report)
}

async fn group(args: &BenchArgs) -> anyhow::Result<Value> {
    if args.clients < 2 || args.senders == 0 || args.senders > args.clients {
        bail!("group needs at least 2 members and 1..=members senders");
    }
    let users = users(args, args.clients).await?;
    let mut conns = connect_all(args, &users).await?;
    let gname = format!("{}_g{}", args.prefix, rand::random::<u32>() % 1_000_000);
    let r = conns[0]
        .req(json!({"op": "group.create", "name": gname}))
        .await?;
    let gid = r["group"]["id"].as_u64().context("group.create failed")?;
    for c in conns.iter_mut().skip(1) {
        let r = c.req(json!({"op": "group.join", "group": gid})).await?;
        if r["ok"] != true {
            bail!("group.join: {r}");
        }
    }
    let members = users.len();
    let tally = Tally::new(members);
    let per_sender_rate = if args.rate > 0.0 {
        args.rate / args.senders as f64
    } else {
        0.0
    };
    let mut handles = Vec::new();
    for (me, conn) in conns.into_iter().enumerate() {
        let send = (me < args.senders).then(|| {
            let make: Arc<dyn Fn(u64) -> (usize, Value) + Send + Sync> =
                Arc::new(move |_| (0, json!({"op": "group.send", "group": gid, "text": ""})));
            (make, per_sender_rate, args.window)
        });
        handles.push(spawn_client(me, conn, tally.clone(), send, members));
    }
    let secs = drive(args, &tally, handles).await;
    let mut report = json!({
        "scenario": "group",
        "members": members,
        "senders": args.senders,
        "seconds": secs,
        "messages_sent": tally.sent.load(Ordering::Relaxed),
        "messages_acknowledged": tally.acked.load(Ordering::Relaxed),
        "deliveries": tally.delivered.load(Ordering::Relaxed),
        "lost": tally.lost(),
        "duplicated": tally.duplicates.load(Ordering::Relaxed),
        "deliveries_per_sec": tally.delivered.load(Ordering::Relaxed) as f64 / secs,
    });
    latency_report(&tally, &mut report);
    Ok(report)
}

async fn logins(args: &BenchArgs) -> anyhow::Result<Value> {
    let users = Arc::new(users(args, args.clients.max(1)).await?);
    let mut report = json!({"scenario": "logins", "concurrency": args.clients});
    for method in ["password", "token"] {
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..args.clients.max(1) {
            let (users, done, failed, stop) =
                (users.clone(), done.clone(), failed.clone(), stop.clone());
            let (addr, source) = (args.addrs[w % args.addrs.len()], source_ip(args, w));
            tasks.push(tokio::spawn(async move {
                let u = &users[w % users.len()];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut c) = Conn::open(addr, source).await else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let req = if method == "password" {
                        json!({"op": "login", "name": u.name, "password": BENCH_PASSWORD})
                    } else {
                        json!({"op": "login", "token": u.token})
                    };
                    match c.req(req).await {
                        Ok(r) if r["ok"] == true => done.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(args.duration / 2.0)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = tokio::time::timeout(SETUP_TIMEOUT, t).await;
        }
        let secs = started.elapsed().as_secs_f64();
        report[format!("{method}_logins")] = json!(done.load(Ordering::Relaxed));
        report[format!("{method}_failed")] = json!(failed.load(Ordering::Relaxed));
        report[format!("{method}_logins_per_sec")] =
            json!(done.load(Ordering::Relaxed) as f64 / secs);
    }
    Ok(report)
}
