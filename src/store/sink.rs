//! What the backends need from the routing side: the one seam between `store` and `registry`.
//!
//! A backend receives channel payloads (Redis: the subscriber connection; memory: its own
//! sends) and notices when its live path breaks and comes back; the node's routing table
//! (`Registry`) implements this trait, so the store never names the registry.

use crate::protocol::UserId;

/// Where a backend hands live deliveries and the state of its live path.
pub trait LiveSink: Send + Sync + 'static {
    /// Hands a channel payload (see [`payload`](super::payload)) to `user`'s local sessions.
    /// Called on the subscriber's push path: must not block.
    fn dispatch(&self, user: UserId, payload: &[u8]);
    /// The live path was lost (subscriber connection dropped or replaced): live deliveries
    /// are held back until [`LiveSink::resume`] with this count or a later one. Returns the
    /// new loss count.
    fn pause(&self) -> u64;
    /// How many times the live path was lost so far.
    fn losses(&self) -> u64;
    /// Whether live deliveries are held back (a loss is not resumed yet).
    fn paused(&self) -> bool;
    /// Every channel is subscribed again as of loss count `upto` (read with
    /// [`LiveSink::losses`] before re-subscribing): every session must re-read its inbox, and
    /// only then may queued deliveries flow again. Implementations mark the sessions lagged
    /// *before* [`LiveSink::paused`] turns false, or a session not marked yet could write a live
    /// message that follows one only the inbox has. A loss counted after `upto` keeps the pause.
    fn resume(&self, upto: u64);
    /// Every local session must re-read its inbox (live deliveries may have been missed
    /// without a loss of the connection, e.g. canaries that did not come back).
    fn mark_all_lagged(&self);
    /// Users whose channel must be subscribed on this node.
    fn subscribed_users(&self) -> Vec<UserId>;
}
