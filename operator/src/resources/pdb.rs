//! The PodDisruptionBudget that keeps voluntary disruptions (node drains,
//! cluster upgrades) from taking away a Raft quorum.
//!
//! With `v` voters a quorum is `v/2 + 1`, so at most `(v-1)/2` members may be
//! down at once: 0 for one or two voters, 1 for three or four, 2 for five.
//! The budget is expressed as `maxUnavailable` over all member pods rather
//! than `minAvailable`, because a learner pod being added counts as a pod but
//! not as a voter: `minAvailable: quorum` would then allow one voter too many
//! to be evicted. The reconciler passes the smallest voter count the cluster
//! may have while it changes (`min(observed voters, spec.replicas)`).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::RaftCluster;
use crate::identity::{ClusterIdentity, owned_meta};

/// How many voters can be lost while a majority remains.
pub fn tolerated_failures(voters: i32) -> i32 {
    (voters.max(1) - 1) / 2
}

pub fn build(cluster: &RaftCluster, voters: i32) -> PodDisruptionBudget {
    let id = ClusterIdentity::of(cluster);
    PodDisruptionBudget {
        metadata: owned_meta(cluster, &id, id.pdb()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(tolerated_failures(voters))),
            selector: Some(LabelSelector {
                match_labels: Some(id.selector_labels()),
                ..LabelSelector::default()
            }),
            // Evicting a pod that is already not ready costs no available
            // member, and lets a drain proceed past a crash-looping pod.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::test_cluster::cluster;

    #[test]
    fn budget_never_allows_losing_a_quorum() {
        for (voters, expected) in [
            (1, 0),
            (2, 0),
            (3, 1),
            (4, 1),
            (5, 2),
            (6, 2),
            (7, 3),
            (9, 4),
        ] {
            assert_eq!(tolerated_failures(voters), expected, "voters={voters}");
            let quorum = voters / 2 + 1;
            assert!(voters - tolerated_failures(voters) >= quorum);
        }
        assert_eq!(tolerated_failures(0), 0);
    }

    #[test]
    fn pdb_selects_the_member_pods_with_max_unavailable() {
        let pdb = build(&cluster(), 3);
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.min_available, None);
        assert_eq!(
            spec.selector.unwrap().match_labels.unwrap()["app.kubernetes.io/instance"],
            "kv"
        );
        assert_eq!(
            pdb.metadata.owner_references.unwrap()[0].kind,
            "RaftCluster"
        );
    }
}
