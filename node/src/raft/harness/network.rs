//! The simulated network: every message waits a random number of ticks,
//! may be lost or duplicated, and never crosses a partition.

use std::collections::BTreeSet;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::raft::{Message, NodeId};

/// Probabilities and delays of network faults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Faults {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Extra delay, uniformly in `0..=max_delay` ticks; different delays
    /// reorder messages.
    pub max_delay: u64,
}

impl Faults {
    /// A perfect network: every message arrives one tick later, in order.
    pub fn none() -> Self {
        Faults {
            drop: 0.0,
            duplicate: 0.0,
            max_delay: 0,
        }
    }
}

/// A predicate deciding whether to drop a message, for scenario tests that
/// need surgical control.
pub type Filter = Box<dyn Fn(&Message) -> bool>;

struct InFlight {
    deliver_at: u64,
    seq: u64,
    msg: Message,
}

pub struct Network {
    pub faults: Faults,
    in_flight: Vec<InFlight>,
    /// Directed links that deliver nothing.
    blocked: BTreeSet<(NodeId, NodeId)>,
    pub filter: Option<Filter>,
    seq: u64,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("faults", &self.faults)
            .field("in_flight", &self.in_flight.len())
            .field("blocked", &self.blocked)
            .finish()
    }
}

impl Network {
    pub fn new(faults: Faults) -> Self {
        Network {
            faults,
            in_flight: Vec::new(),
            blocked: BTreeSet::new(),
            filter: None,
            seq: 0,
        }
    }

    /// Puts a message on the wire at time `now`; returns false if it was
    /// lost at once.
    pub fn send(&mut self, msg: Message, now: u64, rng: &mut ChaCha8Rng) -> bool {
        if self.blocked.contains(&(msg.from, msg.to)) {
            return false;
        }
        if self.filter.as_ref().is_some_and(|f| f(&msg)) {
            return false;
        }
        if self.faults.drop > 0.0 && rng.random_bool(self.faults.drop) {
            return false;
        }
        let copies = if self.faults.duplicate > 0.0 && rng.random_bool(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + rng.random_range(0..=self.faults.max_delay);
            self.seq += 1;
            self.in_flight.push(InFlight {
                deliver_at: now + delay,
                seq: self.seq,
                msg: msg.clone(),
            });
        }
        true
    }

    /// Removes and returns the messages due at `now`, in delivery order.
    pub fn take_due(&mut self, now: u64) -> Vec<Message> {
        let (mut due, rest): (Vec<InFlight>, Vec<InFlight>) =
            self.in_flight.drain(..).partition(|m| m.deliver_at <= now);
        self.in_flight = rest;
        due.sort_by_key(|m| (m.deliver_at, m.seq));
        due.into_iter().map(|m| m.msg).collect()
    }

    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to))
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    pub fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }
}
