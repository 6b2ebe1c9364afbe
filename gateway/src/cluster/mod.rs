//! The fleet's view of its upstreams: each upstream's health from this node's probes
//! ([`health`], [`probe`]), the rule that combines it with the peers' gossiped observations
//! ([`fleet_health`], [`gossip`]), and the route that picks, for a region, the first usable
//! upstream in the configured order ([`RouteTable`], [`runtime::RegionRoute`]).
//!
//! Residency is not decided here and cannot be violated here: a record reaches a sink of the
//! region its tenant's policy chose, and a route only ever names an upstream configured for
//! the region it was asked about (property-tested below). Failover happens at delivery,
//! inside the region: while a region has no usable upstream its write-ahead log holds the
//! data.

pub mod config;
pub mod gossip;
pub mod health;
pub mod probe;
pub mod runtime;
pub mod status;
pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use residency_rules::RegionId;

pub use health::{Health, HealthPolicy, Probe, Transition, UpstreamHealth};
pub use runtime::{Cluster, GossipState, RegionRoute, View};

/// An upstream cluster (a Kafka cluster, an object store, a remote-write endpoint) by its
/// configured name, e.g. `eu-primary`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpstreamId(Arc<str>);

impl UpstreamId {
    /// The id.
    pub fn new(id: &str) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Another node's observation of an upstream, as gossiped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerObservation {
    /// What it saw.
    pub health: Health,
    /// How long ago it published it.
    pub age: Duration,
}

/// The health this node routes by: down when its own probes say so (it could not deliver
/// there anyway), or when a strict majority of the fresh observations (this node's and the
/// peers' published within `fresh`) say down; otherwise its own view. So a node that alone
/// cannot reach an upstream fails over by itself, and a node that alone still reaches one the
/// rest of the fleet has lost follows the fleet once the peers that see it down outnumber
/// those that do not (itself included), which keeps all nodes on one route.
pub fn fleet_health(local: Health, peers: &[PeerObservation], fresh: Duration) -> Health {
    if local == Health::Down {
        return Health::Down;
    }
    let fresh_peers = peers.iter().filter(|p| p.age <= fresh);
    let (mut observers, mut down) = (1usize, 0usize);
    for p in fresh_peers {
        observers += 1;
        down += usize::from(p.health == Health::Down);
    }
    if 2 * down > observers {
        Health::Down
    } else {
        local
    }
}

/// For each region, its upstreams in failover order (primary first).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    regions: HashMap<RegionId, Vec<UpstreamId>>,
}

impl RouteTable {
    /// A table from `(region, upstreams in order)`.
    pub fn new(regions: impl IntoIterator<Item = (RegionId, Vec<UpstreamId>)>) -> Self {
        Self {
            regions: regions.into_iter().collect(),
        }
    }

    /// The upstreams of `region`, in order.
    pub fn upstreams(&self, region: &RegionId) -> &[UpstreamId] {
        self.regions.get(region).map_or(&[], Vec::as_slice)
    }

    /// The first usable upstream of `region`, if any.
    pub fn route(
        &self,
        region: &RegionId,
        health: impl Fn(&UpstreamId) -> Health,
    ) -> Option<&UpstreamId> {
        self.upstreams(region).iter().find(|u| health(u).usable())
    }

    /// The first region of `allowed` (a tenant's allowed regions in policy order) with a
    /// usable upstream, and that upstream. `None` when every allowed region is down: the data
    /// then waits in the write-ahead log rather than leave the allowed regions.
    pub fn route_within<'r>(
        &'r self,
        allowed: impl IntoIterator<Item = &'r RegionId>,
        health: impl Fn(&UpstreamId) -> Health,
    ) -> Option<(&'r RegionId, &'r UpstreamId)> {
        allowed
            .into_iter()
            .find_map(|r| self.route(r, &health).map(|u| (r, u)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn region(i: usize) -> RegionId {
        RegionId::parse(&format!("r{i}")).unwrap()
    }

    fn table(shape: &[usize]) -> RouteTable {
        RouteTable::new(shape.iter().enumerate().map(|(r, &n)| {
            (
                region(r),
                (0..n)
                    .map(|u| UpstreamId::new(&format!("r{r}-u{u}")))
                    .collect(),
            )
        }))
    }

    proptest! {
        /// The residency invariant at the route level: whatever the health of every upstream,
        /// a route names one of the allowed regions and an upstream configured for that
        /// region; it is the first usable one in policy order, and only absent when no
        /// allowed region has a usable upstream.
        #[test]
        fn routes_stay_inside_the_allowed_regions_in_order(
            shape in prop::collection::vec(0usize..4, 1..6),
            allowed in prop::collection::vec(0usize..8, 0..6),
            down in prop::collection::hash_set("r[0-7]-u[0-3]", 0..20),
        ) {
            let t = table(&shape);
            let allowed: Vec<RegionId> = allowed.into_iter().map(region).collect();
            let health = |u: &UpstreamId| {
                if down.contains(u.as_str()) { Health::Down } else { Health::Up }
            };
            let got = t.route_within(&allowed, health);
            let first_usable = allowed.iter().find_map(|r| {
                t.upstreams(r).iter().find(|u| health(u).usable()).map(|u| (r, u))
            });
            prop_assert_eq!(got, first_usable);
            if let Some((r, u)) = got {
                prop_assert!(allowed.contains(r));
                prop_assert!(t.upstreams(r).contains(u));
                let prefix = format!("{}-", r.as_str());
                prop_assert!(u.as_str().starts_with(&prefix));
                prop_assert!(health(u).usable());
            }
            // Deterministic for one view of health.
            prop_assert_eq!(t.route_within(&allowed, health), got);
        }
    }

    #[test]
    fn the_quorum_rule() {
        let fresh = Duration::from_secs(10);
        let seen = |health, secs| PeerObservation {
            health,
            age: Duration::from_secs(secs),
        };
        // Own probes fail: down, whatever the peers say.
        assert_eq!(
            fleet_health(
                Health::Down,
                &[seen(Health::Up, 1), seen(Health::Up, 1)],
                fresh
            ),
            Health::Down
        );
        // Two fresh peers of three nodes see it down: the fleet follows them.
        assert_eq!(
            fleet_health(
                Health::Up,
                &[seen(Health::Down, 1), seen(Health::Down, 2)],
                fresh
            ),
            Health::Down
        );
        // One of two is no majority; a stale observation does not count.
        assert_eq!(
            fleet_health(
                Health::Up,
                &[seen(Health::Down, 1), seen(Health::Up, 1)],
                fresh
            ),
            Health::Up
        );
        assert_eq!(
            fleet_health(
                Health::Up,
                &[seen(Health::Down, 1), seen(Health::Down, 60)],
                fresh
            ),
            Health::Up
        );
        assert_eq!(fleet_health(Health::Degraded, &[], fresh), Health::Degraded);
    }
}
