//! raftkv-operator: runs raftkv clusters on Kubernetes from `RaftCluster`
//! resources, growing and shrinking the Raft membership one safe step at a time.

pub mod admin_server;
pub mod backup;
pub mod cluster_status;
pub mod controller;
pub mod crd;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod identity;
pub mod leader_election;
pub mod member_volumes;
pub mod metrics;
pub mod node_api;
pub mod node_client;
pub mod node_steps;
pub mod observation;
pub mod planner;
pub mod resources;
pub mod retained_volumes;
pub mod shutdown;
pub mod tls;
