//! Live protocol fuzz: two in-process nodes on a real redis-server, several clients per node
//! sending seeded random sequences of valid and broken requests (wrong types, unknown ops,
//! huge and empty fields, invalid UTF-8, split and pipelined frames, garbage, oversized
//! frames) mixed with real sends, acks and group operations between them.
//!
//! Invariants: every request line gets exactly one reply, in order, echoing op and ref; every
//! other non-blank line exactly one `error` event; the node closes a connection only at the
//! protocol error limit or on an oversized frame; no panic anywhere; both nodes still run and
//! serve a fresh client afterwards; every `send` / `group.send` answered ok reaches each
//! recipient (live, or in the backlog of a fresh login: message ids compared).
//!
//! Clients ack the seqs they received in `message` events and, as the bundled client does, the
//! seqs of their own sends' replies (protocol guarantee 8 makes that safe; a reply overtaking
//! queued deliveries shows up here as a lost message). `SWITCHBOARD_FUZZ_ACK_OWN=0` acks only
//! received seqs.
//!
//! Bounded: `SWITCHBOARD_FUZZ_SECS` seconds of storm (default 3, the CI pass), seed from
//! `SWITCHBOARD_FUZZ_SEED` or the clock (printed).

mod common;

#[path = "fuzz/src/checks.rs"]
mod checks;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use checks::Rng;
use common::{Cluster, PASSWORD, WAIT, uname};
use serde_json::{Value, json};
use switchboard::protocol::{Frame, Seq};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// Users the clients log in as, and how many clients each has (spread over both nodes): a
/// user with one client is often offline, so its messages go through the login backlog.
const CLIENTS_PER_USER: [usize; 4] = [2, 2, 2, 1];
/// The nodes' frame bound (small, so oversized frames are cheap to send).
const MAX_FRAME: usize = 16 * 1024;
/// The nodes' protocol error limit (the default).
const MAX_ERRORS: u32 = 10;

/// The `ref` of the fuzz clients' own logins.
const LOGIN_REF: &str = "fuzzer-login";

/// Panics anywhere in the process (node tasks included) since the storm began.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// What the test knows about the fuzz users, and what they sent and received.
#[derive(Default)]
struct Book {
    users: Vec<(u64, String)>,
    /// The group every fuzz user is in for the whole storm (never left).
    group: u64,
    /// (recipient user id, message id) of every send / group.send answered ok.
    sent: Vec<(u64, String)>,
    /// Message ids each user's sessions received as `message` events.
    received: HashMap<u64, HashSet<String>>,
}

#[derive(Default, Debug)]
struct Stats {
    lines: u64,
    replies: u64,
    ok_replies: u64,
    error_events: u64,
    blank: u64,
    closes: u64,
    split_writes: u64,
    sends_ok: u64,
    messages: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.lines += o.lines;
        self.replies += o.replies;
        self.ok_replies += o.ok_replies;
        self.error_events += o.error_events;
        self.blank += o.blank;
        self.closes += o.closes;
        self.split_writes += o.split_writes;
        self.sends_ok += o.sends_ok;
        self.messages += o.messages;
    }
}

/// What a written line must cause, in order.
#[derive(Debug)]
enum Expect {
    /// A reply with this `re` and `ref` (the request is kept to act on the reply).
    Reply(Value),
    /// One `error` event.
    ErrorEvent,
    /// End of stream (after the error event that reached the limit, or an oversized frame).
    Close,
}

struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    /// `error` events caused so far (the node closes at [`MAX_ERRORS`]).
    errors: u32,
}

struct Fuzzer {
    name: String,
    me: u64,
    addrs: Vec<SocketAddr>,
    rng: Rng,
    conn: Option<Conn>,
    book: Arc<Mutex<Book>>,
    /// Newest seq seen in a `message` event (acks never go past it).
    seen: Seq,
    seqs: Vec<Seq>,
    /// Also ack the seqs of own sends (default; `SWITCHBOARD_FUZZ_ACK_OWN=0` turns it off).
    ack_own: bool,
    stats: Stats,
}

impl Fuzzer {
    /// Connects to a random node and logs in with the password.
    async fn connect(&mut self) {
        let addr = *self.rng.pick(&self.addrs);
        let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let (rd, wr) = s.into_split();
        self.conn = Some(Conn {
            rd: BufReader::new(rd),
            wr,
            errors: 0,
        });
        let login =
            json!({"op": "login", "name": self.name, "password": PASSWORD, "ref": LOGIN_REF});
        self.run_batch(vec![line(&login)]).await;
    }

    /// One step: a batch of 1–4 lines, written whole or in pieces, and every answer checked.
    async fn step(&mut self) {
        if self.conn.is_some() && self.rng.one_in(40) {
            // Go offline for a moment: what arrives meanwhile must wait in the inbox.
            self.conn = None;
            let pause = 20 + self.rng.below(300) as u64;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        if self.conn.is_none() {
            self.connect().await;
        }
        let n = 1 + self.rng.below(4);
        let lines = (0..n).map(|_| self.make_line()).collect();
        self.run_batch(lines).await;
    }

    /// Writes `lines` (each without its ending), then reads until every one is answered.
    async fn run_batch(&mut self, lines: Vec<Vec<u8>>) {
        let conn = self.conn.as_mut().expect("connected");
        let mut expect = VecDeque::new();
        let mut bytes = Vec::new();
        for mut l in lines {
            let ending: &[u8] = if self.rng.one_in(4) { b"\r\n" } else { b"\n" };
            l.extend_from_slice(ending);
            bytes.extend_from_slice(&l);
            self.stats.lines += 1;
            let before = expect.len();
            let closes = classify(&l[..l.len() - 1], &mut conn.errors, &mut expect);
            if expect.len() == before {
                self.stats.blank += 1;
            }
            // A logout ends the batch: what follows it would be read before login, under the
            // smaller pre-login frame bound, and the fuzzer starts over after a logout anyway.
            let logout = serde_json::from_slice::<Value>(&l[..l.len() - 1])
                .is_ok_and(|v| v["op"] == "logout");
            if closes || logout {
                break;
            }
        }
        if bytes.len() > 1 && self.rng.one_in(4) {
            // Split frames: pieces with pauses, so the node sees partial lines.
            self.stats.split_writes += 1;
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let k = (1 + self.rng.below(rest.len())).min(rest.len());
                if conn.wr.write_all(&rest[..k]).await.is_err() {
                    break;
                }
                rest = &rest[k..];
                tokio::time::sleep(Duration::from_millis(self.rng.below(3) as u64)).await;
            }
        } else {
            // The node may close before an oversized frame is written: only then may this fail.
            let r = conn.wr.write_all(&bytes).await;
            assert!(
                r.is_ok() || matches!(expect.back(), Some(Expect::Close)),
                "{}: write failed: {r:?}",
                self.name
            );
        }
        let mut logged_out = false;
        while let Some(e) = expect.front() {
            let conn = self.conn.as_mut().expect("connected");
            let Some(frame) = read_frame(&mut conn.rd).await else {
                assert!(
                    matches!(e, Expect::Close),
                    "{}: the node closed a well-behaved connection; still expected {expect:?}",
                    self.name
                );
                expect.pop_front();
                self.stats.closes += 1;
                self.conn = None;
                return;
            };
            if frame.get("re").is_some() {
                let req = match expect.pop_front() {
                    Some(Expect::Reply(req)) => req,
                    e => panic!("{}: unexpected reply {frame}, expected {e:?}", self.name),
                };
                assert_eq!(
                    frame["re"], req["op"],
                    "{}: replies out of order",
                    self.name
                );
                assert_eq!(
                    frame.get("ref"),
                    req.get("ref"),
                    "{}: ref not echoed",
                    self.name
                );
                assert!(frame["ok"].is_boolean(), "{frame}");
                if frame["ok"] == false {
                    let code = frame["error"]["code"].as_str().unwrap_or_default();
                    assert!(
                        switchboard::error::Code::parse(code).is_some(),
                        "unknown code in {frame}"
                    );
                }
                self.stats.replies += 1;
                logged_out |= self.on_reply(&req, &frame);
            } else if frame["event"] == "error" {
                assert!(
                    matches!(expect.pop_front(), Some(Expect::ErrorEvent)),
                    "{}: unexpected error event {frame}",
                    self.name
                );
                self.stats.error_events += 1;
            } else if frame["event"] == "message" {
                self.on_message(&frame);
            } else {
                assert_ne!(frame["event"], "goaway", "nobody drains the nodes");
            }
        }
        if logged_out {
            // Start over on a fresh connection and login.
            self.conn = None;
        }
    }

    /// Acts on a reply: records ok sends; true after a successful logout.
    fn on_reply(&mut self, req: &Value, reply: &Value) -> bool {
        if reply["ok"] != true {
            return false;
        }
        self.stats.ok_replies += 1;
        let id = reply["msg"]["id"].as_str().map(String::from);
        if self.ack_own {
            // As the bundled client does: its own sends' positions become ack candidates.
            if let Some(Ok(seq)) = reply["msg"]["seq"].as_str().map(str::parse::<Seq>) {
                self.seen = self.seen.max(seq);
                self.seqs.push(seq);
            }
        }
        let mut book = self.book.lock().unwrap();
        match req["op"].as_str() {
            Some("send") => {
                let to = req["to"].as_u64().expect("an ok send has a user id");
                book.sent.push((to, id.expect("send reply has msg.id")));
                self.stats.sends_ok += 1;
            }
            Some("group.send") if req["group"].as_u64() == Some(book.group) => {
                let id = id.expect("group.send reply has msg.id");
                let others: Vec<u64> = book
                    .users
                    .iter()
                    .map(|u| u.0)
                    .filter(|&u| u != self.me)
                    .collect();
                for u in others {
                    book.sent.push((u, id.clone()));
                }
                self.stats.sends_ok += 1;
            }
            Some("logout") => return true,
            Some("login") if req["ref"] != LOGIN_REF => {
                panic!("a random login succeeded: {req}");
            }
            _ => {}
        }
        false
    }

    fn on_message(&mut self, frame: &Value) {
        self.stats.messages += 1;
        let id = frame["msg"]["id"].as_str().expect("message has an id");
        let seq: Seq = frame["seq"].as_str().unwrap().parse().expect("seq parses");
        self.seen = self.seen.max(seq);
        self.seqs.push(seq);
        let mut book = self.book.lock().unwrap();
        book.received
            .entry(self.me)
            .or_default()
            .insert(id.to_string());
    }

    /// One line (without ending, never containing `\n`) from the mix of valid and broken input.
    fn make_line(&mut self) -> Vec<u8> {
        let (users, group) = {
            let b = self.book.lock().unwrap();
            (b.users.clone(), b.group)
        };
        let other = loop {
            let u = self.rng.pick(&users).clone();
            if u.0 != self.me {
                break u;
            }
        };
        let rng = &mut self.rng;
        let text = || -> String { "héllo 🦀 wörld ".chars().cycle().take(1 + 40).collect() };
        let mut v = match rng.below(24) {
            0..=4 => json!({"op": "send", "to": other.0, "text": text()}),
            5 => {
                json!({"op": "send", "to": other.0, "text": text(), "client_id": format!("c{}", rng.next_u64())})
            }
            6 | 7 => json!({"op": "group.send", "group": group, "text": text()}),
            8 => {
                let seq = match self.seqs.len() {
                    0 => "0-0".to_string(),
                    n => self.seqs[rng.below(n)].to_string(),
                };
                json!({"op": "ack", "seq": seq})
            }
            9 => json!({"op": *rng.pick(&["ping", "friend.list", "group.list", "history"])}),
            10 => json!({"op": "whois", "name": other.1}),
            11 => json!({"op": *rng.pick(&["friend.add", "friend.remove"]), "user": other.0}),
            12 => json!({"op": "group.create", "name": format!("fz{}", rng.below(1_000_000))}),
            13 => json!({"op": *rng.pick(&["group.join", "group.leave"]), "group": rng.below(20)}),
            // Wrong types, unknown ops, missing and extra fields.
            14..=17 => rng.request(),
            // Huge and empty fields.
            18 => json!({"op": "send", "to": other.0, "text": "x".repeat(4097)}),
            19 => {
                json!({"op": *rng.pick(&["send", "whois", "ping"]), "to": other.0, "text": "", "name": "", "pad": "é".repeat(rng.below(MAX_FRAME / 2 - 64))})
            }
            // Not requests at all.
            20 => return garbage(rng),
            21 => return rng.frame().into_iter().filter(|&b| b != b'\n').collect(),
            22 => return b" \t ".repeat(rng.below(3)),
            _ => {
                if rng.one_in(40) {
                    // Oversized: frame_too_large, then the node closes.
                    return vec![b'a'; MAX_FRAME + 1 + rng.below(100)];
                }
                // Invalid UTF-8 inside a JSON string.
                let mut l = br#"{"op":"send","to":1,"text":"ab"}"#.to_vec();
                l.insert(29, 0xff);
                return l;
            }
        };
        if v.get("op").is_some() && rng.one_in(2) {
            let r = match rng.below(5) {
                0 => json!({"nested": 1}),
                1 => json!(rng.next_u64()),
                2 => Value::Null,
                _ => json!(rng.string()),
            };
            v["ref"] = r;
        }
        if !self.harmless(&v, group) {
            return b"{\"op\":\"ping\"}".to_vec();
        }
        line(&v)
    }

    /// Random requests must not undo the bookkeeping the checks rely on: no ack past what
    /// this client has seen (that would drop messages nobody received), no leaving the
    /// shared group, no registrations that may succeed.
    fn harmless(&self, v: &Value, group: u64) -> bool {
        match v["op"].as_str() {
            Some("ack") => match v["seq"].as_str().map(str::parse::<Seq>) {
                Some(Ok(s)) => s <= self.seen,
                _ => true,
            },
            Some("group.leave") => v["group"].as_u64() != Some(group),
            // Registrations that could succeed would count against a per-address hourly
            // limit that the fresh clients at the end also need; malformed ones still go.
            Some("register") => !(v["name"].is_string() && v["password"].is_string()),
            _ => true,
        }
    }
}

/// Bytes that are not a request: random bytes without newlines, JSON non-objects, objects
/// without an op.
fn garbage(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => br#"[1,2,3]"#.to_vec(),
        1 => br#"{"x":1}"#.to_vec(),
        2 => b"\xff\xfe\x00garbage".to_vec(),
        _ => {
            let n = 1 + rng.below(200);
            rng.bytes(n).into_iter().filter(|&b| b != b'\n').collect()
        }
    }
}

fn line(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// What the node must answer to `content` (a line without `\n`); true if it then closes.
fn classify(content: &[u8], errors: &mut u32, expect: &mut VecDeque<Expect>) -> bool {
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    if content.len() > MAX_FRAME {
        expect.push_back(Expect::ErrorEvent);
        expect.push_back(Expect::Close);
        return true;
    }
    if content.iter().all(u8::is_ascii_whitespace) {
        return false;
    }
    match Frame::parse(content) {
        Ok(f) => {
            // Fields other than op and ref are skipped unparsed: a frame the server accepts
            // may hold a value serde_json's tree refuses (an out-of-range number). Then only
            // op and ref are expected back.
            let v: Value = serde_json::from_slice(content).unwrap_or_else(|_| {
                let r: Option<Value> = f.reference.map(|r| serde_json::from_str(r.get()).unwrap());
                let mut v = json!({ "op": &*f.op });
                if let Some(r) = r {
                    v["ref"] = r;
                }
                v
            });
            expect.push_back(Expect::Reply(v));
            false
        }
        Err(_) => {
            expect.push_back(Expect::ErrorEvent);
            *errors += 1;
            if *errors >= MAX_ERRORS {
                expect.push_back(Expect::Close);
                return true;
            }
            false
        }
    }
}

/// The next frame, `None` at end of stream (or reset); panics after [`WAIT`].
async fn read_frame(rd: &mut BufReader<OwnedReadHalf>) -> Option<Value> {
    let mut l = Vec::new();
    match tokio::time::timeout(WAIT, rd.read_until(b'\n', &mut l)).await {
        Err(_) => panic!("no answer within {WAIT:?}"),
        Ok(Err(_)) | Ok(Ok(0)) => None,
        Ok(Ok(_)) => Some(
            serde_json::from_slice(&l)
                .unwrap_or_else(|e| panic!("bad frame {:?}: {e}", l.escape_ascii().to_string())),
        ),
    }
}

fn budget() -> Duration {
    let secs = std::env::var("SWITCHBOARD_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_traffic_from_several_clients_against_two_nodes() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let seed = std::env::var("SWITCHBOARD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("fuzz_live: seed {seed} (SWITCHBOARD_FUZZ_SEED={seed} repeats the inputs)");

    let cluster = Cluster::redis_with(2, |s| {
        s.max_frame_bytes = MAX_FRAME;
        s.max_protocol_errors = MAX_ERRORS;
        // Random logins fail by the thousand from one address; the fuzz users must still log in.
        s.login_failures_max = 1_000_000;
        s.max_unauthenticated_per_address = 1_000_000;
    })
    .await;
    let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.addr).collect();

    // The fuzz users, all in one group.
    let book = Arc::new(Mutex::new(Book::default()));
    let mut owner = None;
    for _ in CLIENTS_PER_USER {
        let name = uname("fz");
        let id = common::register(addrs[0], &name).await;
        book.lock().unwrap().users.push((id, name.clone()));
        let mut c = common::Client::connect(addrs[1]).await;
        c.login(&name).await;
        c.backlog().await;
        match &owner {
            None => {
                let r = c
                    .ok(json!({"op": "group.create", "name": uname("fzg")}))
                    .await;
                book.lock().unwrap().group = r["group"]["id"].as_u64().unwrap();
                owner = Some(c);
            }
            Some(_) => {
                let g = book.lock().unwrap().group;
                c.ok(json!({"op": "group.join", "group": g})).await;
            }
        }
    }
    drop(owner);

    let ack_own = std::env::var_os("SWITCHBOARD_FUZZ_ACK_OWN").is_none_or(|v| v != "0");
    let deadline = Instant::now() + budget();
    let users = book.lock().unwrap().users.clone();
    let mut tasks = Vec::new();
    for (i, (id, name)) in users.iter().enumerate() {
        for node in 0..CLIENTS_PER_USER[i] {
            let mut f = Fuzzer {
                name: name.clone(),
                me: *id,
                addrs: addrs.clone(),
                rng: Rng::new(seed ^ ((i * 2 + node) as u64).wrapping_mul(0x9e37_79b9)),
                conn: None,
                book: book.clone(),
                seen: Seq::ZERO,
                seqs: Vec::new(),
                ack_own,
                stats: Stats::default(),
            };
            tasks.push(tokio::spawn(async move {
                let mut steps = 0u64;
                while steps < 20 || Instant::now() < deadline {
                    f.step().await;
                    steps += 1;
                }
                f.stats
            }));
        }
    }
    let mut total = Stats::default();
    for t in tasks {
        total.add(&t.await.expect("a fuzz client failed"));
    }

    // The nodes survived: no panic, still running, and they serve a fresh client.
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic during the storm");
    for (i, node) in cluster.nodes.iter().enumerate() {
        assert!(node.running(), "node {i} stopped");
        assert_eq!(node.get("/readyz").await.0, 200, "node {i} not ready");
        let mut a = common::user(node.addr, "fresh").await;
        let b = common::user(cluster.addr(i + 1), "fresh").await;
        a.ok(json!({"op": "ping"})).await;
        a.ok(json!({"op": "send", "to": b.id, "text": "after the storm"}))
            .await;
    }

    // Every ok send reached its recipient: live, or in the backlog of a fresh login.
    let book = std::mem::take(&mut *book.lock().unwrap());
    let mut missing = Vec::new();
    for (id, name) in &book.users {
        let mut c = common::Client::connect(addrs[0]).await;
        c.login(name).await;
        let (backlog, _) = c.backlog().await;
        let mut have: HashSet<String> = book.received.get(id).cloned().unwrap_or_default();
        have.extend(
            backlog
                .iter()
                .map(|m| m["msg"]["id"].as_str().unwrap().to_string()),
        );
        for (to, msg) in &book.sent {
            if to == id && !have.contains(msg) {
                missing.push((*to, msg.clone()));
            }
        }
    }
    eprintln!("fuzz_live: seed {seed}, {total:?}");
    assert!(total.sends_ok > 0 && total.error_events > 0 && total.replies > 0);
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged sends never reached their recipient: {missing:?}",
        missing.len(),
        book.sent.len()
    );
}
