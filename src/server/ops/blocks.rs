//! Blocking: `block`, `unblock`, `block.list`.
//!
//! The store keeps both directions (`blocks` and `blockedby`), so every check is local to one
//! user's data; here are the events that make a block visible at once on every node.

use crate::error::{Error, Result};
use crate::protocol::reply::{Blocked, Done};
use crate::protocol::{Event, Friend, Reply, UserArg, UserRef};
use crate::server::session::Session;
use crate::store::{BlockChange, Store};

impl<S: Store> Session<S> {
    pub(super) async fn block(&mut self, args: UserArg) -> Result<Reply> {
        let me = self.me().clone();
        if args.user == me.id {
            return Err(Error::bad_request("you cannot block yourself"));
        }
        let group_max = self.node.settings.presence_group_max;
        let change = self.node.store.block(me.id, args.user, group_max).await?;
        if change.were_friends {
            // Ended as by `friend.remove`; this session hears of it too, since its request
            // did not ask for it.
            let to_other = Event::FriendRemoved { user: me.clone() }.line();
            let to_me = Event::FriendRemoved {
                user: change.other.clone(),
            }
            .line();
            self.publish(&[change.other.id], "-", &to_other).await;
            self.publish(&[me.id], "-", &to_me).await;
        }
        // Whoever saw the other online sees them offline from now on.
        if change.were_friends || change.shared {
            self.presence_across(&me, &change, false).await;
        }
        Ok(Reply::Done(Done {}))
    }

    pub(super) async fn unblock(&mut self, args: UserArg) -> Result<Reply> {
        let me = self.me().clone();
        let group_max = self.node.settings.presence_group_max;
        let change = self.node.store.unblock(me.id, args.user, group_max).await?;
        // Presence flows again through a small shared group (the friendship does not return).
        if change.shared {
            self.presence_across(&me, &change, true).await;
        }
        Ok(Reply::Done(Done {}))
    }

    pub(super) async fn block_list(&mut self) -> Result<Reply> {
        let users = self.node.store.blocks(self.me().id).await?;
        Ok(Reply::Blocked(Blocked { users }))
    }

    /// Tells each side the other's presence as it now appears: `online` only when a block
    /// was lifted and the user is online; offline otherwise. Only users who are online are
    /// announced (an offline user was already shown offline).
    async fn presence_across(&self, me: &UserRef, change: &BlockChange, online: bool) {
        let event = |user: &UserRef, on: bool| {
            Event::Presence {
                user: Friend {
                    id: user.id,
                    name: user.name.clone(),
                    online: on,
                },
            }
            .line()
        };
        if change.other_online {
            let line = event(&change.other, online);
            self.publish(&[me.id], "-", &line).await;
        }
        let line = event(me, online);
        self.publish(&[change.other.id], "-", &line).await;
    }
}
