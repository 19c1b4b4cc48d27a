//! What each request does: [`Session::handle`] answers one frame, [`Session::dispatch`] is the
//! one exhaustive `match` over [`Request`], and each op group has a file of its own.

mod accounts;
mod blocks;
mod friends;
mod groups;
mod history;
mod messages;

use crate::error::{Code, Error, Result};
use crate::protocol::reply::{Done, Friends, Groups};
use crate::protocol::{Event, Frame, OpKind, Reply, Request, UserId, write_reply};
use crate::server::session::Session;
use crate::store::Store;

impl<S: Store> Session<S> {
    /// Answers one request frame: the reply goes to the output buffer, then, after a login,
    /// the backlog.
    pub(super) async fn handle(&mut self, frame: Frame<'_>) {
        let result = self.dispatch(&frame).await;
        if let Err(err) = &result {
            self.node.metrics.error(err.code);
        }
        write_reply(&mut self.out, &frame.op, frame.reference, &result);
        // The account is gone: this session ends after its reply, like the user's others.
        if result.is_ok() && frame.kind() == Some(OpKind::AccountDelete) {
            Event::Goaway {
                reason: "account_deleted".into(),
                reconnect_after_ms: 0,
            }
            .write(&mut self.out);
            self.kicked = true;
            return;
        }
        // A login just succeeded: its backlog follows the reply at once.
        if self.login.as_ref().is_some_and(|l| l.syncing) {
            self.deliver().await;
        }
    }

    async fn dispatch(&mut self, frame: &Frame<'_>) -> Result<Reply> {
        let Some(kind) = frame.kind() else {
            return Err(Error::new(
                Code::UnknownOp,
                format!("unknown op {:?}", frame.op),
            ));
        };
        // Checked before the arguments: a request that needs a login answers `not_logged_in`
        // whatever its arguments.
        if kind.needs_login() && self.login.is_none() {
            return Err(Error::new(
                Code::NotLoggedIn,
                format!("{} needs a login", kind.name()),
            ));
        }
        match frame.request(kind)? {
            Request::Ping => Ok(Reply::Done(Done {})),
            Request::Register(args) => self.register(args).await,
            Request::Login(args) => self.login(args).await,
            Request::Whois(args) => self.whois(args).await,
            Request::Logout => self.logout().await,
            Request::Send(args) => self.send(args).await,
            Request::GroupSend(args) => self.group_send(args).await,
            Request::Ack(args) => self.ack(args).await,
            Request::FriendAdd(args) => self.friend_add(args).await,
            Request::FriendRemove(args) => self.friend_remove(args).await,
            Request::FriendList => {
                let friends = self.node.store.friends(self.me().id).await?;
                Ok(Reply::Friends(Friends { friends }))
            }
            Request::Block(args) => self.block(args).await,
            Request::Unblock(args) => self.unblock(args).await,
            Request::BlockList => self.block_list().await,
            Request::PasswordChange(args) => self.password_change(args).await,
            Request::AccountDelete(args) => self.account_delete(args).await,
            Request::GroupCreate(args) => self.group_create(args).await,
            Request::GroupJoin(args) => self.group_join(args).await,
            Request::GroupLeave(args) => self.group_leave(args).await,
            Request::GroupList => {
                let groups = self.node.store.groups(self.me().id).await?;
                Ok(Reply::Groups(Groups { groups }))
            }
            Request::History(args) => self.history(args).await,
        }
    }

    /// Publishes a live-only event; a failure is logged, not returned (the change is stored).
    pub(super) async fn publish(&self, users: &[UserId], origin: &str, line: &str) {
        if let Err(e) = self.node.store.publish_event(users, origin, line).await {
            tracing::warn!(error = %e, "event not published");
        }
    }
}
