//! `history`: pages backwards through the caller's own inbox, read-only.
//!
//! The cost of a request is bounded whatever the inbox holds: the inbox is read newest first
//! in pages (`XREVRANGE … COUNT n` on Redis), and reading stops at `limit` matching messages
//! or after `history_scan_max` entries, whichever comes first. Stored message JSON is spliced
//! into the reply as it is; with a `with` filter it is only read, borrowed, for its `to`.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::protocol::reply::HistoryPage;
use crate::protocol::{
    GroupId, HISTORY_LIMIT_DEFAULT, HISTORY_LIMIT_MAX, HistoryArgs, Reply, Seq, UserId, With,
};
use crate::server::session::Session;
use crate::store::{Entry, Store};

/// Inbox entries read per round trip when a `with` filter may skip most of them.
const FILTERED_PAGE: usize = 256;

impl<S: Store> Session<S> {
    pub(super) async fn history(&mut self, args: HistoryArgs) -> Result<Reply> {
        let limit = args.limit.unwrap_or(HISTORY_LIMIT_DEFAULT);
        if !(1..=HISTORY_LIMIT_MAX).contains(&limit) {
            return Err(Error::bad_request(format!(
                "limit must be between 1 and {HISTORY_LIMIT_MAX}"
            )));
        }
        let limit = limit as usize;
        let me = self.me().id;
        let scan_max = self.node.settings.history_scan_max.max(1) as usize;
        let mut page = HistoryPage::default();
        // Nothing lies before the first position.
        if args.before == Some(Seq::ZERO) {
            return Ok(Reply::History(page));
        }
        let mut cursor = args.before;
        let mut scanned = 0;
        'scan: loop {
            // Unfiltered, every entry matches: one more than still wanted tells whether older
            // ones exist. Filtered, a page of entries that may mostly be skipped.
            let want = match args.with {
                None => limit - page.messages.len() + 1,
                Some(_) => FILTERED_PAGE,
            };
            let n = want.min(scan_max - scanned);
            let entries = self.node.store.inbox_before(me, cursor, n).await?;
            let full = entries.len() == n;
            scanned += entries.len();
            for entry in entries {
                if page.messages.len() == limit {
                    // An entry older than the last answered one: there is more.
                    page.more = true;
                    break 'scan;
                }
                cursor = Some(entry.seq);
                if matches(args.with, me, &entry) {
                    page.messages.push((entry.seq, entry.json));
                }
            }
            if !full {
                // The inbox (as kept) ends here.
                break;
            }
            if page.messages.len() == limit || scanned >= scan_max {
                // Older entries may exist (matching or not): continue after the last one read.
                page.more = true;
                break;
            }
        }
        page.next = cursor.filter(|_| page.more);
        page.more = page.next.is_some();
        Ok(Reply::History(page))
    }
}

/// Whether an inbox entry of `me` belongs to the conversation `with`.
fn matches(with: Option<With>, me: UserId, entry: &Entry) -> bool {
    /// The only part of a stored message a filter reads (the rest is skipped unparsed).
    #[derive(Deserialize)]
    struct Addressed {
        to: To,
    }
    #[derive(Deserialize)]
    struct To {
        #[serde(default)]
        user: Option<UserId>,
        #[serde(default)]
        group: Option<GroupId>,
    }
    let Some(with) = with else {
        return true;
    };
    let Ok(Addressed { to }) = serde_json::from_str::<Addressed>(&entry.json) else {
        return false;
    };
    match (with, to.user, to.group) {
        // Both directions: sent by me to them, or by them to me.
        (With::User(other), Some(to), None) => {
            (entry.from == me && to == other) || (entry.from == other && to == me)
        }
        (With::Group(group), None, Some(to)) => to == group,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(from: UserId, json: &str) -> Entry {
        Entry {
            seq: Seq { ms: 1, n: 0 },
            from,
            json: json.to_string(),
        }
    }

    #[test]
    fn filters_read_the_target() {
        let to_me = entry(
            2,
            r#"{"id":"a","from":{"id":2,"name":"b"},"to":{"user":1},"text":"x","ts":1}"#,
        );
        let from_me = entry(
            1,
            r#"{"id":"a","from":{"id":1,"name":"a"},"to":{"user":2},"text":"x","ts":1}"#,
        );
        let group = entry(
            2,
            r#"{"id":"a","from":{"id":2,"name":"b"},"to":{"group":7,"name":"g"},"text":"x","ts":1}"#,
        );
        for e in [&to_me, &from_me, &group] {
            assert!(matches(None, 1, e));
            assert!(!matches(Some(With::User(3)), 1, e));
            assert!(!matches(Some(With::Group(8)), 1, e));
        }
        assert!(matches(Some(With::User(2)), 1, &to_me));
        assert!(matches(Some(With::User(2)), 1, &from_me));
        assert!(!matches(Some(With::User(2)), 1, &group));
        assert!(!matches(Some(With::User(1)), 1, &to_me), "not with myself");
        assert!(matches(Some(With::Group(7)), 1, &group));
        assert!(!matches(Some(With::Group(7)), 1, &to_me));
    }
}
