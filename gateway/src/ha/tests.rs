use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use protocols::remote_write::v1::reference as pb;
use protocols::{Batch, DecodeLimits};
use residency_rules::TenantId;

use super::*;

fn settings() -> HaSettings {
    HaSettings {
        tenants: None,
        labels: HaLabels {
            cluster: "cluster".into(),
            replica: "__replica__".into(),
        },
        tenant_labels: HashMap::new(),
        failover_timeout: Duration::from_secs(30),
        max_clusters_per_tenant: 2,
        max_pairs: 10,
    }
}

/// Two series of `cluster`/`replica` (either may be absent), one sample each.
fn batch(cluster: Option<&str>, replica: Option<&str>) -> Batch {
    let mut labels = vec![pb::Label {
        name: "__name__".into(),
        value: "up".into(),
    }];
    if let Some(r) = replica {
        labels.push(pb::Label {
            name: "__replica__".into(),
            value: r.into(),
        });
    }
    if let Some(c) = cluster {
        labels.push(pb::Label {
            name: "cluster".into(),
            value: c.into(),
        });
    }
    let series = |job: &str| {
        let mut l = labels.clone();
        l.push(pb::Label {
            name: "job".into(),
            value: job.into(),
        });
        pb::TimeSeries {
            labels: l,
            samples: vec![pb::Sample {
                value: 1.0,
                timestamp: 1,
            }],
            ..Default::default()
        }
    };
    let req = pb::WriteRequest {
        timeseries: vec![series("a"), series("b")],
        ..Default::default()
    };
    protocols::remote_write::v1::decode_message(
        Bytes::from(req.encode_to_vec()),
        &DecodeLimits::default(),
    )
    .unwrap()
}

fn t(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

const DEDUP: HaOutcome = HaOutcome::Deduplicated {
    samples: 2,
    histograms: 0,
    exemplars: 0,
};

const KEEP: fn() -> HaOutcome = || HaOutcome::Keep {
    replica_label: "__replica__".into(),
};

/// A gossip round from `from` to `to`: `from` publishes what changed, and `to` reads
/// `from`'s whole state (chitchat holds each peer's latest value of every key).
fn gossip(from: &HaTracker, node: &str, to: &HaTracker, now: u64) {
    let _ = from.to_publish_at(now);
    let peers: Vec<(String, String, String)> = from
        .pairs
        .read()
        .unwrap()
        .values()
        .filter_map(|p| {
            let state = p.state.lock().unwrap();
            let (e, _) = state.published.as_ref()?;
            Some((
                node.to_string(),
                p.key.clone(),
                encode(&p.tenant, &p.cluster, e),
            ))
        })
        .collect();
    to.absorb_at(&peers, now);
}

#[test]
fn the_first_replica_is_kept_without_its_label_and_the_other_deduplicated_until_it_fails_over() {
    let h = HaTracker::new(settings(), Duration::ZERO);
    let tenant = t("team-a");
    assert_eq!(
        h.check_at(&tenant, &batch(Some("c1"), Some("a")), 1000),
        Ok(KEEP())
    );
    assert_eq!(
        h.check_at(&tenant, &batch(Some("c1"), Some("b")), 1500),
        Ok(DEDUP)
    );
    assert_eq!(
        h.check_at(&tenant, &batch(Some("c1"), Some("a")), 20_000),
        Ok(KEEP())
    );
    // a silent from 20 s: at 49.999 s b is still refused, at 50 s it takes over.
    assert_eq!(
        h.check_at(&tenant, &batch(Some("c1"), Some("b")), 49_999),
        Ok(DEDUP)
    );
    assert_eq!(
        h.check_at(&tenant, &batch(Some("c1"), Some("b")), 50_000),
        Ok(KEEP())
    );
    assert_eq!(
        h.check_at(&tenant, &batch(Some("c1"), Some("a")), 50_001),
        Ok(DEDUP)
    );
    let v = h.view();
    assert_eq!(v.pairs[0].elected.as_ref().unwrap().replica, "b");
    assert_eq!(v.changes.len(), 2);
    assert_eq!(v.changes[1].from.as_deref(), Some("a"));
}

#[test]
fn requests_without_both_labels_and_tenants_not_listed_pass_untouched() {
    let h = HaTracker::new(settings(), Duration::ZERO);
    let tenant = t("team-a");
    assert_eq!(
        h.check_at(&tenant, &batch(None, None), 1),
        Ok(HaOutcome::Untouched)
    );
    assert_eq!(
        h.check_at(&tenant, &batch(Some("c1"), None), 1),
        Ok(HaOutcome::Untouched)
    );
    assert_eq!(
        h.check_at(&tenant, &batch(None, Some("a")), 1),
        Ok(HaOutcome::Untouched)
    );
    let listed = HaTracker::new(
        HaSettings {
            tenants: Some(vec![t("other")]),
            ..settings()
        },
        Duration::ZERO,
    );
    assert_eq!(
        listed.check_at(&tenant, &batch(Some("c1"), Some("a")), 1),
        Ok(HaOutcome::Untouched)
    );
}

#[test]
fn clusters_per_tenant_and_label_lengths_are_bounded() {
    let h = HaTracker::new(settings(), Duration::ZERO);
    let tenant = t("team-a");
    for c in ["c1", "c2"] {
        assert_eq!(
            h.check_at(&tenant, &batch(Some(c), Some("a")), 1),
            Ok(KEEP())
        );
    }
    let e = h
        .check_at(&tenant, &batch(Some("c3"), Some("a")), 1)
        .unwrap_err();
    assert!(
        e.to_string().contains("ha_dedup.max_clusters_per_tenant"),
        "{e}"
    );
    // Another tenant has its own count.
    assert_eq!(
        h.check_at(&t("team-b"), &batch(Some("c3"), Some("a")), 1),
        Ok(KEEP())
    );
    assert!(matches!(
        h.check_at(&tenant, &batch(Some("c1"), Some("a\u{1}b")), 1),
        Err(HaError::LabelUnprintable { .. })
    ));
    let long = "x".repeat(MAX_HA_LABEL_BYTES + 1);
    assert!(matches!(
        h.check_at(&tenant, &batch(Some("c1"), Some(&long)), 1),
        Err(HaError::LabelTooLong { .. })
    ));
}

#[test]
fn two_nodes_that_elected_different_replicas_converge_on_the_earlier_in_one_round() {
    let (n1, n2) = (
        HaTracker::new(settings(), Duration::ZERO),
        HaTracker::new(settings(), Duration::ZERO),
    );
    let tenant = t("team-a");
    // Each Prometheus reaches a different node first.
    assert_eq!(
        n1.check_at(&tenant, &batch(Some("c1"), Some("a")), 1000),
        Ok(KEEP())
    );
    assert_eq!(
        n2.check_at(&tenant, &batch(Some("c1"), Some("b")), 1005),
        Ok(KEEP())
    );
    gossip(&n1, "n1", &n2, 1200);
    gossip(&n2, "n2", &n1, 1200);
    for n in [&n1, &n2] {
        assert_eq!(n.view().pairs[0].elected.as_ref().unwrap().replica, "a");
        assert_eq!(
            n.check_at(&tenant, &batch(Some("c1"), Some("b")), 1300),
            Ok(DEDUP)
        );
    }
    // n2 receives only b's requests; it learns a's last_seen from n1, so it does not fail
    // over while a sends.
    for s in 1..=10u64 {
        let now = 1300 + s * 5000;
        assert_eq!(
            n1.check_at(&tenant, &batch(Some("c1"), Some("a")), now),
            Ok(KEEP())
        );
        gossip(&n1, "n1", &n2, now);
        assert_eq!(
            n2.check_at(&tenant, &batch(Some("c1"), Some("b")), now + 100),
            Ok(DEDUP)
        );
    }
}

#[test]
fn a_restarted_node_learns_the_election_back_and_does_not_change_it() {
    let n1 = HaTracker::new(settings(), Duration::ZERO);
    let tenant = t("team-a");
    assert_eq!(
        n1.check_at(&tenant, &batch(Some("c1"), Some("a")), 1000),
        Ok(KEEP())
    );
    // n2 restarts: within its sync grace it keeps b's data (a duplicate at worst) but elects
    // nothing.
    let n2 = HaTracker::new(settings(), Duration::from_secs(3600));
    assert_eq!(
        n2.check_at(&tenant, &batch(Some("c1"), Some("b")), 2000),
        Ok(KEEP())
    );
    let (published, _) = n2.to_publish_at(2000);
    assert!(published.is_empty(), "nothing elected, nothing published");
    // Then it learns a's election from n1 and refuses b.
    gossip(&n1, "n1", &n2, 2100);
    assert_eq!(
        n2.check_at(&tenant, &batch(Some("c1"), Some("b")), 2200),
        Ok(DEDUP)
    );
    // A node without grace that elected b in ignorance gives way too.
    let n3 = HaTracker::new(settings(), Duration::ZERO);
    assert_eq!(
        n3.check_at(&tenant, &batch(Some("c1"), Some("b")), 2000),
        Ok(KEEP())
    );
    gossip(&n1, "n1", &n3, 2100);
    assert_eq!(n3.view().pairs[0].elected.as_ref().unwrap().replica, "a");
}

#[test]
fn a_pair_is_republished_when_it_changes_and_last_seen_at_most_once_a_second() {
    let h = HaTracker::new(settings(), Duration::ZERO);
    let tenant = t("team-a");
    h.check_at(&tenant, &batch(Some("c1"), Some("a")), 1000)
        .unwrap();
    assert_eq!(h.to_publish_at(1000).0.len(), 1);
    assert!(h.to_publish_at(1001).0.is_empty(), "unchanged");
    h.check_at(&tenant, &batch(Some("c1"), Some("a")), 1500)
        .unwrap();
    assert!(
        h.to_publish_at(1500).0.is_empty(),
        "last_seen only: not yet"
    );
    let (set, _) = h.to_publish_at(2000);
    assert_eq!(set.len(), 1);
    let (_, _, e) = decode(&set[0].1).unwrap();
    assert_eq!(e.last_seen_ms, 1500);
    // A peer's garbage is ignored, and so is an election from the future.
    h.absorb_at(&[("x".into(), "ha.00".into(), "not json".into())], 2000);
    assert_eq!(h.view().pairs.len(), 1);
    let future = encode(
        &tenant,
        "c1",
        &Election {
            replica: "z".into(),
            elected_at_ms: 10_000_000,
            last_seen_ms: 10_000_000,
        },
    );
    h.absorb_at(&[("x".into(), key_of(&tenant, "c1"), future)], 2000);
    assert_eq!(h.view().pairs[0].elected.as_ref().unwrap().replica, "a");
}

#[test]
fn a_pair_unseen_for_long_is_forgotten_and_its_key_deleted() {
    let h = HaTracker::new(settings(), Duration::ZERO);
    let tenant = t("team-a");
    h.check_at(&tenant, &batch(Some("c1"), Some("a")), 1000)
        .unwrap();
    h.absorb_at(&[], 1000 + h.forget_after_ms() + 1);
    assert!(h.view().pairs.is_empty());
    let (_, deleted) = h.to_publish_at(1000 + h.forget_after_ms() + 2);
    assert_eq!(deleted, vec![key_of(&tenant, "c1")]);
}
