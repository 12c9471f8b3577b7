//! The state machine's request and result types, as the gRPC layer sees
//! them. One re-export so that the services follow the storage module's
//! vocabulary from a single place (today the node's stand-in for it).

pub use crate::server::storage_stub::{
    ApplyOutcome, Command, KeyValue, Op, RangeRequest, RangeResult,
};
