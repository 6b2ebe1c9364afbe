use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use protocols::remote_write::v1::reference as pb;
use protocols::{Batch, DecodeLimits};
use residency_rules::TenantId;

use super::*;

/// `n` series `m{first}..m{first+n-1}`, `samples` samples each.
fn batch(first: usize, n: usize, samples: usize) -> Batch {
    let req = pb::WriteRequest {
        timeseries: (first..first + n)
            .map(|i| pb::TimeSeries {
                labels: vec![pb::Label {
                    name: "__name__".into(),
                    value: format!("m{i}"),
                }],
                samples: (0..samples)
                    .map(|t| pb::Sample {
                        value: 1.0,
                        timestamp: t as i64,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    protocols::remote_write::v1::decode_message(
        Bytes::from(req.encode_to_vec()),
        &DecodeLimits::default(),
    )
    .unwrap()
}

fn limits(defaults: TenantLimits, members: usize) -> (Limits, Arc<AtomicUsize>) {
    let members = Arc::new(AtomicUsize::new(members));
    let settings = LimitsSettings {
        defaults: Arc::new(defaults),
        ..LimitsSettings::default()
    };
    (Limits::new(&settings, members.clone()), members)
}

fn tenant(t: &str) -> TenantId {
    TenantId::parse(t).unwrap()
}

#[test]
fn unlimited_tenants_pass_untracked() {
    let (l, _) = limits(TenantLimits::default(), 1);
    let a = l.check(&tenant("a"), &batch(0, 100, 1), None).unwrap();
    assert!(a.refused.is_empty());
    a.keep();
    assert!(l.view().tenants.is_empty(), "no state without a limit");
    // Rates only: state, but no series table.
    let (l, _) = limits(
        TenantLimits {
            request_rate: 1e6,
            ..TenantLimits::default()
        },
        1,
    );
    l.check(&tenant("a"), &batch(0, 100, 1), None)
        .unwrap()
        .keep();
    assert_eq!(
        l.view().tenants[0].active_series,
        None,
        "no table without a series limit"
    );
}

#[test]
fn a_series_is_counted_without_the_ha_replica_label() {
    let (l, _) = limits(
        TenantLimits {
            max_active_series: 10,
            ..TenantLimits::default()
        },
        1,
    );
    let t = tenant("a");
    let replica = |r: &str| {
        let req = pb::WriteRequest {
            timeseries: (0..10)
                .map(|i| pb::TimeSeries {
                    labels: vec![
                        pb::Label {
                            name: "__name__".into(),
                            value: format!("m{i}"),
                        },
                        pb::Label {
                            name: "__replica__".into(),
                            value: r.into(),
                        },
                    ],
                    samples: vec![pb::Sample {
                        value: 1.0,
                        timestamp: 1,
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        protocols::remote_write::v1::decode_message(
            Bytes::from(req.encode_to_vec()),
            &DecodeLimits::default(),
        )
        .unwrap()
    };
    assert!(l
        .check(&t, &replica("a"), Some("__replica__"))
        .unwrap()
        .refused
        .is_empty());
    // After a failover the other replica's series are the same series.
    assert!(l
        .check(&t, &replica("b"), Some("__replica__"))
        .unwrap()
        .refused
        .is_empty());
    // Counted with the label, they would be 10 more.
    assert_eq!(l.check(&t, &replica("c"), None).unwrap().refused.len(), 10);
}

#[test]
fn over_the_ingestion_rate_is_refused_with_a_retry_delay_and_nothing_kept_is_charged() {
    let (l, _) = limits(
        TenantLimits {
            ingestion_rate: 100.0,
            ingestion_burst: 100,
            ..TenantLimits::default()
        },
        1,
    );
    let t = tenant("a");
    l.check(&t, &batch(0, 50, 2), None).unwrap().keep();
    let e = l.check(&t, &batch(0, 10, 1), None).err().unwrap();
    assert_eq!(e.reason(), "rate_limited");
    assert!(!e.is_unavailable());
    assert_eq!(e.retry_after_secs(), 1);
    assert!(
        e.to_string().contains("ingestion_rate of 100 samples/s"),
        "{e}"
    );
    // Another tenant has its own bucket.
    l.check(&tenant("b"), &batch(0, 100, 1), None)
        .unwrap()
        .keep();
    // A charge dropped without `keep` (the request failed later) is given back.
    let (l, _) = limits(
        TenantLimits {
            ingestion_rate: 10.0,
            ingestion_burst: 10,
            ..TenantLimits::default()
        },
        1,
    );
    drop(l.check(&t, &batch(0, 10, 1), None).unwrap());
    l.check(&t, &batch(0, 10, 1), None).unwrap().keep();
    assert!(l.check(&t, &batch(0, 1, 1), None).is_err());
}

#[test]
fn the_node_enforces_its_share_of_the_fleet_rate_and_follows_the_members() {
    let (l, members) = limits(
        TenantLimits {
            request_rate: 30.0,
            request_burst: 1,
            ..TenantLimits::default()
        },
        3,
    );
    let t = tenant("a");
    l.check(&t, &batch(0, 1, 1), None).unwrap().keep();
    let e = l.check(&t, &batch(0, 1, 1), None).err().unwrap();
    match &e {
        LimitError::RateLimited {
            kind,
            global,
            share,
            members,
            ..
        } => {
            assert_eq!(*kind, RateKind::Requests);
            assert_eq!(*global, 30.0);
            assert_eq!(*share, 10.0);
            assert_eq!(*members, 3);
        }
        other => panic!("{other:?}"),
    }
    members.store(1, std::sync::atomic::Ordering::Relaxed);
    let v = l.view();
    assert_eq!(v.members, 1);
    assert_eq!(v.tenants[0].request_rate_node_share, Some(30.0));
    // Gossip off: 0 members counts as the node alone.
    members.store(0, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(l.members(), 1);
}

#[test]
fn the_503_option_is_per_tenant() {
    let (l, _) = limits(
        TenantLimits {
            request_rate: 1.0,
            ..TenantLimits::default()
        },
        1,
    );
    let slow = TenantLimits {
        request_rate: 1.0,
        rate_limited_status: RateLimitedStatus::Unavailable,
        ..TenantLimits::default()
    };
    l.replace_overrides(Overrides::from([(tenant("legacy"), Arc::new(slow))]));
    l.check(&tenant("a"), &batch(0, 1, 1), None).unwrap().keep();
    l.check(&tenant("legacy"), &batch(0, 1, 1), None)
        .unwrap()
        .keep();
    assert!(!l
        .check(&tenant("a"), &batch(0, 1, 1), None)
        .err()
        .unwrap()
        .is_unavailable());
    assert!(l
        .check(&tenant("legacy"), &batch(0, 1, 1), None)
        .err()
        .unwrap()
        .is_unavailable());
}

#[test]
fn new_series_past_the_limit_are_refused_known_ones_kept_and_expire() {
    let (l, _) = limits(
        TenantLimits {
            max_active_series: 1000,
            active_series_window: Duration::from_secs(1),
            ..TenantLimits::default()
        },
        1,
    );
    let t = tenant("a");
    let a = l.check(&t, &batch(0, 1200, 2), None).unwrap();
    assert_eq!(a.refused.len(), 200);
    assert_eq!(a.refused, (1000..1200).collect::<Vec<u32>>());
    let s = a.series_limited.clone().unwrap();
    assert_eq!(
        (s.limit, s.series, s.samples, s.points),
        (1000, 200, 400, 400)
    );
    assert!(s.to_string().contains("limit of 1000 active series"), "{s}");
    a.keep();
    let again = l.check(&t, &batch(0, 1000, 1), None).unwrap();
    assert!(again.refused.is_empty(), "known series keep being accepted");
    again.keep();
    assert_eq!(l.view().tenants[0].active_series, Some(1000));
    // The window passes: after an upkeep the old series are gone and new ones fit.
    std::thread::sleep(Duration::from_millis(2100));
    l.upkeep(1.0);
    assert_eq!(l.view().tenants[0].active_series, Some(0));
    assert!(l
        .check(&t, &batch(5000, 1000, 1), None)
        .unwrap()
        .refused
        .is_empty());
}

#[test]
fn a_lowered_series_limit_takes_effect_at_the_next_upkeep() {
    let (l, _) = limits(
        TenantLimits {
            max_active_series: 100,
            ..TenantLimits::default()
        },
        1,
    );
    let t = tenant("a");
    l.check(&t, &batch(0, 100, 1), None).unwrap().keep();
    l.replace_overrides(Overrides::from([(
        t.clone(),
        Arc::new(TenantLimits {
            max_active_series: 10,
            ..TenantLimits::default()
        }),
    )]));
    l.upkeep(1.0);
    let v = l.view();
    assert_eq!(v.tenants[0].active_series, Some(10));
    assert!(v.tenants[0].overridden);
    assert_eq!(
        l.check(&t, &batch(200, 5, 1), None).unwrap().refused.len(),
        5
    );
}

#[test]
fn the_number_of_tenants_tracked_is_bounded() {
    let members = Arc::new(AtomicUsize::new(1));
    let settings = LimitsSettings {
        max_tenants: 2,
        defaults: Arc::new(TenantLimits {
            request_rate: 1e6,
            ..TenantLimits::default()
        }),
        ..LimitsSettings::default()
    };
    let l = Limits::new(&settings, members);
    l.check(&tenant("a"), &batch(0, 1, 1), None).unwrap().keep();
    l.check(&tenant("b"), &batch(0, 1, 1), None).unwrap().keep();
    let e = l.check(&tenant("c"), &batch(0, 1, 1), None).err().unwrap();
    assert!(matches!(e, LimitError::TooManyTenants(2)));
    assert!(e.is_unavailable());
    // Known tenants go on.
    l.check(&tenant("a"), &batch(0, 1, 1), None).unwrap().keep();
}
