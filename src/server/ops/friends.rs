//! Friends: `friend.add`, `friend.remove` (`friend.list` is one store read, in `dispatch`).

use crate::error::{Error, Result};
use crate::protocol::reply::{Done, FriendReply};
use crate::protocol::{Event, Friend, Reply, UserArg};
use crate::server::session::Session;
use crate::store::Store;

impl<S: Store> Session<S> {
    pub(super) async fn friend_add(&mut self, args: UserArg) -> Result<Reply> {
        let me = self.me().clone();
        if args.user == me.id {
            return Err(Error::bad_request("you cannot befriend yourself"));
        }
        let store = &self.node.store;
        let (friend, new) = store.friend_add(me.id, args.user).await?;
        if new {
            let to_other = Event::FriendAdded {
                friend: Friend {
                    id: me.id,
                    name: me.name.clone(),
                    online: true,
                },
            }
            .line();
            let to_me = Event::FriendAdded {
                friend: friend.clone(),
            }
            .line();
            self.publish(&[friend.id], "-", &to_other).await;
            self.publish(&[me.id], &self.id.clone(), &to_me).await;
        }
        Ok(Reply::Friend(FriendReply { friend }))
    }

    pub(super) async fn friend_remove(&mut self, args: UserArg) -> Result<Reply> {
        let me = self.me().clone();
        let other = self.node.store.friend_remove(me.id, args.user).await?;
        let to_other = Event::FriendRemoved { user: me.clone() }.line();
        let to_me = Event::FriendRemoved {
            user: other.clone(),
        }
        .line();
        self.publish(&[other.id], "-", &to_other).await;
        self.publish(&[me.id], &self.id.clone(), &to_me).await;
        Ok(Reply::Done(Done {}))
    }
}
