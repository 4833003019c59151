//! Work with one owner at a time among the hub's replicas (Kafka mode): push delivery of each
//! stream, and the inactivity sweep. The owner of a key is chosen by rendezvous hashing over the
//! live replicas the storage reports, so when one joins or leaves only the keys it gains or held
//! move. On one machine this replica owns everything. Who is alive is the storage's business
//! (`storage::Cluster`); what the work is, the caller's.

use std::sync::Arc;

use tokio::sync::watch;

use crate::storage::Cluster;

#[derive(Debug, Clone, Default)]
pub struct Share {
    cluster: Option<Arc<dyn Cluster>>,
}

impl Share {
    pub fn new(cluster: Option<Arc<dyn Cluster>>) -> Share {
        Share { cluster }
    }

    /// Whether this replica does the work named `key` now.
    pub fn owns(&self, key: &str) -> bool {
        let Some(cluster) = &self.cluster else {
            return true;
        };
        let me = cluster.me();
        owner(&cluster.members(), key).is_some_and(|m| *m == me)
    }

    /// Changes whenever ownership may have moved; `None` on one machine.
    pub fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        self.cluster.as_ref().map(|c| c.subscribe())
    }
}

/// The member with the highest score for `key` (highest random weight): stable while the
/// member set is, and only keys of a member that left or joined change hands.
fn owner<'a>(members: &'a [String], key: &str) -> Option<&'a String> {
    members.iter().max_by_key(|m| {
        let mut h = openssl::sha::Sha256::new();
        h.update(m.as_bytes());
        h.update(&[0]);
        h.update(key.as_bytes());
        let digest = h.finish();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_spread_and_only_a_leavers_keys_move() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let two: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let keys: Vec<String> = (0..300).map(|i| format!("stream-{i}")).collect();
        let mut per = std::collections::HashMap::new();
        for k in &keys {
            let o3 = owner(&three, k).expect("owner");
            *per.entry(o3.clone()).or_insert(0) += 1;
            let o2 = owner(&two, k).expect("owner");
            if o3 != "c" {
                assert_eq!(o3, o2, "{k} moved though its owner stayed");
            }
        }
        assert!(per.values().all(|n| *n > 50), "uneven: {per:?}");
        assert!(owner(&[], "k").is_none());
    }
}
