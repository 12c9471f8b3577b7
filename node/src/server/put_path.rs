//! Trace points along a write's path through the members, so that where
//! one put's time goes can be measured rather than guessed
//! (`tests/bench/put_path.py` reads them back and prints the breakdown).
//!
//! Each point is a `trace`-level event of target `raftkv::put_path` that
//! names a stage and the log index it concerns; the members' clocks are
//! one machine's, so the events of all members line up. They are off
//! unless `RAFTKV_LOG` turns that target on (say
//! `RAFTKV_LOG=info,raftkv::put_path=trace`); off, each costs one check
//! of a static.
//!
//! The stages, in the order a put meets them on a three-member cluster:
//! the leader's handle receives the write, the core proposes it, the
//! appends leave for the followers while the leader's log writer writes
//! it; a follower receives the append, steps it, writes it, and sends its
//! acknowledgement; the leader receives and steps that, hands the entry to
//! its applier, which applies it and answers; the handle returns.

use tracing::{Level, trace};

use crate::raft::{AppendResponse, LogIndex, Message, MessageBody};

/// The target of every event here.
pub(crate) const TARGET: &str = "raftkv::put_path";

/// Whether the trace points are on.
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: TARGET, Level::TRACE)
}

/// A stage reached for the entries up to `index` (zero: not known here,
/// such as when a write arrives).
pub(crate) fn stage(stage: &'static str, index: LogIndex) {
    trace!(target: TARGET, index = index.get(), "{stage}");
}

/// The index of the last of `items` (entries, proposals), read with
/// `index`; zero when there are none.
pub(crate) fn last_index<T>(items: &[T], index: impl Fn(&T) -> LogIndex) -> LogIndex {
    items.last().map_or(LogIndex::ZERO, index)
}

/// An append carrying entries, or an acknowledgement of one, passing a
/// point (`sent`, `received`, `stepped`): the other messages say nothing
/// about a put's path.
pub(crate) fn message(point: &'static str, m: &Message) {
    if !enabled() {
        return;
    }
    match &m.body {
        MessageBody::Append(a) if !a.entries.is_empty() => {
            let index = last_index(&a.entries, |e| e.index).get();
            trace!(target: TARGET, index, from = m.from.get(), to = m.to.get(), "append {point}");
        }
        MessageBody::AppendResponse(AppendResponse::Accepted { match_index }) => {
            let index = match_index.get();
            trace!(target: TARGET, index, from = m.from.get(), to = m.to.get(), "ack {point}");
        }
        _ => {}
    }
}
