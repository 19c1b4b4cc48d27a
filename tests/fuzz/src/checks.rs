//! Fuzz targets as plain functions: each takes the fuzzer's bytes and panics when an invariant
//! breaks. Shared by the libFuzzer targets (tests/fuzz/fuzz_targets/, nightly, `cargo fuzz`)
//! and the stable driver tests/fuzz_targets.rs (CI), so both check exactly the same things.
//! Also holds a small seeded generator used by the stable driver and tests/fuzz_live.rs.
#![allow(dead_code)]

use bytes::BytesMut;
use serde_json::{Value, json};
use switchboard::error::{Code, Error};
use switchboard::protocol::reply::Done;
use switchboard::protocol::{
    self, Event, Frame as Request, OpKind, Reply, Request as Op, Seq, write_reply,
};
use switchboard::server::conn::{Frame, LineReader};

/// Frame reader: `data[0]` picks the bound (0..=63) and whether the first chunk arrives as
/// the PROXY-header leftover (`with_buffered`), `data[1]` the number of chunk sizes that
/// follow, the rest is the byte stream, fed in chunks of those sizes (cycled).
///
/// Invariants: no frame is longer than the bound or contains `\n`; the frames are exactly the
/// input's lines minus their `\n` / `\r\n` endings, in order, whatever the chunking; the first
/// line over the bound (complete, or an unfinished one over bound + 1 bytes) gives
/// `TooLarge` and nothing is yielded before it that was not a whole line.
pub fn frame_reader(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(head & 0x3f);
    let first_buffered = head & 0x40 != 0;
    let Some((&ncuts, rest)) = rest.split_first() else {
        return;
    };
    let ncuts = usize::from(ncuts % 16).min(rest.len());
    let (cuts, payload) = rest.split_at(ncuts);

    let mut reader: Option<LineReader> = None;
    let mut got: Vec<Option<Vec<u8>>> = Vec::new();
    let (mut pos, mut i) = (0, 0);
    'feed: while pos < payload.len() {
        let n = match cuts.len() {
            0 => payload.len(),
            k => usize::from(cuts[i % k]) + 1,
        }
        .min(payload.len() - pos);
        let chunk = &payload[pos..pos + n];
        pos += n;
        i += 1;
        let r = match reader.as_mut() {
            Some(r) => {
                r.feed(chunk);
                r
            }
            None if first_buffered => {
                reader.insert(LineReader::with_buffered(max, BytesMut::from(chunk)))
            }
            None => {
                let r = reader.insert(LineReader::new(max));
                r.feed(chunk);
                r
            }
        };
        while let Some(f) = r.next_frame() {
            match f {
                Frame::Line(line) => {
                    assert!(line.len() <= max, "frame of {} > {max} bytes", line.len());
                    assert!(!line.contains(&b'\n'), "frame contains a newline");
                    got.push(Some(line.to_vec()));
                }
                Frame::TooLarge => {
                    got.push(None);
                    // The stream cannot be resynchronised: the session closes here.
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(
        got,
        expected_frames(payload, max),
        "max {max}, cuts {cuts:?}"
    );
}

/// The frames a correct reader yields for `payload` (`None` = `TooLarge`, always last).
fn expected_frames(payload: &[u8], max: usize) -> Vec<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &b) in payload.iter().enumerate() {
        if b == b'\n' {
            let mut line = &payload[start..i];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            if line.len() > max {
                out.push(None);
                return out;
            }
            out.push(Some(line.to_vec()));
            start = i + 1;
        }
    }
    // An unfinished line is already too large when even a closing "\r\n" cannot save it.
    if payload.len() - start > max + 1 {
        out.push(None);
    }
    out
}

/// Request parser: any bytes as one frame.
///
/// Invariants: never a panic; `Ok` exactly for a JSON object with a string `op` and a scalar
/// (or absent) `ref`, which are returned as given (fields other than `op` and `ref` are
/// skipped, not parsed: an out-of-range number, a lone surrogate escape or deep nesting there
/// is ignored like the field); every `Err` is `bad_json` (not JSON / not an object) or
/// `bad_request`, and its `error` event is one JSON line carrying that code; the reply to an
/// accepted request is exactly one line echoing `op` and `ref`; argument parsing of every op
/// fails only with `bad_request`, and the value checks (names, texts, client ids, seqs) answer
/// only with their documented codes.
pub fn request(data: &[u8]) {
    let parsed: Result<Value, _> = serde_json::from_slice(data);
    match Request::parse(data) {
        Ok(req) => {
            let v = match parsed {
                Ok(v) => v,
                Err(e) => {
                    assert!(
                        skipped_only(&e),
                        "parse accepted a frame that is not JSON: {e}"
                    );
                    return;
                }
            };
            let obj = v.as_object().expect("parse accepted a non-object");
            assert_eq!(obj.get("op").and_then(Value::as_str), Some(&*req.op));
            let reference: Option<Value> = req
                .reference
                .map(|r| serde_json::from_str(r.get()).expect("ref reads back"));
            assert_eq!(reference.as_ref(), obj.get("ref"));
            if let Some(r) = &reference {
                assert!(!r.is_array() && !r.is_object(), "ref {r} is not a scalar");
            }
            replies(&req, reference.as_ref());
            arguments(&req);
        }
        Err(e) => {
            let expected = match &parsed {
                Ok(Value::Object(_)) => Code::BadRequest,
                // An object whose skipped fields a JSON tree refuses, without a string `op`.
                Err(p) if skipped_only(p) && e.code == Code::BadRequest => Code::BadRequest,
                _ => Code::BadJson,
            };
            assert_eq!(e.code, expected, "{e}");
            check_error_event(&e);
        }
    }
}

/// Whether a JSON tree refused a frame only for what the request parser skips unparsed
/// (a number out of range, a lone surrogate escape, deep nesting).
fn skipped_only(e: &serde_json::Error) -> bool {
    let e = e.to_string();
    ["out of range", "surrogate", "recursion limit"]
        .iter()
        .any(|s| e.contains(s))
}

/// The `error` event for `e` is one JSON line with a protocol code.
fn check_error_event(e: &Error) {
    assert_eq!(Code::parse(e.code.as_str()), Some(e.code));
    let line = Event::Error { error: e.clone() }.line();
    assert!(!line.contains('\n'), "event spans lines: {line:?}");
    let ev: Value = serde_json::from_str(&line).expect("error event is JSON");
    assert_eq!(ev["event"], "error");
    assert_eq!(ev["error"]["code"], e.code.as_str());
}

/// Every reply to `req` (ok, or an error of any code) is exactly one line echoing op and ref.
fn replies(req: &Request, reference: Option<&Value>) {
    let mut out = Vec::new();
    let ok = Ok(Reply::Done(Done {}));
    write_reply(&mut out, &req.op, req.reference, &ok);
    check_reply(req, reference, &out, true);
    for code in Code::ALL {
        let mut out = Vec::new();
        let err = Err(Error::new(code, "m"));
        write_reply(&mut out, &req.op, req.reference, &err);
        let v = check_reply(req, reference, &out, false);
        assert_eq!(v["error"]["code"], code.as_str());
    }
}

fn check_reply(req: &Request, reference: Option<&Value>, out: &[u8], ok: bool) -> Value {
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    assert_eq!(out.last(), Some(&b'\n'));
    let v: Value = serde_json::from_slice(out).expect("reply is JSON");
    assert_eq!(v["re"], &*req.op);
    assert_eq!(v["ok"], ok);
    assert_eq!(v.get("ref"), reference);
    v
}

/// Parses the arguments of every op (the server's own types) from the frame, whatever its op,
/// and checks the values.
fn arguments(req: &Request) {
    fn code_in(r: switchboard::error::Result<()>, allowed: &[Code]) {
        if let Err(e) = r {
            assert!(allowed.contains(&e.code), "{e}");
        }
    }
    fn text(t: &str, client_id: Option<&str>) {
        for max in [1, 8, 4096] {
            let r = protocol::check_text(t, max);
            code_in(r.clone(), &[Code::BadRequest, Code::TextTooLong]);
            assert_eq!(r.is_ok(), !t.is_empty() && t.chars().count() <= max);
        }
        let r = protocol::check_client_id(client_id);
        code_in(r.clone(), &[Code::BadRequest]);
        let len = client_id.map_or(1, str::len);
        assert_eq!(
            r.is_ok(),
            (1..=protocol::MAX_CLIENT_ID_BYTES).contains(&len)
        );
    }
    for kind in OpKind::ALL {
        assert_eq!(OpKind::from_name(kind.name()), Some(kind));
        let op = match req.request(kind) {
            Ok(op) => op,
            Err(e) => {
                assert_eq!(e.code, Code::BadRequest, "{e}");
                continue;
            }
        };
        assert_eq!(op.kind(), kind);
        match op {
            Op::Register(a) => {
                let _ = protocol::valid_name(&a.name);
                let _ = protocol::valid_password(&a.password);
            }
            Op::Login(a) => {
                let _ = (a.id, a.password, a.token);
                if let Some(n) = a.name {
                    assert_eq!(protocol::valid_name(&n), name_rule(&n), "name {n:?}");
                }
            }
            Op::Send(a) => text(&a.text, a.client_id.as_deref()),
            Op::GroupSend(a) => text(&a.text, a.client_id.as_deref()),
            Op::Ack(a) => seq(&a.seq),
            Op::GroupCreate(a) => {
                assert_eq!(protocol::valid_name(&a.name), name_rule(&a.name));
                let _ = a.desc;
            }
            Op::History(a) => {
                // A `before` parsed only as a seq (which prints back to itself); `with` only
                // as `{"user":id}` or `{"group":id}`; the handler bounds `limit`.
                if let Some(b) = a.before {
                    seq(&b.to_string());
                }
                let _ = (a.with, a.limit);
            }
            Op::GroupJoin(a) => {
                // A name that is not a valid name is simply not found.
                let _ = (a.group, a.name);
            }
            Op::PasswordChange(a) => {
                let _ = protocol::valid_password(&a.old);
                let _ = protocol::valid_password(&a.new);
            }
            Op::AccountDelete(a) => {
                let _ = protocol::valid_password(&a.password);
            }
            Op::Whois(_)
            | Op::Block(_)
            | Op::Unblock(_)
            | Op::BlockList
            | Op::FriendAdd(_)
            | Op::FriendRemove(_)
            | Op::GroupLeave(_)
            | Op::Ping
            | Op::Logout
            | Op::FriendList
            | Op::GroupList => {}
        }
    }
}

/// The protocol's naming rule, restated: 1..=32 of `A-Z a-z 0-9 _ . -`.
fn name_rule(n: &str) -> bool {
    (1..=protocol::MAX_NAME_CHARS).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A seq string: parses only as `digits-digits` within u64, errors are `bad_request`, and a
/// parsed seq prints back to a string that parses to the same position.
pub fn seq(s: &str) {
    match s.parse::<Seq>() {
        Ok(q) => {
            let (ms, n) = s.split_once('-').expect("a parsed seq has a dash");
            assert_eq!(ms.parse::<u64>().ok(), Some(q.ms));
            assert_eq!(n.parse::<u64>().ok(), Some(q.n));
            assert!(s.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
            assert_eq!(q.to_string().parse::<Seq>().unwrap(), q);
        }
        Err(e) => assert_eq!(e.code, Code::BadRequest),
    }
}

/// Frame bound of the session target's node (small, so inputs reach it).
pub const SESSION_MAX_FRAME: usize = 1024;
/// Protocol error limit of the session target's node (the default).
const SESSION_MAX_ERRORS: u32 = 10;

/// An in-process node on the embedded backend, shared by every input of the session target.
struct SessionNode {
    rt: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
}

fn session_node() -> &'static SessionNode {
    static NODE: std::sync::OnceLock<SessionNode> = std::sync::OnceLock::new();
    NODE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = rt.block_on(async {
            let s = switchboard::Settings {
                listen: "127.0.0.1:0".parse().unwrap(),
                http_listen: "127.0.0.1:0".parse().unwrap(),
                node_name: "fuzz".into(),
                redis_url: None,
                argon2_memory_kib: 64,
                argon2_iterations: 1,
                max_frame_bytes: SESSION_MAX_FRAME,
                max_protocol_errors: SESSION_MAX_ERRORS,
                // Inputs fail logins by the thousand; the seeds' logins must keep working.
                login_failures_max: 1_000_000,
                ..Default::default()
            };
            let server = switchboard::Server::bind(s).await.expect("bind");
            let addr = server.chat_addr();
            // Runs for the life of the process.
            tokio::spawn(server.run(tokio_util::sync::CancellationToken::new()));
            addr
        });
        SessionNode { rt, addr }
    })
}

/// What the node must send for a line, in order (other events are not counted).
#[derive(Debug, PartialEq)]
enum Answer {
    Reply(String, Option<Value>),
    ErrorEvent(Code),
}

/// The answers the protocol prescribes for `data` sent on one connection and then
/// half-closed: a reply per request line, an `error` event per other non-blank line, nothing
/// after the error limit or an oversized frame (the node closes), nothing for an unfinished
/// last line unless it is already too long.
fn expected_answers(data: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    let mut errors = 0;
    let mut rest = data;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..i];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        rest = &rest[i + 1..];
        if line.len() > SESSION_MAX_FRAME {
            out.push(Answer::ErrorEvent(Code::FrameTooLarge));
            return out;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match Request::parse(line) {
            Ok(r) => out.push(Answer::Reply(
                r.op.into_owned(),
                r.reference
                    .map(|r| serde_json::from_str(r.get()).expect("ref reads back")),
            )),
            Err(e) => {
                out.push(Answer::ErrorEvent(e.code));
                errors += 1;
                if errors >= SESSION_MAX_ERRORS {
                    return out;
                }
            }
        }
    }
    if rest.len() > SESSION_MAX_FRAME + 1 {
        out.push(Answer::ErrorEvent(Code::FrameTooLarge));
    }
    out
}

/// Session: `data` as everything a client sends on one connection to a real node (embedded
/// backend, shared across inputs, so names registered by one input exist for the next).
/// Reaches the per-op argument structs and checks of src/session.rs.
///
/// Invariants: the node answers and closes within 10 s; every output line is JSON, the first
/// is `hello`; replies and `error` events are exactly [`expected_answers`], in order, echoing
/// `op` and `ref`; every error code is a protocol code; an ok `send` carries its message.
pub fn session(data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = session_node();
    let out = node.rt.block_on(async {
        let exchange = async {
            let s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
            let (mut rd, mut wr) = s.into_split();
            // Write while reading: the node answers before it has read everything.
            let writer = async {
                let _ = wr.write_all(data).await;
                let _ = wr.shutdown().await;
            };
            let reader = async {
                let mut out = Vec::new();
                let _ = rd.read_to_end(&mut out).await;
                out
            };
            tokio::join!(writer, reader).1
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
            .await
            .expect("the node answered and closed within 10 s")
    });
    assert_eq!(out.last(), Some(&b'\n'), "output ends with a whole line");
    let mut got = Vec::new();
    for (i, line) in out[..out.len() - 1].split(|&b| b == b'\n').enumerate() {
        let v: Value = serde_json::from_slice(line).expect("every output line is JSON");
        if i == 0 {
            assert_eq!(v["event"], "hello");
        }
        if let Some(re) = v.get("re") {
            let ok = v["ok"].as_bool().expect("ok is a bool");
            if !ok {
                let code = v["error"]["code"].as_str().expect("error code");
                assert!(Code::parse(code).is_some(), "unknown code {code}");
            } else if re == "send" {
                assert!(
                    v["msg"]["id"].is_string() && v["msg"]["seq"].is_string(),
                    "{v}"
                );
            }
            let re = re.as_str().expect("re is the op string").to_string();
            got.push(Answer::Reply(re, v.get("ref").cloned()));
        } else if v["event"] == "error" {
            let code = v["error"]["code"].as_str().and_then(Code::parse);
            got.push(Answer::ErrorEvent(code.expect("error event code")));
        }
    }
    assert_eq!(got, expected_answers(data));
}

/// A small seeded generator (SplitMix64): runs are reproducible from the printed seed.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `1/n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// `n` random bytes, biased towards the bytes that matter to framing and JSON.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        const SPECIAL: &[u8] = b"\n\r{}[]\":,\\ 0-";
        (0..n)
            .map(|_| {
                if self.one_in(3) {
                    *self.pick(SPECIAL)
                } else {
                    self.next_u64() as u8
                }
            })
            .collect()
    }

    /// A random JSON value of any type (strings may hold any Unicode, numbers any sign/size).
    pub fn value(&mut self, depth: u32) -> Value {
        match self.below(if depth == 0 { 6 } else { 8 }) {
            0 => Value::Null,
            1 => Value::Bool(self.one_in(2)),
            2 => json!(self.next_u64() >> self.below(64)),
            3 => json!(-((self.next_u64() >> (1 + self.below(63))) as i64)),
            4 => json!((self.next_u64() as f64) / 7.0),
            5 => Value::String(self.string()),
            6 => Value::Array((0..self.below(4)).map(|_| self.value(depth - 1)).collect()),
            _ => Value::Object(
                (0..self.below(4))
                    .map(|_| (self.string(), self.value(depth - 1)))
                    .collect(),
            ),
        }
    }

    /// A short random string: names, seqs, long runs, control and non-ASCII characters.
    pub fn string(&mut self) -> String {
        match self.below(8) {
            0 => String::new(),
            1 => format!("{}-{}", self.next_u64() % 100_000, self.next_u64() % 10),
            2 => "x".repeat(self.below(300)),
            3 => "é🦀\u{0}\u{7f}\u{2028}\u{feff}"
                .chars()
                .take(self.below(7))
                .collect(),
            4 => format!("u{}", self.below(1000)),
            _ => (0..self.below(12))
                .map(|_| char::from_u32(self.below(0x800) as u32).unwrap_or('?'))
                .collect(),
        }
    }

    /// A request object for one of the protocol's ops (or an unknown one), with fields of
    /// random names and types mixed with the ones the op reads.
    pub fn request(&mut self) -> Value {
        const OPS: &[&str] = &[
            "ping",
            "register",
            "login",
            "whois",
            "logout",
            "send",
            "ack",
            "friend.add",
            "friend.remove",
            "friend.list",
            "group.create",
            "group.join",
            "group.leave",
            "group.list",
            "group.send",
            "PING",
            "",
            "nope",
        ];
        const FIELDS: &[&str] = &[
            "name",
            "password",
            "id",
            "token",
            "to",
            "text",
            "client_id",
            "seq",
            "user",
            "group",
            "desc",
            "ref",
        ];
        let mut m = serde_json::Map::new();
        if !self.one_in(20) {
            let op = if self.one_in(10) {
                self.value(1)
            } else {
                json!(self.pick(OPS))
            };
            m.insert("op".into(), op);
        }
        for _ in 0..self.below(5) {
            let k = self.pick(FIELDS).to_string();
            let v = self.value(2);
            m.insert(k, v);
        }
        Value::Object(m)
    }

    /// A session input: a login script (sometimes), then frames with mixed endings.
    pub fn session(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        if !self.one_in(4) {
            let name = format!("fz{}", self.below(4));
            for op in ["register", "login"] {
                let l = json!({"op": op, "name": name, "password": "fuzz password"});
                v.extend(serde_json::to_vec(&l).unwrap());
                v.push(b'\n');
            }
        }
        for _ in 0..self.below(12) {
            let f = if self.one_in(3) {
                let to = 1 + self.below(4);
                serde_json::to_vec(&json!({"op": "send", "to": to, "text": self.string()})).unwrap()
            } else {
                self.frame()
            };
            v.extend(f);
            v.extend_from_slice(if self.one_in(4) { b"\r\n" } else { b"\n" });
        }
        if self.one_in(20) {
            v.extend(std::iter::repeat_n(b'a', SESSION_MAX_FRAME + 2));
        }
        v
    }

    /// A frame for the request parser: a request, possibly mangled, or raw bytes.
    pub fn frame(&mut self) -> Vec<u8> {
        let mut f = match self.below(4) {
            0 => {
                let n = self.below(64);
                self.bytes(n)
            }
            _ => serde_json::to_vec(&self.request()).unwrap(),
        };
        for _ in 0..self.below(3) {
            if f.is_empty() {
                break;
            }
            let i = self.below(f.len());
            match self.below(3) {
                0 => f[i] = self.next_u64() as u8,
                1 => f.truncate(i),
                _ => f.insert(i, *self.pick(b"\"{}\\\xff\xc3")),
            }
        }
        f
    }
}
