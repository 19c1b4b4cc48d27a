//! A client library for the switchboard protocol (docs/protocol.md), built on the typed wire
//! types of [`crate::protocol`]. The bundled terminal client, the load generator and the
//! integration tests all go through it.
//!
//! Three layers, each usable on its own:
//!
//! - [`Client`]: one connection. [`Client::connect`] reads `hello`; the typed calls
//!   ([`register`](Client::register), [`login_password`](Client::login_password),
//!   [`send`](Client::send), …) write one request and wait for its reply, keeping the events
//!   that arrive meanwhile for [`next_frame`](Client::next_frame) /
//!   [`next_event`](Client::next_event). Replies are matched by the `ref` the client generates.
//! - [`Reader`] and [`Writer`] ([`Client::into_parts`]): the two halves, for pipelining (many
//!   requests in flight; replies come in request order, events between them) and for raw
//!   bytes ([`Writer::send_raw`]) and raw lines ([`Reader::next_line`]).
//! - [`Session`]: a logged-in user that survives `goaway` and lost connections: it
//!   acknowledges what it has seen, waits (the server's `reconnect_after_ms`, or a jittered,
//!   capped exponential [`Backoff`]), reconnects and logs in again with the token, and drops
//!   messages that come again. Nothing acknowledged is lost (protocol guarantee 8).
//!
//! Errors are a [`ClientError`]: the server's wire [`Error`] (act on its
//! [`Code`](crate::error::Code)), or I/O, a closed connection, a timeout, a protocol
//! violation.
//!
//! ```no_run
//! use switchboard::client::{Client, ClientError};
//! use switchboard::protocol::Event;
//!
//! # async fn demo() -> Result<(), ClientError> {
//! let mut client = Client::connect("127.0.0.1:6000").await?;
//! println!("connected to node {}", client.hello().map_or("?", |h| h.node.as_str()));
//! let me = client.login_password("alice", "correct horse").await?;
//! let bob = client.whois("bob").await?.user;
//! let sent = client.send(bob.id, "hi bob", Some("alice-1")).await?;
//! client.ack(sent.msg.seq).await?; // own messages come back in the next backlog until acked
//! loop {
//!     let frame = client.next_frame().await?.ok_or(ClientError::Closed)?;
//!     match frame.event()? {
//!         Event::Message { seq, msg } => {
//!             println!("{}: {}", msg.from.name, msg.text);
//!             client.ack(seq).await?;
//!         }
//!         Event::Synced { unread } => println!("{} logged in, {unread} unread", me.user.name),
//!         _ => {} // presence, friends, groups; unknown events read as Event::Unknown
//!     }
//! }
//! # }
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::time::{Instant, timeout, timeout_at};

use crate::error::{Code, Error};
use crate::protocol::reply::{
    Blocked, Done, FriendReply, Friends, GroupReply, Groups, History, LoggedIn, NewToken,
    Registered, SendReply, Whois,
};
use crate::protocol::{
    AccountDeleteArgs, AckArgs, CreateArgs, Event, GroupArg, GroupId, GroupSendArgs, HistoryArgs,
    JoinArgs, LoginArgs, PasswordChangeArgs, RegisterArgs, Request, SendArgs, Seq, UserArg, UserId,
    WhoArgs, With,
};

mod conn;
mod frame;
mod session;
mod tls;

pub use conn::{Reader, Split, Transport, Writer, encode};
pub use frame::{Frame, FrameKind, owned_event};
pub use session::{ACCOUNT_DELETED, Backoff, Reconnect, Session, Update};
pub use tls::{Connection, Connector, TlsStream, host_of};

/// A request's `ref` as this client writes it: 1, 2, 3, … per connection.
pub type Ref = u64;

/// Largest frame read from a server by default. Far above what the server writes (a login
/// reply with large groups is the longest), yet a bound.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// What went wrong with a request or the connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error reply (or sent an `error` event instead of `hello`).
    #[error(transparent)]
    Server(#[from] Error),
    /// Reading or writing the connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// No answer in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The server sent something this client cannot read.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The wire error code, for an error the server sent.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }

    /// True when the connection is unusable after this error (a server error or an unreadable
    /// frame leaves it working).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ClientError::Io(_) | ClientError::Closed | ClientError::Timeout(_)
        )
    }
}

/// Limits of a connection.
#[derive(Debug, Clone)]
pub struct Options {
    /// Limit for connecting and for reading `hello`.
    pub connect_timeout: Duration,
    /// Limit for writing a request and receiving its reply, in the typed calls.
    pub reply_timeout: Duration,
    /// Longest frame read from the server ([`DEFAULT_MAX_FRAME_BYTES`]).
    pub max_frame_bytes: usize,
    /// Send segments without delay (`TCP_NODELAY`); requests are small and latency matters.
    pub nodelay: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(30),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            nodelay: true,
        }
    }
}

/// The server's `hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Always `switchboard`.
    pub server: String,
    /// The server's version.
    pub version: String,
    /// The protocol version ([`PROTOCOL_VERSION`](crate::protocol::PROTOCOL_VERSION)).
    pub protocol: u32,
    /// The node (pod) name.
    pub node: String,
}

/// One connection to a node: typed calls one at a time, events kept while waiting.
///
/// Generic over the [`Transport`] (TCP by default); for pipelining, split it with
/// [`into_parts`](Client::into_parts).
pub struct Client<T: Transport = TcpStream> {
    reader: Reader<T::Read>,
    writer: Writer<T::Write>,
    /// Frames read while waiting for a reply and not handed out yet.
    pending: VecDeque<Frame>,
    hello: Option<Hello>,
    options: Options,
}

impl<T: Transport> std::fmt::Debug for Client<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("hello", &self.hello)
            .field("pending", &self.pending.len())
            .field("next_ref", &self.writer.next_ref())
            .finish()
    }
}

impl Client<TcpStream> {
    /// Connects over TCP with default [`Options`] and reads `hello`.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, ClientError> {
        Self::connect_with(addr, Options::default()).await
    }

    /// Connects over TCP and reads `hello`.
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        options: Options,
    ) -> Result<Client, ClientError> {
        let stream = timeout(options.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout("connecting".into()))??;
        if options.nodelay {
            stream.set_nodelay(true)?;
        }
        Client::handshake(stream, options).await
    }
}

impl<T: Transport> Client<T> {
    /// A client on an open `transport` that reads `hello` first. An `error` event in its
    /// place (a full node: `unavailable`; too many connections: `rate_limited`) is a
    /// [`ClientError::Server`].
    pub async fn handshake(transport: T, options: Options) -> Result<Client<T>, ClientError> {
        let mut client = Client::raw(transport, options);
        let limit = client.options.connect_timeout;
        let frame = timeout(limit, client.reader.next_frame())
            .await
            .map_err(|_| ClientError::Timeout("waiting for hello".into()))??
            .ok_or(ClientError::Closed)?;
        match frame.event()? {
            Event::Hello {
                server,
                version,
                protocol,
                node,
            } => {
                client.hello = Some(Hello {
                    server: server.into_owned(),
                    version: version.into_owned(),
                    protocol,
                    node: node.into_owned(),
                });
                Ok(client)
            }
            Event::Error { error } => Err(ClientError::Server(error)),
            _ => Err(ClientError::Protocol(format!(
                "expected hello, got {}",
                frame.line()
            ))),
        }
    }

    /// A client on an open `transport` that has read nothing (not even `hello`).
    pub fn raw(transport: T, options: Options) -> Client<T> {
        let (rd, wr) = transport.split();
        Client {
            reader: Reader::new(rd, options.max_frame_bytes),
            writer: Writer::new(wr),
            pending: VecDeque::new(),
            hello: None,
            options,
        }
    }

    /// The server's `hello` (`None` for a [`raw`](Client::raw) client).
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// The connection's limits.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Writes `request` and waits for its reply; frames that arrive first (events, replies to
    /// requests written with [`send_request`](Client::send_request)) are kept for
    /// [`next_frame`](Client::next_frame). Returns the reply body as `R` (one of the structs of
    /// [`protocol::reply`](crate::protocol::reply)) or the server's error.
    pub async fn call<R: DeserializeOwned>(
        &mut self,
        request: &Request<'_>,
    ) -> Result<R, ClientError> {
        let frame = self.call_frame(request).await?;
        frame.reply()
    }

    /// Like [`call`](Client::call), but returns the reply frame as it came (ok or not).
    pub async fn call_frame(&mut self, request: &Request<'_>) -> Result<Frame, ClientError> {
        let deadline = Instant::now() + self.options.reply_timeout;
        let op = request.kind().name();
        let late = || ClientError::Timeout(format!("no reply to {op}"));
        let reference = timeout_at(deadline, self.writer.send(request))
            .await
            .map_err(|_| late())??;
        loop {
            let frame = timeout_at(deadline, self.reader.next_frame())
                .await
                .map_err(|_| late())??
                .ok_or(ClientError::Closed)?;
            if frame.is_reply() && frame.reference() == Some(reference) {
                return Ok(frame);
            }
            self.pending.push_back(frame);
        }
    }

    /// Writes `request` without waiting; its reply comes through
    /// [`next_frame`](Client::next_frame) with the returned `ref`.
    pub async fn send_request(&mut self, request: &Request<'_>) -> Result<Ref, ClientError> {
        self.writer.send(request).await
    }

    /// Writes raw bytes (for tests of bad input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.writer.send_raw(bytes).await
    }

    /// The next frame: one kept while a call waited, else the next from the connection.
    /// `None` once the server has closed the connection. No time limit (wrap it in
    /// [`tokio::time::timeout`]; it is cancellation safe).
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(Some(frame));
        }
        self.reader.next_frame().await
    }

    /// The next event (replies in between are dropped); [`ClientError::Closed`] at the end.
    pub async fn next_event(&mut self) -> Result<Event<'static>, ClientError> {
        loop {
            let frame = self.next_frame().await?.ok_or(ClientError::Closed)?;
            if !frame.is_reply() {
                return frame.into_event();
            }
        }
    }

    /// Frames kept while calls waited, not handed out yet.
    pub fn pending(&self) -> &VecDeque<Frame> {
        &self.pending
    }

    /// The two halves and the frames kept so far (hand those out before reading on).
    pub fn into_parts(self) -> (Reader<T::Read>, Writer<T::Write>, VecDeque<Frame>) {
        (self.reader, self.writer, self.pending)
    }

    /// `register`: a new account (does not log in).
    pub async fn register(
        &mut self,
        name: &str,
        password: &str,
    ) -> Result<Registered, ClientError> {
        self.call(&Request::Register(RegisterArgs {
            name: name.into(),
            password: password.into(),
        }))
        .await
    }

    /// `login` with a name and password. The backlog and `synced` follow as events.
    pub async fn login_password(
        &mut self,
        name: &str,
        password: &str,
    ) -> Result<LoggedIn, ClientError> {
        self.call(&Request::Login(LoginArgs {
            name: Some(name.into()),
            password: Some(password.into()),
            ..LoginArgs::default()
        }))
        .await
    }

    /// `login` with a token from an earlier login (cheap: no password hash).
    pub async fn login_token(&mut self, token: &str) -> Result<LoggedIn, ClientError> {
        self.call(&Request::Login(LoginArgs {
            token: Some(token.into()),
            ..LoginArgs::default()
        }))
        .await
    }

    /// `whois` by name (case-insensitive).
    pub async fn whois(&mut self, name: &str) -> Result<Whois, ClientError> {
        self.call(&Request::Whois(WhoArgs {
            name: Some(name.into()),
            id: None,
        }))
        .await
    }

    /// `whois` by id.
    pub async fn whois_id(&mut self, id: UserId) -> Result<Whois, ClientError> {
        self.call(&Request::Whois(WhoArgs {
            name: None,
            id: Some(id),
        }))
        .await
    }

    /// `send` a 1:1 message; with a `client_id`, repeating it stores the message once.
    pub async fn send(
        &mut self,
        to: UserId,
        text: &str,
        client_id: Option<&str>,
    ) -> Result<SendReply, ClientError> {
        self.call(&Request::Send(SendArgs {
            to,
            text: text.into(),
            client_id: client_id.map(Into::into),
        }))
        .await
    }

    /// `group.send` a message to every member.
    pub async fn group_send(
        &mut self,
        group: GroupId,
        text: &str,
        client_id: Option<&str>,
    ) -> Result<SendReply, ClientError> {
        self.call(&Request::GroupSend(GroupSendArgs {
            group,
            text: text.into(),
            client_id: client_id.map(Into::into),
        }))
        .await
    }

    /// `ack`: everything up to `seq` is read (for every session of the user).
    pub async fn ack(&mut self, seq: Seq) -> Result<Done, ClientError> {
        let seq = seq.to_string();
        self.call(&Request::Ack(AckArgs { seq: seq.into() })).await
    }

    /// `friend.add`: a mutual friendship.
    pub async fn friend_add(&mut self, user: UserId) -> Result<FriendReply, ClientError> {
        self.call(&Request::FriendAdd(UserArg { user })).await
    }

    /// `friend.remove`: ends a friendship both ways.
    pub async fn friend_remove(&mut self, user: UserId) -> Result<Done, ClientError> {
        self.call(&Request::FriendRemove(UserArg { user })).await
    }

    /// `friend.list`.
    pub async fn friend_list(&mut self) -> Result<Friends, ClientError> {
        self.call(&Request::FriendList).await
    }

    /// `block`: the user's messages, friend requests and presence stop reaching the caller.
    pub async fn block(&mut self, user: UserId) -> Result<Done, ClientError> {
        self.call(&Request::Block(UserArg { user })).await
    }

    /// `unblock`.
    pub async fn unblock(&mut self, user: UserId) -> Result<Done, ClientError> {
        self.call(&Request::Unblock(UserArg { user })).await
    }

    /// `block.list`: the users the caller blocks.
    pub async fn block_list(&mut self) -> Result<Blocked, ClientError> {
        self.call(&Request::BlockList).await
    }

    /// `password.change`: answers the new token (every other token is revoked).
    pub async fn password_change(&mut self, old: &str, new: &str) -> Result<NewToken, ClientError> {
        self.call(&Request::PasswordChange(PasswordChangeArgs {
            old: old.into(),
            new: new.into(),
        }))
        .await
    }

    /// `account.delete`: the reply is followed by `goaway` (`account_deleted`) and the end of
    /// the connection.
    pub async fn account_delete(&mut self, password: &str) -> Result<Done, ClientError> {
        self.call(&Request::AccountDelete(AccountDeleteArgs {
            password: password.into(),
        }))
        .await
    }

    /// `group.create` with the caller as creator.
    pub async fn group_create(
        &mut self,
        name: &str,
        desc: Option<&str>,
    ) -> Result<GroupReply, ClientError> {
        self.call(&Request::GroupCreate(CreateArgs {
            name: name.into(),
            desc: desc.map(Into::into),
        }))
        .await
    }

    /// `group.join` by id.
    pub async fn group_join(&mut self, group: GroupId) -> Result<GroupReply, ClientError> {
        self.call(&Request::GroupJoin(JoinArgs {
            group: Some(group),
            name: None,
        }))
        .await
    }

    /// `group.join` by name (case-insensitive).
    pub async fn group_join_name(&mut self, name: &str) -> Result<GroupReply, ClientError> {
        self.call(&Request::GroupJoin(JoinArgs {
            group: None,
            name: Some(name.into()),
        }))
        .await
    }

    /// `history`: up to `limit` (1 to 200; `None`: 50) messages of the caller's inbox strictly
    /// before `before` (`None`: from the newest), newest first; only the conversation `with`
    /// when given. When the reply says `more`, pass its `next` as `before` to continue.
    pub async fn history(
        &mut self,
        with: Option<With>,
        before: Option<Seq>,
        limit: Option<u64>,
    ) -> Result<History, ClientError> {
        self.call(&Request::History(HistoryArgs {
            with,
            before,
            limit,
        }))
        .await
    }

    /// `group.leave`.
    pub async fn group_leave(&mut self, group: GroupId) -> Result<Done, ClientError> {
        self.call(&Request::GroupLeave(GroupArg { group })).await
    }

    /// `group.list`.
    pub async fn group_list(&mut self) -> Result<Groups, ClientError> {
        self.call(&Request::GroupList).await
    }

    /// `ping`.
    pub async fn ping(&mut self) -> Result<Done, ClientError> {
        self.call(&Request::Ping).await
    }

    /// `logout`: ends the login and revokes its token.
    pub async fn logout(&mut self) -> Result<Done, ClientError> {
        self.call(&Request::Logout).await
    }
}
