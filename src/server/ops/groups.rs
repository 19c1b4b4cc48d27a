//! Groups: `group.create`, `group.join`, `group.leave` and their membership events
//! (`group.list` is one store read, in `dispatch`; `group.send` is in `messages`).

use crate::error::{Code, Error, Result};
use crate::protocol::reply::{Done, GroupReply};
use crate::protocol::{
    self, CreateArgs, Event, GroupArg, GroupId, GroupRef, JoinArgs, Reply, UserId, valid_name,
};
use crate::server::session::Session;
use crate::store::Store;

impl<S: Store> Session<S> {
    pub(super) async fn group_create(&mut self, args: CreateArgs<'_>) -> Result<Reply> {
        if !valid_name(&args.name) {
            return Err(Error::new(
                Code::InvalidName,
                "a group name is 1 to 32 characters from A-Z a-z 0-9 _ . -",
            ));
        }
        let desc = args.desc.unwrap_or_default();
        if desc.chars().count() > protocol::MAX_DESC_CHARS {
            return Err(Error::bad_request("desc is longer than 256 characters"));
        }
        let me = self.me().clone();
        let group = self
            .node
            .store
            .group_create(me.id, &args.name, &desc)
            .await?;
        self.membership_event(true, group.id, &group.name, &[me.id])
            .await;
        Ok(Reply::Group(Box::new(GroupReply { group })))
    }

    pub(super) async fn group_join(&mut self, args: JoinArgs<'_>) -> Result<Reply> {
        let id = match (args.group, args.name) {
            (Some(id), _) => id,
            // Ids are never reused, so a group deleted (and its name taken again) between the
            // two steps answers `no_such_group`, never another group's view.
            (None, Some(name)) => self.node.store.group_id(&name).await?.ok_or_else(|| {
                Error::new(Code::NoSuchGroup, format!("group {name:?} does not exist"))
            })?,
            (None, None) => {
                return Err(Error::bad_request(
                    "group.join needs \"group\" (id) or \"name\"",
                ));
            }
        };
        let group = self.node.store.group_join(self.me().id, id).await?;
        let members: Vec<UserId> = group.members.iter().map(|m| m.id).collect();
        self.membership_event(true, group.id, &group.name, &members)
            .await;
        Ok(Reply::Group(Box::new(GroupReply { group })))
    }

    pub(super) async fn group_leave(&mut self, args: GroupArg) -> Result<Reply> {
        let left = self
            .node
            .store
            .group_leave(self.me().id, args.group)
            .await?;
        self.membership_event(false, left.group.id, &left.group.name, &left.members)
            .await;
        Ok(Reply::Done(Done {}))
    }

    /// Sends `member_joined` / `member_left` about this user to `members`, except this session.
    async fn membership_event(
        &mut self,
        joined: bool,
        group: GroupId,
        name: &str,
        members: &[UserId],
    ) {
        let group = GroupRef {
            id: group,
            name: name.to_string(),
        };
        let user = self.me().clone();
        let line = if joined {
            Event::MemberJoined { group, user }
        } else {
            Event::MemberLeft { group, user }
        }
        .line();
        self.publish(members, &self.id.clone(), &line).await;
    }
}
