//! The node's runtime: the driver task that owns the consensus core and the
//! state machine, the peer transport, and [`NodeHandle`], through which the
//! client APIs talk to the driver.

mod handle;
pub mod peer_proto;
pub mod storage_stub;
pub mod wire;

pub use handle::{
    ClientError, Consistency, MemberChange, MemberStatus, NewMember, NodeHandle, NodeStatus,
    ReadResult, WriteResult,
};
