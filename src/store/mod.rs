//! Durable state behind one small trait, with two backends: Redis and the embedded in-memory one.
//!
//! Live delivery is part of the store, because it must agree with durability: a message is
//! appended to an inbox and published to the inbox owner's channel in one atomic step, and
//! whatever a node receives on a user's channel is handed to the node's [`LiveSink`] (the
//! registry, which the store does not know by name). The payload format is in [`payload`].

pub mod cluster;
pub mod memory;
pub mod payload;
pub mod redis;
pub mod shards;
pub mod sink;

use std::future::Future;

use crate::error::Result;
use crate::protocol::{Friend, Group, GroupId, GroupRef, Sent, Seq, UserId, UserRef};

pub use cluster::ClusterStore;
pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use sink::LiveSink;

/// Seconds a `client_id` is remembered for idempotent sends.
pub const CLIENT_ID_TTL_SECS: u64 = 24 * 3600;
/// The window of `send_bytes_per_day`, in ms.
pub const QUOTA_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// Granularity of the quota's sliding window: bytes are counted in buckets of this many ms.
pub const QUOTA_BUCKET_MS: u64 = 3600 * 1000;

/// A stored account.
#[derive(Debug, Clone)]
pub struct Account {
    /// The user.
    pub user: UserRef,
    /// The argon2id PHC string.
    pub password_hash: String,
}

/// How a user is named in a request.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// By (case-insensitive) name.
    Name(&'a str),
    /// By id.
    Id(UserId),
}

/// Where a message goes.
#[derive(Debug, Clone, Copy)]
pub enum Recipient {
    /// One user.
    User(UserId),
    /// Every member of a group.
    Group(GroupId),
}

/// A message ready to store: everything is decided, the JSON is built.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// Sender.
    pub from: UserId,
    /// Recipient.
    pub to: Recipient,
    /// Message id.
    pub id: &'a str,
    /// Time stamp (ms).
    pub ts: u64,
    /// The `Message` JSON, stored and delivered as is.
    pub json: &'a str,
    /// Idempotency key.
    pub client_id: Option<&'a str>,
    /// Global id of the sending session, so it does not get its own copy as an event.
    pub origin: &'a str,
    /// W3C `traceparent` of the sending span, carried to the delivering node.
    pub trace: Option<&'a str>,
    /// What a repeated `client_id` must match: a digest of the op, target and text.
    pub fingerprint: &'a str,
    /// UTF-8 bytes of the text, charged once per stored copy against `quota`.
    pub text_bytes: u64,
    /// Most text bytes the sender may have stored in a sliding 24 h (`send_bytes_per_day`).
    pub quota: u64,
}

/// What [`Store::send`] stored (or found stored, for a repeated `client_id`).
#[derive(Debug, Clone)]
pub struct Stored {
    /// The reply's `msg`.
    pub sent: Sent,
    /// The sender's inbox entry just before `sent.seq`, if any: every position up to it must
    /// reach the sending session before the reply does (protocol guarantee 8).
    pub prev: Option<Seq>,
}

/// One inbox entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position.
    pub seq: Seq,
    /// Sender id (to count `unread`).
    pub from: UserId,
    /// The `Message` JSON.
    pub json: String,
}

/// Inbox retention, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Keep at least this many newest entries.
    pub max_len: u64,
    /// Keep everything younger than this (ms).
    pub max_age_ms: u64,
    /// Never keep more than this many entries, whatever their age.
    pub hard_max_len: u64,
}

/// Most live login tokens a user holds; a newer login revokes the oldest beyond it.
pub const MAX_TOKENS_PER_USER: u32 = 256;

/// What `block` or `unblock` changed between two users: what the node must tell them.
#[derive(Debug, Clone)]
pub struct BlockChange {
    /// The other user.
    pub other: UserRef,
    /// `block`: they were friends (the friendship has ended).
    pub were_friends: bool,
    /// `block`: the block is new and presence flowed between them (a small shared group);
    /// `unblock`: the block is lifted and presence flows again. False for a repeated request.
    pub shared: bool,
    /// Whether the other user is online.
    pub other_online: bool,
}

/// What `account_delete` removed: who must hear of it.
#[derive(Debug, Clone)]
pub struct Deleted {
    /// Former friends.
    pub friends: Vec<UserId>,
    /// Groups left, each with the members before the leave.
    pub groups: Vec<Membership>,
}

/// What a login reply and its backlog need: friends, groups, the acknowledged position.
pub type LoginState = (Vec<Friend>, Vec<Group>, Seq);

/// What a group op tells the caller besides success: who must hear of it.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The group.
    pub group: GroupRef,
    /// Members to notify (for a leave: the members before the leave).
    pub members: Vec<UserId>,
}

/// The durable state of switchboard. Every method is one atomic step on the backend.
pub trait Store: Send + Sync + 'static {
    /// Creates an account; `name_taken` when the name exists in any case.
    fn register(
        &self,
        name: &str,
        password_hash: &str,
    ) -> impl Future<Output = Result<UserRef>> + Send;
    /// Looks an account up by name or id.
    fn account(&self, who: Who<'_>) -> impl Future<Output = Result<Option<Account>>> + Send;
    /// Looks a user up by name or id, with presence as `viewer` may see it (offline across a
    /// block).
    fn whois(
        &self,
        who: Who<'_>,
        viewer: Option<UserId>,
    ) -> impl Future<Output = Result<Option<Friend>>> + Send;

    /// Stores a token digest for `user`, expiring after `ttl_secs`, and records it among the
    /// user's tokens (at most [`MAX_TOKENS_PER_USER`]; the oldest beyond go).
    fn token_issue(
        &self,
        digest: &str,
        user: UserId,
        ttl_secs: u64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The account a live token digest belongs to (one round trip: token logins are hot).
    fn token_account(&self, digest: &str) -> impl Future<Output = Result<Option<Account>>> + Send;
    /// Revokes a token digest.
    fn token_revoke(&self, digest: &str) -> impl Future<Output = Result<()>> + Send;
    /// Sets a new password hash, revokes every token of `user` and stores the new token
    /// digest, in one step.
    fn password_change(
        &self,
        user: UserId,
        password_hash: &str,
        digest: &str,
        ttl_secs: u64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Deletes an account in one step: tokens, friendships, memberships (a group left empty
    /// goes), blocks both ways, inbox, sessions, the name. `None` when it is gone already.
    fn account_delete(&self, user: UserId) -> impl Future<Output = Result<Option<Deleted>>> + Send;

    /// `user` blocks `other` (idempotent); a friendship between them ends.
    fn block(
        &self,
        user: UserId,
        other: UserId,
        group_max: usize,
    ) -> impl Future<Output = Result<BlockChange>> + Send;
    /// Undoes a block of `user` (idempotent); the friendship does not come back.
    fn unblock(
        &self,
        user: UserId,
        other: UserId,
        group_max: usize,
    ) -> impl Future<Output = Result<BlockChange>> + Send;
    /// The users `user` blocks.
    fn blocks(&self, user: UserId) -> impl Future<Output = Result<Vec<UserRef>>> + Send;

    /// Reserves one attempt against every limit key, atomically: drops each key's entries
    /// older than `window_ms`; if every key holds fewer than `max`, records one entry (time
    /// `now_ms`) in each and returns its member, else returns `None` and records nothing.
    /// Keys are `sb:`-relative (`loginfail:name:bob`, `register:addr:10.0.0.1`).
    fn attempt_reserve(
        &self,
        keys: &[String],
        max: u32,
        window_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Takes back a reservation of [`Store::attempt_reserve`] from every key.
    fn attempt_release(
        &self,
        keys: &[String],
        member: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Registers a session of `user` on `node`; `Ok(true)` when it is the user's first.
    /// `too_many_sessions` when the user holds `max` already.
    fn session_open(
        &self,
        user: UserId,
        session: &str,
        node: &str,
        max: u32,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Removes a session; `Ok(true)` when it was the user's last.
    fn session_close(
        &self,
        user: UserId,
        session: &str,
        node: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Removes many sessions of `node` in one step where the backend can (a drain, a logout
    /// storm): `(user, session, presence line)`; a user whose last session it was is announced
    /// offline with the line, if given, as by [`Store::announce`]. For each, whether it was its
    /// user's last.
    fn sessions_close(
        &self,
        node: &str,
        sessions: &[(UserId, &str, Option<&str>)],
        group_max: usize,
    ) -> impl Future<Output = Result<Vec<bool>>> + Send {
        async move {
            let mut last = Vec::with_capacity(sessions.len());
            let mut offline = Vec::new();
            for &(user, session, line) in sessions {
                let was_last = self.session_close(user, session, node).await?;
                if let (true, Some(line)) = (was_last, line) {
                    offline.push((user, line.to_string()));
                }
                last.push(was_last);
            }
            self.announce(&offline, group_max).await?;
            Ok(last)
        }
    }
    /// Hands over sessions of the draining `node` whose clients left after `goaway`: their
    /// records stay, so their users stay online, until each user's next login removes them
    /// silently or the dead-node reaper removes them (and announces the users offline).
    /// `Ok(false)` when the backend cannot: the caller removes them as usual.
    fn sessions_handover(
        &self,
        node: &str,
        sessions: &[(UserId, &str)],
    ) -> impl Future<Output = Result<bool>> + Send {
        let _ = (node, sessions);
        async { Ok(false) }
    }
    /// A login's bookkeeping in one step where the backend can: [`Store::session_open`], then
    /// [`Store::login_state`], and for the user's first session the `presence` line to its
    /// audience (as [`Store::announce`]). Returns whether it is the first session and the state.
    fn session_login(
        &self,
        user: UserId,
        session: &str,
        node: &str,
        max: u32,
        presence: (&str, usize),
    ) -> impl Future<Output = Result<(bool, LoginState)>> + Send {
        async move {
            let first = self.session_open(user, session, node, max).await?;
            let state = self.login_state(user).await?;
            if first {
                self.announce(&[(user, presence.0.to_string())], presence.1)
                    .await?;
            }
            Ok((first, state))
        }
    }
    /// Publishes each `(user, presence event line)` to that user's [`Store::audience`], in one
    /// step where the backend can.
    fn announce(
        &self,
        events: &[(UserId, String)],
        group_max: usize,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            for (user, line) in events {
                let audience = self.audience(*user, group_max).await?;
                self.publish_event(&audience, "-", line).await?;
            }
            Ok(())
        }
    }
    /// Friends of `user` and fellow members of its groups of at most `group_max` members,
    /// without anyone across a block: who hear of its presence.
    fn audience(
        &self,
        user: UserId,
        group_max: usize,
    ) -> impl Future<Output = Result<Vec<UserId>>> + Send;

    /// The friends of `user`, with presence.
    fn friends(&self, user: UserId) -> impl Future<Output = Result<Vec<Friend>>> + Send;
    /// Makes two users friends; the other user, and whether the friendship is new.
    fn friend_add(
        &self,
        user: UserId,
        other: UserId,
    ) -> impl Future<Output = Result<(Friend, bool)>> + Send;
    /// Ends a friendship both ways; the former friend. `no_such_user` if not friends.
    fn friend_remove(
        &self,
        user: UserId,
        other: UserId,
    ) -> impl Future<Output = Result<UserRef>> + Send;

    /// The groups of `user`, as `user` sees them.
    fn groups(&self, user: UserId) -> impl Future<Output = Result<Vec<Group>>> + Send;
    /// Creates a group with `user` as creator.
    fn group_create(
        &self,
        user: UserId,
        name: &str,
        desc: &str,
    ) -> impl Future<Output = Result<Group>> + Send;
    /// Adds `user` to a group.
    fn group_join(
        &self,
        user: UserId,
        group: GroupId,
    ) -> impl Future<Output = Result<Group>> + Send;
    /// Removes `user` from a group (deleting it when it empties); who was a member before.
    fn group_leave(
        &self,
        user: UserId,
        group: GroupId,
    ) -> impl Future<Output = Result<Membership>> + Send;
    /// The id of the group named `name` (case-insensitively), if it exists.
    fn group_id(&self, name: &str) -> impl Future<Output = Result<Option<GroupId>>> + Send;
    /// A group's name, if it exists.
    fn group_name(&self, group: GroupId) -> impl Future<Output = Result<Option<String>>> + Send;

    /// Stores a message in the inbox of every recipient and of the sender, publishing each copy
    /// in the same atomic step. A repeated `client_id` returns the first send's result when its
    /// fingerprint matches, `client_id_conflict` otherwise; over the sender's daily quota,
    /// `rate_limited` with nothing stored.
    fn send(&self, msg: Outgoing<'_>) -> impl Future<Output = Result<Stored>> + Send;
    /// Up to `limit` inbox entries after `after`, oldest first.
    fn inbox_after(
        &self,
        user: UserId,
        after: Seq,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Entry>>> + Send;
    /// Up to `limit` inbox entries strictly before `before` (from the newest when `None`),
    /// newest first. Reads nothing else: it moves no acknowledged position.
    fn inbox_before(
        &self,
        user: UserId,
        before: Option<Seq>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Entry>>> + Send;
    /// Friends, groups and the acknowledged position: everything a login needs, in one step.
    fn login_state(&self, user: UserId) -> impl Future<Output = Result<LoginState>> + Send;
    /// Moves the acknowledged position forward to `seq`; `bad_request` if `seq` is not in the inbox.
    fn ack(&self, user: UserId, seq: Seq) -> impl Future<Output = Result<()>> + Send;

    /// Publishes a live-only event line to every session of `users` except `origin`.
    fn publish_event(
        &self,
        users: &[UserId],
        origin: &str,
        line: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Ends every session of `user` on every node except `origin`: each writes `line` (a
    /// `goaway`) and closes.
    fn close_sessions(
        &self,
        user: UserId,
        origin: &str,
        line: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Starts receiving `user`'s channel on this node; returns once the subscription is live.
    fn subscribe(&self, user: UserId) -> impl Future<Output = Result<()>> + Send;
    /// Stops receiving `user`'s channel on this node.
    fn unsubscribe(&self, user: UserId) -> impl Future<Output = Result<()>> + Send;

    /// Records this node's heartbeat and its open connections; returns whether the node was
    /// still registered, the nodes whose heartbeat is older than `ttl_ms`, and the connection
    /// counts of the live nodes (this one included).
    fn heartbeat(
        &self,
        node: &str,
        now_ms: u64,
        ttl_ms: u64,
        connections: u64,
    ) -> impl Future<Output = Result<Beat>> + Send;
    /// Removes every session of `node`; the users who are offline now.
    fn reap(&self, node: &str) -> impl Future<Output = Result<Vec<UserRef>>> + Send;
    /// Whether the backend is reachable and the live path works.
    fn healthy(&self) -> bool;
}

/// What a heartbeat learns about the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Beat {
    /// This node was still registered (not reaped, not new).
    pub registered: bool,
    /// Nodes whose heartbeat is older than the TTL.
    pub dead: Vec<String>,
    /// Open connections of every live node that published them, this one included.
    pub connections: Vec<u64>,
}

/// Lower-case form of a name, the key of case-insensitive uniqueness.
pub fn fold(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// The answer to a `client_id` seen before on a different request.
pub(crate) fn client_id_conflict() -> crate::error::Error {
    crate::error::Error::new(
        crate::error::Code::ClientIdConflict,
        "this client_id was used for a different message",
    )
}

/// The answer to a `send` to a user who blocks the sender.
pub(crate) fn blocked_send(to: UserId) -> crate::error::Error {
    crate::error::Error::new(
        crate::error::Code::Blocked,
        format!("user {to} does not accept your messages"),
    )
}

/// The answer to a `friend.add` across a block (either way).
pub(crate) fn blocked_friend(other: UserId) -> crate::error::Error {
    crate::error::Error::new(
        crate::error::Code::Blocked,
        format!("a block between you and user {other} forbids this"),
    )
}

/// The answer to a request of a session whose account was deleted meanwhile.
pub(crate) fn account_gone() -> crate::error::Error {
    crate::error::Error::new(crate::error::Code::NotLoggedIn, "your account was deleted")
}

/// The answer to a send over the sender's `send_bytes_per_day`.
pub(crate) fn over_quota() -> crate::error::Error {
    crate::error::Error::new(
        crate::error::Code::RateLimited,
        "daily quota of stored message text used up; try again later",
    )
}

/// What identifies a send for `client_id` reuse: a digest of the target and the text
/// (128 bits of SHA-256, hex), so the record stays small whatever the text. Only sends with a
/// `client_id` need one.
pub fn fingerprint(to: Recipient, text: &str) -> String {
    use sha2::{Digest, Sha256};
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Sha256::new();
    match to {
        Recipient::User(u) => h.update(format!("u:{u}\n")),
        Recipient::Group(g) => h.update(format!("g:{g}\n")),
    }
    h.update(text.as_bytes());
    h.finalize()[..16]
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]])
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records written by earlier releases hold this exact form (32 lowercase hex digits).
    #[test]
    fn fingerprint_is_stable() {
        assert_eq!(
            fingerprint(Recipient::User(2), "hi"),
            "37f27eda9a3970d98e466616aaff9417"
        );
    }
}
