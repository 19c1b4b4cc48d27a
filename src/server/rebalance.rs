//! Rebalancing after scale-up: new nodes get only new connections, so a node that holds more
//! than its share moves some clients away, a few per second.
//!
//! Nodes publish their open connections with their heartbeat ([`crate::server::presence`]);
//! the mean of the live nodes is the share. A node above the share by more than
//! `rebalance_slack` sends `goaway` (reason `rebalance`) to at most `rebalance_rate_per_sec`
//! logged-in clients a second until it is down to the share. They reconnect through the load
//! balancer with their token (which sends them to the least loaded node) and re-read what
//! they had not acknowledged from their inbox: nothing is lost (protocol guarantee 8).
//! Clients already told to leave but still connected count as gone, so a slow client is not
//! replaced by another.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::server::node::Node;
use crate::store::Store;

/// How often a node compares its connections with its share.
const TICK: Duration = Duration::from_secs(1);
/// Heartbeats in a row a node must be above the slack before it starts: counts published
/// at different moments while many clients connect at once (start-up, the reconnect wave of
/// a drain) look uneven for a beat or so, and are not worth moving anyone for.
const BEATS_BEFORE_START: u64 = 2;
/// Ticks over which a rebalancing node checks that the clients it moved stayed away.
const PROGRESS_TICKS: u32 = 5;
/// Ticks a node waits when they came back: the load balancer does not know the new nodes yet
/// (a pod not ready, DNS not updated), and moving more would only bounce them.
const PAUSE_TICKS: u32 = 5;

/// How many clients should leave now, at most `rate`. A node starts moving clients when
/// `open` exceeds `share` × (1 + `slack`) and, once `active`, goes on down to the share (the
/// slack is hysteresis, so nodes do not hover at its edge); `active` is updated.
pub fn to_move(open: u64, share: u64, slack: f64, rate: u64, active: &mut bool) -> u64 {
    if (open as f64) > share as f64 * (1.0 + slack) {
        *active = true;
    }
    if !*active || open <= share {
        *active = false;
        return 0;
    }
    (open - share).min(rate)
}

/// Runs until the node drains; does nothing when `rebalance` is off.
pub async fn run<S: Store>(node: std::sync::Arc<Node<S>>) {
    let s = &node.settings;
    if !s.rebalance {
        return;
    }
    let mut active = false;
    let mut progress = Progress::default();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = node.draining.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Some(share) = node.fair_share() else {
            continue;
        };
        let open = node
            .connections()
            .saturating_sub(node.leaving.load(Ordering::Relaxed));
        if progress.paused(open) {
            continue;
        }
        if !active && node.beats_over() < BEATS_BEFORE_START {
            continue;
        }
        let rate = u64::from(s.rebalance_rate_per_sec);
        let n = to_move(open, share, s.rebalance_slack, rate, &mut active);
        if n == 0 {
            continue;
        }
        let asked = node.registry.ask_to_leave(n as usize);
        progress.asked(asked as u64);
        tracing::info!(
            open,
            share,
            asked,
            "rebalancing: clients asked to reconnect elsewhere"
        );
    }
}

/// Whether the clients a node moves stay away: when its connections fell by less than half
/// of the clients it asked to leave over [`PROGRESS_TICKS`], it pauses for [`PAUSE_TICKS`].
#[derive(Debug, Default)]
pub struct Progress {
    /// Connections at the start of the window.
    start: u64,
    /// Clients asked to leave in the window.
    asked: u64,
    /// Ticks into the window.
    ticks: u32,
    /// Ticks left to pause.
    pause: u32,
}

impl Progress {
    /// Called every tick with the node's connections: true while paused.
    pub fn paused(&mut self, open: u64) -> bool {
        if self.pause > 0 {
            self.pause -= 1;
            return true;
        }
        if self.ticks == 0 {
            self.start = open;
        }
        self.ticks += 1;
        if self.ticks <= PROGRESS_TICKS {
            return false;
        }
        let fell = self.start.saturating_sub(open);
        let bounced = self.asked >= 2 && fell * 2 < self.asked;
        *self = Progress {
            start: open,
            ticks: 1,
            ..Progress::default()
        };
        if bounced {
            self.pause = PAUSE_TICKS - 1;
            self.ticks = 0;
            tracing::info!(
                "rebalancing paused: moved clients came back (the load balancer does not send them to the new nodes yet)"
            );
        }
        bounced
    }

    /// Records clients asked to leave this tick.
    pub fn asked(&mut self, n: u64) {
        self.asked += n;
    }
}

#[cfg(test)]
mod tests {
    use super::{PAUSE_TICKS, PROGRESS_TICKS, Progress, to_move};

    #[test]
    fn pauses_when_moved_clients_come_back() {
        let mut p = Progress::default();
        // Five ticks asking 5 each while the count stays at 60: they all came back.
        for _ in 0..PROGRESS_TICKS {
            assert!(!p.paused(60));
            p.asked(5);
        }
        for _ in 0..PAUSE_TICKS {
            assert!(p.paused(60));
        }
        // Moving works now: no pause.
        for open in [60, 55, 50, 45, 40, 35, 30, 25, 20, 15, 10] {
            assert!(!p.paused(open));
            p.asked(5);
        }
    }

    #[test]
    fn starts_above_the_slack_and_stops_at_the_share() {
        let mut active = false;
        assert_eq!(to_move(100, 100, 0.2, 5, &mut active), 0);
        assert_eq!(to_move(120, 100, 0.2, 5, &mut active), 0);
        assert!(!active);
        assert_eq!(to_move(121, 100, 0.2, 5, &mut active), 5);
        assert!(active);
        // Inside the slack now, but still above the share: goes on.
        assert_eq!(to_move(110, 100, 0.2, 5, &mut active), 5);
        assert_eq!(to_move(102, 100, 0.2, 5, &mut active), 2);
        assert_eq!(to_move(100, 100, 0.2, 5, &mut active), 0);
        assert!(!active);
        // Below the slack again: stays put.
        assert_eq!(to_move(110, 100, 0.2, 5, &mut active), 0);
        assert_eq!(to_move(103, 50, 0.0, 100, &mut active), 53);
    }
}
