//! Evaluation: the tenant part once per request ([`CompiledPolicy::tenant`]), the series part
//! per series ([`TenantView::decide`]) and only where the tenant has rules.

use std::sync::Arc;

use crate::compile::{Action, CompiledPolicy, TenantEntry};
use crate::{RegionId, TenantId};

/// A set of regions a series may reach. Only the engine creates one, and only as a subset of
/// a tenant's allowed regions, so a holder cannot widen it: the gateway routes by asking
/// [`TenantView::route`] for the regions of a set, never by naming a region itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegionSet(u64);

impl RegionSet {
    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of regions.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
}

/// Why a tenant's request is refused before any series is looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant} is not known to the residency policy")]
pub struct UnknownTenant {
    /// The tenant.
    pub tenant: TenantId,
}

/// An edit of one label of a series, by its index in the label list given to `decide`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelEdit {
    /// Index of the label.
    pub index: u16,
    /// What to do with it.
    pub op: EditOp,
}

/// See [`LabelEdit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditOp {
    /// Remove the label.
    Drop,
    /// Replace the value with [`CompiledPolicy::hash_value`] of it.
    Hash,
}

/// Whether a denial refuses one series or the whole request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyScope {
    /// The series is dropped (and counted); the rest of the request goes on.
    Series,
    /// The request is refused with 403.
    Request,
}

/// A refusal, with the rule that caused it and the reason for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Series or request.
    pub scope: DenyScope,
    /// Name of the rule; `None` when no single rule denied (classes left no region).
    pub rule: Option<Arc<str>>,
    /// Message for the client.
    pub reason: Arc<str>,
}

/// The decision for one series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeriesDecision {
    /// Store it in one of `regions` (in the tenant's failover order) after `edits`.
    Allow {
        /// Regions the series may reach.
        regions: RegionSet,
        /// Label edits, in label order; empty in the common case (no allocation).
        edits: Vec<LabelEdit>,
    },
    /// Refuse it.
    Deny(Denial),
}

/// One step of an explanation: a rule that matched a label, and what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Rule name.
    pub rule: Arc<str>,
    /// The label it matched.
    pub label: String,
    /// What it did, in words.
    pub effect: String,
}

/// A tenant's part of the policy, looked up once per request.
#[derive(Debug, Clone, Copy)]
pub struct TenantView<'p> {
    policy: &'p CompiledPolicy,
    entry: &'p TenantEntry,
}

impl CompiledPolicy {
    /// The tenant's view, or why its requests are refused.
    pub fn tenant(&self, tenant: &TenantId) -> Result<TenantView<'_>, UnknownTenant> {
        match self.tenants.get(tenant).or(self.unknown.as_ref()) {
            Some(entry) => Ok(TenantView {
                policy: self,
                entry,
            }),
            None => Err(UnknownTenant {
                tenant: tenant.clone(),
            }),
        }
    }

    /// The view unlisted tenants get under `unknown_tenants: allow`, if any.
    pub fn unknown_tenant_view(&self) -> Option<TenantView<'_>> {
        self.unknown.as_ref().map(|entry| TenantView {
            policy: self,
            entry,
        })
    }

    /// Names of the data classes.
    pub fn class_names(&self) -> impl Iterator<Item = &str> {
        self.classes.iter().map(|c| &**c)
    }

    /// Whether the policy lists this tenant by name (as opposed to `unknown_tenants: allow`).
    pub fn lists_tenant(&self, tenant: &TenantId) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// Tenants the policy lists by name.
    pub fn tenant_ids(&self) -> impl Iterator<Item = &TenantId> {
        self.tenants.keys()
    }

    /// Every region of the policy, in policy order.
    pub fn regions(&self) -> impl ExactSizeIterator<Item = &RegionId> {
        self.regions.iter().map(|r| &r.id)
    }

    /// Whether `region` is a region of the policy.
    pub fn has_region(&self, region: &RegionId) -> bool {
        self.region_index.contains_key(region)
    }

    /// Jurisdiction of a region of the policy.
    pub fn jurisdiction(&self, region: &RegionId) -> Option<&str> {
        let i = *self.region_index.get(region)?;
        Some(&self.regions[i as usize].jurisdiction)
    }

    /// Labels the policy adds to series stored in `region`.
    pub fn region_tags(&self, region: &RegionId) -> Arc<[(String, String)]> {
        match self.region_index.get(region) {
            Some(&i) => self.regions[i as usize].tags.clone(),
            None => Arc::from(Vec::new()),
        }
    }

    /// Whether any rule hashes labels (so a hash key is configured).
    pub fn hashes(&self) -> bool {
        self.hash_key.is_some()
    }

    /// The keyed hash `hash_label` puts in place of a value: 32 hex digits (128 bits of a
    /// BLAKE3 keyed hash), equal for equal values under one key, so series stay joinable.
    ///
    /// # Panics
    /// Never for a decision this policy produced: an `EditOp::Hash` exists only when the
    /// policy compiled with a key.
    pub fn hash_value(&self, value: &str) -> String {
        let key = self
            .hash_key
            .as_ref()
            .expect("a hash edit only comes from a policy with a hash_key (checked at compile)");
        let h = blake3::keyed_hash(key, value.as_bytes());
        let mut out = String::with_capacity(32);
        for b in &h.as_bytes()[..16] {
            out.push(char::from(HEX[(b >> 4) as usize]));
            out.push(char::from(HEX[(b & 15) as usize]));
        }
        out
    }

    /// Convenience for one-off callers (`explain`, tests): tenant and series in one call.
    pub fn decide<'a>(
        &self,
        tenant: &TenantId,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Decision {
        let view = match self.tenant(tenant) {
            Ok(v) => v,
            Err(e) => {
                return Decision::Deny(Denial {
                    scope: DenyScope::Request,
                    rule: None,
                    reason: e.to_string().into(),
                })
            }
        };
        match view.decide(labels) {
            SeriesDecision::Allow { regions, edits } => Decision::Allow {
                regions: view.route(regions).cloned().collect(),
                edits,
            },
            SeriesDecision::Deny(d) => Decision::Deny(d),
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// [`CompiledPolicy::decide`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed: the regions in failover order, and the label edits.
    Allow {
        /// Allowed regions, in the tenant's failover order.
        regions: Vec<RegionId>,
        /// Label edits.
        edits: Vec<LabelEdit>,
    },
    /// Refused.
    Deny(Denial),
}

impl<'p> TenantView<'p> {
    /// The policy this view belongs to.
    pub fn policy(&self) -> &'p CompiledPolicy {
        self.policy
    }

    /// Home region.
    pub fn home(&self) -> &'p RegionId {
        &self.policy.regions[self.entry.home as usize].id
    }

    /// All allowed regions.
    pub fn allowed(&self) -> RegionSet {
        RegionSet(self.entry.allowed_mask)
    }

    /// Regions of a series no rule touched (the tenant's default class).
    pub fn default_regions(&self) -> RegionSet {
        RegionSet(self.entry.default_mask)
    }

    /// Whether any label rule applies to this tenant. When not, every series gets
    /// [`Self::default_regions`] and no edits, and the per-series loop can be skipped.
    pub fn has_rules(&self) -> bool {
        !self.entry.rules.is_empty()
    }

    /// The regions of `set`, in the tenant's failover order. This is the only way from a
    /// decision to a region, and it can only yield the tenant's allowed regions.
    pub fn route(&self, set: RegionSet) -> impl Iterator<Item = &'p RegionId> + 'p {
        let regions = &self.policy.regions;
        let mask = set.0 & self.entry.allowed_mask;
        self.entry
            .order
            .iter()
            .filter(move |&&r| mask & (1 << r) != 0)
            .map(move |&r| &regions[r as usize].id)
    }

    /// Regions a series of class `class` may reach, for config checks; `None` for an unknown
    /// class.
    pub fn class_regions(&self, class: &str) -> Option<RegionSet> {
        let i = self.policy.classes.iter().position(|c| &**c == class)?;
        Some(RegionSet(self.entry.class_masks[i]))
    }

    /// Decides one series. `labels` must be the series' labels in a fixed order; edits refer
    /// to positions in it.
    #[inline]
    pub fn decide<'a>(
        &self,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> SeriesDecision {
        if !self.has_rules() {
            return SeriesDecision::Allow {
                regions: self.default_regions(),
                edits: Vec::new(),
            };
        }
        self.evaluate(labels, None)
    }

    /// Like [`Self::decide`], recording every rule that matched, for people.
    pub fn explain<'a>(
        &self,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> (SeriesDecision, Vec<Trace>) {
        let mut trace = Vec::new();
        let d = self.evaluate(labels, Some(&mut trace));
        (d, trace)
    }

    fn evaluate<'a>(
        &self,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        mut trace: Option<&mut Vec<Trace>>,
    ) -> SeriesDecision {
        let rules = &self.policy.rules;
        let set = &self.entry.rules;
        let mut class_mask = u64::MAX;
        let mut classified = false;
        let mut edits: Vec<LabelEdit> = Vec::new();
        let mut deny_series: Option<u16> = None;
        let mut deny_request: Option<u16> = None;
        for (index, (name, value)) in labels.into_iter().enumerate() {
            let exact = set.exact_rules(name);
            let pattern = set.pattern_rules(name);
            if exact.is_empty() && pattern.is_empty() {
                continue;
            }
            // Exact-name candidates matched by the table lookup; only patterns need a test.
            let candidates = exact
                .iter()
                .map(|&ri| (ri, true))
                .chain(pattern.iter().map(|&ri| (ri, false)));
            for (ri, name_known) in candidates {
                let rule = &rules[ri as usize];
                if !name_known && !rule.label.matches(name) {
                    continue;
                }
                if let Some(v) = &rule.value {
                    if !v.matches(value) {
                        continue;
                    }
                }
                let effect = match rule.action {
                    Action::Classify(c) => {
                        class_mask &= self.entry.class_masks[c];
                        classified = true;
                        trace
                            .is_some()
                            .then(|| format!("class {}", self.policy.classes[c]))
                    }
                    Action::DropLabel | Action::HashLabel => {
                        let op = if matches!(rule.action, Action::DropLabel) {
                            EditOp::Drop
                        } else {
                            EditOp::Hash
                        };
                        let index = index as u16;
                        match edits.iter_mut().find(|e| e.index == index) {
                            // Dropping wins over hashing: nothing of the value remains.
                            Some(e) => {
                                if op == EditOp::Drop {
                                    e.op = EditOp::Drop;
                                }
                            }
                            None => edits.push(LabelEdit { index, op }),
                        }
                        trace.is_some().then(|| {
                            if op == EditOp::Drop {
                                "label dropped".to_string()
                            } else {
                                "value hashed".to_string()
                            }
                        })
                    }
                    Action::DenySeries => {
                        deny_series.get_or_insert(ri);
                        trace.is_some().then(|| "series denied".to_string())
                    }
                    Action::DenyRequest => {
                        deny_request.get_or_insert(ri);
                        trace.is_some().then(|| "request denied".to_string())
                    }
                };
                if let (Some(t), Some(effect)) = (trace.as_deref_mut(), effect) {
                    t.push(Trace {
                        rule: rule.name.clone(),
                        label: format!("{name}={value:?}"),
                        effect,
                    });
                }
            }
        }
        if let Some(ri) = deny_request {
            return self.denial(DenyScope::Request, ri);
        }
        if let Some(ri) = deny_series {
            return self.denial(DenyScope::Series, ri);
        }
        let mask = if classified {
            class_mask & self.entry.allowed_mask
        } else {
            self.entry.default_mask
        };
        if mask == 0 {
            return SeriesDecision::Deny(Denial {
                scope: DenyScope::Series,
                rule: None,
                reason: "the series' data classes together leave no allowed region".into(),
            });
        }
        SeriesDecision::Allow {
            regions: RegionSet(mask),
            edits,
        }
    }

    fn denial(&self, scope: DenyScope, ri: u16) -> SeriesDecision {
        let rule = &self.policy.rules[ri as usize];
        SeriesDecision::Deny(Denial {
            scope,
            rule: Some(rule.name.clone()),
            reason: rule.reason.clone(),
        })
    }
}
