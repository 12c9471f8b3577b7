//! The per-cluster peer secret: the shared key with which members
//! authenticate each other's Raft streams (`raftkv serve` reads it from
//! `RAFTKV_PEER_SECRET`). Without it a node's peer port would accept Raft
//! messages from any pod that can reach it.
//!
//! Unlike the other owned objects, the Secret is created once and never
//! applied again: its value is random, and changing it under a running
//! cluster would cut every member off from the others until all of them
//! restarted. It is owned by the RaftCluster, so it goes with it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rand::RngCore as _;

use crate::crd::RaftCluster;
use crate::identity::{ClusterIdentity, owned_meta};

/// The key of the secret's value inside the Secret.
pub const KEY: &str = "secret";
/// Random bytes in a new secret (hex-encoded in the Secret).
const SECRET_BYTES: usize = 32;

/// A new peer secret for `cluster`, with a fresh random value.
pub fn build(cluster: &RaftCluster) -> Secret {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let value: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let id = ClusterIdentity::of(cluster);
    Secret {
        metadata: owned_meta(cluster, &id, id.peer_secret()),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            KEY.to_string(),
            ByteString(value.into_bytes()),
        )])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_cluster::cluster;

    #[test]
    fn each_secret_is_random_owned_by_the_cluster_and_named_for_it() {
        let c = cluster();
        let (a, b) = (build(&c), build(&c));
        assert_eq!(a.metadata.name.as_deref(), Some("kv-peer"));
        assert_eq!(a.metadata.namespace.as_deref(), Some("prod"));
        let owner = &a.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("RaftCluster", "kv")
        );
        let value = |s: &Secret| s.data.as_ref().unwrap()[KEY].0.clone();
        assert_eq!(value(&a).len(), 2 * SECRET_BYTES);
        assert!(value(&a).iter().all(u8::is_ascii_hexdigit));
        assert_ne!(value(&a), value(&b), "two clusters must not share a secret");
    }
}
