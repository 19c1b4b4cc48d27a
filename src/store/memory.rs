//! The embedded backend: all state in one process, nothing kept across restarts.
//!
//! It follows the Redis data model one to one (see docs/data-model.md) so that the protocol
//! suite means the same on both; "publishing" hands payloads straight to the node's
//! [`LiveSink`] (its registry) while the state lock is held, so live order equals inbox order, as with Redis.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Code, Error, Result};
use crate::protocol::{Friend, Group, GroupId, GroupRef, Member, Role, Sent, Seq, UserId, UserRef};
use crate::store::payload::{close_payload, event_payload, message_payload};
use crate::store::{
    Account, Beat, BlockChange, CLIENT_ID_TTL_SECS, Deleted, Entry, LiveSink, MAX_TOKENS_PER_USER,
    Membership, Outgoing, QUOTA_BUCKET_MS, QUOTA_WINDOW_MS, Recipient, Retention, Store, Stored,
    Who, account_gone, blocked_friend, blocked_send, client_id_conflict, fold, over_quota,
};

#[derive(Default)]
struct Inbox {
    entries: VecDeque<Entry>,
    last: Seq,
    acked: Seq,
}

struct GroupData {
    name: String,
    desc: String,
    members: BTreeMap<UserId, Role>,
}

#[derive(Default)]
struct State {
    next_user: UserId,
    accounts: HashMap<UserId, Account>,
    by_name: HashMap<String, UserId>,
    tokens: HashMap<String, (UserId, Instant)>,
    /// Limit key → (time ms, member) of each recorded attempt, as the `sb:<key>` sorted sets.
    attempts: HashMap<String, Vec<(u64, String)>>,
    sessions: HashMap<UserId, HashSet<String>>,
    friends: HashMap<UserId, BTreeSet<UserId>>,
    next_group: GroupId,
    groups: HashMap<GroupId, GroupData>,
    group_by_name: HashMap<String, GroupId>,
    user_groups: HashMap<UserId, BTreeSet<GroupId>>,
    inboxes: HashMap<UserId, Inbox>,
    /// Per (sender, client_id): the first send's result, its fingerprint, when it expires.
    client_ids: HashMap<(UserId, String), (Sent, String, Instant)>,
    /// Per sender: text bytes stored, by quota bucket (start ms).
    sent_bytes: HashMap<UserId, BTreeMap<u64, u64>>,
    /// Per user: whom they block.
    blocks: HashMap<UserId, BTreeSet<UserId>>,
    /// Per user: who blocks them.
    blocked_by: HashMap<UserId, BTreeSet<UserId>>,
}

impl State {
    fn online(&self, user: UserId) -> bool {
        self.sessions.get(&user).is_some_and(|s| !s.is_empty())
    }

    /// Whether a block stands between the two users, either way.
    fn across_block(&self, a: UserId, b: UserId) -> bool {
        self.blocks.get(&a).is_some_and(|s| s.contains(&b))
            || self.blocked_by.get(&a).is_some_and(|s| s.contains(&b))
    }

    /// Whether `a` and `b` share a group of at most `max` members (one that carries presence).
    fn shares_small_group(&self, a: UserId, b: UserId, max: usize) -> bool {
        let (Some(ga), Some(gb)) = (self.user_groups.get(&a), self.user_groups.get(&b)) else {
            return false;
        };
        ga.intersection(gb)
            .any(|g| self.groups.get(g).is_some_and(|g| g.members.len() <= max))
    }

    fn user_ref(&self, user: UserId) -> Option<UserRef> {
        self.accounts.get(&user).map(|a| a.user.clone())
    }

    fn friend(&self, user: UserId) -> Option<Friend> {
        self.accounts.get(&user).map(|a| Friend {
            id: user,
            name: a.user.name.clone(),
            online: self.online(user),
        })
    }

    fn group_view(&self, user: UserId, id: GroupId) -> Option<Group> {
        let g = self.groups.get(&id)?;
        Some(Group {
            id,
            name: g.name.clone(),
            desc: g.desc.clone(),
            role: *g.members.get(&user)?,
            members: g
                .members
                .iter()
                .map(|(&m, &role)| Member {
                    id: m,
                    name: self.user_ref(m).map(|u| u.name).unwrap_or_default(),
                    role,
                    online: self.online(m) && !self.across_block(user, m),
                })
                .collect(),
        })
    }

    /// Records a token, dropping expired ones and the user's oldest beyond
    /// [`MAX_TOKENS_PER_USER`] (as `issue_token` in common.lua).
    fn issue_token(&mut self, digest: &str, user: UserId, ttl_secs: u64) {
        let now = Instant::now();
        self.tokens.retain(|_, (_, exp)| *exp > now);
        self.tokens.insert(
            digest.to_string(),
            (user, now + Duration::from_secs(ttl_secs)),
        );
        let mut mine: Vec<(Instant, String)> = self
            .tokens
            .iter()
            .filter(|(_, (u, _))| *u == user)
            .map(|(d, (_, exp))| (*exp, d.clone()))
            .collect();
        if mine.len() > MAX_TOKENS_PER_USER as usize {
            mine.sort();
            for (_, d) in &mine[..mine.len() - MAX_TOKENS_PER_USER as usize] {
                self.tokens.remove(d);
            }
        }
    }

    /// The user `id`, or `no_such_user`.
    fn existing(&self, id: UserId) -> Result<UserRef> {
        self.user_ref(id)
            .ok_or_else(|| Error::new(Code::NoSuchUser, format!("user {id} does not exist")))
    }

    /// Appends to an inbox with Redis stream id semantics and the retention rule.
    fn append(
        &mut self,
        user: UserId,
        from: UserId,
        json: &str,
        now_ms: u64,
        keep: Retention,
    ) -> Seq {
        let inbox = self.inboxes.entry(user).or_default();
        let seq = if now_ms > inbox.last.ms {
            Seq { ms: now_ms, n: 0 }
        } else {
            Seq {
                ms: inbox.last.ms,
                n: inbox.last.n + 1,
            }
        };
        inbox.last = seq;
        inbox.entries.push_back(Entry {
            seq,
            from,
            json: json.to_string(),
        });
        let cutoff = now_ms.saturating_sub(keep.max_age_ms);
        while inbox.entries.len() as u64 > keep.max_len
            && inbox.entries.front().is_some_and(|e| e.seq.ms < cutoff)
        {
            inbox.entries.pop_front();
        }
        while inbox.entries.len() as u64 > keep.hard_max_len {
            inbox.entries.pop_front();
        }
        seq
    }
}

/// The in-memory store of a single embedded node.
pub struct MemoryStore {
    state: Mutex<State>,
    sink: Arc<dyn LiveSink>,
    retention: Retention,
}

impl MemoryStore {
    /// An empty store delivering live payloads to `sink` (the node's registry).
    pub fn new(sink: Arc<dyn LiveSink>, retention: Retention) -> MemoryStore {
        MemoryStore {
            state: Mutex::new(State::default()),
            sink,
            retention,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now_ms() -> u64 {
    crate::clock::now_ms()
}

impl Store for MemoryStore {
    async fn register(&self, name: &str, password_hash: &str) -> Result<UserRef> {
        let mut st = self.state();
        let key = fold(name);
        if st.by_name.contains_key(&key) {
            return Err(Error::new(
                Code::NameTaken,
                format!("name {name:?} is taken"),
            ));
        }
        st.next_user += 1;
        let user = UserRef {
            id: st.next_user,
            name: name.to_string(),
        };
        st.by_name.insert(key, user.id);
        st.accounts.insert(
            user.id,
            Account {
                user: user.clone(),
                password_hash: password_hash.to_string(),
            },
        );
        Ok(user)
    }

    async fn account(&self, who: Who<'_>) -> Result<Option<Account>> {
        let st = self.state();
        let id = match who {
            Who::Id(id) => Some(id),
            Who::Name(name) => st.by_name.get(&fold(name)).copied(),
        };
        Ok(id.and_then(|id| st.accounts.get(&id).cloned()))
    }

    async fn whois(&self, who: Who<'_>, viewer: Option<UserId>) -> Result<Option<Friend>> {
        let st = self.state();
        let id = match who {
            Who::Id(id) => Some(id),
            Who::Name(name) => st.by_name.get(&fold(name)).copied(),
        };
        Ok(id.and_then(|id| st.friend(id)).map(|mut f| {
            if viewer.is_some_and(|v| st.across_block(v, f.id)) {
                f.online = false;
            }
            f
        }))
    }

    async fn token_issue(&self, digest: &str, user: UserId, ttl_secs: u64) -> Result<()> {
        self.state().issue_token(digest, user, ttl_secs);
        Ok(())
    }

    async fn token_account(&self, digest: &str) -> Result<Option<Account>> {
        let st = self.state();
        Ok(st
            .tokens
            .get(digest)
            .filter(|(_, exp)| *exp > Instant::now())
            .and_then(|(u, _)| st.accounts.get(u).cloned()))
    }

    async fn token_revoke(&self, digest: &str) -> Result<()> {
        self.state().tokens.remove(digest);
        Ok(())
    }

    async fn password_change(
        &self,
        user: UserId,
        password_hash: &str,
        digest: &str,
        ttl_secs: u64,
    ) -> Result<()> {
        let mut st = self.state();
        let Some(account) = st.accounts.get_mut(&user) else {
            return Err(Error::new(Code::NoSuchUser, "no such user"));
        };
        account.password_hash = password_hash.to_string();
        st.tokens.retain(|_, (u, _)| *u != user);
        st.issue_token(digest, user, ttl_secs);
        Ok(())
    }

    async fn account_delete(&self, user: UserId) -> Result<Option<Deleted>> {
        let mut st = self.state();
        let Some(account) = st.accounts.remove(&user) else {
            return Ok(None);
        };
        let folded = fold(&account.user.name);
        if st.by_name.get(&folded) == Some(&user) {
            st.by_name.remove(&folded);
        }
        st.tokens.retain(|_, (u, _)| *u != user);
        let friends: Vec<UserId> = st
            .friends
            .remove(&user)
            .unwrap_or_default()
            .into_iter()
            .collect();
        for f in &friends {
            if let Some(set) = st.friends.get_mut(f) {
                set.remove(&user);
            }
        }
        let mut groups = Vec::new();
        for g in st.user_groups.remove(&user).unwrap_or_default() {
            let Some(data) = st.groups.get_mut(&g) else {
                continue;
            };
            let members: Vec<UserId> = data.members.keys().copied().collect();
            if data.members.remove(&user).is_none() {
                continue;
            }
            let gref = GroupRef {
                id: g,
                name: data.name.clone(),
            };
            if data.members.is_empty() {
                st.groups.remove(&g);
                st.group_by_name.remove(&fold(&gref.name));
            }
            groups.push(Membership {
                group: gref,
                members,
            });
        }
        for b in st.blocks.remove(&user).unwrap_or_default() {
            if let Some(set) = st.blocked_by.get_mut(&b) {
                set.remove(&user);
            }
        }
        for b in st.blocked_by.remove(&user).unwrap_or_default() {
            if let Some(set) = st.blocks.get_mut(&b) {
                set.remove(&user);
            }
        }
        st.inboxes.remove(&user);
        st.sessions.remove(&user);
        st.sent_bytes.remove(&user);
        st.client_ids.retain(|(u, _), _| *u != user);
        Ok(Some(Deleted { friends, groups }))
    }

    async fn block(&self, user: UserId, other: UserId, group_max: usize) -> Result<BlockChange> {
        let mut st = self.state();
        let other_ref = st.existing(other)?;
        if !st.accounts.contains_key(&user) {
            return Err(account_gone());
        }
        // A repeated block changes nothing and tells nobody.
        if !st.blocks.entry(user).or_default().insert(other) {
            return Ok(BlockChange {
                other: other_ref,
                were_friends: false,
                shared: false,
                other_online: st.online(other),
            });
        }
        st.blocked_by.entry(other).or_default().insert(user);
        let were_friends = st.friends.get_mut(&user).is_some_and(|f| f.remove(&other));
        if let Some(f) = st.friends.get_mut(&other) {
            f.remove(&user);
        }
        Ok(BlockChange {
            other: other_ref,
            were_friends,
            shared: st.shares_small_group(user, other, group_max),
            other_online: st.online(other),
        })
    }

    async fn unblock(&self, user: UserId, other: UserId, group_max: usize) -> Result<BlockChange> {
        let mut st = self.state();
        let other_ref = st.existing(other)?;
        let removed = st.blocks.get_mut(&user).is_some_and(|b| b.remove(&other));
        if let Some(b) = st.blocked_by.get_mut(&other) {
            b.remove(&user);
        }
        let still = st.blocked_by.get(&user).is_some_and(|b| b.contains(&other));
        Ok(BlockChange {
            other: other_ref,
            were_friends: false,
            shared: removed && !still && st.shares_small_group(user, other, group_max),
            other_online: st.online(other),
        })
    }

    async fn blocks(&self, user: UserId) -> Result<Vec<UserRef>> {
        let st = self.state();
        Ok(st
            .blocks
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|&b| st.user_ref(b))
            .collect())
    }

    async fn attempt_reserve(
        &self,
        keys: &[String],
        max: u32,
        window_ms: u64,
        now: u64,
    ) -> Result<Option<String>> {
        let mut st = self.state();
        let mut full = false;
        for key in keys {
            if let Some(times) = st.attempts.get_mut(key) {
                times.retain(|(t, _)| t + window_ms > now);
                full |= times.len() >= max as usize;
                if times.is_empty() {
                    st.attempts.remove(key);
                }
            }
        }
        if full {
            return Ok(None);
        }
        let member = format!("{now}-{:08x}", rand::random::<u32>());
        for key in keys {
            st.attempts
                .entry(key.clone())
                .or_default()
                .push((now, member.clone()));
        }
        Ok(Some(member))
    }

    async fn attempt_release(&self, keys: &[String], member: &str) -> Result<()> {
        let mut st = self.state();
        for key in keys {
            if let Some(times) = st.attempts.get_mut(key) {
                times.retain(|(_, m)| m != member);
                if times.is_empty() {
                    st.attempts.remove(key);
                }
            }
        }
        Ok(())
    }

    async fn session_open(
        &self,
        user: UserId,
        session: &str,
        _node: &str,
        max: u32,
    ) -> Result<bool> {
        let mut st = self.state();
        if !st.accounts.contains_key(&user) {
            return Err(Error::new(Code::NoSuchUser, "the account was deleted"));
        }
        let set = st.sessions.entry(user).or_default();
        if set.len() >= max as usize {
            return Err(Error::new(
                Code::TooManySessions,
                format!("at most {max} sessions per user"),
            ));
        }
        set.insert(session.to_string());
        Ok(set.len() == 1)
    }

    async fn session_close(&self, user: UserId, session: &str, _node: &str) -> Result<bool> {
        let mut st = self.state();
        let Some(set) = st.sessions.get_mut(&user) else {
            return Ok(false);
        };
        let removed = set.remove(session);
        let last = removed && set.is_empty();
        if set.is_empty() {
            st.sessions.remove(&user);
        }
        Ok(last)
    }

    async fn audience(&self, user: UserId, group_max: usize) -> Result<Vec<UserId>> {
        let st = self.state();
        let mut out: BTreeSet<UserId> = st.friends.get(&user).cloned().unwrap_or_default();
        for g in st.user_groups.get(&user).into_iter().flatten() {
            if let Some(g) = st.groups.get(g).filter(|g| g.members.len() <= group_max) {
                out.extend(g.members.keys());
            }
        }
        out.remove(&user);
        out.retain(|&u| !st.across_block(user, u));
        Ok(out.into_iter().collect())
    }

    async fn friends(&self, user: UserId) -> Result<Vec<Friend>> {
        let st = self.state();
        Ok(st
            .friends
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|&f| st.friend(f))
            .collect())
    }

    async fn friend_add(&self, user: UserId, other: UserId) -> Result<(Friend, bool)> {
        let mut st = self.state();
        let Some(friend) = st.friend(other) else {
            return Err(Error::new(
                Code::NoSuchUser,
                format!("user {other} does not exist"),
            ));
        };
        if !st.accounts.contains_key(&user) {
            return Err(account_gone());
        }
        if st.across_block(user, other) {
            return Err(blocked_friend(other));
        }
        let new = st.friends.entry(user).or_default().insert(other);
        st.friends.entry(other).or_default().insert(user);
        Ok((friend, new))
    }

    async fn friend_remove(&self, user: UserId, other: UserId) -> Result<UserRef> {
        let mut st = self.state();
        let was = st.friends.get_mut(&user).is_some_and(|f| f.remove(&other));
        if !was {
            return Err(Error::new(
                Code::NoSuchUser,
                format!("user {other} is not your friend"),
            ));
        }
        if let Some(f) = st.friends.get_mut(&other) {
            f.remove(&user);
        }
        st.user_ref(other)
            .ok_or_else(|| Error::internal("friend without account"))
    }

    async fn groups(&self, user: UserId) -> Result<Vec<Group>> {
        let st = self.state();
        Ok(st
            .user_groups
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|&g| st.group_view(user, g))
            .collect())
    }

    async fn group_create(&self, user: UserId, name: &str, desc: &str) -> Result<Group> {
        let mut st = self.state();
        if !st.accounts.contains_key(&user) {
            return Err(account_gone());
        }
        let key = fold(name);
        if st.group_by_name.contains_key(&key) {
            return Err(Error::new(
                Code::NameTaken,
                format!("group name {name:?} is taken"),
            ));
        }
        st.next_group += 1;
        let id = st.next_group;
        st.group_by_name.insert(key, id);
        st.groups.insert(
            id,
            GroupData {
                name: name.to_string(),
                desc: desc.to_string(),
                members: BTreeMap::from([(user, Role::Creator)]),
            },
        );
        st.user_groups.entry(user).or_default().insert(id);
        st.group_view(user, id)
            .ok_or_else(|| Error::internal("group vanished"))
    }

    async fn group_join(&self, user: UserId, group: GroupId) -> Result<Group> {
        let mut st = self.state();
        if !st.groups.contains_key(&group) {
            return Err(no_such_group(group));
        }
        if !st.accounts.contains_key(&user) {
            return Err(account_gone());
        }
        let Some(g) = st.groups.get_mut(&group) else {
            return Err(no_such_group(group));
        };
        if g.members.contains_key(&user) {
            return Err(Error::new(
                Code::AlreadyMember,
                format!("already a member of group {group}"),
            ));
        }
        g.members.insert(user, Role::Member);
        st.user_groups.entry(user).or_default().insert(group);
        st.group_view(user, group)
            .ok_or_else(|| Error::internal("group vanished"))
    }

    async fn group_leave(&self, user: UserId, group: GroupId) -> Result<Membership> {
        let mut st = self.state();
        let Some(g) = st.groups.get_mut(&group) else {
            return Err(no_such_group(group));
        };
        if !g.members.contains_key(&user) {
            return Err(Error::new(
                Code::NotAMember,
                format!("not a member of group {group}"),
            ));
        }
        let members: Vec<UserId> = g.members.keys().copied().collect();
        g.members.remove(&user);
        let gref = GroupRef {
            id: group,
            name: g.name.clone(),
        };
        if g.members.is_empty() {
            st.groups.remove(&group);
            st.group_by_name.remove(&fold(&gref.name));
        }
        if let Some(set) = st.user_groups.get_mut(&user) {
            set.remove(&group);
        }
        Ok(Membership {
            group: gref,
            members,
        })
    }

    async fn group_id(&self, name: &str) -> Result<Option<GroupId>> {
        Ok(self.state().group_by_name.get(&fold(name)).copied())
    }

    async fn group_name(&self, group: GroupId) -> Result<Option<String>> {
        Ok(self.state().groups.get(&group).map(|g| g.name.clone()))
    }

    async fn send(&self, msg: Outgoing<'_>) -> Result<Stored> {
        let mut st = self.state();
        let now = now_ms();
        let cid_key = msg.client_id.map(|c| (msg.from, c.to_string()));
        if let Some(key) = &cid_key {
            st.client_ids.retain(|_, (_, _, exp)| *exp > Instant::now());
            if let Some((sent, fingerprint, _)) = st.client_ids.get(key) {
                if fingerprint != msg.fingerprint {
                    return Err(client_id_conflict());
                }
                let sent = sent.clone();
                let prev = st.inboxes.get(&msg.from).and_then(|inbox| {
                    let at = inbox.entries.partition_point(|e| e.seq < sent.seq);
                    at.checked_sub(1).map(|i| inbox.entries[i].seq)
                });
                return Ok(Stored { sent, prev });
            }
        }
        if !st.accounts.contains_key(&msg.from) {
            return Err(account_gone());
        }
        let recipients: Vec<UserId> = match msg.to {
            Recipient::User(to) => {
                if !st.accounts.contains_key(&to) {
                    return Err(Error::new(
                        Code::NoSuchUser,
                        format!("user {to} does not exist"),
                    ));
                }
                if st.blocks.get(&to).is_some_and(|b| b.contains(&msg.from)) {
                    return Err(blocked_send(to));
                }
                vec![to]
            }
            Recipient::Group(g) => {
                let Some(data) = st.groups.get(&g) else {
                    return Err(no_such_group(g));
                };
                if !data.members.contains_key(&msg.from) {
                    return Err(Error::new(
                        Code::NotAMember,
                        format!("not a member of group {g}"),
                    ));
                }
                data.members
                    .keys()
                    .copied()
                    .filter(|&m| m != msg.from)
                    .collect()
            }
        };
        // The quota: text bytes per stored copy (the sender's own included) in a sliding 24 h.
        let charge = msg.text_bytes * (recipients.len() as u64 + 1);
        let buckets = st.sent_bytes.entry(msg.from).or_default();
        let oldest = now.saturating_sub(QUOTA_WINDOW_MS) / QUOTA_BUCKET_MS;
        buckets.retain(|&b, _| b >= oldest);
        if buckets.values().sum::<u64>() + charge > msg.quota {
            return Err(over_quota());
        }
        *buckets.entry(now / QUOTA_BUCKET_MS).or_default() += charge;
        let prev = st
            .inboxes
            .get(&msg.from)
            .and_then(|i| i.entries.back())
            .map(|e| e.seq);
        let own = st.append(msg.from, msg.from, msg.json, now, self.retention);
        self.sink
            .dispatch(msg.from, message_payload(own, &msg).as_bytes());
        for r in recipients {
            let seq = st.append(r, msg.from, msg.json, now, self.retention);
            self.sink.dispatch(r, message_payload(seq, &msg).as_bytes());
        }
        let sent = Sent {
            id: msg.id.to_string(),
            ts: msg.ts,
            seq: own,
        };
        if let Some(key) = cid_key {
            let exp = Instant::now() + Duration::from_secs(CLIENT_ID_TTL_SECS);
            st.client_ids
                .insert(key, (sent.clone(), msg.fingerprint.to_string(), exp));
        }
        Ok(Stored { sent, prev })
    }

    async fn inbox_after(&self, user: UserId, after: Seq, limit: usize) -> Result<Vec<Entry>> {
        let st = self.state();
        let Some(inbox) = st.inboxes.get(&user) else {
            return Ok(Vec::new());
        };
        let start = inbox.entries.partition_point(|e| e.seq <= after);
        Ok(inbox
            .entries
            .iter()
            .skip(start)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn inbox_before(
        &self,
        user: UserId,
        before: Option<Seq>,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        let st = self.state();
        let Some(inbox) = st.inboxes.get(&user) else {
            return Ok(Vec::new());
        };
        let end = match before {
            Some(b) => inbox.entries.partition_point(|e| e.seq < b),
            None => inbox.entries.len(),
        };
        Ok(inbox
            .entries
            .range(..end)
            .rev()
            .take(limit)
            .cloned()
            .collect())
    }

    async fn login_state(&self, user: UserId) -> Result<(Vec<Friend>, Vec<Group>, Seq)> {
        Ok((
            self.friends(user).await?,
            self.groups(user).await?,
            self.state()
                .inboxes
                .get(&user)
                .map(|i| i.acked)
                .unwrap_or(Seq::ZERO),
        ))
    }

    async fn ack(&self, user: UserId, seq: Seq) -> Result<()> {
        let mut st = self.state();
        let inbox = st.inboxes.entry(user).or_default();
        if seq <= inbox.acked {
            return Ok(());
        }
        match inbox.entries.front() {
            Some(first) if seq < first.seq => return Ok(()),
            None if seq <= inbox.last => return Ok(()),
            _ => {}
        }
        if seq > inbox.last || inbox.entries.binary_search_by(|e| e.seq.cmp(&seq)).is_err() {
            return Err(Error::bad_request(format!(
                "seq {seq} is not a position in your inbox"
            )));
        }
        inbox.acked = seq;
        Ok(())
    }

    async fn publish_event(&self, users: &[UserId], origin: &str, line: &str) -> Result<()> {
        let payload = event_payload(origin, line);
        let _st = self.state();
        for &u in users {
            self.sink.dispatch(u, payload.as_bytes());
        }
        Ok(())
    }

    async fn close_sessions(&self, user: UserId, origin: &str, line: &str) -> Result<()> {
        let payload = close_payload(origin, line);
        let _st = self.state();
        self.sink.dispatch(user, payload.as_bytes());
        Ok(())
    }

    async fn subscribe(&self, _user: UserId) -> Result<()> {
        Ok(())
    }

    async fn unsubscribe(&self, _user: UserId) -> Result<()> {
        Ok(())
    }

    async fn heartbeat(&self, _node: &str, _now: u64, _ttl: u64, conns: u64) -> Result<Beat> {
        // One node: its own count is the whole cluster's, so it never rebalances.
        Ok(Beat {
            registered: true,
            dead: Vec::new(),
            connections: vec![conns],
        })
    }

    async fn reap(&self, _node: &str) -> Result<Vec<UserRef>> {
        Ok(Vec::new())
    }

    fn healthy(&self) -> bool {
        true
    }
}

fn no_such_group(group: GroupId) -> Error {
    Error::new(Code::NoSuchGroup, format!("group {group} does not exist"))
}
