//! The client library (`switchboard::client`) against real nodes: typed calls and their errors,
//! pipelined requests matched by `ref` with events in between, unknown events tolerated, and a
//! `Session` that survives a drained node (goaway) and a cut connection without losing or
//! repeating a message, with bounded back-off when nothing answers.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, PASSWORD, WAIT, uname};
use switchboard::client::{
    Backoff, Client, ClientError, FrameKind, Options, Reconnect, Session, Split, Update,
};
use switchboard::error::Code;
use switchboard::protocol::{Event, Request, Role, SendArgs, Target};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

on_both_backends!(typed_calls_and_errors, pipelined_requests_match_their_refs);

/// Registers a new user and logs in; the (empty) backlog is read up to `synced`.
async fn logged_in(addr: SocketAddr, prefix: &str) -> (Client, u64, String) {
    let name = uname(prefix);
    let mut c = Client::connect(addr).await.unwrap();
    let id = c.register(&name, PASSWORD).await.unwrap().user.id;
    let login = c.login_password(&name, PASSWORD).await.unwrap();
    assert_eq!(login.user.id, id);
    assert!(!login.token.is_empty());
    assert_eq!(synced(&mut c).await, 0);
    (c, id, name)
}

/// Reads events up to `synced`; returns `unread`.
async fn synced(c: &mut Client) -> u64 {
    loop {
        match timeout(WAIT, c.next_event()).await.unwrap().unwrap() {
            Event::Synced { unread } => return unread,
            Event::Message { .. } => panic!("no backlog expected"),
            _ => {}
        }
    }
}

async fn typed_calls_and_errors(c: Cluster) {
    let mut a = Client::connect(c.addr(0)).await.unwrap();
    let hello = a.hello().unwrap().clone();
    assert_eq!((hello.server.as_str(), hello.protocol), ("switchboard", 1));
    a.ping().await.unwrap();
    // Before login: only register, login, whois, ping.
    assert_eq!(
        a.friend_list().await.unwrap_err().code(),
        Some(Code::NotLoggedIn)
    );
    assert_eq!(
        a.whois("nobody-here").await.unwrap_err().code(),
        Some(Code::NoSuchUser)
    );
    let (mut alice, alice_id, alice_name) = logged_in(c.addr(0), "ca").await;
    let (mut bob, bob_id, bob_name) = logged_in(c.addr(1), "cb").await;
    let err = a.register(&alice_name, PASSWORD).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server(e) if e.code == Code::NameTaken),
        "{err}"
    );
    assert!(
        !err.is_fatal(),
        "an error reply leaves the connection usable"
    );
    assert_eq!(
        a.login_password(&alice_name, "wrong password")
            .await
            .unwrap_err()
            .code(),
        Some(Code::BadCredentials)
    );
    let who = a.whois(&bob_name.to_uppercase()).await.unwrap().user;
    assert_eq!((who.id, who.online), (bob_id, true));
    assert_eq!(a.whois_id(alice_id).await.unwrap().user.name, alice_name);

    // Friends: the other side gets an event.
    let f = alice.friend_add(bob_id).await.unwrap().friend;
    assert_eq!((f.id, f.name.as_str()), (bob_id, bob_name.as_str()));
    let ev = timeout(WAIT, bob.next_event()).await.unwrap().unwrap();
    assert!(
        matches!(&ev, Event::FriendAdded { friend } if friend.id == alice_id),
        "{ev:?}"
    );
    assert_eq!(bob.friend_list().await.unwrap().friends[0].id, alice_id);

    // Groups.
    let gname = uname("cg");
    let g = alice
        .group_create(&gname, Some("a test group"))
        .await
        .unwrap()
        .group;
    assert_eq!((g.role, g.desc.as_str()), (Role::Creator, "a test group"));
    let joined = bob.group_join(g.id).await.unwrap().group;
    assert_eq!((joined.role, joined.members.len()), (Role::Member, 2));
    assert_eq!(
        bob.group_join(g.id).await.unwrap_err().code(),
        Some(Code::AlreadyMember)
    );
    assert_eq!(bob.group_list().await.unwrap().groups[0].id, g.id);

    // Messages: 1:1 and group, with the sent seq acknowledged.
    let sent = alice.send(bob_id, "hi bob", Some("c-1")).await.unwrap();
    let again = alice.send(bob_id, "hi bob", Some("c-1")).await.unwrap();
    assert_eq!(again, sent, "a repeated client_id answers the original msg");
    alice.ack(sent.msg.seq).await.unwrap();
    let gsent = alice.group_send(g.id, "hi group", None).await.unwrap();
    assert_ne!(gsent.msg.id, sent.msg.id);
    let mut texts = Vec::new();
    while texts.len() < 2 {
        match timeout(WAIT, bob.next_event()).await.unwrap().unwrap() {
            Event::Message { seq, msg } => {
                assert_eq!(msg.from.id, alice_id);
                bob.ack(seq).await.unwrap();
                texts.push((msg.text, msg.to));
            }
            Event::MemberJoined { .. } | Event::Presence { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        texts,
        [
            ("hi bob".to_string(), Target::User { user: bob_id }),
            (
                "hi group".to_string(),
                Target::Group {
                    group: g.id,
                    name: gname
                }
            )
        ]
    );
    assert_eq!(
        alice.send(alice_id, "me", None).await.unwrap_err().code(),
        Some(Code::BadRequest)
    );

    // Leaving and ending.
    bob.group_leave(g.id).await.unwrap();
    assert_eq!(
        bob.group_leave(g.id).await.unwrap_err().code(),
        Some(Code::NotAMember)
    );
    alice.friend_remove(bob_id).await.unwrap();
    assert!(alice.friend_list().await.unwrap().friends.is_empty());
    bob.logout().await.unwrap();
    assert_eq!(
        bob.friend_list().await.unwrap_err().code(),
        Some(Code::NotLoggedIn)
    );
}

async fn pipelined_requests_match_their_refs(c: Cluster) {
    const N: usize = 8;
    let (alice, alice_id, _) = logged_in(c.addr(0), "pa").await;
    let (mut bob, bob_id, _) = logged_in(c.addr(1), "pb").await;
    let (mut rd, mut wr, pending) = alice.into_parts();
    assert!(pending.is_empty());
    // Bob sends while Alice's requests are in flight, so events come between her replies.
    let bob_sends = tokio::spawn(async move {
        for i in 0..N {
            bob.send(alice_id, &format!("from bob {i}"), None)
                .await
                .unwrap();
        }
        bob
    });
    let mut refs = Vec::new();
    for round in 0..3 {
        for i in 0..N {
            let text = format!("from alice {round} {i}");
            let req = Request::Send(SendArgs {
                to: bob_id,
                text: text.as_str().into(),
                client_id: None,
            });
            refs.push(wr.send(&req).await.unwrap());
        }
        refs.push(wr.send(&Request::Ping).await.unwrap());
    }
    // A request the server cannot parse: an error event, not a reply, in the same stream.
    wr.send_raw(b"{\"op\":7}\n").await.unwrap();
    let last = wr.send(&Request::Ping).await.unwrap();
    refs.push(last);
    let mut replies = Vec::new();
    let mut messages = 0;
    let mut errors = 0;
    while replies.last() != Some(&last) || messages < N {
        let frame = timeout(WAIT, rd.next_frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match frame.kind() {
            FrameKind::Reply { re, reference, ok } => {
                assert!(ok, "{}", frame.line());
                let reference = reference.unwrap();
                let expected = if refs[replies.len()] == last || replies.len() % (N + 1) == N {
                    "ping"
                } else {
                    "send"
                };
                assert_eq!(re, expected, "{}", frame.line());
                replies.push(reference);
            }
            FrameKind::Event("message") => {
                let Event::Message { msg, .. } = frame.event().unwrap() else {
                    panic!("a message")
                };
                assert_eq!(msg.from.id, bob_id);
                messages += 1;
            }
            FrameKind::Event("error") => {
                assert_eq!(frame.error().unwrap().code, Code::BadRequest);
                errors += 1;
            }
            FrameKind::Event(_) => {}
        }
    }
    assert_eq!(replies, refs, "replies in request order, each with its ref");
    assert_eq!(errors, 1);
    bob_sends.await.unwrap();
}

/// A server that speaks just enough protocol to send events a real node does not send.
#[tokio::test]
async fn unknown_events_are_kept_as_unknown_and_calls_still_match() {
    let (near, far) = tokio::io::duplex(4096);
    let server = tokio::spawn(async move {
        let (rd, mut wr) = tokio::io::split(far);
        let mut rd = BufReader::new(rd);
        wr.write_all(
            b"{\"event\":\"hello\",\"server\":\"switchboard\",\"version\":\"9.9.9\",\"protocol\":1,\"node\":\"fake\",\"extra\":[1]}\n",
        )
        .await
        .unwrap();
        let mut line = String::new();
        rd.read_line(&mut line).await.unwrap();
        assert_eq!(line, "{\"ref\":1,\"op\":\"ping\"}\n");
        wr.write_all(
            b"{\"event\":\"typing\",\"user\":{\"id\":1}}\n\n{\"event\":\"synced\",\"unread\":3,\"new\":true}\n\
              {\"re\":\"ping\",\"ref\":1,\"ok\":true,\"later\":{\"field\":1}}\n\
              {\"event\":\"goaway\",\"reason\":\"shutdown\",\"reconnect_after_ms\":5}\n",
        )
        .await
        .unwrap();
    });
    let mut c = Client::handshake(Split(near), Options::default())
        .await
        .unwrap();
    assert_eq!(c.hello().unwrap().node, "fake");
    c.ping().await.unwrap();
    assert_eq!(c.pending().len(), 2, "events that came first are kept");
    assert_eq!(c.next_event().await.unwrap(), Event::Unknown);
    assert_eq!(c.next_event().await.unwrap(), Event::Synced { unread: 3 });
    assert_eq!(
        c.next_event().await.unwrap(),
        Event::Goaway {
            reason: "shutdown".into(),
            reconnect_after_ms: 5
        }
    );
    server.await.unwrap();
    assert!(matches!(c.next_event().await, Err(ClientError::Closed)));
}

/// A TCP relay standing in for the load balancer: forwards each connection to the current
/// target; `cut` drops every relayed connection at once (no goaway).
struct Relay {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (t, cs) = (target.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *t.lock().unwrap();
                cs.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                }));
            }
        });
        Relay {
            addr,
            target,
            conns,
            task,
        }
    }

    fn point_to(&self, target: SocketAddr) {
        *self.target.lock().unwrap() = target;
    }

    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// Reads session updates until `want` distinct message texts have arrived; panics on a
/// repeat. Returns the texts in arrival order and the reconnections seen.
async fn collect(session: &mut Session, want: usize) -> (Vec<String>, Vec<String>) {
    let mut texts = Vec::new();
    let mut nodes = Vec::new();
    let mut ids = HashSet::new();
    while texts.len() < want {
        match timeout(WAIT, session.next()).await.unwrap().unwrap() {
            Update::Event(Event::Message { msg, .. }) => {
                assert!(ids.insert(msg.id.clone()), "{} handed out twice", msg.text);
                texts.push(msg.text);
            }
            Update::Event(_) => {}
            Update::Reconnected { node, .. } => nodes.push(node),
        }
    }
    (texts, nodes)
}

/// Reads session updates until the next reconnection (no new message may come first).
async fn reconnected(session: &mut Session) -> String {
    loop {
        match timeout(WAIT, session.next()).await.unwrap().unwrap() {
            Update::Event(Event::Message { msg, .. }) => panic!("unexpected {}", msg.text),
            Update::Event(_) => {}
            Update::Reconnected { node, .. } => return node,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_survives_goaway_and_a_cut_connection_losing_nothing() {
    let c = Cluster::redis(2).await;
    let relay = Relay::start(c.addr(0)).await;
    let (mut alice, alice_id, _) = logged_in(c.addr(1), "sa").await;
    let bob_name = uname("sb");
    Client::connect(c.addr(1))
        .await
        .unwrap()
        .register(&bob_name, PASSWORD)
        .await
        .unwrap();
    let policy = Reconnect {
        backoff: Backoff {
            first: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
        ..Reconnect::default()
    };
    let addr = relay.addr.to_string();
    let (mut bob, login) = Session::login(&addr, &bob_name, PASSWORD, Options::default(), policy)
        .await
        .unwrap();
    let bob_id = login.user.id;

    // Before the drain: some messages read, and one of Bob's own sends acknowledged with them.
    for i in 0..3 {
        alice.send(bob_id, &format!("m{i}"), None).await.unwrap();
    }
    let (texts, _) = collect(&mut bob, 3).await;
    assert_eq!(texts, ["m0", "m1", "m2"]);
    let own = bob.send(alice_id, "from bob", Some("b-1")).await.unwrap();
    assert_eq!(bob.seen(), Some(own.msg.seq));
    // Two more that Bob has not read when the goaway comes.
    for i in 3..5 {
        alice.send(bob_id, &format!("m{i}"), None).await.unwrap();
    }
    relay.point_to(c.addr(1));
    c.nodes[0].begin_stop();
    // Sent while Bob moves: they reach him live on the draining node (before the goaway) or
    // through the new login's backlog.
    for i in 5..8 {
        alice.send(bob_id, &format!("m{i}"), None).await.unwrap();
    }
    let (texts, mut nodes) = collect(&mut bob, 5).await;
    if nodes.is_empty() {
        nodes.push(reconnected(&mut bob).await);
    }
    assert_eq!(
        texts,
        ["m3", "m4", "m5", "m6", "m7"],
        "nothing lost, in order"
    );
    assert_eq!(nodes, [c.nodes[1].name.clone()]);
    assert_eq!(bob.reconnects(), 1);

    // A cut connection (no goaway, nothing acknowledged): back-off, token login, and the
    // messages from before the cut that come again in the backlog are dropped.
    for i in 8..10 {
        alice.send(bob_id, &format!("m{i}"), None).await.unwrap();
    }
    let (texts, _) = collect(&mut bob, 2).await;
    assert_eq!(texts, ["m8", "m9"]);
    relay.cut();
    alice.send(bob_id, "m10", None).await.unwrap();
    let (texts, nodes) = collect(&mut bob, 1).await;
    assert_eq!(texts, ["m10"], "m8 and m9 came again and were dropped");
    assert_eq!(nodes.len(), 1);
    assert_eq!(bob.reconnects(), 2);
    bob.ack().await.unwrap();
    // Bob's own message never came back as an event, and his ack holds for a fresh login.
    let mut fresh = Client::connect(c.addr(1)).await.unwrap();
    fresh.login_token(bob.token()).await.unwrap();
    assert_eq!(synced(&mut fresh).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_backoff_is_bounded_when_nothing_answers() {
    let c = Cluster::memory().await;
    let (_, _, name) = logged_in(c.addr(0), "bo").await;
    let relay = Relay::start(c.addr(0)).await;
    let policy = Reconnect {
        backoff: Backoff {
            first: Duration::from_millis(40),
            max: Duration::from_millis(100),
        },
        max_attempts: 4,
        ..Reconnect::default()
    };
    let (mut session, _) = Session::login(
        &relay.addr.to_string(),
        &name,
        PASSWORD,
        Options::default(),
        policy,
    )
    .await
    .unwrap();
    assert!(matches!(
        timeout(WAIT, session.next()).await.unwrap().unwrap(),
        Update::Event(Event::Synced { .. })
    ));
    // Nothing listens behind the relay any more: every attempt fails at once.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    relay.point_to(dead.local_addr().unwrap());
    drop(dead);
    relay.cut();
    let started = Instant::now();
    let err = timeout(WAIT, session.next()).await.unwrap().unwrap_err();
    let took = started.elapsed();
    assert!(err.is_fatal(), "{err}");
    // Waits: before attempt 1 (the lost connection) up to 40 ms, then up to 40, 80, 100 ms.
    assert!(took >= Duration::from_millis(20 + 20 + 40 + 50), "{took:?}");
    assert!(took < Duration::from_millis(260 + 1000), "{took:?}");
    assert!(session.client().is_err(), "no connection");
}

/// The typed account calls; a `Session` whose account is deleted hands out the `goaway` and
/// ends instead of reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_calls_and_a_session_ending_with_its_account() {
    let c = Cluster::redis(2).await;
    let (mut other, other_id, other_name) = logged_in(c.addr(0), "cb").await;
    let (mut me, me_id, name) = logged_in(c.addr(1), "ca").await;
    me.block(other_id).await.unwrap();
    let list = me.block_list().await.unwrap().users;
    assert_eq!(
        (list.len(), list[0].name.as_str()),
        (1, other_name.as_str())
    );
    let err = other.send(me_id, "hi", None).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Blocked));
    me.unblock(other_id).await.unwrap();
    assert!(me.block_list().await.unwrap().users.is_empty());
    let err = me
        .password_change("wrong-password", "new-password-1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::BadCredentials));
    let token = me
        .password_change(PASSWORD, "new-password-1")
        .await
        .unwrap()
        .token;
    assert!(!token.is_empty());

    let (mut session, _) = Session::login(
        &c.addr(0).to_string(),
        &name,
        "new-password-1",
        Options::default(),
        Reconnect::default(),
    )
    .await
    .unwrap();
    me.account_delete("new-password-1").await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let update = tokio::time::timeout_at(deadline, session.next())
            .await
            .unwrap()
            .unwrap();
        if let Update::Event(Event::Goaway { reason, .. }) = update {
            assert_eq!(reason, switchboard::client::ACCOUNT_DELETED);
            break;
        }
    }
    assert!(matches!(session.next().await, Err(ClientError::Closed)));
}
