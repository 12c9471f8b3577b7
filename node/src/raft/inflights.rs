//! The bounded window of append messages in flight to one follower.
//!
//! A leader pipelines appends to a follower that keeps up, but never more
//! than a fixed number at once: a slow follower must not make the leader
//! queue unbounded data. Each in-flight message is remembered by the last
//! index it carried, and freed when the follower acknowledges that index.

use std::collections::VecDeque;

use super::types::LogIndex;

#[derive(Clone, Debug)]
pub struct Inflights {
    capacity: usize,
    /// Last index of each message in flight, in increasing order.
    last_indexes: VecDeque<LogIndex>,
}

impl Inflights {
    pub fn new(capacity: usize) -> Self {
        Inflights {
            capacity,
            last_indexes: VecDeque::new(),
        }
    }

    pub fn is_full(&self) -> bool {
        self.last_indexes.len() >= self.capacity
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.last_indexes.len()
    }

    /// Records a message carrying entries up to `last`.
    pub fn add(&mut self, last: LogIndex) {
        self.last_indexes.push_back(last);
    }

    /// Frees every message whose entries are all acknowledged by `index`.
    pub fn free_to(&mut self, index: LogIndex) {
        while matches!(self.last_indexes.front(), Some(&i) if i <= index) {
            self.last_indexes.pop_front();
        }
    }

    /// Frees the oldest message. Used when a heartbeat answer shows the
    /// follower is alive while the window is full: the messages in flight
    /// may have been lost, and without a free slot nothing would ever be
    /// sent to find out.
    pub fn free_first(&mut self) {
        self.last_indexes.pop_front();
    }

    pub fn reset(&mut self) {
        self.last_indexes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_fills_and_frees_in_order() {
        let mut w = Inflights::new(3);
        w.add(LogIndex(2));
        w.add(LogIndex(5));
        w.add(LogIndex(9));
        assert!(w.is_full());
        w.free_to(LogIndex(5));
        assert_eq!(w.len(), 1);
        assert!(!w.is_full());
        w.free_to(LogIndex(8));
        assert_eq!(w.len(), 1);
        w.free_to(LogIndex(9));
        assert_eq!(w.len(), 0);
    }
}
