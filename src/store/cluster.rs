//! The Redis Cluster backend: the data model of [`RedisStore`](super::RedisStore) with the same
//! key names, where every script touches one slot and declares its keys
//! (`src/store/lua/cluster/`), and every operation that spans users, groups or nodes is a
//! sequence of single-slot steps ordered so that a crash or a retry between two steps loses
//! nothing acknowledged and stores nothing twice (docs/scaling.md). Live delivery goes through
//! sharded pub/sub (`SPUBLISH` inside the per-inbox scripts), received by [`Shards`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{FromRedisValue, Script, Value};

use crate::error::{Code, Error, Result};
use crate::metrics::Metrics;
use crate::protocol::{Friend, Group, GroupId, GroupRef, Member, Sent, Seq, UserId, UserRef};
use crate::store::payload::{close_payload, event_payload};
use crate::store::redis::{
    channel, conv, entry_from, group_error, inbox_after_cmd, inbox_before_cmd, outcome, role,
    status,
};
use crate::store::shards::Shards;
use crate::store::{
    Account, Beat, BlockChange, CLIENT_ID_TTL_SECS, Deleted, Entry, LiveSink, MAX_TOKENS_PER_USER,
    Membership, Outgoing, QUOTA_BUCKET_MS, QUOTA_WINDOW_MS, Recipient, Retention, Store, Stored,
    Who, account_gone, blocked_friend, blocked_send, client_id_conflict, fold, over_quota,
};
use std::collections::HashSet;

macro_rules! cscript {
    ($name:literal) => {
        Lua::new(include_str!(concat!("lua/cluster/", $name, ".lua")))
    };
}

/// A script: its hash for `EVALSHA`, its body for `EVAL` on a node that lacks it.
struct Lua {
    hash: String,
    body: &'static str,
}

impl Lua {
    fn new(body: &'static str) -> Lua {
        Lua {
            hash: Script::new(body).get_hash().to_string(),
            body,
        }
    }
}

struct Scripts {
    send_own: Lua,
    append: Lua,
    ack: Lua,
    session_open: Lua,
    session_drop: Lua,
    session_handover: Lua,
    heartbeat: Lua,
    node_join: Lua,
    attempt: Lua,
    group_put: Lua,
    group_join: Lua,
    group_leave: Lua,
    name_release: Lua,
}

fn ukey(id: impl std::fmt::Display, suffix: &str) -> String {
    format!("sb:{{u:{id}}}{suffix}")
}

fn gkey(id: impl std::fmt::Display, suffix: &str) -> String {
    format!("sb:{{g:{id}}}{suffix}")
}

fn nkey(node: &str, suffix: &str) -> String {
    format!("sb:{{n:{node}}}{suffix}")
}

/// The Redis Cluster store of one node.
pub struct ClusterStore {
    con: ClusterConnection,
    shards: Arc<Shards>,
    scripts: Scripts,
    retention: Retention,
    timeout: Duration,
    metrics: Arc<Metrics>,
    node: String,
    wait_replicas: AtomicU32,
    wait_timeout_ms: AtomicU64,
}

impl ClusterStore {
    /// Connects to the cluster through `seeds` (`redis://` URLs) and a subscriber per master.
    pub async fn connect(
        seeds: &[String],
        node: &str,
        sink: Arc<dyn LiveSink>,
        retention: Retention,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<ClusterStore>> {
        let client = ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(3)
            .tcp_settings(crate::store::redis::tcp_settings())
            .build()?;
        let con = tokio::time::timeout(timeout, client.get_async_connection()).await??;
        let shards = Shards::connect(con.clone(), seeds, sink, node, timeout).await?;
        Ok(Arc::new(ClusterStore {
            con,
            shards,
            scripts: Scripts {
                send_own: cscript!("send_own"),
                append: cscript!("append"),
                ack: cscript!("ack"),
                session_open: cscript!("session_open"),
                session_drop: cscript!("session_drop"),
                session_handover: cscript!("session_handover"),
                heartbeat: cscript!("heartbeat"),
                node_join: cscript!("node_join"),
                attempt: cscript!("attempt"),
                group_put: cscript!("group_put"),
                group_join: cscript!("group_join"),
                group_leave: cscript!("group_leave"),
                name_release: cscript!("name_release"),
            },
            retention,
            timeout,
            metrics,
            node: node.to_string(),
            wait_replicas: AtomicU32::new(0),
            wait_timeout_ms: AtomicU64::new(0),
        }))
    }

    /// As [`RedisStore::set_wait_replicas`](super::RedisStore::set_wait_replicas), per step of
    /// a send: every copy is confirmed by the replicas of its own master.
    pub fn set_wait_replicas(&self, replicas: u32, timeout: Duration) {
        self.wait_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Release);
        self.wait_replicas.store(replicas, Ordering::Release);
    }

    /// The sharded subscriber layer (its watcher must run: [`Shards::watch`]).
    pub fn shards(&self) -> Arc<Shards> {
        self.shards.clone()
    }

    fn wait(&self) -> Option<(u32, u64)> {
        let n = self.wait_replicas.load(Ordering::Acquire);
        (n > 0).then(|| (n, self.wait_timeout_ms.load(Ordering::Acquire)))
    }

    /// Bounds a call by the Redis timeout (plus a WAIT's) and maps failures to `unavailable`.
    async fn call<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        let started = std::time::Instant::now();
        let limit =
            self.timeout + Duration::from_millis(self.wait_timeout_ms.load(Ordering::Acquire));
        let result = tokio::time::timeout(limit, fut).await;
        outcome(&self.metrics, op, started, result)
    }

    async fn q<T: FromRedisValue>(&self, op: &'static str, cmd: &redis::Cmd) -> Result<T> {
        let mut con = self.con.clone();
        self.call(op, cmd.query_async(&mut con)).await
    }

    async fn qp<T: FromRedisValue>(&self, op: &'static str, pipe: &redis::Pipeline) -> Result<T> {
        let mut con = self.con.clone();
        self.call(op, pipe.query_async(&mut con)).await
    }

    /// Runs `lua` on the slot of `keys` (all in one slot), with `WAIT` behind it in one
    /// pipeline when `wait` is given (see docs/scaling.md); `EVAL` when the node lacks it.
    async fn eval<T: FromRedisValue>(
        &self,
        op: &'static str,
        lua: &Lua,
        keys: &[&str],
        args: &[&(dyn std::fmt::Display + Sync)],
        wait: Option<(u32, u64)>,
    ) -> Result<T> {
        let build = |by_hash: bool| {
            let mut cmd = redis::Cmd::new();
            if by_hash {
                cmd.arg("EVALSHA").arg(&lua.hash);
            } else {
                cmd.arg("EVAL").arg(lua.body);
            }
            cmd.arg(keys.len());
            for k in keys {
                cmd.arg(*k);
            }
            for a in args {
                cmd.arg(a.to_string());
            }
            let mut pipe = redis::pipe();
            pipe.add_command(cmd);
            if let Some((n, ms)) = wait {
                pipe.cmd("WAIT").arg(n).arg(ms);
            }
            pipe
        };
        let mut con = self.con.clone();
        let run = async {
            let first = build(true);
            match first.query_async::<Vec<Value>>(&mut con).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    build(false).query_async::<Vec<Value>>(&mut con).await
                }
                result => result,
            }
        };
        let mut replies = self.call(op, run).await?.into_iter();
        let v = replies
            .next()
            .ok_or_else(|| Error::internal(format!("{op}: empty reply")))?;
        if let Some((n, _)) = wait {
            let acked: i64 = conv(replies.next().unwrap_or(Value::Int(0)), op)?;
            if acked < i64::from(n) {
                self.metrics
                    .redis_errors
                    .with_label_values(&["wait_replicas"])
                    .inc();
                tracing::warn!(
                    op,
                    acked,
                    replicas = n,
                    "write not confirmed by enough replicas in time"
                );
                return Err(Error::unavailable(format!(
                    "stored, but confirmed by {acked} of {n} Redis replicas in time; retry with the same client_id"
                )));
            }
        }
        conv(v, op)
    }

    /// Those `user` must not see online nor be seen by: whom it blocks and who blocks it (both
    /// sets in its own slot, so one command).
    async fn hidden(&self, user: UserId) -> Result<HashSet<UserId>> {
        self.q(
            "hidden",
            redis::cmd("SUNION")
                .arg(ukey(user, ":blocks"))
                .arg(ukey(user, ":blockedby")),
        )
        .await
    }

    /// Whether `user`'s account exists (a session may outlive a deleted one).
    async fn exists(&self, user: UserId) -> Result<bool> {
        let n: i64 = self
            .q("exists", redis::cmd("EXISTS").arg(ukey(user, "")))
            .await?;
        Ok(n == 1)
    }

    /// Records a token: its key, then its digest in the user's token set (score = expiry),
    /// dropping expired digests and revoking the oldest beyond [`MAX_TOKENS_PER_USER`]. A
    /// crash in between leaves a token that is not recorded: it logs in only until the
    /// user's tokens are first revoked (as one of 0.3.0).
    async fn issue_token(&self, digest: &str, user: UserId, ttl_secs: u64) -> Result<()> {
        let now = crate::clock::now_ms();
        let expiry = now + ttl_secs * 1000;
        let tkey = ukey(user, ":tokens");
        self.q::<()>(
            "token_issue",
            redis::cmd("SET")
                .arg(format!("sb:token:{digest}"))
                .arg(user)
                .arg("EX")
                .arg(ttl_secs),
        )
        .await?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD").arg(&tkey).arg(expiry).arg(digest).ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&tkey)
            .arg("-inf")
            .arg(now)
            .ignore();
        pipe.cmd("ZCARD").arg(&tkey);
        let (n,): (u64,) = self.qp("token_issue", &pipe).await?;
        if n > u64::from(MAX_TOKENS_PER_USER) {
            let popped: Vec<(String, f64)> = self
                .q(
                    "token_issue",
                    redis::cmd("ZPOPMIN")
                        .arg(&tkey)
                        .arg(n - u64::from(MAX_TOKENS_PER_USER)),
                )
                .await?;
            for (d, _) in popped {
                self.q::<()>(
                    "token_issue",
                    redis::cmd("DEL").arg(format!("sb:token:{d}")),
                )
                .await?;
            }
        }
        let newest: Vec<(String, f64)> = self
            .q(
                "token_issue",
                redis::cmd("ZRANGE")
                    .arg(&tkey)
                    .arg(-1)
                    .arg(-1)
                    .arg("WITHSCORES"),
            )
            .await?;
        let until = newest
            .first()
            .map_or(expiry, |(_, e)| (*e as u64).max(expiry));
        self.q::<()>("token_issue", redis::cmd("PEXPIREAT").arg(&tkey).arg(until))
            .await
    }

    /// Revokes every token recorded in the user's token set.
    async fn revoke_tokens(&self, user: UserId) -> Result<()> {
        let tkey = ukey(user, ":tokens");
        let digests: Vec<String> = self
            .q(
                "revoke_tokens",
                redis::cmd("ZRANGE").arg(&tkey).arg(0).arg(-1),
            )
            .await?;
        for d in digests {
            self.q::<()>(
                "revoke_tokens",
                redis::cmd("DEL").arg(format!("sb:token:{d}")),
            )
            .await?;
        }
        self.q("revoke_tokens", redis::cmd("DEL").arg(&tkey)).await
    }

    /// Whether `a` and `b` share a group of at most `max` members.
    async fn shares_small_group(&self, a: UserId, b: UserId, max: usize) -> Result<bool> {
        let ga: HashSet<GroupId> = self
            .q("groups", redis::cmd("SMEMBERS").arg(ukey(a, ":groups")))
            .await?;
        let gb: HashSet<GroupId> = self
            .q("groups", redis::cmd("SMEMBERS").arg(ukey(b, ":groups")))
            .await?;
        for g in ga.intersection(&gb) {
            let n: usize = self
                .q("groups", redis::cmd("HLEN").arg(gkey(g, ":members")))
                .await?;
            if n <= max {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Keeps `switchboard_redis_connected` in step, as the standalone store does: the command
    /// role by a `PING` through the cluster connection, the subscriber role by the shards'
    /// canaries. Runs until aborted.
    pub async fn report_connected(self: Arc<Self>) {
        let connected = &self.metrics.ops.redis_connected;
        loop {
            let ping = self.q::<String>("ping", &redis::cmd("PING")).await.is_ok();
            connected
                .with_label_values(&["commands"])
                .set(i64::from(ping));
            connected
                .with_label_values(&["subscriber"])
                .set(i64::from(self.shards.healthy()));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `(name, password hash, online)` of a user, if it exists.
    async fn user_row(&self, id: UserId) -> Result<Option<(String, String, bool)>> {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET").arg(ukey(id, "")).arg("name").arg("pw");
        pipe.cmd("EXISTS").arg(ukey(id, ":sessions"));
        let (row, online): (Vec<Option<String>>, i64) = self.qp("account", &pipe).await?;
        let mut row = row.into_iter();
        match (row.next().flatten(), row.next().flatten()) {
            (Some(name), pw) => Ok(Some((name, pw.unwrap_or_default(), online == 1))),
            _ => Ok(None),
        }
    }

    async fn account_row(&self, who: Who<'_>) -> Result<Option<(UserId, String, String, bool)>> {
        let id = match who {
            Who::Id(id) => id,
            Who::Name(n) => {
                let id: Option<UserId> = self
                    .q(
                        "account",
                        redis::cmd("HGET").arg("sb:users:byname").arg(fold(n)),
                    )
                    .await?;
                match id {
                    Some(id) => id,
                    None => return Ok(None),
                }
            }
        };
        Ok(self
            .user_row(id)
            .await?
            .map(|(name, pw, online)| (id, name, pw, online)))
    }

    async fn friend_rows(&self, ids: Vec<UserId>) -> Result<Vec<Friend>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let (name, _, online) = self.user_row(id).await?.unwrap_or_default();
            out.push(Friend { id, name, online });
        }
        Ok(out)
    }

    /// A group as `user` sees it; `None` when it does not exist or `user` is not a member.
    async fn group_view(&self, user: UserId, group: GroupId) -> Result<Option<Group>> {
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(gkey(group, ""))
            .arg("name")
            .arg("desc");
        pipe.cmd("HGETALL").arg(gkey(group, ":members"));
        let (head, members): (Vec<Option<String>>, Vec<(UserId, String)>) =
            self.qp("group_view", &pipe).await?;
        let mut head = head.into_iter();
        let (Some(name), desc) = (head.next().flatten(), head.next().flatten()) else {
            return Ok(None);
        };
        let Some(my_role) = members
            .iter()
            .find(|(m, _)| *m == user)
            .map(|(_, r)| role(r))
        else {
            return Ok(None);
        };
        let hide = self.hidden(user).await?;
        let mut list = Vec::with_capacity(members.len());
        for (id, r) in members {
            let (mname, _, online) = self.user_row(id).await?.unwrap_or_default();
            list.push(Member {
                id,
                name: mname,
                role: role(&r),
                online: online && !hide.contains(&id),
            });
        }
        Ok(Some(Group {
            id: group,
            name,
            desc: desc.unwrap_or_default(),
            role: my_role,
            members: list,
        }))
    }

    async fn group_views(&self, user: UserId, ids: Vec<GroupId>) -> Result<Vec<Group>> {
        let mut out = Vec::new();
        for g in ids {
            if let Some(v) = self.group_view(user, g).await? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Stores one copy of a message in `to`'s inbox and publishes it; a repeat of the same
    /// message (same id, with a `client_id`) stores nothing.
    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        to: UserId,
        from: UserId,
        id: &str,
        json: &str,
        tail: &str,
        dedupe: bool,
        cutoff_id: &str,
        wait: Option<(u32, u64)>,
    ) -> Result<String> {
        let inbox = ukey(to, ":inbox");
        let ch = channel(to);
        let mid = ukey(to, &format!(":mid:{id}"));
        let mut keys: Vec<&str> = vec![&inbox, &ch];
        if dedupe {
            keys.push(&mid);
        }
        let waited = if wait.is_some() { "1" } else { "" };
        self.eval(
            "send",
            &self.scripts.append,
            &keys,
            &[
                &from,
                &json,
                &tail,
                &self.retention.max_len,
                &cutoff_id,
                &self.retention.hard_max_len,
                &CLIENT_ID_TTL_SECS,
                &waited,
            ],
            wait,
        )
        .await
    }
}

impl Store for ClusterStore {
    async fn register(&self, name: &str, password_hash: &str) -> Result<UserRef> {
        let folded = fold(name);
        let taken = || Error::new(Code::NameTaken, format!("name {name:?} is taken"));
        let exists: i64 = self
            .q(
                "register",
                redis::cmd("HEXISTS").arg("sb:users:byname").arg(&folded),
            )
            .await?;
        if exists == 1 {
            return Err(taken());
        }
        // Id, then the account, then the name: a crash before the name leaves an account that
        // no name leads to (harmless), never a name that leads to no account.
        let id: UserId = self
            .q("register", redis::cmd("INCR").arg("sb:users:next"))
            .await?;
        self.q::<()>(
            "register",
            redis::cmd("HSET")
                .arg(ukey(id, ""))
                .arg("name")
                .arg(name)
                .arg("pw")
                .arg(password_hash),
        )
        .await?;
        let claimed: i64 = self
            .q(
                "register",
                redis::cmd("HSETNX")
                    .arg("sb:users:byname")
                    .arg(&folded)
                    .arg(id),
            )
            .await?;
        if claimed == 0 {
            self.q::<()>("register", redis::cmd("DEL").arg(ukey(id, "")))
                .await?;
            return Err(taken());
        }
        Ok(UserRef {
            id,
            name: name.to_string(),
        })
    }

    async fn account(&self, who: Who<'_>) -> Result<Option<Account>> {
        Ok(self
            .account_row(who)
            .await?
            .map(|(id, name, password_hash, _)| Account {
                user: UserRef { id, name },
                password_hash,
            }))
    }

    async fn whois(&self, who: Who<'_>, viewer: Option<UserId>) -> Result<Option<Friend>> {
        let Some((id, name, _, online)) = self.account_row(who).await? else {
            return Ok(None);
        };
        let hidden = match viewer {
            Some(v) if online => self.hidden(v).await?.contains(&id),
            _ => false,
        };
        Ok(Some(Friend {
            id,
            name,
            online: online && !hidden,
        }))
    }

    async fn token_issue(&self, digest: &str, user: UserId, ttl_secs: u64) -> Result<()> {
        self.issue_token(digest, user, ttl_secs).await
    }

    async fn token_account(&self, digest: &str) -> Result<Option<Account>> {
        let id: Option<UserId> = self
            .q(
                "token_account",
                redis::cmd("GET").arg(format!("sb:token:{digest}")),
            )
            .await?;
        let Some(id) = id else {
            return Ok(None);
        };
        // Once the user's tokens were revoked, only recorded digests count (as token_account.lua).
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(ukey(id, "")).arg("tok");
        pipe.cmd("ZSCORE").arg(ukey(id, ":tokens")).arg(digest);
        let (strict, recorded): (Option<String>, Option<f64>) =
            self.qp("token_account", &pipe).await?;
        if strict.is_some() && recorded.is_none() {
            return Ok(None);
        }
        self.account(Who::Id(id)).await
    }

    async fn password_change(
        &self,
        user: UserId,
        password_hash: &str,
        digest: &str,
        ttl_secs: u64,
    ) -> Result<()> {
        if !self.exists(user).await? {
            return Err(Error::new(Code::NoSuchUser, "no such user"));
        }
        // Revoked before the password changes: a crash in between leaves the old password,
        // which the user can retry with.
        self.revoke_tokens(user).await?;
        self.q::<()>(
            "password.change",
            redis::cmd("HSET")
                .arg(ukey(user, ""))
                .arg("pw")
                .arg(password_hash)
                .arg("tok")
                .arg("1"),
        )
        .await?;
        self.issue_token(digest, user, ttl_secs).await
    }

    /// Per-slot steps, each idempotent, in an order that keeps the account usable (and the
    /// deletion retryable) until its last step: tokens, friendships, memberships, blocks, the
    /// name (the account still logs in by id), then the user's own keys, all in its slot.
    async fn account_delete(&self, user: UserId) -> Result<Option<Deleted>> {
        let Some((name, _, _)) = self.user_row(user).await? else {
            return Ok(None);
        };
        self.revoke_tokens(user).await?;
        let friends: Vec<UserId> = self
            .q(
                "account.delete",
                redis::cmd("SMEMBERS").arg(ukey(user, ":friends")),
            )
            .await?;
        for &f in &friends {
            self.q::<()>(
                "account.delete",
                redis::cmd("SREM").arg(ukey(f, ":friends")).arg(user),
            )
            .await?;
        }
        let group_ids: Vec<GroupId> = self
            .q(
                "account.delete",
                redis::cmd("SMEMBERS").arg(ukey(user, ":groups")),
            )
            .await?;
        let mut groups = Vec::new();
        for g in group_ids {
            match self.group_leave(user, g).await {
                Ok(left) => groups.push(left),
                Err(e) if matches!(e.code, Code::NoSuchGroup | Code::NotAMember) => {}
                Err(e) => return Err(e),
            }
        }
        for (set, mirror) in [(":blocks", ":blockedby"), (":blockedby", ":blocks")] {
            let others: Vec<UserId> = self
                .q(
                    "account.delete",
                    redis::cmd("SMEMBERS").arg(ukey(user, set)),
                )
                .await?;
            for o in others {
                self.q::<()>(
                    "account.delete",
                    redis::cmd("SREM").arg(ukey(o, mirror)).arg(user),
                )
                .await?;
            }
        }
        let folded = fold(&name);
        let owner: Option<UserId> = self
            .q(
                "account.delete",
                redis::cmd("HGET").arg("sb:users:byname").arg(&folded),
            )
            .await?;
        if owner == Some(user) {
            self.q::<()>(
                "account.delete",
                redis::cmd("HDEL").arg("sb:users:byname").arg(&folded),
            )
            .await?;
        }
        let mut del = redis::cmd("DEL");
        for suffix in [
            "",
            ":friends",
            ":groups",
            ":blocks",
            ":blockedby",
            ":inbox",
            ":acked",
            ":quota",
            ":sessions",
            ":tokens",
        ] {
            del.arg(ukey(user, suffix));
        }
        self.q::<()>("account.delete", &del).await?;
        Ok(Some(Deleted { friends, groups }))
    }

    async fn block(&self, user: UserId, other: UserId, group_max: usize) -> Result<BlockChange> {
        let Some((name, _, online)) = self.user_row(other).await? else {
            return Err(Error::new(
                Code::NoSuchUser,
                format!("user {other} does not exist"),
            ));
        };
        if !self.exists(user).await? {
            return Err(account_gone());
        }
        // The other side first, as in friend_remove: the caller's set decides "new", so a
        // retry after a crash in between completes the block.
        self.q::<()>(
            "block",
            redis::cmd("SADD").arg(ukey(other, ":blockedby")).arg(user),
        )
        .await?;
        self.q::<()>(
            "block",
            redis::cmd("SREM").arg(ukey(other, ":friends")).arg(user),
        )
        .await?;
        let new: i64 = self
            .q(
                "block",
                redis::cmd("SADD").arg(ukey(user, ":blocks")).arg(other),
            )
            .await?;
        let friends: i64 = self
            .q(
                "block",
                redis::cmd("SREM").arg(ukey(user, ":friends")).arg(other),
            )
            .await?;
        let shared = new == 1 && self.shares_small_group(user, other, group_max).await?;
        Ok(BlockChange {
            other: UserRef { id: other, name },
            were_friends: friends == 1,
            shared,
            other_online: online,
        })
    }

    async fn unblock(&self, user: UserId, other: UserId, group_max: usize) -> Result<BlockChange> {
        let Some((name, _, online)) = self.user_row(other).await? else {
            return Err(Error::new(
                Code::NoSuchUser,
                format!("user {other} does not exist"),
            ));
        };
        self.q::<()>(
            "unblock",
            redis::cmd("SREM").arg(ukey(other, ":blockedby")).arg(user),
        )
        .await?;
        let removed: i64 = self
            .q(
                "unblock",
                redis::cmd("SREM").arg(ukey(user, ":blocks")).arg(other),
            )
            .await?;
        let still: i64 = self
            .q(
                "unblock",
                redis::cmd("SISMEMBER")
                    .arg(ukey(user, ":blockedby"))
                    .arg(other),
            )
            .await?;
        let shared =
            removed == 1 && still == 0 && self.shares_small_group(user, other, group_max).await?;
        Ok(BlockChange {
            other: UserRef { id: other, name },
            were_friends: false,
            shared,
            other_online: online,
        })
    }

    async fn blocks(&self, user: UserId) -> Result<Vec<UserRef>> {
        let ids: Vec<UserId> = self
            .q("blocks", redis::cmd("SMEMBERS").arg(ukey(user, ":blocks")))
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let name = self.user_row(id).await?.map(|r| r.0).unwrap_or_default();
            out.push(UserRef { id, name });
        }
        Ok(out)
    }

    async fn token_revoke(&self, digest: &str) -> Result<()> {
        self.q(
            "token_revoke",
            redis::cmd("DEL").arg(format!("sb:token:{digest}")),
        )
        .await
    }

    async fn attempt_reserve(
        &self,
        keys: &[String],
        max: u32,
        window_ms: u64,
        now: u64,
    ) -> Result<Option<String>> {
        // Each key is its own slot: reserve one after the other, take back on a full one.
        let member = format!("{now}-{:08x}", rand::random::<u32>());
        let mut done: Vec<String> = Vec::new();
        for k in keys {
            let key = format!("sb:{k}");
            let added: i64 = self
                .eval(
                    "attempt_reserve",
                    &self.scripts.attempt,
                    &[&key],
                    &[&now, &window_ms, &max, &member.as_str()],
                    None,
                )
                .await?;
            if added != 1 {
                self.attempt_release(&done, &member).await?;
                return Ok(None);
            }
            done.push(k.clone());
        }
        Ok(Some(member))
    }

    async fn attempt_release(&self, keys: &[String], member: &str) -> Result<()> {
        for k in keys {
            self.q::<()>(
                "attempt_release",
                redis::cmd("ZREM").arg(format!("sb:{k}")).arg(member),
            )
            .await?;
        }
        Ok(())
    }

    async fn session_open(
        &self,
        user: UserId,
        session: &str,
        node: &str,
        max: u32,
    ) -> Result<bool> {
        if !self.exists(user).await? {
            return Err(Error::new(Code::NoSuchUser, "the account was deleted"));
        }
        // The node's record first: a crash after it leaves a record the reaper removes (it
        // finds no session), never a session no reaper knows of.
        let entry = format!("{user} {session}");
        self.q::<()>(
            "login",
            redis::cmd("SADD").arg(nkey(node, ":sessions")).arg(&entry),
        )
        .await?;
        self.eval::<i64>(
            "login",
            &self.scripts.node_join,
            &["sb:nodes"],
            &[&node],
            None,
        )
        .await?;
        let skey = ukey(user, ":sessions");
        let v: Value = self
            .eval(
                "login",
                &self.scripts.session_open,
                &[&skey, &ukey(user, ":handover")],
                &[&session, &node, &max],
                None,
            )
            .await?;
        match status(v, "login") {
            Ok(mut rest) => Ok(conv::<i64>(rest.remove(1), "login")? == 1),
            Err(e) => {
                let _ = self
                    .q::<()>(
                        "login",
                        redis::cmd("SREM").arg(nkey(node, ":sessions")).arg(&entry),
                    )
                    .await;
                if e.code == Code::TooManySessions {
                    Err(Error::new(
                        Code::TooManySessions,
                        format!("at most {max} sessions per user"),
                    ))
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn sessions_handover(&self, node: &str, sessions: &[(UserId, &str)]) -> Result<bool> {
        // One step per session (each in its user's slot), as the removals are.
        for &(user, session) in sessions {
            let (skey, hkey) = (ukey(user, ":sessions"), ukey(user, ":handover"));
            self.eval::<i64>(
                "sessions_handover",
                &self.scripts.session_handover,
                &[&skey, &hkey],
                &[&session, &node],
                None,
            )
            .await?;
        }
        Ok(true)
    }

    async fn session_close(&self, user: UserId, session: &str, node: &str) -> Result<bool> {
        let (skey, akey) = (ukey(user, ":sessions"), ukey(user, ""));
        let last: Option<String> = self
            .eval(
                "session_close",
                &self.scripts.session_drop,
                &[&skey, &akey],
                &[&session],
                None,
            )
            .await?;
        self.q::<()>(
            "session_close",
            redis::cmd("SREM")
                .arg(nkey(node, ":sessions"))
                .arg(format!("{user} {session}")),
        )
        .await?;
        Ok(last.is_some())
    }

    async fn audience(&self, user: UserId, group_max: usize) -> Result<Vec<UserId>> {
        let mut pipe = redis::pipe();
        pipe.cmd("SMEMBERS").arg(ukey(user, ":friends"));
        pipe.cmd("SMEMBERS").arg(ukey(user, ":groups"));
        let (friends, groups): (Vec<UserId>, Vec<GroupId>) = self.qp("audience", &pipe).await?;
        // Nobody across a block hears of it.
        let mut seen = self.hidden(user).await?;
        seen.insert(user);
        let mut out = Vec::new();
        for f in friends {
            if seen.insert(f) {
                out.push(f);
            }
        }
        for g in groups {
            let mut pipe = redis::pipe();
            pipe.cmd("HLEN").arg(gkey(g, ":members"));
            pipe.cmd("HKEYS").arg(gkey(g, ":members"));
            let (n, members): (usize, Vec<UserId>) = self.qp("audience", &pipe).await?;
            if n <= group_max {
                for m in members {
                    if seen.insert(m) {
                        out.push(m);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn friends(&self, user: UserId) -> Result<Vec<Friend>> {
        let ids: Vec<UserId> = self
            .q(
                "friends",
                redis::cmd("SMEMBERS").arg(ukey(user, ":friends")),
            )
            .await?;
        self.friend_rows(ids).await
    }

    async fn friend_add(&self, user: UserId, other: UserId) -> Result<(Friend, bool)> {
        let Some((name, _, online)) = self.user_row(other).await? else {
            return Err(Error::new(
                Code::NoSuchUser,
                format!("user {other} does not exist"),
            ));
        };
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(ukey(user, ""));
        pipe.cmd("SISMEMBER").arg(ukey(user, ":blocks")).arg(other);
        pipe.cmd("SISMEMBER")
            .arg(ukey(user, ":blockedby"))
            .arg(other);
        let (me, blocks, blocked): (i64, i64, i64) = self.qp("friend.add", &pipe).await?;
        if me == 0 {
            return Err(account_gone());
        }
        if blocks == 1 || blocked == 1 {
            return Err(blocked_friend(other));
        }
        // The other side first: the caller's set decides "new", so a retry after a crash in
        // between completes the friendship and still reports it new.
        self.q::<()>(
            "friend.add",
            redis::cmd("SADD").arg(ukey(other, ":friends")).arg(user),
        )
        .await?;
        let new: i64 = self
            .q(
                "friend.add",
                redis::cmd("SADD").arg(ukey(user, ":friends")).arg(other),
            )
            .await?;
        Ok((
            Friend {
                id: other,
                name,
                online,
            },
            new == 1,
        ))
    }

    async fn friend_remove(&self, user: UserId, other: UserId) -> Result<UserRef> {
        let is: i64 = self
            .q(
                "friend.remove",
                redis::cmd("SISMEMBER")
                    .arg(ukey(user, ":friends"))
                    .arg(other),
            )
            .await?;
        if is == 0 {
            return Err(Error::new(
                Code::NoSuchUser,
                format!("user {other} is not your friend"),
            ));
        }
        // The other side first, as in friend_add: a retry finds the caller's side still there.
        self.q::<()>(
            "friend.remove",
            redis::cmd("SREM").arg(ukey(other, ":friends")).arg(user),
        )
        .await?;
        self.q::<()>(
            "friend.remove",
            redis::cmd("SREM").arg(ukey(user, ":friends")).arg(other),
        )
        .await?;
        let name = self.user_row(other).await?.map(|r| r.0).unwrap_or_default();
        Ok(UserRef { id: other, name })
    }

    async fn groups(&self, user: UserId) -> Result<Vec<Group>> {
        let ids: Vec<GroupId> = self
            .q("groups", redis::cmd("SMEMBERS").arg(ukey(user, ":groups")))
            .await?;
        self.group_views(user, ids).await
    }

    async fn group_create(&self, user: UserId, name: &str, desc: &str) -> Result<Group> {
        let folded = fold(name);
        let taken = || Error::new(Code::NameTaken, format!("group name {name:?} is taken"));
        let exists: i64 = self
            .q(
                "group.create",
                redis::cmd("HEXISTS").arg("sb:groups:byname").arg(&folded),
            )
            .await?;
        if exists == 1 {
            return Err(taken());
        }
        // The group, the creator's list, then the name (as register).
        let id: GroupId = self
            .q("group.create", redis::cmd("INCR").arg("sb:groups:next"))
            .await?;
        let (g, m) = (gkey(id, ""), gkey(id, ":members"));
        self.eval::<i64>(
            "group.create",
            &self.scripts.group_put,
            &[&g, &m],
            &[&name, &desc, &user],
            None,
        )
        .await?;
        self.q::<()>(
            "group.create",
            redis::cmd("SADD").arg(ukey(user, ":groups")).arg(id),
        )
        .await?;
        let claimed: i64 = self
            .q(
                "group.create",
                redis::cmd("HSETNX")
                    .arg("sb:groups:byname")
                    .arg(&folded)
                    .arg(id),
            )
            .await?;
        if claimed == 0 {
            self.q::<()>("group.create", redis::cmd("DEL").arg(&g).arg(&m))
                .await?;
            self.q::<()>(
                "group.create",
                redis::cmd("SREM").arg(ukey(user, ":groups")).arg(id),
            )
            .await?;
            return Err(taken());
        }
        self.group_view(user, id)
            .await?
            .ok_or_else(|| Error::internal("group.create: group vanished"))
    }

    async fn group_join(&self, user: UserId, group: GroupId) -> Result<Group> {
        // The user's list first: an entry there without the membership is ignored by every
        // view, and a retry completes it.
        let added: i64 = self
            .q(
                "group.join",
                redis::cmd("SADD").arg(ukey(user, ":groups")).arg(group),
            )
            .await?;
        let (g, m) = (gkey(group, ""), gkey(group, ":members"));
        let r: String = self
            .eval(
                "group.join",
                &self.scripts.group_join,
                &[&g, &m],
                &[&user],
                None,
            )
            .await?;
        if r != "ok" {
            if r == "no_such_group" && added == 1 {
                self.q::<()>(
                    "group.join",
                    redis::cmd("SREM").arg(ukey(user, ":groups")).arg(group),
                )
                .await?;
            }
            let code = Code::parse(&r).unwrap_or(Code::Internal);
            return Err(group_error(Error::new(code, r), group));
        }
        self.group_view(user, group)
            .await?
            .ok_or_else(|| Error::new(Code::NoSuchGroup, format!("group {group} does not exist")))
    }

    async fn group_leave(&self, user: UserId, group: GroupId) -> Result<Membership> {
        let (g, m) = (gkey(group, ""), gkey(group, ":members"));
        let v: Value = self
            .eval(
                "group.leave",
                &self.scripts.group_leave,
                &[&g, &m],
                &[&user],
                None,
            )
            .await?;
        let rest = status(v, "group.leave").map_err(|e| group_error(e, group))?;
        let (_, name, members, gone): (String, String, Vec<UserId>, i64) =
            conv(Value::Array(rest), "group.leave")?;
        self.q::<()>(
            "group.leave",
            redis::cmd("SREM").arg(ukey(user, ":groups")).arg(group),
        )
        .await?;
        if gone == 1 {
            self.eval::<i64>(
                "group.leave",
                &self.scripts.name_release,
                &["sb:groups:byname"],
                &[&fold(&name), &group],
                None,
            )
            .await?;
        }
        Ok(Membership {
            group: GroupRef { id: group, name },
            members,
        })
    }

    async fn group_id(&self, name: &str) -> Result<Option<GroupId>> {
        self.q(
            "group_id",
            redis::cmd("HGET").arg("sb:groups:byname").arg(fold(name)),
        )
        .await
    }

    async fn group_name(&self, group: GroupId) -> Result<Option<String>> {
        self.q(
            "group_name",
            redis::cmd("HGET").arg(gkey(group, "")).arg("name"),
        )
        .await
    }

    async fn send(&self, msg: Outgoing<'_>) -> Result<Stored> {
        let from = msg.from;
        // A session that outlived its deleted account must not bring the account's keys back.
        if !self.exists(from).await? {
            return Err(account_gone());
        }
        // Recipients first (other slots; read only).
        let recipients: Vec<UserId> = match msg.to {
            Recipient::User(u) => {
                let mut pipe = redis::pipe();
                pipe.cmd("EXISTS").arg(ukey(u, ""));
                pipe.cmd("SISMEMBER").arg(ukey(u, ":blocks")).arg(from);
                let (n, blocked): (i64, i64) = self.qp("send", &pipe).await?;
                if n == 0 {
                    return Err(Error::new(
                        Code::NoSuchUser,
                        format!("user {u} does not exist"),
                    ));
                }
                if blocked == 1 {
                    return Err(blocked_send(u));
                }
                vec![u]
            }
            Recipient::Group(g) => {
                let members: Vec<UserId> = self
                    .q("send", redis::cmd("HKEYS").arg(gkey(g, ":members")))
                    .await?;
                if members.is_empty() {
                    return Err(group_error(Error::new(Code::NoSuchGroup, ""), g));
                }
                if !members.contains(&from) {
                    return Err(group_error(Error::new(Code::NotAMember, ""), g));
                }
                members
            }
        };
        let others: Vec<UserId> = recipients.into_iter().filter(|&r| r != from).collect();
        let now = crate::clock::now_ms();
        let cutoff = now.saturating_sub(self.retention.max_age_ms);
        let cutoff_id = format!("{}-{}", cutoff.saturating_sub(1), u64::MAX);
        let bucket = now / QUOTA_BUCKET_MS;
        let oldest = now.saturating_sub(QUOTA_WINDOW_MS) / QUOTA_BUCKET_MS;
        let trace = msg.trace.unwrap_or("-");
        let tail = |ts: u64, json: &str| format!(" {} {ts} {trace} {json}", msg.origin);
        let wait = self.wait();
        let waited = if wait.is_some() { "1" } else { "" };
        let charge = msg.text_bytes * (1 + others.len() as u64);
        // Step 1, the sender's slot: client_id, quota, own copy. Its client_id record is what
        // makes a retry find this send and finish its fan-out (step 2) instead of storing anew.
        let (inbox, ch, quota) = (ukey(from, ":inbox"), channel(from), ukey(from, ":quota"));
        let cid = msg.client_id.map(|c| ukey(from, &format!(":cid:{c}")));
        let fp = msg.client_id.map(|c| ukey(from, &format!(":cidfp:{c}")));
        let mut keys: Vec<&str> = vec![&inbox, &ch, &quota];
        if let (Some(c), Some(f)) = (&cid, &fp) {
            keys.push(c);
            keys.push(f);
        }
        let own_tail = tail(msg.ts, msg.json);
        let v: Value = self
            .eval(
                "send",
                &self.scripts.send_own,
                &keys,
                &[
                    &from,
                    &msg.json,
                    &own_tail.as_str(),
                    &msg.id,
                    &msg.ts,
                    &self.retention.max_len,
                    &cutoff_id.as_str(),
                    &CLIENT_ID_TTL_SECS,
                    &msg.fingerprint,
                    &charge,
                    &msg.quota,
                    &bucket,
                    &oldest,
                    &self.retention.hard_max_len,
                    &waited,
                ],
                wait,
            )
            .await?;
        let rest = status(v, "send").map_err(|e| match e.code {
            Code::ClientIdConflict => client_id_conflict(),
            Code::RateLimited => over_quota(),
            _ => e,
        })?;
        let mut rest = rest.into_iter();
        let head: String = conv(rest.next().unwrap_or(Value::Nil), "send")?;
        let body: String = conv(rest.next().unwrap_or(Value::Nil), "send")?;
        let prev: String = conv(rest.next().unwrap_or(Value::Nil), "send")?;
        let prev = match prev.as_str() {
            "" => None,
            p => Some(p.parse()?),
        };
        let (sent, json) = if head == "dup" {
            let stored: String = conv(rest.next().unwrap_or(Value::Nil), "send")?;
            let mut parts = body.splitn(3, ' ');
            let (Some(id), Some(ts), Some(seq)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(Error::internal("malformed client_id record"));
            };
            let sent = Sent {
                id: id.to_string(),
                ts: ts.parse().map_err(Error::internal)?,
                seq: seq.parse()?,
            };
            (sent, stored)
        } else {
            let sent = Sent {
                id: msg.id.to_string(),
                ts: msg.ts,
                seq: body.parse()?,
            };
            (sent, msg.json.to_string())
        };
        // Step 2, one slot per recipient, after the sender's copy: each copy deduplicated by
        // the message id when a retry may repeat it (a client_id), in the recipients' order.
        // A first send's copy that was trimmed from the sender's inbox meanwhile is not
        // repeated (its json is gone): that send was acknowledged long ago.
        if !json.is_empty() {
            let t = tail(sent.ts, &json);
            for &r in &others {
                self.append(
                    r,
                    from,
                    &sent.id,
                    &json,
                    &t,
                    msg.client_id.is_some(),
                    &cutoff_id,
                    wait,
                )
                .await?;
            }
        }
        Ok(Stored { sent, prev })
    }

    async fn inbox_after(&self, user: UserId, after: Seq, limit: usize) -> Result<Vec<Entry>> {
        let rows: Vec<(String, Vec<String>)> = self
            .q("inbox_read", &inbox_after_cmd(user, after, limit))
            .await?;
        rows.into_iter().map(entry_from).collect()
    }

    async fn inbox_before(
        &self,
        user: UserId,
        before: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        let rows: Vec<(String, Vec<String>)> = self
            .q("inbox_history", &inbox_before_cmd(user, before, limit))
            .await?;
        rows.into_iter().map(entry_from).collect()
    }

    async fn login_state(&self, user: UserId) -> Result<(Vec<Friend>, Vec<Group>, Seq)> {
        let mut pipe = redis::pipe();
        pipe.cmd("SMEMBERS").arg(ukey(user, ":friends"));
        pipe.cmd("SMEMBERS").arg(ukey(user, ":groups"));
        pipe.cmd("GET").arg(ukey(user, ":acked"));
        let (friends, groups, acked): (Vec<UserId>, Vec<GroupId>, Option<String>) =
            self.qp("login_state", &pipe).await?;
        let friends = self.friend_rows(friends).await?;
        let groups = self.group_views(user, groups).await?;
        let acked = match acked {
            Some(a) if !a.is_empty() => a.parse()?,
            _ => Seq::ZERO,
        };
        Ok((friends, groups, acked))
    }

    async fn ack(&self, user: UserId, seq: Seq) -> Result<()> {
        if seq == Seq::ZERO {
            return Ok(());
        }
        let (a, i) = (ukey(user, ":acked"), ukey(user, ":inbox"));
        let r: String = self
            .eval(
                "ack",
                &self.scripts.ack,
                &[&a, &i],
                &[&seq.to_string()],
                None,
            )
            .await?;
        if r == "ok" {
            Ok(())
        } else {
            Err(Error::bad_request(format!(
                "seq {seq} is not a position in your inbox"
            )))
        }
    }

    async fn close_sessions(&self, user: UserId, origin: &str, line: &str) -> Result<()> {
        self.q(
            "publish",
            redis::cmd("SPUBLISH")
                .arg(channel(user))
                .arg(close_payload(origin, line)),
        )
        .await
    }

    async fn publish_event(&self, users: &[UserId], origin: &str, line: &str) -> Result<()> {
        let payload = event_payload(origin, line);
        for &u in users {
            self.q::<()>(
                "publish",
                redis::cmd("SPUBLISH").arg(channel(u)).arg(&payload),
            )
            .await?;
        }
        Ok(())
    }

    async fn subscribe(&self, user: UserId) -> Result<()> {
        self.shards.subscribe(user).await
    }

    async fn unsubscribe(&self, user: UserId) -> Result<()> {
        self.shards.unsubscribe(user).await
    }

    async fn heartbeat(&self, node: &str, now: u64, ttl_ms: u64, conns: u64) -> Result<Beat> {
        // The reap mark lives in the node's slot: read before, consumed after the beat, so a
        // crash in between reads it again next time (re-registering is idempotent).
        let mark = nkey(node, ":reaped");
        let reaped: i64 = self.q("heartbeat", redis::cmd("EXISTS").arg(&mark)).await?;
        let flag = if reaped == 1 { "1" } else { "" };
        let mut v: Vec<Value> = self
            .eval(
                "heartbeat",
                &self.scripts.heartbeat,
                &["sb:nodes"],
                &[&node, &ttl_ms, &flag],
                None,
            )
            .await?;
        if reaped == 1 {
            self.q::<()>("heartbeat", redis::cmd("DEL").arg(&mark))
                .await?;
        }
        if v.is_empty() {
            return Err(Error::internal("heartbeat: empty reply"));
        }
        let was: i64 = conv(v.remove(0), "heartbeat")?;
        let dead: Vec<String> = conv(Value::Array(v), "heartbeat")?;
        // Connection counts for rebalancing: `sb:conns` is in a slot of its own, so a step of
        // its own; "live" is judged by this node's clock here (the beat above uses Redis').
        self.q::<()>(
            "heartbeat",
            redis::cmd("HSET").arg("sb:conns").arg(node).arg(conns),
        )
        .await?;
        let alive: Vec<String> = self
            .q(
                "heartbeat",
                redis::cmd("ZRANGEBYSCORE")
                    .arg("sb:nodes")
                    .arg(now.saturating_sub(ttl_ms))
                    .arg("+inf"),
            )
            .await?;
        let mut connections = Vec::new();
        if !alive.is_empty() {
            let counts: Vec<Option<u64>> = self
                .q("heartbeat", redis::cmd("HMGET").arg("sb:conns").arg(&alive))
                .await?;
            connections = counts.into_iter().flatten().collect();
        }
        Ok(Beat {
            registered: was == 1,
            dead,
            connections,
        })
    }

    async fn reap(&self, node: &str) -> Result<Vec<UserRef>> {
        // Per session one step in the user's slot (idempotent), then the node's records: a
        // crash in between leaves the node's set for the next reap.
        let skey = nkey(node, ":sessions");
        let entries: Vec<String> = self.q("reap", redis::cmd("SMEMBERS").arg(&skey)).await?;
        let mut out = Vec::new();
        for entry in entries {
            let Some((uid, sid)) = entry.split_once(' ') else {
                continue;
            };
            let Ok(uid) = uid.parse::<UserId>() else {
                continue;
            };
            let (s, a) = (ukey(uid, ":sessions"), ukey(uid, ""));
            let last: Option<String> = self
                .eval("reap", &self.scripts.session_drop, &[&s, &a], &[&sid], None)
                .await?;
            if let Some(name) = last {
                out.push(UserRef { id: uid, name });
            }
        }
        self.q::<()>("reap", redis::cmd("DEL").arg(&skey)).await?;
        self.q::<()>("reap", redis::cmd("ZREM").arg("sb:nodes").arg(node))
            .await?;
        self.q::<()>("reap", redis::cmd("HDEL").arg("sb:conns").arg(node))
            .await?;
        let mark = nkey(node, ":reaped");
        if node != self.node {
            self.q::<()>(
                "reap",
                redis::cmd("SET")
                    .arg(&mark)
                    .arg(&self.node)
                    .arg("EX")
                    .arg(86400),
            )
            .await?;
        } else {
            self.q::<()>("reap", redis::cmd("DEL").arg(&mark)).await?;
        }
        Ok(out)
    }

    fn healthy(&self) -> bool {
        self.shards.healthy()
    }
}
