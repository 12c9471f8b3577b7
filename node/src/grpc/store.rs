//! The state machine's request and result types, as the gRPC layer uses
//! them (one import point for the services).

pub use crate::storage::{
    AlarmAction, AlarmKind, ApplyOutcome, Command, Compare, CompareResult, CompareTarget, KeyValue,
    KvError, Op, RangeRequest, RangeResult, SortOrder, SortTarget, TxnOp, TxnOpResult,
};
