//! raftkv-operator: runs raftkv clusters on Kubernetes from `RaftCluster`
//! resources, growing and shrinking the Raft membership one safe step at a time.

pub mod crd;
