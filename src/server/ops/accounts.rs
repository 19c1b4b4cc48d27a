//! Accounts: `register`, `login` (password or token), `logout`, `whois`, `password.change`,
//! `account.delete`.

use std::sync::Arc;

use crate::error::{Code, Error, Result};
use crate::protocol::reply::{Done, LoggedIn as LoginReply, NewToken, Registered, Whois};
use crate::protocol::{
    AccountDeleteArgs, Event, LoginArgs, PasswordChangeArgs, RegisterArgs, Reply, UserRef, WhoArgs,
    valid_name, valid_password,
};
use crate::server::admission::client_key;
use crate::server::auth::{new_token, token_digest};
use crate::server::outbox::Outbox;
use crate::server::session::{LoggedIn, Session};
use crate::store::{Account, Store, Who, account_gone};

/// Sliding window of `register_per_address_per_hour`.
const REGISTER_WINDOW_MS: u64 = 3600 * 1000;

impl<S: Store> Session<S> {
    pub(super) async fn register(&mut self, args: RegisterArgs<'_>) -> Result<Reply> {
        if !valid_name(&args.name) {
            return Err(Error::new(
                Code::InvalidName,
                "a name is 1 to 32 characters from A-Z a-z 0-9 _ . -",
            ));
        }
        if !valid_password(&args.password) {
            return Err(Error::new(
                Code::InvalidPassword,
                "a password is 8 to 128 bytes",
            ));
        }
        let node = self.node.clone();
        // Reserved before hashing, so a burst cannot pass the check all at once; only a
        // successful registration keeps the reservation.
        let keys = [format!("register:addr:{}", client_key(self.peer.ip()))];
        let reservation = node
            .store
            .attempt_reserve(
                &keys,
                node.settings.register_per_address_per_hour,
                REGISTER_WINDOW_MS,
                crate::clock::now_ms(),
            )
            .await?
            .ok_or_else(|| {
                Error::new(
                    Code::RateLimited,
                    "too many registrations from this address; try again later",
                )
            })?;
        let registered = match node.passwords.hash(args.password.into_owned()).await {
            Ok(hash) => node.store.register(&args.name, &hash).await,
            Err(e) => Err(e),
        };
        let user = match registered {
            Ok(user) => user,
            Err(e) => {
                if let Err(e) = node.store.attempt_release(&keys, &reservation).await {
                    tracing::warn!(error = %e, "could not release a registration reservation");
                }
                return Err(e);
            }
        };
        tracing::info!(user = user.id, "registered");
        Ok(Reply::Registered(Registered { user }))
    }

    pub(super) async fn login(&mut self, args: LoginArgs<'_>) -> Result<Reply> {
        if self.login.is_some() {
            return Err(Error::new(
                Code::AlreadyLoggedIn,
                "this connection is logged in already",
            ));
        }
        let node = self.node.clone();
        let metrics = &node.metrics;
        let started = std::time::Instant::now();
        let (method, result) = match (&args.password, &args.token) {
            (Some(_), _) => ("password", self.password_login(args).await),
            (None, Some(token)) => ("token", self.token_login(token).await),
            (None, None) => return Err(Error::bad_request("login needs a password or a token")),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        };
        metrics.logins.with_label_values(&[method, outcome]).inc();
        metrics
            .login_latency
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn password_login(&mut self, args: LoginArgs<'_>) -> Result<Reply> {
        let node = self.node.clone();
        let s = &node.settings;
        let password = args.password.map(|p| p.into_owned()).unwrap_or_default();
        let who = match (&args.name, args.id) {
            (Some(name), _) => Who::Name(name.as_ref()),
            (None, Some(id)) => Who::Id(id),
            (None, None) => return Err(Error::bad_request("login needs a name or an id")),
        };
        let account = node.store.account(who).await?;
        // Failures count per (folded) name, also when the login names the user by id.
        let name_key = match (&account, who) {
            (Some(a), _) => format!("name:{}", a.user.name.to_ascii_lowercase()),
            (None, Who::Name(name)) => format!("name:{}", name.to_ascii_lowercase()),
            (None, Who::Id(id)) => format!("id:{id}"),
        };
        self.verify_limited(account.as_ref(), &name_key, password)
            .await?;
        let account = account.expect("verified");
        // The hash had slots of its own; the store work of the login takes a login slot.
        let _slot = node.login_slot().await;
        let token = new_token();
        let digest = token_digest(&token);
        node.store
            .token_issue(&digest, account.user.id, s.token_ttl_secs)
            .await?;
        self.establish(account.user, token, digest).await
    }

    /// Verifies `password` for `account` under the failed-login limits of `name_key` and the
    /// client address: `bad_credentials` when wrong (or no account), `rate_limited` when a
    /// limit is reached (even with the right password).
    async fn verify_limited(
        &self,
        account: Option<&Account>,
        name_key: &str,
        password: String,
    ) -> Result<()> {
        let node = &self.node;
        let s = &node.settings;
        let keys = [
            format!("loginfail:{name_key}"),
            format!("loginfail:addr:{}", client_key(self.peer.ip())),
        ];
        let window_ms = s.login_failure_window_secs * 1000;
        let now = crate::clock::now_ms();
        // The attempt counts as a failure from before the verification on, so concurrent
        // guesses cannot all pass the check: at most `login_failures_max` are ever verified.
        let Some(reservation) = node
            .store
            .attempt_reserve(&keys, s.login_failures_max, window_ms, now)
            .await?
        else {
            return Err(Error::new(
                Code::RateLimited,
                "too many failed logins; try again later",
            ));
        };
        let verified = match account {
            Some(a) => {
                node.passwords
                    .verify(password, a.password_hash.clone())
                    .await
            }
            None => Ok(false),
        };
        // A wrong password keeps its reservation: that is the failure. A success, or a
        // verification that could not run, is not a failure. Should the release fail, the
        // attempt counts as one failure until the window passes: not worth an error.
        if !matches!(verified, Ok(false))
            && let Err(e) = node.store.attempt_release(&keys, &reservation).await
        {
            tracing::warn!(error = %e, "could not release a login reservation");
        }
        if verified? {
            Ok(())
        } else {
            Err(Error::new(Code::BadCredentials, "wrong name or password"))
        }
    }

    /// The logged-in user's account, its password checked like a login's.
    async fn verify_own_password(&self, password: String) -> Result<Account> {
        let me = self.me().clone();
        let account = self
            .node
            .store
            .account(Who::Id(me.id))
            .await?
            .ok_or_else(account_gone)?;
        let name_key = format!("name:{}", account.user.name.to_ascii_lowercase());
        self.verify_limited(Some(&account), &name_key, password)
            .await?;
        Ok(account)
    }

    pub(super) async fn password_change(&mut self, args: PasswordChangeArgs<'_>) -> Result<Reply> {
        // Checked first: a malformed new password is no guess at the old one.
        if !valid_password(&args.new) {
            return Err(Error::new(
                Code::InvalidPassword,
                "a password is 8 to 128 bytes",
            ));
        }
        let account = self.verify_own_password(args.old.into_owned()).await?;
        let node = self.node.clone();
        let hash = node.passwords.hash(args.new.into_owned()).await?;
        let token = new_token();
        let digest = token_digest(&token);
        node.store
            .password_change(
                account.user.id,
                &hash,
                &digest,
                node.settings.token_ttl_secs,
            )
            .await?;
        // This session's `logout` now revokes the new token.
        if let Some(login) = self.login.as_mut() {
            login.token = digest;
        }
        tracing::info!(
            user = account.user.id,
            "password changed; every token revoked"
        );
        Ok(Reply::NewToken(NewToken { token }))
    }

    /// Deletes the account. Every step after the store's one atomic deletion is live-only, so
    /// a crash leaves either the whole account (a retry works) or none of it.
    pub(super) async fn account_delete(&mut self, args: AccountDeleteArgs<'_>) -> Result<Reply> {
        let account = self.verify_own_password(args.password.into_owned()).await?;
        let me = account.user;
        let node = self.node.clone();
        let goaway = Event::Goaway {
            reason: "account_deleted".into(),
            reconnect_after_ms: 0,
        }
        .line();
        // The other sessions first, so none of them acts on the account while it goes; and
        // again afterwards, for a login that raced the deletion.
        let origin = self.id.clone();
        if let Err(e) = node.store.close_sessions(me.id, &origin, &goaway).await {
            tracing::warn!(error = %e, "sessions of a deleted account not closed");
        }
        let Some(deleted) = node.store.account_delete(me.id).await? else {
            return Err(account_gone());
        };
        if let Err(e) = node.store.close_sessions(me.id, &origin, &goaway).await {
            tracing::warn!(error = %e, "sessions of a deleted account not closed");
        }
        let removed = Event::FriendRemoved { user: me.clone() }.line();
        self.publish(&deleted.friends, "-", &removed).await;
        for left in deleted.groups {
            let others: Vec<_> = left.members.into_iter().filter(|&m| m != me.id).collect();
            let line = Event::MemberLeft {
                group: left.group,
                user: me.clone(),
            }
            .line();
            self.publish(&others, "-", &line).await;
        }
        node.metrics.accounts_deleted.inc();
        tracing::info!(user = me.id, "account deleted");
        Ok(Reply::Done(Done {}))
    }

    async fn token_login(&mut self, token: &str) -> Result<Reply> {
        let node = self.node.clone();
        let digest = token_digest(token);
        let bad = || Error::new(Code::BadCredentials, "unknown or expired token");
        let _slot = node.login_slot().await;
        let account = node.store.token_account(&digest).await?.ok_or_else(bad)?;
        self.establish(account.user, token.to_string(), digest)
            .await
    }

    /// Registers the session everywhere, then answers; the backlog follows the reply.
    async fn establish(&mut self, user: UserRef, token: String, digest: String) -> Result<Reply> {
        let node = self.node.clone();
        let s = &node.settings;
        // One step: the session, what the reply needs, and (first session) the presence.
        let online = crate::server::closer::presence_line(&user, true);
        let opened = node
            .store
            .session_login(
                user.id,
                &self.id,
                &s.node_name,
                s.max_sessions_per_user,
                (&online, s.presence_group_max),
            )
            .await;
        let (_, (friends, groups, acked)) = match opened {
            Ok(v) => v,
            // The account was deleted since its token or password was checked.
            Err(e) if e.code == Code::NoSuchUser => {
                return Err(Error::new(Code::BadCredentials, "the account was deleted"));
            }
            // A time-out does not mean the script did not run: remove what it may have
            // written, and announce the user offline if it was (and is) their only session.
            Err(e) if e.code == Code::Unavailable => {
                node.close_session(&user, self.id.clone()).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let outbox = Arc::new(Outbox::new(self.id.clone(), user.clone(), s.outbound_queue));
        if let Err(e) = node
            .registry
            .attach(&*node.store, user.id, outbox.clone())
            .await
        {
            // Registered (and announced) already: removed like a logout, retried if need be
            // (the record must not outlive the login).
            node.close_session(&user, self.id.clone()).await;
            return Err(e);
        }
        node.metrics.sessions.inc();
        tracing::Span::current().record("user", user.id);
        tracing::info!(user = user.id, "logged in");
        let reply = Reply::LoggedIn(Box::new(LoginReply {
            user: user.clone(),
            token,
            friends,
            groups,
        }));
        self.login = Some(LoggedIn {
            user,
            token: digest,
            outbox,
            last_seq: acked,
            own: Default::default(),
            syncing: true,
            retry_at: None,
        });
        Ok(reply)
    }

    pub(super) async fn logout(&mut self) -> Result<Reply> {
        let digest = self.login.as_ref().expect("checked").token.clone();
        self.node.store.token_revoke(&digest).await?;
        // An explicit logout ends the session for good, also during a drain.
        self.handover = false;
        self.end().await;
        Ok(Reply::Done(Done {}))
    }

    pub(super) async fn whois(&mut self, args: WhoArgs<'_>) -> Result<Reply> {
        let who = match (&args.name, args.id) {
            (Some(name), _) => Who::Name(name.as_ref()),
            (None, Some(id)) => Who::Id(id),
            (None, None) => return Err(Error::bad_request("whois needs a name or an id")),
        };
        let viewer = self.login.as_ref().map(|l| l.user.id);
        match self.node.store.whois(who, viewer).await? {
            Some(user) => Ok(Reply::Whois(Whois { user })),
            None => Err(Error::new(Code::NoSuchUser, "no such user")),
        }
    }
}
