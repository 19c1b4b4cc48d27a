//! `switchboard bench`: the load generator. Scenarios `idle`, `chat`, `group` and `logins`
//! against real nodes or a load balancer, with exact loss accounting and HDR latency histograms;
//! `signup`, `backlog` and `groupview` measure a node's resident memory around a burst of a
//! large, rare allocation (password hashes, a long login backlog, big group views).
//!
//! Every bench message carries `bench <key> <sent µs>` as text, where `key` is unique per
//! (sender, message); receivers record keys, senders record the keys the server acknowledged,
//! so "lost" is exactly the acknowledged keys that never arrived.
//!
//! Connections are the library's ([`crate::client`]): typed calls for the set-up, and the
//! [`Reader`]/[`Writer`] halves with `window` requests in flight in the measured loop, where
//! a delivery is read into a borrowed struct (its `seq` and `text` only) to keep the load
//! generator light: it shares the machine with the servers it measures.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::borrow::Cow;
use std::collections::VecDeque;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::cli::TlsArgs;
use crate::client::{
    Backoff, Client, ClientError, Connection, Connector, Frame, FrameKind, Options, Reader,
    Transport,
};
use crate::error::Code;
use crate::protocol::{AckArgs, Event, GroupSendArgs, Request, SendArgs, Seq};

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
    /// `--count` registrations, then as many password logins; server RSS around the burst.
    Signup,
    /// `--count` messages to one user, then C concurrent logins reading that backlog; RSS.
    Backlog,
    /// A group of `--count` members, then C members reading its view (login, group.list); RSS.
    Groupview,
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
    /// Node process ids whose CPU time per delivered message is reported (chat, group).
    #[arg(long = "pids", value_delimiter = ',')]
    pub node_pids: Vec<u32>,
    /// Redis process ids whose CPU time per delivered message is reported (chat, group).
    #[arg(long = "redis-pids", value_delimiter = ',')]
    pub redis_pids: Vec<u32>,
    /// Users (signup, groupview) or messages (backlog) of the memory scenarios.
    #[arg(long, default_value_t = 2000)]
    pub count: usize,
    /// Seconds to wait for late deliveries after sending stops.
    #[arg(long, default_value_t = 5.0)]
    pub settle: f64,
    /// Chat: before sending, put the clients in groups of this many members (0 = none), so
    /// that logins and logouts carry presence through groups as in a real deployment.
    #[arg(long, default_value_t = 0)]
    pub group_size: usize,
    /// Chat: this share of the clients (0 to 1) also joins one big group of up to
    /// `--big-group` members.
    #[arg(long, default_value_t = 0.0)]
    pub big_share: f64,
    /// Chat: most members of each big group (see `--big-share`).
    #[arg(long, default_value_t = 1000)]
    pub big_group: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// TLS to the servers (the certificate's name: --server-name, else the address's IP).
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// How every bench connection is made (plain or TLS), set once by [`run`]: one rustls
/// configuration for all connections, as a real client fleet would have, instead of an
/// argument threaded through every scenario.
static CONNECTOR: std::sync::OnceLock<Connector> = std::sync::OnceLock::new();

/// A registered bench user.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BenchUser {
    name: String,
    id: u64,
    token: String,
}

/// Runs the scenario and prints its summary.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let connector = args.tls.connector()?;
    if CONNECTOR.set(connector).is_err() {
        bail!("bench::run runs once per process");
    }
    let cpu_pids = args.node_pids.iter().chain(&args.redis_pids);
    if cpu_pids.clone().next().is_some() {
        if !matches!(args.scenario, Scenario::Chat | Scenario::Group) {
            bail!("--pids and --redis-pids apply to the chat and group scenarios");
        }
        // Fail before the set-up, not after the run, on a wrong pid.
        clock_ticks_per_sec()?;
        for &pid in cpu_pids {
            cpu_ticks(pid).with_context(|| format!("CPU time of pid {pid}"))?;
        }
    }
    let report = match args.scenario {
        Scenario::Idle => idle(&args).await?,
        Scenario::Chat => chat(&args).await?,
        Scenario::Group => group(&args).await?,
        Scenario::Logins => logins(&args).await?,
        Scenario::Signup => signup(&args).await?,
        Scenario::Backlog => backlog(&args).await?,
        Scenario::Groupview => groupview(&args).await?,
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
        if k == "cpu" {
            continue;
        }
        let v = match v {
            Value::Number(n) if n.is_f64() => format!("{:.2}", n.as_f64().unwrap_or(0.0)),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!("{k:<width$}  {v}");
    }
    if let Some(cpu) = map.get("cpu") {
        print_cpu(cpu);
    }
}

/// The `cpu` object of a report as a table: one row per process, then the sums.
fn print_cpu(cpu: &Value) {
    println!(
        "server CPU within the {:.2} s window, {} delivered messages:",
        cpu["window_seconds"].as_f64().unwrap_or(0.0),
        cpu["messages"]
    );
    let row = |label: String, v: &Value| match v["cpu_seconds"].as_f64() {
        Some(s) => println!(
            "  {label:<16} {s:>9.2} s CPU  {:>6.2} cores  {:>9.1} µs/message",
            v["cores"].as_f64().unwrap_or(0.0),
            v["us_per_message"].as_f64().unwrap_or(0.0)
        ),
        None => println!(
            "  {label:<16} {}",
            v["error"].as_str().unwrap_or("unreadable")
        ),
    };
    for (group, name) in [("nodes", "node"), ("redis", "redis")] {
        let Some(procs) = cpu[group].as_array() else {
            continue;
        };
        for p in procs {
            row(format!("{name} {}", p["pid"]), p);
        }
        row(
            format!("{group} total"),
            &cpu[format!("{group}_total").as_str()],
        );
    }
    row("total".into(), &cpu["total"]);
}

/// Clock ticks per second, the unit of the CPU times in /proc/PID/stat.
fn clock_ticks_per_sec() -> anyhow::Result<f64> {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => Ok(t as f64),
        other => bail!("sysconf(_SC_CLK_TCK): {other:?}"),
    }
}

/// utime + stime (clock ticks, all threads) from the text of /proc/PID/stat.
///
/// The second field is the command name in parentheses, which may itself contain spaces and
/// parentheses, so the fields are counted from the last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let mut fields = rest.split_ascii_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time used so far by process `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_ticks(&stat).with_context(|| format!("parsing {path}: {stat:?}"))
}

/// CPU ticks of the `--pids` and `--redis-pids` processes at one instant (`None`: gone).
#[derive(Debug, Clone, Default)]
struct CpuSample {
    nodes: Vec<Option<u64>>,
    redis: Vec<Option<u64>>,
}

impl CpuSample {
    fn take(args: &BenchArgs) -> CpuSample {
        let read = |pids: &[u32]| pids.iter().map(|&p| cpu_ticks(p).ok()).collect();
        CpuSample {
            nodes: read(&args.node_pids),
            redis: read(&args.redis_pids),
        }
    }
}

/// The measured window of a run: its length and the CPU samples at its two ends.
struct Window {
    /// Seconds from the first to the last send; the denominator of the per-second figures.
    secs: f64,
    start: CpuSample,
    end: CpuSample,
    /// Messages delivered by the end of the window (the CPU figures' denominator: deliveries
    /// during the settle time that follows are not in the CPU window).
    delivered: u64,
}

/// The `cpu` object of a report (`None` without `--pids`/`--redis-pids`): per process and
/// summed, CPU seconds within the window, cores (CPU seconds per wall second of the window)
/// and µs of CPU per delivered message.
fn cpu_report(args: &BenchArgs, w: &Window) -> anyhow::Result<Option<Value>> {
    let messages = w.delivered;
    if args.node_pids.is_empty() && args.redis_pids.is_empty() {
        return Ok(None);
    }
    let hz = clock_ticks_per_sec()?;
    let figures = |cpu: f64| {
        json!({
            "cpu_seconds": cpu,
            "cores": cpu / w.secs,
            "us_per_message": if messages > 0 { cpu * 1e6 / messages as f64 } else { 0.0 },
        })
    };
    let mut total = 0.0;
    let mut out =
        json!({"window_seconds": w.secs, "messages": messages, "clock_ticks_per_sec": hz});
    for (group, pids, start, end) in [
        ("nodes", &args.node_pids, &w.start.nodes, &w.end.nodes),
        ("redis", &args.redis_pids, &w.start.redis, &w.end.redis),
    ] {
        let mut sum = 0.0;
        let mut procs = Vec::new();
        for (i, &pid) in pids.iter().enumerate() {
            let mut p = match (start[i], end[i]) {
                (Some(a), Some(b)) => {
                    let cpu = b.saturating_sub(a) as f64 / hz;
                    sum += cpu;
                    figures(cpu)
                }
                // A process that exited (or restarted) within the window: its share is unknown
                // and left out of the sums rather than guessed.
                _ => json!({"error": "process gone during the window"}),
            };
            p["pid"] = json!(pid);
            procs.push(p);
        }
        out[group] = json!(procs);
        out[format!("{group}_total")] = figures(sum);
        total += sum;
    }
    out["total"] = figures(total);
    Ok(Some(out))
}

/// A connection to a node (the library's client), plain or TLS.
type Conn = Client<Connection>;

/// Opens a connection from `source` (if given) and reads `hello`.
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
    let options = Options {
        connect_timeout: SETUP_TIMEOUT,
        reply_timeout: SETUP_TIMEOUT,
        ..Options::default()
    };
    let connector = CONNECTOR.get_or_init(Connector::default);
    let stream = connector
        .over(stream, &addr.to_string(), &options)
        .await
        .with_context(|| format!("TLS to {addr}"))?;
    Ok(Client::handshake(stream, options).await?)
}

/// Logs in with a token and reads through `synced`, handing the text of each backlog
/// message to `record`.
async fn token_login_recording(
    c: &mut Conn,
    token: &str,
    mut record: impl FnMut(&str),
) -> anyhow::Result<()> {
    c.login_token(token).await.context("token login failed")?;
    loop {
        let frame = tokio::time::timeout(SETUP_TIMEOUT, c.next_frame())
            .await
            .context("timed out waiting for the server")??
            .context("connection closed")?;
        match frame.kind() {
            FrameKind::Event("message") => {
                if let Ok(d) = frame.parse_as::<Delivery>() {
                    record(&d.msg.text);
                }
            }
            FrameKind::Event("synced") => return Ok(()),
            _ => {}
        }
    }
}

/// Logs in with a token and reads through `synced`.
async fn token_login(c: &mut Conn, token: &str) -> anyhow::Result<()> {
    token_login_recording(c, token, |_| {}).await
}

/// What the bench reads of a `message` event: borrowed, everything else skipped unparsed.
#[derive(Deserialize)]
struct Delivery<'a> {
    seq: Seq,
    #[serde(borrow)]
    msg: DeliveredText<'a>,
}

#[derive(Deserialize)]
struct DeliveredText<'a> {
    #[serde(borrow)]
    text: Cow<'a, str>,
}

/// What the bench reads of an ok `send` reply: the own copy's `seq`.
#[derive(Deserialize)]
struct SentSeq {
    msg: SeqOnly,
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: Seq,
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
            let mut conn = open(addr, None).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return anyhow::Ok(());
                }
                let name = format!("{prefix}_{i}");
                match conn.register(&name, BENCH_PASSWORD).await {
                    Ok(_) => {}
                    Err(e) if e.code() == Some(Code::NameTaken) => {}
                    Err(e) => bail!("register {name}: {e}"),
                }
                let login = conn
                    .login_password(&name, BENCH_PASSWORD)
                    .await
                    .with_context(|| format!("login {name}"))?;
                let user = BenchUser {
                    name,
                    id: login.user.id,
                    token: login.token,
                };
                made.lock().unwrap().push((i, user));
                // Closing (not logging out) keeps the token valid; the next user needs a fresh connection.
                conn = open(addr, None).await?;
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
            let mut c = open(addr, source).await?;
            token_login(&mut c, &token).await?;
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
    /// Random tag of this run: messages of earlier runs still in inboxes are ignored.
    run: u32,
    /// Keys a session received twice within one session (a protocol violation).
    redelivered: AtomicU64,
    /// Connections re-established after a `goaway` or a lost connection.
    reconnects: AtomicU64,
    /// Longest time from losing a connection to being logged in again (µs).
    reconnect_max_us: AtomicU64,
    /// Times from losing a connection (or its `goaway`) to being logged in again (µs).
    reconnect_times: Mutex<Histogram<u64>>,
    /// Clients logged in right now.
    connected: AtomicU64,
    /// Clients logged in when the run ended.
    connected_at_end: AtomicU64,
    /// Per client: logged in again at least once.
    relogged: Vec<AtomicBool>,
    /// The run is being accounted: replies no longer count.
    frozen: AtomicBool,
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
            run: rand::random(),
            redelivered: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            reconnect_max_us: AtomicU64::new(0),
            reconnect_times: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
            ),
            connected: AtomicU64::new(0),
            connected_at_end: AtomicU64::new(0),
            relogged: (0..n).map(|_| AtomicBool::new(false)).collect(),
            frozen: AtomicBool::new(false),
        })
    }

    /// The text of a bench message with `key`.
    fn text(&self, key: u64) -> String {
        format!("bench {} {key} {}", self.run, self.now_us())
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// Records a received bench message (its text) for recipient `me`; `session` holds the
    /// keys this connection has seen (a repeat within one session is a duplicate, across
    /// sessions a permitted redelivery).
    fn receive(&self, me: usize, text: &str, session: &mut HashSet<u64>) {
        let Some(rest) = text.strip_prefix("bench ") else {
            return;
        };
        let mut parts = rest.split(' ');
        let (Some(run), Some(key), Some(sent)) = (parts.next(), parts.next(), parts.next()) else {
            return;
        };
        if run.parse::<u32>().ok() != Some(self.run) {
            return;
        }
        let (Ok(key), Ok(sent)) = (key.parse::<u64>(), sent.parse::<u64>()) else {
            return;
        };
        if (key >> 32) as usize == me {
            // Our own send, replayed from our inbox after a reconnect: not a delivery.
            return;
        }
        let first_in_session = session.insert(key);
        if self.received[me].lock().unwrap().insert(key) {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            let us = self.now_us().saturating_sub(sent).max(1);
            let _ = self.latency.lock().unwrap().record(us);
        } else if first_in_session {
            self.redelivered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn error(&self, reply: &Frame) {
        let code = reply
            .error()
            .map_or_else(|| "unparsed".into(), |e| e.code.as_str().to_string());
        *self.errors.lock().unwrap().entry(code).or_default() += 1;
    }

    /// Every acknowledged message has arrived (compared key by key: deliveries of messages
    /// whose acknowledgement was lost with a connection are not counted against anything).
    fn settled(&self) -> bool {
        self.missing(false) == 0
    }

    fn lost(&self) -> u64 {
        self.missing(std::env::var_os("SWITCHBOARD_BENCH_DEBUG").is_some())
    }

    /// Acknowledged keys that have not arrived; `print` lists them on stderr.
    fn missing(&self, print: bool) -> u64 {
        let mut lost = 0;
        for (to, (exp, rec)) in self.expected.iter().zip(&self.received).enumerate() {
            let rec = rec.lock().unwrap();
            for k in exp
                .lock()
                .unwrap()
                .iter()
                .filter(|k| print && !rec.contains(k))
            {
                eprintln!(
                    "lost: key {k} from client {} (message {}) to client {to}, recipient reconnected: {}, sender reconnected: {}",
                    k >> 32,
                    k & 0xffff_ffff,
                    self.relogged[to].load(Ordering::Relaxed),
                    self.relogged[(k >> 32) as usize].load(Ordering::Relaxed),
                );
            }
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

/// Where a bench message goes.
#[derive(Debug, Clone, Copy)]
enum Dest {
    /// A user, by id.
    User(u64),
    /// A group, by id.
    Group(u64),
}

/// What a bench client sends: a destination chooser (key to recipient index and
/// destination), the open-loop rate of this client (0 = closed loop) and the closed-loop
/// window.
type SendPlan = (Arc<dyn Fn(u64) -> (usize, Dest) + Send + Sync>, f64, usize);

/// From a connection's reader to its client task.
enum Inbound {
    /// A reply (replies come in request order); true when ok.
    Reply(bool, Frame),
    /// Acknowledge up to this seq.
    Ack(Seq),
    /// The server is draining: reconnect after this many ms.
    Goaway(u64),
    /// The connection is gone.
    Closed,
}

/// Reads one connection (`kept`: frames read during the login, first): records messages,
/// forwards replies and lifecycle events.
fn spawn_reader(
    me: usize,
    mut rd: Reader<<Connection as Transport>::Read>,
    kept: VecDeque<Frame>,
    tally: Arc<Tally>,
    tx: tokio::sync::mpsc::UnboundedSender<Inbound>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut session = HashSet::new();
        let mut kept = kept.into_iter();
        // The newest seq this session was given: by a message or by the reply to its own send.
        // Acknowledging own sends' seqs too is what a real client does (protocol guarantee 8
        // makes it safe); a server that broke the guarantee shows up here as lost messages.
        let mut latest: Option<Seq> = None;
        let mut unacked = 0;
        loop {
            let frame = match kept.next() {
                Some(frame) => frame,
                None => match rd.next_frame().await {
                    Ok(Some(frame)) => frame,
                    Err(ClientError::Protocol(_)) => continue,
                    Ok(None) | Err(_) => {
                        let _ = tx.send(Inbound::Closed);
                        return;
                    }
                },
            };
            match frame.kind() {
                FrameKind::Event("message") => {
                    if let Ok(d) = frame.parse_as::<Delivery>() {
                        tally.receive(me, &d.msg.text, &mut session);
                        latest = Some(d.seq);
                        unacked += 1;
                    }
                }
                FrameKind::Reply { re, ok, .. } => {
                    if ok
                        && (re == "send" || re == "group.send")
                        && let Ok(s) = frame.parse_as::<SentSeq>()
                    {
                        latest = Some(s.msg.seq);
                        unacked += 1;
                    }
                    let _ = tx.send(Inbound::Reply(ok, frame));
                }
                FrameKind::Event("goaway") => {
                    // Acknowledge everything seen before leaving, as the bundled client does.
                    if let Some(seq) = latest.take() {
                        let _ = tx.send(Inbound::Ack(seq));
                    }
                    let after = match frame.event() {
                        Ok(Event::Goaway {
                            reconnect_after_ms, ..
                        }) => reconnect_after_ms,
                        _ => 0,
                    };
                    let _ = tx.send(Inbound::Goaway(after));
                    continue;
                }
                FrameKind::Event(_) => {}
            }
            // Acknowledge now and then, so a reconnect replays little.
            if unacked >= 64
                && let Some(seq) = latest.take()
            {
                let _ = tx.send(Inbound::Ack(seq));
                unacked = 0;
            }
        }
    })
}

/// One bench client: sends per `plan`, receives, acknowledges, and on `goaway` or a lost
/// connection logs in again with its token through `addr` (the load balancer).
#[allow(clippy::too_many_arguments)]
fn spawn_client(
    me: usize,
    conn: Conn,
    addr: SocketAddr,
    source: Option<IpAddr>,
    token: String,
    tally: Arc<Tally>,
    plan: Option<SendPlan>,
    fanout: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conn = Some(conn);
        let mut n: u64 = 0;
        let (rate, window) = plan.as_ref().map_or((0.0, 1), |p| (p.1, p.2.max(1)));
        let mut ticker = (rate > 0.0).then(|| {
            // Random phase: clients ticking in lock-step would send in bursts.
            let period = Duration::from_secs_f64(1.0 / rate);
            let phase = period.mul_f64(rand::random::<f64>());
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut lost_at: Option<Instant> = None;
        loop {
            let c = match conn.take() {
                Some(c) => c,
                None => match relogin(addr, source, &token, me, &tally).await {
                    Some(c) => c,
                    None => return,
                },
            };
            if let Some(at) = lost_at.take() {
                tally.relogged[me].store(true, Ordering::Relaxed);
                tally.reconnects.fetch_add(1, Ordering::Relaxed);
                let us = at.elapsed().as_micros() as u64;
                tally.reconnect_max_us.fetch_max(us, Ordering::Relaxed);
                let _ = tally.reconnect_times.lock().unwrap().record(us.max(1));
            }
            tally.connected.fetch_add(1, Ordering::Relaxed);
            let (rd, mut wr, kept) = c.into_parts();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let reader = spawn_reader(me, rd, kept, tally.clone(), tx);
            // Requests awaiting replies, in order: Some((recipient, key)) for sends, None for acks.
            let mut inflight: VecDeque<Option<(usize, u64)>> = VecDeque::new();
            let mut sends_in_flight = 0usize;
            let mut wait = 0u64;
            loop {
                let stopping = tally.stop.load(Ordering::Relaxed);
                let can_send =
                    plan.is_some() && !stopping && (rate > 0.0 || sends_in_flight < window);
                let mut send_now = false;
                tokio::select! {
                    biased;
                    ev = rx.recv() => match ev {
                        Some(Inbound::Reply(ok, reply)) => if let Some(Some((to, key))) = inflight.pop_front() {
                            sends_in_flight -= 1;
                            if tally.frozen.load(Ordering::Acquire) {
                                // The run is being accounted: this send counts neither way.
                            } else if ok {
                                tally.acked.fetch_add(1, Ordering::Relaxed);
                                if fanout == 0 {
                                    tally.expected[to].lock().unwrap().push(key);
                                } else {
                                    for (i, exp) in tally.expected.iter().enumerate().take(fanout) {
                                        if i != me {
                                            exp.lock().unwrap().push(key);
                                        }
                                    }
                                }
                            } else {
                                tally.error(&reply);
                            }
                        },
                        Some(Inbound::Ack(seq)) => {
                            let seq = seq.to_string();
                            inflight.push_back(None);
                            if wr.send(&Request::Ack(AckArgs { seq: seq.into() })).await.is_err() {
                                break;
                            }
                        }
                        Some(Inbound::Goaway(ms)) => {
                            wait = ms;
                            break;
                        }
                        Some(Inbound::Closed) | None => break,
                    },
                    _ = async { ticker.as_mut().expect("open loop").tick().await }, if can_send && ticker.is_some() => send_now = true,
                    _ = std::future::ready(()), if can_send && ticker.is_none() => send_now = true,
                    // Wakes the loop to notice `stop` (the run's end aborts this task).
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                if send_now {
                    let Some((make, _, _)) = plan.as_ref() else {
                        continue;
                    };
                    n += 1;
                    let key = ((me as u64) << 32) | n;
                    let (to, dest) = make(key);
                    let text = tally.text(key);
                    let req = match dest {
                        Dest::User(to) => Request::Send(SendArgs {
                            to,
                            text: text.into(),
                            client_id: None,
                        }),
                        Dest::Group(group) => Request::GroupSend(GroupSendArgs {
                            group,
                            text: text.into(),
                            client_id: None,
                        }),
                    };
                    inflight.push_back(Some((to, key)));
                    sends_in_flight += 1;
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    if wr.send(&req).await.is_err() {
                        break;
                    }
                }
            }
            // Unanswered sends may or may not be stored: they are simply not expected.
            reader.abort();
            tally.connected.fetch_sub(1, Ordering::Relaxed);
            lost_at = Some(Instant::now());
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    })
}

/// Reconnects and logs in with the token (bounded retries, jittered back-off); backlog
/// messages are recorded.
async fn relogin(
    addr: SocketAddr,
    source: Option<IpAddr>,
    token: &str,
    me: usize,
    tally: &Tally,
) -> Option<Conn> {
    let backoff = Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    for attempt in 0..60 {
        if let Ok(Ok(mut c)) =
            tokio::time::timeout(Duration::from_secs(5), open(addr, source)).await
        {
            let mut session = HashSet::new();
            if token_login_recording(&mut c, token, |text| tally.receive(me, text, &mut session))
                .await
                .is_ok()
            {
                return Some(c);
            }
        }
        tokio::time::sleep(backoff.delay(attempt)).await;
    }
    None
}

/// Waits `duration`, printing progress, then stops senders and waits for late deliveries.
async fn drive(
    args: &BenchArgs,
    tally: &Arc<Tally>,
    handles: Vec<tokio::task::JoinHandle<()>>,
) -> Window {
    // The CPU samples are taken at the two instants that bound `secs`, so CPU per second and
    // per message cover exactly the window of the delivered/s figure.
    let cpu_start = CpuSample::take(args);
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
    let cpu_end = CpuSample::take(args);
    let delivered_in_window = tally.delivered.load(Ordering::Relaxed);
    // Stop sending; wait until every acknowledged message arrived or the settle time ran out.
    let deadline = Instant::now() + Duration::from_secs_f64(args.settle);
    tally.stop.store(true, Ordering::Relaxed);
    while !tally.settled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Replies of the last sends may still come in; from now on they are not counted, and the
    // acknowledged set is checked once more now that it cannot grow.
    tally.frozen.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(100)).await;
    while !tally.settled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tally
        .connected_at_end
        .store(tally.connected.load(Ordering::Relaxed), Ordering::Relaxed);
    if !args.quiet {
        eprintln!();
    }
    for h in handles {
        h.abort();
    }
    Window {
        secs: sending,
        start: cpu_start,
        end: cpu_end,
        delivered: delivered_in_window,
    }
}

fn latency_report(tally: &Tally, report: &mut Value) {
    let h = tally.latency.lock().unwrap();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    report["latency_p50_ms"] = json!(ms(0.5));
    report["latency_p90_ms"] = json!(ms(0.9));
    report["latency_p99_ms"] = json!(ms(0.99));
    report["latency_max_ms"] = json!(h.max() as f64 / 1000.0);
    report["errors"] = json!(*tally.errors.lock().unwrap());
    report["redelivered_after_reconnect"] = json!(tally.redelivered.load(Ordering::Relaxed));
    report["reconnects"] = json!(tally.reconnects.load(Ordering::Relaxed));
    report["reconnect_max_ms"] =
        json!(tally.reconnect_max_us.load(Ordering::Relaxed) as f64 / 1000.0);
    let r = tally.reconnect_times.lock().unwrap();
    if !r.is_empty() {
        report["reconnect_p50_ms"] = json!(r.value_at_quantile(0.5) as f64 / 1000.0);
        report["reconnect_p99_ms"] = json!(r.value_at_quantile(0.99) as f64 / 1000.0);
    }
    report["logged_in_at_end"] = json!(tally.connected_at_end.load(Ordering::Relaxed));
}

/// Puts the clients in groups (`--group-size`, `--big-share`, `--big-group`): client `i` is
/// in small group `i / group_size`, and the first `big_share` of every stretch of clients in
/// a big group too. Group names carry a random tag, so every run starts with fresh groups.
async fn join_groups(args: &BenchArgs, conns: Vec<Conn>) -> anyhow::Result<Vec<Conn>> {
    if args.group_size == 0 && args.big_share <= 0.0 {
        return Ok(conns);
    }
    let mut conns: Vec<Option<Conn>> = conns.into_iter().map(Some).collect();
    let tag: u32 = rand::random();
    let n = conns.len();
    let big_members = ((n as f64) * args.big_share.clamp(0.0, 1.0)).round() as usize;
    let mut plan: Vec<Vec<String>> = vec![Vec::new(); n];
    for (i, groups) in plan.iter_mut().enumerate() {
        // No small groups with --group-size 0.
        if let Some(g) = i.checked_div(args.group_size) {
            groups.push(format!("{}-{tag:08x}-g{g}", args.prefix));
        }
    }
    // Big-group members are spread over the clients (every k-th one).
    if let Some(step) = n.checked_div(big_members) {
        for (k, i) in (0..n).step_by(step.max(1)).take(big_members).enumerate() {
            let big = k / args.big_group.max(1);
            plan[i].push(format!("{}-{tag:08x}-big{big}", args.prefix));
        }
    }
    // Creators first (the first member of each group), then everyone else joins by name,
    // a bounded number at a time.
    let mut created = HashSet::new();
    let mut joins: Vec<(usize, String)> = Vec::new();
    for (i, groups) in plan.into_iter().enumerate() {
        for g in groups {
            if created.insert(g.clone()) {
                conns[i]
                    .as_mut()
                    .expect("in place")
                    .group_create(&g, None)
                    .await
                    .with_context(|| format!("creating group {g}"))?;
            } else {
                joins.push((i, g));
            }
        }
    }
    let total = joins.len();
    let mut grouped: HashMap<usize, Vec<String>> = HashMap::new();
    for (i, g) in joins {
        grouped.entry(i).or_default().push(g);
    }
    // One task per joining client (each owns its connection meanwhile), then back in place.
    // At most JOINS_AT_ONCE join at a time: a join into a 1000-member group publishes
    // `member_joined` to every member, and thousands at once queue past the Redis time-out.
    const JOINS_AT_ONCE: usize = 32;
    let slots = Arc::new(Semaphore::new(JOINS_AT_ONCE));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, groups) in grouped {
        let mut conn = conns[i].take().expect("in place");
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.expect("never closed");
            for g in &groups {
                conn.group_join_name(g)
                    .await
                    .with_context(|| format!("joining group {g}"))?;
            }
            anyhow::Ok((i, conn))
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (i, conn) = done??;
        conns[i] = Some(conn);
    }
    if !args.quiet {
        eprintln!("{total} group joins done");
    }
    Ok(conns.into_iter().map(|c| c.expect("in place")).collect())
}

async fn chat(args: &BenchArgs) -> anyhow::Result<Value> {
    if args.clients < 2 {
        bail!("chat needs at least 2 clients");
    }
    let users = users(args, args.clients).await?;
    let conns = connect_all(args, &users).await?;
    let conns = join_groups(args, conns).await?;
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
        let make: Arc<dyn Fn(u64) -> (usize, Dest) + Send + Sync> = Arc::new(move |key| {
            // A cheap, well-spread choice of another client.
            let mut to = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) as usize % (n - 1);
            if to >= me {
                to += 1;
            }
            (to, Dest::User(ids[to]))
        });
        handles.push(spawn_client(
            me,
            conn,
            args.addrs[me % args.addrs.len()],
            source_ip(args, me),
            users[me].token.clone(),
            tally.clone(),
            Some((make, per_client_rate, args.window)),
            0,
        ));
    }
    let window = drive(args, &tally, handles).await;
    let secs = window.secs;
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
    if let Some(cpu) = cpu_report(args, &window)? {
        report["cpu"] = cpu;
    }
    Ok(report)
}

async fn group(args: &BenchArgs) -> anyhow::Result<Value> {
    if args.clients < 2 || args.senders == 0 || args.senders > args.clients {
        bail!("group needs at least 2 members and 1..=members senders");
    }
    let users = users(args, args.clients).await?;
    let mut conns = connect_all(args, &users).await?;
    let gname = format!("{}_g{}", args.prefix, rand::random::<u32>() % 1_000_000);
    let gid = conns[0]
        .group_create(&gname, None)
        .await
        .context("group.create failed")?
        .group
        .id;
    for c in conns.iter_mut().skip(1) {
        c.group_join(gid).await.context("group.join")?;
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
            let make: Arc<dyn Fn(u64) -> (usize, Dest) + Send + Sync> =
                Arc::new(move |_| (0, Dest::Group(gid)));
            (make, per_sender_rate, args.window)
        });
        handles.push(spawn_client(
            me,
            conn,
            args.addrs[me % args.addrs.len()],
            source_ip(args, me),
            users[me].token.clone(),
            tally.clone(),
            send,
            members,
        ));
    }
    let window = drive(args, &tally, handles).await;
    let secs = window.secs;
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
    if let Some(cpu) = cpu_report(args, &window)? {
        report["cpu"] = cpu;
    }
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
                    let Ok(mut c) = open(addr, source).await else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let login = if method == "password" {
                        c.login_password(&u.name, BENCH_PASSWORD).await
                    } else {
                        c.login_token(&u.token).await
                    };
                    match login {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
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

/// Resident memory of the `--pid` processes, summed (0 without `--pid`).
fn server_rss(args: &BenchArgs) -> u64 {
    args.pids.iter().map(|&p| rss_bytes(p)).sum()
}

/// Lets the server finish closing sessions before its memory is read.
const MEMORY_SETTLE: Duration = Duration::from_secs(2);

/// Runs `op(i)` for `i` in `0..n` from `clients` concurrent tasks; returns the seconds taken.
async fn fan_out<F, Fut>(clients: usize, n: usize, op: F) -> anyhow::Result<f64>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.clamp(1, n.max(1)) {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return anyhow::Ok(());
                }
                op(i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn signup(args: &BenchArgs) -> anyhow::Result<Value> {
    let n = args.count;
    let tag = rand::random::<u32>() % 1_000_000;
    let prefix = Arc::new(format!("{}_s{tag}", args.prefix));
    let addrs = Arc::new(args.addrs.clone());
    let before = server_rss(args);
    let (p, a) = (prefix.clone(), addrs.clone());
    let register_secs = fan_out(args.clients, n, move |i| {
        let (name, addr) = (format!("{p}_{i}"), a[i % a.len()]);
        async move {
            let mut c = open(addr, None).await?;
            c.register(&name, BENCH_PASSWORD)
                .await
                .with_context(|| format!("register {name}"))?;
            Ok(())
        }
    })
    .await?;
    let after_registrations = server_rss(args);
    let login_secs = fan_out(args.clients, n, move |i| {
        let (name, addr) = (format!("{prefix}_{i}"), addrs[i % addrs.len()]);
        async move {
            let mut c = open(addr, None).await?;
            c.login_password(&name, BENCH_PASSWORD)
                .await
                .with_context(|| format!("login {name}"))?;
            Ok(())
        }
    })
    .await?;
    tokio::time::sleep(MEMORY_SETTLE).await;
    let after = server_rss(args);
    Ok(json!({
        "scenario": "signup",
        "concurrency": args.clients,
        "registrations": n,
        "registrations_per_sec": n as f64 / register_secs,
        "password_logins": n,
        "password_logins_per_sec": n as f64 / login_secs,
        "server_rss_before_bytes": before,
        "server_rss_after_registrations_bytes": after_registrations,
        "server_rss_after_bytes": after,
    }))
}

async fn backlog(args: &BenchArgs) -> anyhow::Result<Value> {
    /// Sends written before their replies are read.
    const PIPELINE: usize = 100;
    let users = users(args, 2).await?;
    let (to, from) = (&users[0], &users[1]);
    let addr = args.addrs[0];
    // Whatever an earlier run left unread stays in the backlog; count what arrives instead.
    let mut sender = open(addr, None).await?;
    token_login(&mut sender, &from.token).await?;
    let mut sent = 0;
    while sent < args.count {
        let batch = PIPELINE.min(args.count - sent);
        for k in 0..batch {
            let text = format!("backlog {} {}", sent + k, "x".repeat(64));
            let req = Request::Send(SendArgs {
                to: to.id,
                text: text.into(),
                client_id: None,
            });
            sender.send_request(&req).await?;
        }
        for _ in 0..batch {
            let r = loop {
                let f = tokio::time::timeout(SETUP_TIMEOUT, sender.next_frame())
                    .await
                    .context("timed out waiting for the server")??
                    .context("connection closed")?;
                if f.is_reply() {
                    break f;
                }
            };
            if let Some(e) = r.error() {
                bail!(
                    "send: {e} (start the node with a high SWITCHBOARD_SEND_RATE_PER_SEC / _BURST)"
                );
            }
        }
        sent += batch;
    }
    drop(sender);
    tokio::time::sleep(MEMORY_SETTLE).await;
    let before = server_rss(args);
    let started = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..args.clients.max(1) {
        let (token, received, addr) = (
            to.token.clone(),
            received.clone(),
            args.addrs[w % args.addrs.len()],
        );
        tasks.push(tokio::spawn(async move {
            let mut c = open(addr, None).await?;
            token_login_recording(&mut c, &token, |_| {
                received.fetch_add(1, Ordering::Relaxed);
            })
            .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(MEMORY_SETTLE).await;
    let after = server_rss(args);
    let received = received.load(Ordering::Relaxed);
    Ok(json!({
        "scenario": "backlog",
        "messages_sent": sent,
        "concurrent_logins": args.clients.max(1),
        "backlog_messages_per_login": received as f64 / args.clients.max(1) as f64,
        "seconds": secs,
        "backlog_messages_per_sec": received as f64 / secs,
        "server_rss_before_bytes": before,
        "server_rss_after_bytes": after,
    }))
}

async fn groupview(args: &BenchArgs) -> anyhow::Result<Value> {
    let users = Arc::new(users(args, args.count.max(2)).await?);
    let addr = args.addrs[0];
    let mut owner = open(addr, None).await?;
    token_login(&mut owner, &users[0].token).await?;
    let gname = format!("{}_v{}", args.prefix, rand::random::<u32>() % 1_000_000);
    let gid = owner
        .group_create(&gname, None)
        .await
        .context("group.create failed")?
        .group
        .id;
    drop(owner);
    let (u, addrs) = (users.clone(), Arc::new(args.addrs.clone()));
    fan_out(SETUP_CONCURRENCY, users.len() - 1, move |i| {
        let (token, addr) = (u[i + 1].token.clone(), addrs[i % addrs.len()]);
        async move {
            let mut c = open(addr, None).await?;
            token_login(&mut c, &token).await?;
            c.group_join(gid).await.context("group.join")?;
            Ok(())
        }
    })
    .await?;
    tokio::time::sleep(MEMORY_SETTLE).await;
    let before = server_rss(args);
    let views = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.clients.clamp(1, users.len()) {
        let (token, views, stop) = (users[w].token.clone(), views.clone(), stop.clone());
        let addr = args.addrs[w % args.addrs.len()];
        tasks.push(tokio::spawn(async move {
            // A fresh login per round: its reply carries the group view too.
            while !stop.load(Ordering::Relaxed) {
                let mut c = open(addr, None).await?;
                token_login(&mut c, &token).await?;
                views.fetch_add(1, Ordering::Relaxed);
                for _ in 0..10 {
                    c.group_list().await.context("group.list")?;
                    views.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(MEMORY_SETTLE).await;
    let after = server_rss(args);
    let views = views.load(Ordering::Relaxed);
    Ok(json!({
        "scenario": "groupview",
        "members": users.len(),
        "clients": args.clients,
        "group_views": views,
        "group_views_per_sec": views as f64 / secs,
        "server_rss_before_bytes": before,
        "server_rss_after_bytes": after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /proc/PID/stat line with `comm` in place and utime 1234, stime 567.
    fn stat_line(comm: &str) -> String {
        format!(
            "4242 ({comm}) S 1 4242 4242 0 -1 4194560 9135 0 0 0 1234 567 0 0 20 0 9 0 \
             123456 123456789 4321 18446744073709551615 1 1 0 0 0 0 0 4096 17638 0 0 0 17 1 0 0"
        )
    }

    #[test]
    fn bench_stat_parser_counts_fields_after_the_last_paren() {
        assert_eq!(parse_stat_ticks(&stat_line("switchboard")), Some(1801));
        // A command name with spaces and parentheses (any process can rename itself so).
        assert_eq!(parse_stat_ticks(&stat_line("a) 7 8 (b c) 9")), Some(1801));
        assert_eq!(parse_stat_ticks(&stat_line(")")), Some(1801));
        assert_eq!(parse_stat_ticks("4242 (x) S 1 2 3"), None, "truncated");
        assert_eq!(parse_stat_ticks("no paren at all"), None);
    }

    #[test]
    fn bench_cpu_ticks_of_this_process_grow_while_it_computes() {
        let hz = clock_ticks_per_sec().unwrap();
        assert!(hz >= 1.0, "{hz}");
        let me = std::process::id();
        let before = cpu_ticks(me).unwrap();
        let started = Instant::now();
        let mut x = 1u64;
        // Bounded: a few ticks of CPU are a few tens of milliseconds.
        while cpu_ticks(me).unwrap() < before + 3 && started.elapsed() < Duration::from_secs(20) {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
            }
            std::hint::black_box(x);
        }
        assert!(cpu_ticks(me).unwrap() >= before + 3, "CPU time never grew");
        assert!(cpu_ticks(u32::MAX).is_err(), "no such process");
    }
}
