//! Accounts: `register`, `login` (password or token), `logout`, `whois`.

use std::sync::Arc;

use crate::error::{Code, Error, Result};
use crate::protocol::reply::{Done, LoggedIn as LoginReply, Registered, Whois};
use crate::protocol::{
    LoginArgs, RegisterArgs, Reply, UserRef, WhoArgs, valid_name, valid_password,
};
use crate::server::admission::client_key;
use crate::server::auth::{new_token, token_digest};
use crate::server::outbox::Outbox;
use crate::server::session::{LoggedIn, Session};
use crate::store::{Store, Who};

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
        let verified = match &account {
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
        let right = matches!(verified, Ok(true));
        let Some(account) = account.filter(|_| right) else {
            verified?;
            return Err(Error::new(Code::BadCredentials, "wrong name or password"));
        };
        let token = new_token();
        let digest = token_digest(&token);
        node.store
            .token_issue(&digest, account.user.id, s.token_ttl_secs)
            .await?;
        self.establish(account.user, token, digest).await
    }

    async fn token_login(&mut self, token: &str) -> Result<Reply> {
        let node = self.node.clone();
        let digest = token_digest(token);
        let bad = || Error::new(Code::BadCredentials, "unknown or expired token");
        let account = node.store.token_account(&digest).await?.ok_or_else(bad)?;
        self.establish(account.user, token.to_string(), digest)
            .await
    }

    /// Registers the session everywhere, then answers; the backlog follows the reply.
    async fn establish(&mut self, user: UserRef, token: String, digest: String) -> Result<Reply> {
        let node = self.node.clone();
        let s = &node.settings;
        let first = match node
            .store
            .session_open(user.id, &self.id, &s.node_name, s.max_sessions_per_user)
            .await
        {
            Ok(first) => first,
            // A time-out does not mean the script did not run: remove what it may have written.
            Err(e) if e.code == Code::Unavailable => {
                node.discard_session(&user, self.id.clone()).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let outbox = Arc::new(Outbox::new(self.id.clone(), user.clone(), s.outbound_queue));
        let setup = async {
            node.registry
                .attach(&*node.store, user.id, outbox.clone())
                .await?;
            node.store.login_state(user.id).await
        }
        .await;
        let (friends, groups, acked) = match setup {
            Ok(v) => v,
            Err(e) => {
                node.registry.detach(&*node.store, user.id, &outbox).await;
                // Never announced online, so no offline announcement either; a failed
                // removal is retried (the record must not outlive the login).
                node.discard_session(&user, self.id.clone()).await;
                return Err(e);
            }
        };
        if first {
            node.announce_presence(&user, true).await;
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
        self.end().await;
        Ok(Reply::Done(Done {}))
    }

    pub(super) async fn whois(&mut self, args: WhoArgs<'_>) -> Result<Reply> {
        let who = match (&args.name, args.id) {
            (Some(name), _) => Who::Name(name.as_ref()),
            (None, Some(id)) => Who::Id(id),
            (None, None) => return Err(Error::bad_request("whois needs a name or an id")),
        };
        match self.node.store.whois(who).await? {
            Some(user) => Ok(Reply::Whois(Whois { user })),
            None => Err(Error::new(Code::NoSuchUser, "no such user")),
        }
    }
}
