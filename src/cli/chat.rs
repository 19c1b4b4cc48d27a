//! `switchboard chat`: the terminal client. On a terminal it is a line-editing prompt with
//! history that prints incoming events above the line being typed; when standard input is not
//! a terminal it reads one command per line and prints one plain line per event (for scripts
//! and tests). The output format is listed in README.md, "Chat from the terminal".
//!
//! One task owns the connection and all state. Commands run one at a time (a command that
//! needs a name resolved first sends `whois`, then its own request), so a script's commands
//! see the effects of the ones before them. Replies are matched to requests by `ref`.
//!
//! The connection is the library's ([`crate::client`]): typed login calls on a [`Client`],
//! then its [`Writer`] for requests and a task that reads [`Frame`]s from its reader.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use crate::cli::TlsArgs;
use crate::client::{
    Client, ClientError, Connection, Connector, Frame, Options, Reader, Ref, Transport, Writer,
};
use crate::error::Code;
use crate::protocol::reply::{
    Blocked, FriendReply, Friends, GroupReply, Groups, History, HistoryEntry, LoggedIn, NewToken,
    SendReply, Whois,
};
use crate::protocol::{
    AccountDeleteArgs, AckArgs, CreateArgs, Event, Group, GroupArg, GroupRef, GroupSendArgs,
    HISTORY_LIMIT_MAX, HistoryArgs, JoinArgs, Message, PasswordChangeArgs, Request, SendArgs, Seq,
    Target, UserArg, UserRef, WhoArgs, With, valid_name,
};

/// Environment variable the password is read from when there is no terminal to prompt on.
pub const PASSWORD_ENV: &str = "SWITCHBOARD_PASSWORD";

/// Longest frame accepted from the server; a longer one counts as a broken connection.
const MAX_FRAME_BYTES: usize = 1 << 20;
/// Frames read ahead of the client task.
const FRAME_QUEUE: usize = 256;
/// Input lines read ahead of the client task.
const INPUT_QUEUE: usize = 64;
/// Limit for connecting, for `hello`, and for each reply during login.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Limit for writing one request.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing client waits for the reply to its last `ack`.
const ACK_WAIT: Duration = Duration::from_secs(1);
/// Ping interval: well under the server's default idle timeout (300 s) halved.
const PING_EVERY: Duration = Duration::from_secs(60);
/// First delay after a lost connection; it doubles per failed attempt up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest delay between reconnect attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// Upper bound on a server's `goaway.reconnect_after_ms`.
const GOAWAY_MAX: Duration = Duration::from_secs(60);
/// Message ids remembered for dropping duplicates.
const SEEN_CAPACITY: usize = 4096;
/// Messages `/history` shows without a count.
const HISTORY_DEFAULT: u64 = 20;

/// Arguments of `switchboard chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// Server to connect to (the load balancer). A comma-separated list is tried in turn when
    /// reconnecting, starting after the address that was lost.
    #[arg(
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:6000",
        value_delimiter = ','
    )]
    pub servers: Vec<String>,
    /// User name to log in as.
    #[arg(long, short)]
    pub name: String,
    /// Register the name first (fails if it is taken).
    #[arg(long)]
    pub register: bool,
    /// Read the password from the first line of standard input (otherwise from
    /// $SWITCHBOARD_PASSWORD, otherwise from a prompt on the terminal).
    #[arg(long)]
    pub password_stdin: bool,
    /// Without a terminal: how long to wait for events after standard input ends, in ms.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub linger_ms: u64,
    /// Reconnect attempts after a lost connection or a goaway before giving up.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub reconnect_attempts: u32,
    /// TLS to the server.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Runs the client until `/quit`, `/logout` or the end of a script; fatal errors are returned.
pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    if args.servers.is_empty() {
        bail!("no server address given");
    }
    if !valid_name(&args.name) {
        bail!(
            "{:?} is not a valid user name (1 to 32 of A-Z a-z 0-9 _ . -)",
            args.name
        );
    }
    let connector = args.tls.connector()?;
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let _restore = interactive.then(TermRestore::save);
    let password = {
        let args = args.clone();
        tokio::task::spawn_blocking(move || read_password(&args)).await??
    };
    let mut client = Chat::new(args, password, connector);
    let result = client.run(interactive).await;
    client.out.finish();
    result
}

/// Password: first stdin line with `--password-stdin`, else the environment, else a prompt.
fn read_password(args: &ChatArgs) -> anyhow::Result<String> {
    if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        let password = line.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            bail!("--password-stdin: the first line of standard input is empty");
        }
        return Ok(password.to_string());
    }
    if let Ok(password) = std::env::var(PASSWORD_ENV)
        && !password.is_empty()
    {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "no password: standard input is not a terminal, so set {PASSWORD_ENV} or pass \
             --password-stdin"
        );
    }
    let password = rpassword::prompt_password(format!("password for {}: ", args.name))
        .context("reading the password")?;
    if args.register {
        let again =
            rpassword::prompt_password("repeat the password: ").context("reading the password")?;
        if again != password {
            bail!("the passwords differ");
        }
    }
    Ok(password)
}

/// Puts the terminal back as it was at start (the line editor may still be in raw mode when
/// the client exits on an error).
struct TermRestore(Option<nix::sys::termios::Termios>);

impl TermRestore {
    fn save() -> TermRestore {
        TermRestore(nix::sys::termios::tcgetattr(std::io::stdin()).ok())
    }
}

impl Drop for TermRestore {
    fn drop(&mut self) {
        if let Some(mode) = &self.0 {
            use nix::sys::termios::{SetArg, tcsetattr};
            let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, mode);
        }
    }
}

/// Where lines go: stdout, or above the prompt of the line editor.
enum Out {
    Plain,
    Editor {
        tx: std::sync::mpsc::Sender<String>,
        printer: std::thread::JoinHandle<()>,
    },
}

impl Out {
    fn line(&self, line: String) {
        match self {
            Out::Plain => {
                // A closed stdout is not worth dying for; stderr still reports errors.
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
            Out::Editor { tx, .. } => {
                let _ = tx.send(line);
            }
        }
    }

    /// Waits until every line is out.
    fn finish(&mut self) {
        if let Out::Editor { tx, printer } = std::mem::replace(self, Out::Plain) {
            drop(tx);
            let _ = printer.join();
        }
    }
}

/// Starts the line editor on its own thread; typed lines come out of the returned receiver.
fn start_editor() -> anyhow::Result<(Out, mpsc::Receiver<String>)> {
    use rustyline::ExternalPrinter as _;
    use rustyline::error::ReadlineError;

    let mut editor = rustyline::DefaultEditor::new()?;
    let mut printer = editor.create_external_printer()?;
    let (line_tx, printer_rx) = std::sync::mpsc::channel::<String>();
    let printer = std::thread::spawn(move || {
        for line in printer_rx {
            if printer.print(format!("{line}\n")).is_err() {
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
        }
    });
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    std::thread::spawn(move || {
        loop {
            let line = match editor.readline("> ") {
                Ok(line) => line,
                Err(ReadlineError::Interrupted | ReadlineError::Eof) => "/quit".to_string(),
                Err(e) => {
                    eprintln!("line editor: {e}");
                    "/quit".to_string()
                }
            };
            if !line.trim().is_empty() {
                let _ = editor.add_history_entry(line.as_str());
            }
            // Commands that read secrets get them here, without echo, and only as a whole:
            // the chat loop takes the lines that follow the command as its secrets.
            let secrets = match line.trim() {
                "/passwd" => ask_new_password(),
                "/delete-account" => ask_deletion(&mut editor),
                _ => Some(Vec::new()),
            };
            let Some(secrets) = secrets else {
                continue;
            };
            // Stop reading after the commands that end the client, so that the editor leaves
            // raw mode before the process exits.
            let last = matches!(line.split_whitespace().next(), Some("/quit" | "/logout"));
            if tx.blocking_send(line).is_err()
                || secrets.into_iter().any(|s| tx.blocking_send(s).is_err())
                || last
            {
                break;
            }
        }
    });
    Ok((
        Out::Editor {
            tx: line_tx,
            printer,
        },
        rx,
    ))
}

/// `/passwd` at the terminal: the old password and the new one twice, without echo; `None`
/// (nothing sent) when reading fails or the two new ones differ.
fn ask_new_password() -> Option<Vec<String>> {
    let read = |prompt: &str| rpassword::prompt_password(prompt).ok();
    let old = read("current password: ")?;
    let new = read("new password: ")?;
    if read("repeat the new password: ")? != new {
        eprintln!("the new passwords differ; password not changed");
        return None;
    }
    Some(vec![old, new])
}

/// `/delete-account` at the terminal: the password without echo, then the confirmation.
fn ask_deletion(editor: &mut rustyline::DefaultEditor) -> Option<Vec<String>> {
    let password = rpassword::prompt_password("password: ").ok()?;
    let confirm = editor
        .readline(&format!(
            "delete your account and everything in it? type {DELETE_CONFIRMATION}: "
        ))
        .ok()?;
    Some(vec![password, confirm])
}

/// Reads standard input line by line on its own thread (script mode).
fn start_stdin() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// One connection to a node: the write half, frames from a reader task, requests awaiting
/// their replies.
struct Link {
    addr: String,
    index: usize,
    node: String,
    wr: Writer<<Connection as Transport>::Write>,
    frames: mpsc::Receiver<Frame>,
    reader: JoinHandle<()>,
    pending: HashMap<Ref, Pending>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Limits of a connection: connecting, `hello` and each reply during login.
fn options() -> Options {
    Options {
        connect_timeout: CONNECT_TIMEOUT,
        reply_timeout: CONNECT_TIMEOUT,
        max_frame_bytes: MAX_FRAME_BYTES,
        nodelay: true,
    }
}

/// Connects to `addr` (plain or TLS, as `connector` says) and reads `hello`.
async fn open(connector: &Connector, addr: &str) -> anyhow::Result<Client<Connection>> {
    Client::connect_via(connector, addr, options())
        .await
        .map_err(|e| match e {
            ClientError::Timeout(_) => anyhow!("connecting to {addr} timed out"),
            ClientError::Closed => anyhow!("{addr} closed the connection"),
            ClientError::Protocol(_) => anyhow!("{addr} does not speak the switchboard protocol"),
            e => anyhow!(e).context(format!("connecting to {addr}")),
        })
}

/// The text of a failed call: the server's `code: message`, or what happened to the connection.
fn call_error(addr: &str, e: &ClientError) -> String {
    match e {
        ClientError::Server(e) => format!("{}: {}", e.code, clean(&e.message)),
        ClientError::Timeout(what) => format!("{what} from {addr}"),
        ClientError::Closed => format!("{addr} closed the connection"),
        e => format!("{addr}: {e}"),
    }
}

impl Link {
    /// A logged-in connection to `servers[index]`: the reader half goes to a task.
    fn new(client: Client<Connection>, addr: &str, index: usize) -> Link {
        let node = client.hello().map_or("?", |h| h.node.as_str()).to_string();
        let (rd, wr, kept) = client.into_parts();
        let (tx, frames) = mpsc::channel(FRAME_QUEUE);
        Link {
            addr: addr.to_string(),
            index,
            node,
            wr,
            frames,
            reader: tokio::spawn(read_frames(rd, kept, tx)),
            pending: HashMap::new(),
        }
    }

    /// Writes one request; returns its `ref`. An error means the connection is gone.
    async fn request(&mut self, request: &Request<'_>) -> anyhow::Result<Ref> {
        timeout(WRITE_TIMEOUT, self.wr.send(request))
            .await
            .map_err(|_| anyhow!("writing to {} timed out", self.addr))?
            .map_err(anyhow::Error::from)
    }
}

/// Hands `kept` (frames read during login) to `tx`, then reads frames from the server until
/// the connection ends (then `tx` is dropped).
async fn read_frames(
    mut rd: Reader<<Connection as Transport>::Read>,
    kept: VecDeque<Frame>,
    tx: mpsc::Sender<Frame>,
) {
    for frame in kept {
        if tx.send(frame).await.is_err() {
            return;
        }
    }
    loop {
        match rd.next_frame().await {
            Ok(Some(frame)) => {
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
            // Unknown or malformed frames are skipped, as the protocol asks of clients.
            Err(ClientError::Protocol(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// Why a reconnect attempt failed.
enum Attempt {
    /// Worth trying again (network, server busy).
    Later(anyhow::Error),
    /// Not worth trying again (the credentials are refused).
    Never(anyhow::Error),
}

/// What a request's reply is for.
enum Pending {
    Ack,
    Ping,
    Step(Step),
}

/// The part of a command a reply completes.
enum Step {
    /// `whois` to learn a user's id, then the command again.
    Resolve(Cmd),
    /// `group.list` to learn group ids, then the command again.
    RefreshGroups(Cmd),
    Whois,
    Send {
        to: String,
        text: String,
    },
    GroupSend {
        group: u64,
        text: String,
    },
    FriendAdd,
    Friends,
    Create,
    Join,
    Leave(u64),
    Groups,
    Block(String),
    Unblock(String),
    Blocked,
    /// `password.change`; the new password, kept for reconnecting.
    Passwd(String),
    DeleteAccount,
    /// `history` pages until `want` messages are in `got` or there are no older ones.
    History {
        with: Option<With>,
        label: String,
        want: usize,
        got: Vec<HistoryEntry>,
    },
    Logout,
}

/// Where `/more` continues: the conversation of the last `/history` and the position before
/// which older messages may exist (`None`: there are none).
struct Older {
    with: Option<With>,
    label: String,
    before: Option<Seq>,
    count: usize,
}

/// A parsed input line.
#[derive(Debug, Clone)]
enum Cmd {
    Msg {
        to: String,
        text: String,
        client_id: String,
    },
    Add(String),
    Friends,
    Create {
        name: String,
        desc: Option<String>,
    },
    Join(String),
    Leave(String),
    Groups,
    Group {
        group: String,
        text: String,
        client_id: String,
    },
    Whois(String),
    /// `/history [NAME|GROUP] [N]`.
    History {
        conv: Option<String>,
        count: u64,
    },
    More,
    Block(String),
    Unblock(String),
    Blocked,
    /// `/passwd`: the old and the new password follow as input lines.
    Passwd,
    /// `/delete-account`: the password and the confirmation follow as input lines.
    DeleteAccount,
    Logout,
    Quit,
    Help,
}

/// A command that reads secret input lines (never echoed, never in the history): which one,
/// and the lines read so far.
enum Ask {
    Passwd(Vec<String>),
    DeleteAccount(Vec<String>),
}

/// What `/delete-account` wants typed to confirm.
const DELETE_CONFIRMATION: &str = "DELETE";

const HELP: &str = "\
commands:
  /msg NAME text        send a message to a user
  /add NAME             become friends with a user
  /friends              list friends
  /create NAME [desc]   create a group
  /join GROUP           join a group by name (or by id)
  /leave GROUP          leave a group
  /groups               list your groups
  /g GROUP text         send a message to a group
  /whois NAME           look a user up
  /history [NAME|#GROUP] [N]
                        the last N (default 20) messages with a user, of a group,
                        or of all conversations, oldest first
  /more                 older messages of the last /history
  /block NAME           stop a user's messages, friend requests and presence
  /unblock NAME         undo /block
  /blocked              list the users you block
  /passwd               change your password (asks for the old and the new one; without
                        a terminal, the next two input lines); other devices must log in again
  /delete-account       delete your account for good (asks for the password and for DELETE;
                        without a terminal, the next two input lines)
  /logout               log out (ends the token) and quit
  /quit                 quit
  /help                 this list";

/// What the client loop does next.
enum Flow {
    Go,
    Quit,
    Lost,
    GoAway { after: Duration, reason: String },
}

/// Bounded set of message ids already shown.
#[derive(Default)]
struct Seen {
    order: VecDeque<String>,
    set: HashSet<String>,
}

impl Seen {
    /// True if `id` is new.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == SEEN_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.order.push_back(id.to_string());
        self.set.insert(id.to_string());
        true
    }
}

struct Chat {
    args: ChatArgs,
    connector: Connector,
    password: String,
    out: Out,
    me: UserRef,
    token: Option<String>,
    /// Lower-case user name to id (names are unique case-insensitively and never change).
    users: HashMap<String, u64>,
    /// User id to name as registered.
    names: HashMap<u64, String>,
    /// Every group seen, id to name.
    groups: HashMap<u64, String>,
    /// Groups the user is a member of.
    mine: HashSet<u64>,
    seen: Seen,
    /// Position of the last message shown (or sent) and not acknowledged yet.
    unacked: Option<Seq>,
    /// The login backlog has ended on this connection (acks wait for it).
    synced: bool,
    logins: u32,
    client_ids: (u64, u64),
    /// The command being worked on, and how many of its replies are outstanding.
    current: Option<Cmd>,
    outstanding: usize,
    /// Where `/more` continues, after a `/history`.
    older: Option<Older>,
    /// A command reading secret lines.
    asking: Option<Ask>,
}

impl Chat {
    fn new(args: ChatArgs, password: String, connector: Connector) -> Chat {
        Chat {
            connector,
            me: UserRef {
                id: 0,
                name: args.name.clone(),
            },
            args,
            password,
            out: Out::Plain,
            token: None,
            users: HashMap::new(),
            names: HashMap::new(),
            groups: HashMap::new(),
            mine: HashSet::new(),
            seen: Seen::default(),
            unacked: None,
            synced: false,
            logins: 0,
            client_ids: (rand::random(), 0),
            current: None,
            outstanding: 0,
            older: None,
            asking: None,
        }
    }

    async fn run(&mut self, interactive: bool) -> anyhow::Result<()> {
        let mut link = self.connect_first().await?;
        let mut input = match interactive.then(start_editor) {
            Some(Ok((out, rx))) => {
                self.out = out;
                self.status("type /help for the commands".into());
                rx
            }
            Some(Err(e)) => {
                eprintln!("no line editor ({e}); reading plain lines");
                start_stdin()
            }
            None => start_stdin(),
        };
        let mut input_open = true;
        let mut linger: Option<Instant> = None;
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            if self.outstanding == 0 {
                self.current = None;
            }
            if !input_open && self.current.is_none() && linger.is_none() {
                linger = Some(Instant::now() + Duration::from_millis(self.args.linger_ms));
            }
            let mut flow = tokio::select! {
                frame = link.frames.recv() => match frame {
                    Some(frame) => self.on_frame(&mut link, frame).await,
                    None => Flow::Lost,
                },
                line = input.recv(), if input_open && self.current.is_none() => match line {
                    Some(line) => self.on_input(&mut link, &line).await,
                    None => {
                        input_open = false;
                        Flow::Go
                    }
                },
                _ = ping.tick() => self.send(&mut link, &Request::Ping, Pending::Ping).await,
                _ = sleep_until(linger.unwrap_or_else(Instant::now)), if linger.is_some() => {
                    Flow::Quit
                }
            };
            // Acknowledge once the frames that were ready have been shown (one ack per batch).
            if matches!(flow, Flow::Go) && self.synced && link.frames.is_empty() {
                flow = self.ack(&mut link).await;
            }
            match flow {
                Flow::Go => {}
                Flow::Quit => {
                    self.settle(&mut link).await;
                    return Ok(());
                }
                Flow::Lost => {
                    self.status(format!("connection to {} lost; reconnecting", link.addr));
                    let from = link.index;
                    drop(link);
                    match self.reconnect(from, BACKOFF_START, linger).await? {
                        Some(new) => link = new,
                        None => return Ok(()),
                    }
                    self.resume(&mut link).await;
                }
                Flow::GoAway { after, reason } => {
                    self.status(format!(
                        "{} is going away ({reason}); reconnecting in {} ms",
                        link.node,
                        after.as_millis()
                    ));
                    self.settle(&mut link).await;
                    let from = link.index;
                    drop(link);
                    match self.reconnect(from, after, linger).await? {
                        Some(new) => link = new,
                        None => return Ok(()),
                    }
                    self.resume(&mut link).await;
                }
            }
        }
    }

    fn client_id(&mut self) -> String {
        self.client_ids.1 += 1;
        format!("{:016x}-{}", self.client_ids.0, self.client_ids.1)
    }

    /// Sends a request whose reply the loop handles later.
    async fn send(&mut self, link: &mut Link, request: &Request<'_>, pending: Pending) -> Flow {
        let Ok(reference) = link.request(request).await else {
            return Flow::Lost;
        };
        if matches!(pending, Pending::Step(_)) {
            self.outstanding += 1;
        }
        link.pending.insert(reference, pending);
        Flow::Go
    }

    /// Acknowledges what has been shown, if anything is new.
    async fn ack(&mut self, link: &mut Link) -> Flow {
        match self.unacked.take() {
            Some(seq) => self.send(link, &ack(seq), Pending::Ack).await,
            None => Flow::Go,
        }
    }

    /// Before leaving a connection: acknowledge and wait (briefly) until the server has it.
    async fn settle(&mut self, link: &mut Link) {
        let deadline = Instant::now() + ACK_WAIT;
        let mut waiting = None;
        loop {
            if waiting.is_none() {
                let Some(seq) = self.unacked.take() else {
                    return;
                };
                let Ok(reference) = link.request(&ack(seq)).await else {
                    return;
                };
                waiting = Some(reference);
            }
            let Ok(Some(frame)) = timeout_at(deadline, link.frames.recv()).await else {
                return;
            };
            if frame.is_reply() && frame.reference() == waiting {
                waiting = None;
            } else {
                // Goaway or a lost connection make no difference now.
                let _ = self.on_frame(link, frame).await;
            }
        }
    }

    /// The first connection: register if asked, log in with the password. Errors are fatal.
    async fn connect_first(&mut self) -> anyhow::Result<Link> {
        let addr = self.args.servers[0].clone();
        let mut client = open(&self.connector, &addr).await?;
        let name = self.args.name.clone();
        if self.args.register {
            let user = client
                .register(&name, &self.password)
                .await
                .map_err(|e| anyhow!("registering {name} failed: {}", call_error(&addr, &e)))?
                .user;
            self.status(format!("registered {name} (id {})", user.id));
        }
        let login = client
            .login_password(&name, &self.password)
            .await
            .map_err(|e| anyhow!("login as {name} failed: {}", call_error(&addr, &e)))?;
        self.logged_in(login);
        let link = Link::new(client, &addr, 0);
        self.status(format!(
            "logged in as {} (id {}) at {} (node {})",
            self.me.name, self.me.id, link.addr, link.node
        ));
        Ok(link)
    }

    /// Reconnects after `first` (then with growing delays), rotating through the addresses
    /// from the one after `from`. `Ok(None)`: the linger time of a finished script ran out.
    async fn reconnect(
        &mut self,
        from: usize,
        first: Duration,
        linger: Option<Instant>,
    ) -> anyhow::Result<Option<Link>> {
        let n = self.args.servers.len();
        let mut delay = first;
        let mut last = anyhow!("no attempt made (--reconnect-attempts is 0)");
        for attempt in 0..self.args.reconnect_attempts as usize {
            let at = Instant::now() + delay;
            if let Some(end) = linger
                && end <= at
            {
                sleep_until(end).await;
                return Ok(None);
            }
            sleep_until(at).await;
            let index = (from + 1 + attempt) % n;
            match self.relogin(index).await {
                Ok(link) => {
                    self.status(format!("reconnected to {} (node {})", link.addr, link.node));
                    return Ok(Some(link));
                }
                Err(Attempt::Never(e)) => return Err(e),
                Err(Attempt::Later(e)) => last = e,
            }
            delay = if attempt == 0 {
                BACKOFF_START
            } else {
                (delay * 2).min(BACKOFF_MAX)
            };
        }
        Err(last.context(format!(
            "gave up reconnecting after {} attempts",
            self.args.reconnect_attempts
        )))
    }

    /// One reconnect attempt: log in with the token, or with the password if it is refused.
    async fn relogin(&mut self, index: usize) -> Result<Link, Attempt> {
        let addr = self.args.servers[index].clone();
        let mut client = open(&self.connector, &addr).await.map_err(Attempt::Later)?;
        let mut result = Err(ClientError::Closed);
        if let Some(token) = self.token.clone() {
            result = client.login_token(&token).await;
        }
        if matches!(&result, Err(e) if self.token.is_none() || e.code() == Some(Code::BadCredentials))
        {
            result = client.login_password(&self.args.name, &self.password).await;
        }
        let login = result.map_err(|e| {
            let text = anyhow!(
                "login as {} failed: {}",
                self.args.name,
                call_error(&addr, &e)
            );
            match e.code() {
                // Refused for good (wrong credentials); anything else may pass later.
                Some(
                    Code::Unavailable | Code::Internal | Code::RateLimited | Code::TooManySessions,
                )
                | None => Attempt::Later(text),
                Some(_) => Attempt::Never(text),
            }
        })?;
        self.logged_in(login);
        Ok(Link::new(client, &addr, index))
    }

    /// State from an ok login reply (the friend and group lists are the truth again).
    fn logged_in(&mut self, login: LoggedIn) {
        self.logins += 1;
        self.synced = false;
        self.learn(login.user.id, &login.user.name);
        self.me = login.user;
        self.token = Some(login.token);
        for f in &login.friends {
            self.learn(f.id, &f.name);
        }
        self.set_groups(&login.groups);
    }

    /// After a reconnect: a send in flight is repeated (its `client_id` makes that safe);
    /// other commands in flight are reported as interrupted.
    async fn resume(&mut self, link: &mut Link) {
        self.outstanding = 0;
        let Some(cmd) = self.current.take() else {
            return;
        };
        if matches!(cmd, Cmd::Msg { .. } | Cmd::Group { .. }) {
            self.current = Some(cmd.clone());
            // A failure here shows up as a lost connection on the next read.
            let _ = self.exec(link, cmd, true).await;
        } else {
            self.error("interrupted", "the connection was lost; try again");
        }
    }

    fn set_groups(&mut self, groups: &[Group]) {
        self.mine.clear();
        for g in groups {
            self.learn_group(g);
        }
    }

    fn learn_group(&mut self, g: &Group) {
        self.groups.insert(g.id, g.name.clone());
        self.mine.insert(g.id);
        for m in &g.members {
            self.learn(m.id, &m.name);
        }
    }

    fn learn(&mut self, id: u64, name: &str) {
        self.users.insert(name.to_ascii_lowercase(), id);
        self.names.insert(id, name.to_string());
    }

    fn user_name(&self, id: u64) -> String {
        match self.names.get(&id) {
            Some(name) => name.clone(),
            None => format!("user {id}"),
        }
    }

    fn group_name(&self, id: u64) -> String {
        match self.groups.get(&id) {
            Some(name) => format!("#{name}"),
            None => format!("group {id}"),
        }
    }

    /// A group by name (own groups first, then any seen) or by id.
    fn group_id(&self, group: &str) -> Option<u64> {
        let name = group.strip_prefix('#').unwrap_or(group);
        let by_name = |mine: bool| {
            self.groups
                .iter()
                .find(|(id, n)| self.mine.contains(id) == mine && n.eq_ignore_ascii_case(name))
                .map(|(id, _)| *id)
        };
        by_name(true)
            .or_else(|| by_name(false))
            .or_else(|| name.parse().ok())
    }

    fn print(&self, line: String) {
        self.out.line(line);
    }

    fn status(&self, text: String) {
        self.print(format!("{} * {text}", clock(now_ms())));
    }

    fn error(&self, code: &str, message: &str) {
        self.print(format!("{} ! {code}: {}", clock(now_ms()), clean(message)));
    }

    async fn on_input(&mut self, link: &mut Link, line: &str) -> Flow {
        if let Some(ask) = self.asking.take() {
            return self.on_secret(link, ask, line).await;
        }
        match self.parse(line) {
            Ok(None) => Flow::Go,
            Ok(Some(cmd)) => {
                self.current = Some(cmd.clone());
                self.exec(link, cmd, true).await
            }
            Err(message) => {
                self.error("usage", &message);
                Flow::Go
            }
        }
    }

    /// One more secret line of `/passwd` or `/delete-account`; sends the request once all
    /// are read.
    async fn on_secret(&mut self, link: &mut Link, ask: Ask, line: &str) -> Flow {
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        match ask {
            Ask::Passwd(mut got) => {
                got.push(line);
                if got.len() < 2 {
                    self.asking = Some(Ask::Passwd(got));
                    return Flow::Go;
                }
                let new = got.pop().unwrap_or_default();
                let old = got.pop().unwrap_or_default();
                let req = Request::PasswordChange(PasswordChangeArgs {
                    old: old.as_str().into(),
                    new: new.as_str().into(),
                });
                self.current = Some(Cmd::Passwd);
                self.send(link, &req, Pending::Step(Step::Passwd(new.clone())))
                    .await
            }
            Ask::DeleteAccount(mut got) => {
                got.push(line);
                if got.len() < 2 {
                    self.asking = Some(Ask::DeleteAccount(got));
                    return Flow::Go;
                }
                if got[1].trim() != DELETE_CONFIRMATION {
                    self.status(format!(
                        "account not deleted (confirm with {DELETE_CONFIRMATION})"
                    ));
                    return Flow::Go;
                }
                let req = Request::AccountDelete(AccountDeleteArgs {
                    password: got[0].as_str().into(),
                });
                self.current = Some(Cmd::DeleteAccount);
                self.send(link, &req, Pending::Step(Step::DeleteAccount))
                    .await
            }
        }
    }

    fn parse(&mut self, line: &str) -> Result<Option<Cmd>, String> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(None);
        }
        let (word, rest) = match line.split_once(char::is_whitespace) {
            Some((word, rest)) => (word, rest.trim()),
            None => (line, ""),
        };
        let (first, tail) = match rest.split_once(char::is_whitespace) {
            Some((first, tail)) => (first, tail.trim()),
            None => (rest, ""),
        };
        let one = |usage: &str| {
            if first.is_empty() || !tail.is_empty() {
                Err(format!("usage: {usage}"))
            } else {
                Ok(first.to_string())
            }
        };
        let two = |usage: &str| {
            if first.is_empty() || tail.is_empty() {
                Err(format!("usage: {usage}"))
            } else {
                Ok((first.to_string(), tail.to_string()))
            }
        };
        let none = |cmd: Cmd| {
            if rest.is_empty() {
                Ok(cmd)
            } else {
                Err(format!("{word} takes no arguments"))
            }
        };
        let cmd = match word {
            "/msg" => {
                let (to, text) = two("/msg NAME text")?;
                Cmd::Msg {
                    to,
                    text,
                    client_id: self.client_id(),
                }
            }
            "/add" => Cmd::Add(one("/add NAME")?),
            "/friends" => none(Cmd::Friends)?,
            "/create" => {
                if first.is_empty() {
                    return Err("usage: /create NAME [description]".into());
                }
                Cmd::Create {
                    name: first.to_string(),
                    desc: (!tail.is_empty()).then(|| tail.to_string()),
                }
            }
            "/join" => Cmd::Join(one("/join GROUP")?),
            "/leave" => Cmd::Leave(one("/leave GROUP")?),
            "/groups" => none(Cmd::Groups)?,
            "/g" => {
                let (group, text) = two("/g GROUP text")?;
                Cmd::Group {
                    group,
                    text,
                    client_id: self.client_id(),
                }
            }
            "/whois" => Cmd::Whois(one("/whois NAME")?),
            "/history" => {
                let usage = || {
                    format!("usage: /history [NAME|#GROUP] [N] (N from 1 to {HISTORY_LIMIT_MAX})")
                };
                let count = |n: &str| {
                    n.parse::<u64>()
                        .ok()
                        .filter(|n| (1..=HISTORY_LIMIT_MAX).contains(n))
                        .ok_or_else(usage)
                };
                let (conv, count) = match (first, tail) {
                    ("", _) => (None, HISTORY_DEFAULT),
                    (n, "") if n.bytes().all(|b| b.is_ascii_digit()) => (None, count(n)?),
                    (c, "") => (Some(c.to_string()), HISTORY_DEFAULT),
                    (c, n) => (Some(c.to_string()), count(n)?),
                };
                Cmd::History { conv, count }
            }
            "/more" => none(Cmd::More)?,
            "/block" => Cmd::Block(one("/block NAME")?),
            "/unblock" => Cmd::Unblock(one("/unblock NAME")?),
            "/blocked" => none(Cmd::Blocked)?,
            "/passwd" => none(Cmd::Passwd)?,
            "/delete-account" => none(Cmd::DeleteAccount)?,
            "/logout" => none(Cmd::Logout)?,
            "/quit" => none(Cmd::Quit)?,
            "/help" => none(Cmd::Help)?,
            _ => return Err(format!("unknown command {word:?}; /help lists them")),
        };
        Ok(Some(cmd))
    }

    /// Starts a command (or its next part). `lookup`: an unknown name may be looked up first.
    async fn exec(&mut self, link: &mut Link, cmd: Cmd, lookup: bool) -> Flow {
        match &cmd {
            Cmd::Msg {
                to,
                text,
                client_id,
            } => match self.users.get(&to.to_ascii_lowercase()) {
                Some(&id) => {
                    let req = Request::Send(SendArgs {
                        to: id,
                        text: text.into(),
                        client_id: Some(client_id.into()),
                    });
                    let step = Step::Send {
                        to: self.user_name(id),
                        text: text.clone(),
                    };
                    self.send(link, &req, Pending::Step(step)).await
                }
                None => self.resolve(link, cmd, lookup).await,
            },
            Cmd::Add(name) => match self.users.get(&name.to_ascii_lowercase()) {
                Some(&id) => {
                    let step = Pending::Step(Step::FriendAdd);
                    self.send(link, &Request::FriendAdd(UserArg { user: id }), step)
                        .await
                }
                None => self.resolve(link, cmd, lookup).await,
            },
            Cmd::Whois(name) => {
                let req = Request::Whois(WhoArgs {
                    name: Some(name.into()),
                    id: None,
                });
                self.send(link, &req, Pending::Step(Step::Whois)).await
            }
            Cmd::Friends => {
                let step = Pending::Step(Step::Friends);
                self.send(link, &Request::FriendList, step).await
            }
            Cmd::Groups => {
                let step = Pending::Step(Step::Groups);
                self.send(link, &Request::GroupList, step).await
            }
            Cmd::Create { name, desc } => {
                let req = Request::GroupCreate(CreateArgs {
                    name: name.into(),
                    desc: desc.as_deref().map(Into::into),
                });
                self.send(link, &req, Pending::Step(Step::Create)).await
            }
            Cmd::Join(group) => {
                // A group the client knows (or an id) by id, any other by name: the server
                // looks names up case-insensitively.
                let args = match self.group_id(group) {
                    Some(id) => JoinArgs {
                        group: Some(id),
                        name: None,
                    },
                    None => JoinArgs {
                        group: None,
                        name: Some(group.strip_prefix('#').unwrap_or(group).into()),
                    },
                };
                let step = Pending::Step(Step::Join);
                self.send(link, &Request::GroupJoin(args), step).await
            }
            Cmd::History { conv, count } => {
                let count = *count as usize;
                let Some(conv) = conv else {
                    let label = "of all conversations".to_string();
                    return self
                        .history(link, None, label, None, count, Vec::new())
                        .await;
                };
                match self.conversation(conv) {
                    Some((with, label)) => {
                        self.history(link, Some(with), label, None, count, Vec::new())
                            .await
                    }
                    None if conv.starts_with('#') => self.refresh_groups(link, cmd, lookup).await,
                    None => self.resolve(link, cmd, lookup).await,
                }
            }
            Cmd::More => match self.older.take() {
                None => {
                    self.error("usage", "nothing to continue: /history first");
                    Flow::Go
                }
                Some(older) => match older.before {
                    None => {
                        self.status(format!("history {}: no older messages", older.label));
                        self.older = Some(older);
                        Flow::Go
                    }
                    before => {
                        let Older {
                            with, label, count, ..
                        } = older;
                        self.history(link, with, label, before, count, Vec::new())
                            .await
                    }
                },
            },
            Cmd::Leave(group) => match self.group_id(group) {
                Some(id) => {
                    let step = Pending::Step(Step::Leave(id));
                    self.send(link, &Request::GroupLeave(GroupArg { group: id }), step)
                        .await
                }
                None => self.refresh_groups(link, cmd, lookup).await,
            },
            Cmd::Group {
                group,
                text,
                client_id,
            } => match self.group_id(group) {
                Some(id) => {
                    let req = Request::GroupSend(GroupSendArgs {
                        group: id,
                        text: text.into(),
                        client_id: Some(client_id.into()),
                    });
                    let step = Step::GroupSend {
                        group: id,
                        text: text.clone(),
                    };
                    self.send(link, &req, Pending::Step(step)).await
                }
                None => self.refresh_groups(link, cmd, lookup).await,
            },
            Cmd::Block(name) | Cmd::Unblock(name) => {
                let Some(&id) = self.users.get(&name.to_ascii_lowercase()) else {
                    return self.resolve(link, cmd, lookup).await;
                };
                let name = self.user_name(id);
                let (req, step) = match cmd {
                    Cmd::Block(_) => (Request::Block(UserArg { user: id }), Step::Block(name)),
                    _ => (Request::Unblock(UserArg { user: id }), Step::Unblock(name)),
                };
                self.send(link, &req, Pending::Step(step)).await
            }
            Cmd::Blocked => {
                self.send(link, &Request::BlockList, Pending::Step(Step::Blocked))
                    .await
            }
            Cmd::Passwd => {
                self.asking = Some(Ask::Passwd(Vec::new()));
                Flow::Go
            }
            Cmd::DeleteAccount => {
                self.asking = Some(Ask::DeleteAccount(Vec::new()));
                Flow::Go
            }
            Cmd::Logout => {
                if let Flow::Lost = self.ack(link).await {
                    return Flow::Lost;
                }
                self.send(link, &Request::Logout, Pending::Step(Step::Logout))
                    .await
            }
            Cmd::Quit => Flow::Quit,
            Cmd::Help => {
                for line in HELP.lines() {
                    self.print(line.to_string());
                }
                Flow::Go
            }
        }
    }

    /// The conversation `conv` names for `/history`: `#GROUP` a group; otherwise a user the
    /// client knows, else a group it knows. With its label for the status line.
    fn conversation(&self, conv: &str) -> Option<(With, String)> {
        let group = |id: u64| (With::Group(id), format!("of {}", self.group_name(id)));
        if conv.starts_with('#') {
            return self.group_id(conv).map(group);
        }
        if let Some(&id) = self.users.get(&conv.to_ascii_lowercase()) {
            return Some((With::User(id), format!("with {}", self.user_name(id))));
        }
        self.groups
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(conv))
            .map(|(&id, _)| group(id))
    }

    /// Asks for the next page of a `/history` or `/more`: `want` messages in all, `got` so far.
    async fn history(
        &mut self,
        link: &mut Link,
        with: Option<With>,
        label: String,
        before: Option<Seq>,
        want: usize,
        got: Vec<HistoryEntry>,
    ) -> Flow {
        let req = Request::History(HistoryArgs {
            with,
            before,
            limit: Some((want - got.len()) as u64),
        });
        let step = Step::History {
            with,
            label,
            want,
            got,
        };
        self.send(link, &req, Pending::Step(step)).await
    }

    /// Looks up the user name of `cmd` with `whois`, then runs `cmd` again.
    async fn resolve(&mut self, link: &mut Link, cmd: Cmd, lookup: bool) -> Flow {
        let (Cmd::Msg { to: name, .. }
        | Cmd::Add(name)
        | Cmd::Block(name)
        | Cmd::Unblock(name)
        | Cmd::History {
            conv: Some(name), ..
        }) = &cmd
        else {
            return Flow::Go;
        };
        if !lookup {
            let what = match cmd {
                Cmd::History { .. } => "user or group",
                _ => "user",
            };
            self.error("no_such_user", &format!("unknown {what} {name}"));
            return Flow::Go;
        }
        let req = Request::Whois(WhoArgs {
            name: Some(name.into()),
            id: None,
        });
        self.send(link, &req, Pending::Step(Step::Resolve(cmd.clone())))
            .await
    }

    /// Fetches the group list, then runs `cmd` again.
    async fn refresh_groups(&mut self, link: &mut Link, cmd: Cmd, lookup: bool) -> Flow {
        if !lookup {
            let (Cmd::Leave(group)
            | Cmd::Group { group, .. }
            | Cmd::History {
                conv: Some(group), ..
            }) = &cmd
            else {
                return Flow::Go;
            };
            self.error(
                "no_such_group",
                &format!("{group} is none of your groups (/groups lists them)"),
            );
            return Flow::Go;
        }
        let step = Pending::Step(Step::RefreshGroups(cmd));
        self.send(link, &Request::GroupList, step).await
    }

    async fn on_frame(&mut self, link: &mut Link, frame: Frame) -> Flow {
        if frame.is_reply() {
            let pending = frame.reference().and_then(|r| link.pending.remove(&r));
            return match pending {
                Some(Pending::Step(step)) => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    self.on_reply(link, step, &frame).await
                }
                // An ack the server refuses (say, after a logout) is harmless.
                Some(Pending::Ack | Pending::Ping) | None => Flow::Go,
            };
        }
        self.on_event(&frame)
    }

    async fn on_reply(&mut self, link: &mut Link, step: Step, reply: &Frame) -> Flow {
        if let Some(e) = reply.error() {
            self.error(e.code.as_str(), &e.message);
            return match step {
                Step::Logout => Flow::Quit,
                _ => Flow::Go,
            };
        }
        match step {
            Step::Resolve(cmd) => {
                if let Ok(Whois { user }) = reply.reply() {
                    self.learn(user.id, &user.name);
                }
                return self.exec(link, cmd, false).await;
            }
            Step::RefreshGroups(cmd) => {
                if let Ok(Groups { groups }) = reply.reply() {
                    self.set_groups(&groups);
                }
                return self.exec(link, cmd, false).await;
            }
            Step::Whois => {
                if let Ok(Whois { user }) = reply.reply() {
                    self.learn(user.id, &user.name);
                    let online = if user.online { "online" } else { "offline" };
                    self.status(format!("{} (id {}) is {online}", user.name, user.id));
                }
            }
            Step::Send { to, text } => {
                let ts = self.sent(reply);
                self.print(format!("{} you to {to}: {}", clock(ts), clean(&text)));
            }
            Step::GroupSend { group, text } => {
                let ts = self.sent(reply);
                let group = self.group_name(group);
                self.print(format!("{} {group} you: {}", clock(ts), clean(&text)));
            }
            Step::FriendAdd => {
                if let Ok(FriendReply { friend: f }) = reply.reply() {
                    self.learn(f.id, &f.name);
                    self.status(format!("now friends with {}", f.name));
                }
            }
            Step::Friends => {
                let friends = reply.reply::<Friends>().map(|f| f.friends);
                let friends = friends.unwrap_or_default();
                for f in &friends {
                    self.learn(f.id, &f.name);
                }
                let list: Vec<String> = friends
                    .iter()
                    .map(|f| {
                        let on = if f.online { "online" } else { "offline" };
                        format!("{} ({on})", f.name)
                    })
                    .collect();
                self.status(format!("friends: {}", or_none(&list)));
            }
            Step::Groups => {
                let groups = reply.reply::<Groups>().map(|g| g.groups);
                let groups = groups.unwrap_or_default();
                self.set_groups(&groups);
                let list: Vec<String> = groups
                    .iter()
                    .map(|g| format!("#{} (id {}, {} members)", g.name, g.id, g.members.len()))
                    .collect();
                self.status(format!("groups: {}", or_none(&list)));
            }
            Step::Create => {
                if let Ok(GroupReply { group: g }) = reply.reply() {
                    self.learn_group(&g);
                    self.status(format!("created #{} (id {})", g.name, g.id));
                }
            }
            Step::Join => {
                if let Ok(GroupReply { group: g }) = reply.reply() {
                    self.learn_group(&g);
                    self.status(format!(
                        "joined #{} (id {}, {} members)",
                        g.name,
                        g.id,
                        g.members.len()
                    ));
                }
            }
            Step::Leave(id) => {
                self.mine.remove(&id);
                self.status(format!("left {}", self.group_name(id)));
            }
            Step::History {
                with,
                label,
                want,
                mut got,
            } => {
                let Ok(History {
                    messages,
                    more,
                    next,
                }) = reply.reply()
                else {
                    return Flow::Go;
                };
                got.extend(messages);
                let before = next.filter(|_| more);
                // A sparse conversation may answer fewer than asked, with more: read on.
                if before.is_some() && got.len() < want {
                    return self.history(link, with, label, before, want, got).await;
                }
                for entry in got.iter().rev() {
                    let line = self.history_line(&entry.msg);
                    self.print(line);
                }
                let n = got.len();
                let older = match before {
                    Some(_) => "; /more for older ones",
                    None => ", no older ones",
                };
                let s = if n == 1 { "" } else { "s" };
                self.status(format!("history {label}: {n} message{s}{older}"));
                self.older = Some(Older {
                    with,
                    label,
                    before,
                    count: want,
                });
            }
            Step::Block(name) => self.status(format!("blocked {name}")),
            Step::Unblock(name) => self.status(format!("unblocked {name}")),
            Step::Blocked => {
                let users = reply.reply::<Blocked>().map(|b| b.users);
                let names: Vec<String> = users
                    .unwrap_or_default()
                    .into_iter()
                    .map(|u| {
                        self.learn(u.id, &u.name);
                        u.name
                    })
                    .collect();
                self.status(format!("blocked: {}", or_none(&names)));
            }
            Step::Passwd(new) => {
                if let Ok(NewToken { token }) = reply.reply() {
                    self.token = Some(token);
                    self.password = new;
                    self.status("password changed; your other devices must log in again".into());
                }
            }
            Step::DeleteAccount => {
                // The server's goaway (account_deleted) and the end of the connection follow.
                self.token = None;
                self.status("account deleted".into());
            }
            Step::Logout => {
                self.token = None;
                self.status("logged out".into());
                return Flow::Quit;
            }
        }
        Flow::Go
    }

    /// Notes an own sent message (its copy in the own inbox is acknowledged with the next
    /// batch and dropped if it comes back); returns its time stamp.
    fn sent(&mut self, reply: &Frame) -> u64 {
        match reply.reply::<SendReply>() {
            Ok(SendReply { msg }) => {
                self.seen.insert(&msg.id);
                self.unacked = Some(msg.seq);
                msg.ts
            }
            Err(_) => now_ms(),
        }
    }

    fn on_event(&mut self, frame: &Frame) -> Flow {
        let now = clock(now_ms());
        // Unknown events, and events that do not read as their type, are skipped.
        let Ok(event) = frame.event() else {
            return Flow::Go;
        };
        match event {
            Event::Message { seq, msg } => {
                self.unacked = Some(seq);
                self.show(msg);
            }
            Event::Synced { unread } => {
                self.synced = true;
                if self.logins == 1 {
                    self.status(format!("synced, {unread} unread"));
                }
            }
            Event::Presence { user } => {
                self.learn(user.id, &user.name);
                let online = if user.online { "online" } else { "offline" };
                self.print(format!("{now} * {} is {online}", user.name));
            }
            Event::FriendAdded { friend: f } => {
                self.learn(f.id, &f.name);
                self.print(format!("{now} * now friends with {}", f.name));
            }
            Event::FriendRemoved { user } => {
                self.print(format!("{now} * no longer friends with {}", user.name));
            }
            Event::MemberJoined { group, user } => self.membership(&now, group, user, true),
            Event::MemberLeft { group, user } => self.membership(&now, group, user, false),
            Event::Goaway { reason, .. } if reason == crate::client::ACCOUNT_DELETED => {
                self.token = None;
                self.print(format!("{now} * your account was deleted; goodbye"));
                return Flow::Quit;
            }
            Event::Goaway {
                reason,
                reconnect_after_ms,
            } => {
                let after = Duration::from_millis(reconnect_after_ms).min(GOAWAY_MAX);
                let reason = clean(&reason);
                return Flow::GoAway { after, reason };
            }
            Event::Error { error } => self.error(error.code.as_str(), &error.message),
            Event::Hello { .. } | Event::Unknown => {}
        }
        Flow::Go
    }

    /// A `member_joined` (`joined`) or `member_left` event.
    fn membership(&mut self, now: &str, group: GroupRef, user: UserRef, joined: bool) {
        self.learn(user.id, &user.name);
        self.groups.insert(group.id, group.name.clone());
        let who = if user.id == self.me.id {
            if joined {
                self.mine.insert(group.id);
            } else {
                self.mine.remove(&group.id);
            }
            "[you@other device]".to_string()
        } else {
            user.name
        };
        let verb = if joined { "joined" } else { "left" };
        self.print(format!("{now} * {who} {verb} #{}", group.name));
    }

    /// Prints a message unless it has been shown already.
    fn show(&mut self, msg: Message) {
        self.learn(msg.from.id, &msg.from.name);
        if let Target::Group { group, name } = &msg.to {
            self.groups.insert(*group, name.clone());
        }
        if !self.seen.insert(&msg.id) {
            return;
        }
        let line = self.message_line(&msg, &clock(msg.ts), "[you@other device]");
        self.print(line);
    }

    /// A message from `/history`: with its date, and "you" for own messages. Not marked as
    /// seen (it may still come live or in a backlog) and not acknowledged.
    fn history_line(&mut self, msg: &Message) -> String {
        self.learn(msg.from.id, &msg.from.name);
        if let Target::Group { group, name } = &msg.to {
            self.groups.insert(*group, name.clone());
        }
        self.message_line(msg, &date_time(msg.ts), "you")
    }

    /// `TIME FROM: text`, `TIME you to NAME: text` or `TIME #GROUP FROM: text`.
    fn message_line(&self, msg: &Message, time: &str, own_label: &str) -> String {
        let own = msg.from.id == self.me.id;
        let from = if own {
            own_label
        } else {
            msg.from.name.as_str()
        };
        let text = clean(&msg.text);
        match &msg.to {
            Target::User { user } if own => {
                format!("{time} {from} to {}: {text}", self.user_name(*user))
            }
            Target::User { .. } => format!("{time} {from}: {text}"),
            Target::Group { name, .. } => format!("{time} #{name} {from}: {text}"),
        }
    }
}

/// An `ack` request for `seq`.
fn ack(seq: Seq) -> Request<'static> {
    Request::Ack(AckArgs {
        seq: seq.to_string().into(),
    })
}

fn or_none(list: &[String]) -> String {
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    }
}

/// Text from the network as one printable line: control characters (line breaks, escape
/// sequences) are shown escaped, so a message can neither break the one-line-per-event format
/// nor drive the terminal.
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `HH:MM:SS` (UTC) of a time in ms since the Unix epoch.
fn clock(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of a time in ms since the Unix epoch (history lines carry the
/// day: they may be weeks old).
fn date_time(ms: u64) -> String {
    // Days to the civil date (proleptic Gregorian), after Howard Hinnant's `civil_from_days`.
    let z = (ms / 86_400_000) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {}", clock(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_and_clean() {
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock(1_732_500_000_123), "02:00:00");
        assert_eq!(clean("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
        assert_eq!(clean("héllo"), "héllo");
        assert_eq!(date_time(0), "1970-01-01 00:00:00");
        assert_eq!(date_time(1_732_500_000_123), "2024-11-25 02:00:00");
        assert_eq!(date_time(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn history_arguments() {
        let mut chat = Chat::new(
            ChatArgs {
                servers: vec![],
                name: "ann".into(),
                register: false,
                password_stdin: false,
                linger_ms: 0,
                reconnect_attempts: 0,
                tls: Default::default(),
            },
            String::new(),
            Connector::default(),
        );
        let parse = |chat: &mut Chat, line: &str| match chat.parse(line) {
            Ok(Some(Cmd::History { conv, count })) => Ok((conv, count)),
            Ok(other) => panic!("{line}: {other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(parse(&mut chat, "/history"), Ok((None, 20)));
        assert_eq!(parse(&mut chat, "/history 5"), Ok((None, 5)));
        assert_eq!(
            parse(&mut chat, "/history bob"),
            Ok((Some("bob".into()), 20))
        );
        assert_eq!(
            parse(&mut chat, "/history #rust 200"),
            Ok((Some("#rust".into()), 200))
        );
        for bad in [
            "/history 0",
            "/history 201",
            "/history bob x",
            "/history bob 1 2",
        ] {
            assert!(parse(&mut chat, bad).is_err(), "{bad}");
        }
        assert!(matches!(chat.parse("/more"), Ok(Some(Cmd::More))));
    }

    #[test]
    fn seen_is_bounded() {
        let mut seen = Seen::default();
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        for i in 0..SEEN_CAPACITY {
            seen.insert(&i.to_string());
        }
        assert_eq!(seen.set.len(), SEEN_CAPACITY);
        assert!(seen.insert("a"), "the oldest id was forgotten");
    }
}
