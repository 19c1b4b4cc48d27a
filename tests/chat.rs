//! `switchboard chat` end to end: the built binary in script mode (stdin piped) against real
//! in-process nodes, with harness clients on the other side.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{Client, Cluster, PASSWORD, WAIT, register, uname, user};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// The chat binary, driven through its standard input, read line by line.
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    rx: mpsc::UnboundedReceiver<String>,
    /// Every stdout line so far.
    lines: Vec<String>,
    /// Lines already matched by `expect` (the next `expect` looks after them).
    matched: usize,
    stderr: std::thread::JoinHandle<String>,
}

impl Chat {
    /// Starts `switchboard chat SERVERS --name NAME ARGS…`; the password comes from the
    /// environment when `password` is given.
    fn spawn(servers: &str, name: &str, args: &[&str], password: Option<&str>) -> Chat {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.args(["chat", servers, "--name", name])
            .args(args)
            .env_remove("SWITCHBOARD_PASSWORD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = password {
            cmd.env("SWITCHBOARD_PASSWORD", p);
        }
        let mut child = cmd.spawn().expect("spawn switchboard chat");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Chat {
            stdin: child.stdin.take(),
            child,
            rx,
            lines: Vec::new(),
            matched: 0,
            stderr,
        }
    }

    /// Writes one line to the client's standard input.
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Ends the script.
    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next line (after the last match) that contains `needle`, within [`WAIT`].
    async fn expect(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self.lines[self.matched..]
                .iter()
                .position(|l| l.contains(needle))
            {
                self.matched += i + 1;
                return self.lines[self.matched - 1].clone();
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(line)) => self.lines.push(line),
                Ok(None) => panic!("chat ended without {needle:?}; output:\n{}", self.dump()),
                Err(_) => panic!("no {needle:?} within {WAIT:?}; output:\n{}", self.dump()),
            }
        }
    }

    /// Ends the script and waits for the process to end: its status, stdout lines, stderr.
    async fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        self.close_stdin();
        self.exit().await
    }

    /// Waits for the process to end (standard input stays open).
    async fn exit(mut self) -> (ExitStatus, Vec<String>, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chat did not exit; output:\n{}",
                self.dump()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The reader thread ends with the pipe; collect what is left.
        while let Some(line) = self.rx.recv().await {
            self.lines.push(line);
        }
        let lines = std::mem::take(&mut self.lines);
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        (status, lines, stderr.join().unwrap())
    }

    fn dump(&self) -> String {
        self.lines.join("\n")
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP forwarder in front of `to`; aborting the returned task closes the listener and every
/// forwarded connection (a lost connection, as when a load balancer or node dies).
async fn proxy(to: SocketAddr) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            conns.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, task)
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_drives_every_command_against_a_real_node() {
    let c = Cluster::memory().await;
    let addr = c.addr(0);
    let mut bob = user(addr, "bob").await;
    let bob_name = bob.login_name().await;
    let alice = uname("alice");

    let mut chat = Chat::spawn(
        &addr.to_string(),
        &alice,
        &["--register", "--password-stdin"],
        None,
    );
    chat.send(PASSWORD);
    chat.expect(&format!("* registered {alice} (id ")).await;
    chat.expect(&format!("* logged in as {alice} (id ")).await;
    chat.expect("* synced, 0 unread").await;

    chat.send(&format!("/add {bob_name}"));
    chat.expect(&format!("* now friends with {bob_name}")).await;
    let ev = bob.event("friend_added").await;
    assert_eq!(ev["friend"]["name"], alice.as_str());
    let alice_id = ev["friend"]["id"].as_u64().unwrap();

    chat.send(&format!("/msg {bob_name} hello bob"));
    chat.expect(&format!(" you to {bob_name}: hello bob")).await;
    let m = bob.event("message").await;
    assert_eq!(m["msg"]["text"], "hello bob");
    assert_eq!(m["msg"]["from"]["id"], alice_id);
    assert!(m["msg"]["client_id"].is_string(), "sends carry a client_id");

    let group = uname("g");
    chat.send(&format!("/create {group} a test group"));
    let line = chat.expect(&format!("* created #{group} (id ")).await;
    let gid: u64 = line
        .rsplit("(id ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    bob.ok(json!({"op": "group.join", "group": gid})).await;
    chat.expect(&format!("* {bob_name} joined #{group}")).await;
    chat.send(&format!("/g {group} hi group"));
    chat.expect(&format!(" #{group} you: hi group")).await;
    let m = bob.event("message").await;
    assert_eq!(m["msg"]["text"], "hi group");
    assert_eq!(m["msg"]["to"]["group"], gid);

    // Incoming, live: a 1:1 and a group message; a line break in a text stays on one line.
    bob.ok(json!({"op": "send", "to": alice_id, "text": "hey alice"}))
        .await;
    chat.expect(&format!(" {bob_name}: hey alice")).await;
    bob.ok(json!({"op": "group.send", "group": gid, "text": "two\nlines"}))
        .await;
    chat.expect(&format!(" #{group} {bob_name}: two\\nlines"))
        .await;

    chat.send("/friends");
    chat.expect(&format!("* friends: {bob_name} (online)"))
        .await;
    chat.send("/groups");
    chat.expect(&format!("* groups: #{group} (id {gid}, 2 members)"))
        .await;
    chat.send(&format!("/whois {bob_name}"));
    chat.expect(&format!("* {bob_name} (id {}) is online", bob.id))
        .await;
    chat.send("/msg nobody-here hello");
    chat.expect("! no_such_user:").await;
    chat.send("/g no-such-group hello");
    chat.expect("! no_such_group:").await;
    chat.send("/frobnicate");
    chat.expect("! usage: unknown command").await;
    chat.send(&format!("/leave {group}"));
    chat.expect(&format!("* left #{group}")).await;
    bob.event("member_left").await;

    let (status, lines, stderr) = chat.finish().await;
    assert!(status.success(), "exit {status}; stderr: {stderr}");
    for l in &lines {
        assert!(
            !l.contains('\u{1b}') && !l.starts_with("> "),
            "plain: {l:?}"
        );
    }
    // Everything shown (and sent) was acknowledged: a new login has no backlog.
    let mut again = Client::connect(addr).await;
    again.login(&alice).await;
    let (msgs, unread) = again.backlog().await;
    assert!(msgs.is_empty(), "acknowledged: {msgs:?}");
    assert_eq!(unread, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_exit_non_zero_with_a_message() {
    let c = Cluster::memory().await;
    let addr = c.addr(0).to_string();
    let name = uname("carol");
    register(c.addr(0), &name).await;

    let chat = Chat::spawn(&addr, &name, &[], Some("wrong password"));
    let (status, lines, stderr) = chat.finish().await;
    assert_eq!(status.code(), Some(1), "{lines:?}");
    assert!(stderr.contains("bad_credentials"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    assert_eq!(count(&lines, "logged in"), 0);

    let chat = Chat::spawn(&addr, &name, &["--register"], Some(PASSWORD));
    let (status, _, stderr) = chat.finish().await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("name_taken"), "{stderr}");

    let chat = Chat::spawn(&addr, &name, &[], None);
    let (status, _, stderr) = chat.finish().await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("SWITCHBOARD_PASSWORD"), "{stderr}");
}

/// A goaway moves the client to the next address with its token; a message that comes again
/// in the new login's backlog (its acknowledgement was lost) is not shown twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_reconnects_with_the_token_and_drops_duplicates() {
    let c = Cluster::redis(2).await;
    let alice = uname("alice");
    let alice_id = register(c.addr(1), &alice).await;
    let mut bob = user(c.addr(1), "bob").await;
    let bob_name = bob.login_name().await;
    let servers = format!("{},{}", c.addr(0), c.addr(1));

    let mut chat = Chat::spawn(&servers, &alice, &[], Some(PASSWORD));
    chat.expect(&format!(
        "* logged in as {alice} (id {alice_id}) at {}",
        c.addr(0)
    ))
    .await;
    chat.expect("* synced, 0 unread").await;
    bob.ok(json!({"op": "send", "to": alice_id, "text": "before the drain"}))
        .await;
    chat.expect(&format!(" {bob_name}: before the drain")).await;

    // Wait for the client's ack, then forget it: the next login replays the message.
    let redis = c.redis.as_ref().unwrap();
    let acked = format!("sb:{{u:{alice_id}}}:acked");
    let deadline = tokio::time::Instant::now() + WAIT;
    while redis.cli(&["GET", &acked]).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client never acked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis.cli(&["DEL", &acked]);

    c.nodes[0].begin_stop();
    chat.expect("is going away (shutdown); reconnecting in")
        .await;
    chat.expect(&format!("* reconnected to {}", c.addr(1)))
        .await;
    bob.ok(json!({"op": "send", "to": alice_id, "text": "after the drain"}))
        .await;
    chat.expect(&format!(" {bob_name}: after the drain")).await;

    let (status, lines, stderr) = chat.finish().await;
    assert!(status.success(), "exit {status}; stderr: {stderr}");
    assert_eq!(count(&lines, "before the drain"), 1, "{lines:#?}");
    assert_eq!(count(&lines, "after the drain"), 1, "{lines:#?}");
    assert_eq!(
        count(&lines, "synced"),
        1,
        "a reconnect prints one status line"
    );
}

/// A connection that just breaks (no goaway): the client reconnects to the next address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_reconnects_to_the_next_address() {
    let c = Cluster::redis(2).await;
    let (front, front_task) = proxy(c.addr(0)).await;
    let alice = uname("alice");
    let alice_id = register(c.addr(1), &alice).await;
    let mut bob = user(c.addr(1), "bob").await;
    let bob_name = bob.login_name().await;

    let mut chat = Chat::spawn(
        &format!("{front},{}", c.addr(1)),
        &alice,
        &[],
        Some(PASSWORD),
    );
    chat.expect(&format!(
        "* logged in as {alice} (id {alice_id}) at {front}"
    ))
    .await;
    bob.ok(json!({"op": "send", "to": alice_id, "text": "one"}))
        .await;
    chat.expect(&format!(" {bob_name}: one")).await;

    front_task.abort();
    chat.expect(&format!("* connection to {front} lost; reconnecting"))
        .await;
    chat.expect(&format!("* reconnected to {}", c.addr(1)))
        .await;
    bob.ok(json!({"op": "send", "to": alice_id, "text": "two"}))
        .await;
    chat.expect(&format!(" {bob_name}: two")).await;
    let (status, lines, stderr) = chat.finish().await;
    assert!(status.success(), "exit {status}; stderr: {stderr}");
    assert_eq!(count(&lines, ": one"), 1, "{lines:#?}");
}

/// With nowhere to reconnect to, the client gives up after its bounded attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_attempts_are_bounded() {
    let c = Cluster::memory().await;
    let (front, front_task) = proxy(c.addr(0)).await;
    let alice = uname("alice");
    register(c.addr(0), &alice).await;
    let mut chat = Chat::spawn(
        &front.to_string(),
        &alice,
        &["--reconnect-attempts", "2"],
        Some(PASSWORD),
    );
    chat.expect("* synced").await;
    front_task.abort();
    chat.expect("lost; reconnecting").await;
    let (status, _, stderr) = chat.exit().await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("gave up reconnecting after 2 attempts"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_more_and_join_by_name() {
    // A small scan bound: the client reads on through short pages by itself.
    let c = Cluster::memory_with(|s| s.history_scan_max = 3).await;
    let addr = c.addr(0);
    let mut bob = user(addr, "bob").await;
    let bob_name = bob.login_name().await;
    let mut carol = user(addr, "carol").await;
    let carol_name = carol.login_name().await;
    let group = uname("Rust");
    let gid = bob.ok(json!({"op": "group.create", "name": group})).await["group"]["id"]
        .as_u64()
        .unwrap();
    let alice = uname("alice");
    let alice_id = register(addr, &alice).await;

    let mut chat = Chat::spawn(&addr.to_string(), &alice, &[], Some(PASSWORD));
    chat.expect("* synced, 0 unread").await;
    for text in ["b1", "b2", "b3"] {
        bob.ok(json!({"op": "send", "to": alice_id, "text": text}))
            .await;
        chat.expect(&format!(" {bob_name}: {text}")).await;
    }
    carol
        .ok(json!({"op": "send", "to": alice_id, "text": "c1"}))
        .await;
    chat.expect(&format!(" {carol_name}: c1")).await;
    chat.send(&format!("/msg {bob_name} a1"));
    chat.expect(&format!(" you to {bob_name}: a1")).await;
    // Any group by name, in any case.
    chat.send(&format!("/join {}", group.to_lowercase()));
    chat.expect(&format!("* joined #{group} (id {gid}, 2 members)"))
        .await;
    bob.event("member_joined").await;
    bob.ok(json!({"op": "group.send", "group": gid, "text": "g1"}))
        .await;
    chat.expect(&format!(" #{group} {bob_name}: g1")).await;
    chat.send("/join no-such-group-here");
    chat.expect("! no_such_group:").await;

    // The last two with bob, oldest first, with their date; then further back.
    chat.send(&format!("/history {bob_name} 2"));
    let line = chat.expect(&format!(" {bob_name}: b3")).await;
    assert!(
        line.len() > 20 && line.as_bytes()[4] == b'-' && line.as_bytes()[10] == b' ',
        "dated: {line:?}"
    );
    chat.expect(&format!(" you to {bob_name}: a1")).await;
    chat.expect(&format!(
        "* history with {bob_name}: 2 messages; /more for older ones"
    ))
    .await;
    chat.send("/more");
    chat.expect(&format!(" {bob_name}: b1")).await;
    chat.expect(&format!(" {bob_name}: b2")).await;
    chat.expect(&format!(
        "* history with {bob_name}: 2 messages, no older ones"
    ))
    .await;
    chat.send("/more");
    chat.expect(&format!("* history with {bob_name}: no older messages"))
        .await;
    // A group, by name with '#'.
    chat.send(&format!("/history #{group}"));
    chat.expect(&format!(" #{group} {bob_name}: g1")).await;
    chat.expect(&format!("* history of #{group}: 1 message, no older ones"))
        .await;
    // Everything, oldest first.
    chat.send("/history");
    for text in ["b1", "b2", "b3"] {
        chat.expect(&format!(" {bob_name}: {text}")).await;
    }
    chat.expect(&format!(" {carol_name}: c1")).await;
    chat.expect(&format!(" you to {bob_name}: a1")).await;
    chat.expect(&format!(" #{group} {bob_name}: g1")).await;
    chat.expect("* history of all conversations: 6 messages, no older ones")
        .await;
    chat.send("/history nobody-here");
    chat.expect("! no_such_user:").await;
    chat.send("/history 0");
    chat.expect("! usage: usage: /history [NAME|#GROUP] [N] (N from 1 to 200)")
        .await;
    let (status, lines, stderr) = chat.finish().await;
    assert!(status.success(), "exit {status}; stderr: {stderr}");
    assert_eq!(count(&lines, " b3"), 3, "live, /history bob, /history");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_passwd_and_delete_account() {
    const NEW: &str = "a new secret 42";
    let c = Cluster::memory().await;
    let addr = c.addr(0);
    let mut bob = user(addr, "bob").await;
    let bob_name = bob.login_name().await;
    let alice = uname("alice");
    let alice_id = register(addr, &alice).await;
    let mut chat = Chat::spawn(&addr.to_string(), &alice, &[], Some(PASSWORD));
    chat.expect("* synced, 0 unread").await;

    chat.send(&format!("/block {bob_name}"));
    chat.expect(&format!("* blocked {bob_name}")).await;
    assert_eq!(
        bob.err(json!({"op": "send", "to": alice_id, "text": "hi"}))
            .await,
        "blocked"
    );
    chat.send("/blocked");
    chat.expect(&format!("* blocked: {bob_name}")).await;
    chat.send(&format!("/unblock {bob_name}"));
    chat.expect(&format!("* unblocked {bob_name}")).await;
    chat.send("/blocked");
    chat.expect("* blocked: none").await;

    // Without a terminal the secrets are the next input lines.
    chat.send("/passwd");
    chat.send("not the password");
    chat.send(NEW);
    chat.expect("! bad_credentials:").await;
    chat.send("/passwd");
    chat.send(PASSWORD);
    chat.send(NEW);
    chat.expect("* password changed").await;
    let mut check = Client::connect(addr).await;
    assert_eq!(
        check
            .err(json!({"op": "login", "name": alice, "password": PASSWORD}))
            .await,
        "bad_credentials"
    );
    check
        .ok(json!({"op": "login", "name": alice, "password": NEW}))
        .await;

    chat.send("/delete-account");
    chat.send(NEW);
    chat.send("no");
    chat.expect("* account not deleted").await;
    chat.send("/delete-account");
    chat.send(NEW);
    chat.send("DELETE");
    chat.expect("* account deleted").await;
    chat.expect("your account was deleted; goodbye").await;
    let (status, lines, stderr) = chat.exit().await;
    assert!(
        status.success(),
        "{status:?}\n{}\n{stderr}",
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.contains(NEW) && !l.contains(PASSWORD)),
        "a password was echoed"
    );
    assert_eq!(check.event("goaway").await["reason"], "account_deleted");
    let mut w = Client::connect(addr).await;
    assert_eq!(
        w.err(json!({"op": "whois", "id": alice_id})).await,
        "no_such_user"
    );
}
