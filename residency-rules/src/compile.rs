//! Turning a [`Policy`] into a [`CompiledPolicy`]: every name resolved to an index, every
//! region set to a bit mask, every rule indexed by the label name it looks at. All checks
//! happen here, once, so evaluation cannot meet a dangling reference.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::policy::{
    ActionPolicy, ClassScope, Policy, StringMatch, StringMatchForm, UnknownTenants,
};
use crate::{RegionId, TenantId};

/// The most regions a policy may name: region sets are `u64` masks.
pub const MAX_REGIONS: usize = 64;

/// A policy that cannot be compiled, with every problem found, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid residency policy:\n  {}", problems.join("\n  "))]
pub struct PolicyError {
    /// One line per problem, each starting with the field path.
    pub problems: Vec<String>,
}

/// A string matcher, compiled.
#[derive(Debug, Clone)]
pub(crate) enum Matcher {
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(regex::Regex),
}

impl Matcher {
    #[inline]
    pub(crate) fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(e) => s == &**e,
            Matcher::Prefix(p) => s.starts_with(&**p),
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

/// What a rule does, with its references resolved.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    Classify(usize),
    DropLabel,
    HashLabel,
    DenySeries,
    DenyRequest,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) name: Arc<str>,
    pub(crate) label: Matcher,
    pub(crate) value: Option<Matcher>,
    pub(crate) action: Action,
    pub(crate) reason: Arc<str>,
}

/// The rules that apply to one tenant, indexed so that a label no rule names costs two bit
/// tests: most labels of most series are of that kind.
#[derive(Debug, Clone, Default)]
pub(crate) struct RuleSet {
    /// Bit `min(len, 63)` set for the length of every exact rule label name.
    len_mask: u64,
    /// Bit set for the first byte of every exact rule label name.
    first_byte: [u64; 4],
    /// Exact label names, sorted, each with its rules in policy order.
    exact: Vec<(Box<str>, Vec<u16>)>,
    /// Rules whose label name is a prefix or regex: tried on every label.
    pattern: Vec<u16>,
}

impl RuleSet {
    pub(crate) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.pattern.is_empty()
    }

    fn add(&mut self, idx: u16, label: &Matcher) {
        match label {
            Matcher::Exact(name) => {
                let len_bit = name.len().min(63);
                self.len_mask |= 1 << len_bit;
                if let Some(&b) = name.as_bytes().first() {
                    self.first_byte[(b >> 6) as usize] |= 1 << (b & 63);
                }
                match self.exact.binary_search_by(|(n, _)| (**n).cmp(name)) {
                    Ok(i) => self.exact[i].1.push(idx),
                    Err(i) => self.exact.insert(i, (name.clone(), vec![idx])),
                }
            }
            Matcher::Prefix(_) | Matcher::Regex(_) => self.pattern.push(idx),
        }
    }

    /// Rules whose label-name matcher is exact and equals `name`.
    #[inline]
    pub(crate) fn exact_rules(&self, name: &str) -> &[u16] {
        let len_bit = name.len().min(63);
        if self.len_mask & (1 << len_bit) == 0 {
            return &[];
        }
        let Some(&b) = name.as_bytes().first() else {
            return &[];
        };
        if self.first_byte[(b >> 6) as usize] & (1 << (b & 63)) == 0 {
            return &[];
        }
        match self.exact.binary_search_by(|(n, _)| (**n).cmp(name)) {
            Ok(i) => &self.exact[i].1,
            Err(_) => &[],
        }
    }

    #[inline]
    pub(crate) fn pattern_rules(&self) -> &[u16] {
        &self.pattern
    }
}

/// A region as the engine knows it.
#[derive(Debug, Clone)]
pub(crate) struct RegionInfo {
    pub(crate) id: RegionId,
    pub(crate) jurisdiction: Arc<str>,
    pub(crate) tags: Arc<[(String, String)]>,
}

/// Everything about one tenant that does not depend on a series.
#[derive(Debug, Clone)]
pub(crate) struct TenantEntry {
    pub(crate) home: u8,
    /// Allowed regions in failover order.
    pub(crate) order: Vec<u8>,
    pub(crate) allowed_mask: u64,
    /// Mask of a series no `classify` rule matched (the default class, if any).
    pub(crate) default_mask: u64,
    /// Mask of each class for this tenant, by class index.
    pub(crate) class_masks: Vec<u64>,
    pub(crate) rules: RuleSet,
}

/// A compiled policy: immutable, cheap to share (`Arc`) and to swap on reload.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub(crate) regions: Vec<RegionInfo>,
    pub(crate) region_index: HashMap<RegionId, u8>,
    pub(crate) classes: Vec<Arc<str>>,
    pub(crate) tenants: HashMap<TenantId, TenantEntry>,
    pub(crate) unknown: Option<TenantEntry>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) hash_key: Option<[u8; 32]>,
}

/// Context string for deriving the `hash_label` key: changing it changes every hash.
const HASH_CONTEXT: &str = "traceo-gateway residency hash_label v1";

fn compile_match(m: &StringMatch, field: &str, problems: &mut Vec<String>) -> Option<Matcher> {
    let form = match m {
        StringMatch::Exact(s) => return Some(Matcher::Exact(s.as_str().into())),
        StringMatch::Form(f) => f,
    };
    match form {
        StringMatchForm::Exact(s) => Some(Matcher::Exact(s.as_str().into())),
        StringMatchForm::Prefix(s) => Some(Matcher::Prefix(s.as_str().into())),
        StringMatchForm::Regex(r) => {
            // Checked on its own first so an error shows the operator's text, not our anchors.
            if let Err(e) = regex::Regex::new(r) {
                problems.push(format!("{field}.regex: {r:?} is not a valid regex: {e}"));
                return None;
            }
            regex::Regex::new(&format!("^(?:{r})$"))
                .map(Matcher::Regex)
                .map_err(|e| problems.push(format!("{field}.regex: {r:?}: {e}")))
                .ok()
        }
    }
}

struct RegionTable<'a> {
    index: &'a HashMap<RegionId, u8>,
    names: String,
}

impl RegionTable<'_> {
    fn resolve(&self, field: &str, id: &str, problems: &mut Vec<String>) -> Option<u8> {
        let found = RegionId::parse(id)
            .ok()
            .and_then(|r| self.index.get(&r).copied());
        if found.is_none() {
            problems.push(format!(
                "{field}: {id:?} is not a region of this policy (regions: {})",
                self.names
            ));
        }
        found
    }

    /// Home plus allowed list, checked: the list starts with home and has no repeats.
    fn order(
        &self,
        field: &str,
        home: &str,
        allowed: &[String],
        problems: &mut Vec<String>,
    ) -> Option<(u8, Vec<u8>)> {
        let home_idx = self.resolve(&format!("{field}.home"), home, problems)?;
        if allowed.is_empty() {
            return Some((home_idx, vec![home_idx]));
        }
        let mut order = Vec::with_capacity(allowed.len());
        let mut ok = true;
        for (i, r) in allowed.iter().enumerate() {
            match self.resolve(&format!("{field}.allowed[{i}]"), r, problems) {
                Some(idx) if order.contains(&idx) => {
                    problems.push(format!("{field}.allowed[{i}]: {r:?} is listed twice"));
                    ok = false;
                }
                Some(idx) => order.push(idx),
                None => ok = false,
            }
        }
        if ok && order.first() != Some(&home_idx) {
            problems.push(format!(
                "{field}.allowed: must start with the home region {home:?} (it is the failover order)"
            ));
            ok = false;
        }
        ok.then_some((home_idx, order))
    }
}

fn mask_of(order: &[u8]) -> u64 {
    order.iter().fold(0, |m, &r| m | (1u64 << r))
}

/// Compiles a policy, or says everything that is wrong with it.
pub fn compile(policy: &Policy) -> Result<CompiledPolicy, PolicyError> {
    let mut problems = Vec::new();

    // Regions.
    if policy.regions.is_empty() {
        problems.push("regions: at least one region is required".to_string());
    }
    if policy.regions.len() > MAX_REGIONS {
        problems.push(format!(
            "regions: {} regions, the most is {MAX_REGIONS}",
            policy.regions.len()
        ));
    }
    let mut regions = Vec::new();
    let mut region_index = HashMap::new();
    for (i, r) in policy.regions.iter().enumerate().take(MAX_REGIONS) {
        let id = match RegionId::parse(&r.id) {
            Ok(id) => id,
            Err(e) => {
                problems.push(format!("regions[{i}].id: {e}"));
                continue;
            }
        };
        if region_index.contains_key(&id) {
            problems.push(format!("regions[{i}].id: {:?} is defined twice", r.id));
            continue;
        }
        if r.jurisdiction.trim().is_empty() {
            problems.push(format!("regions[{i}].jurisdiction: must not be empty"));
        }
        for name in r.tags.keys() {
            if !valid_label_name(name) {
                problems.push(format!(
                    "regions[{i}].tags: {name:?} is not a valid label name (letters, digits, '_'; not starting with a digit or '__')"
                ));
            }
        }
        region_index.insert(id.clone(), regions.len() as u8);
        regions.push(RegionInfo {
            id,
            jurisdiction: r.jurisdiction.as_str().into(),
            tags: r
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
                .into(),
        });
    }
    let table = RegionTable {
        index: &region_index,
        names: regions
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    };

    // Classes.
    let class_names: Vec<&String> = policy.classes.keys().collect();
    let class_index: BTreeMap<&str, usize> = class_names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut class_region_masks = Vec::new();
    for (name, c) in &policy.classes {
        let mut mask = u64::MAX;
        if let Some(list) = &c.regions {
            mask = 0;
            for (i, r) in list.iter().enumerate() {
                if let Some(idx) =
                    table.resolve(&format!("classes.{name}.regions[{i}]"), r, &mut problems)
                {
                    mask |= 1 << idx;
                }
            }
        }
        class_region_masks.push((c.scope, mask));
    }

    // Rules.
    if policy.rules.len() > u16::MAX as usize {
        problems.push(format!(
            "rules: {} rules, the most is {}",
            policy.rules.len(),
            u16::MAX
        ));
    }
    let mut rules = Vec::new();
    let mut rule_tenants: Vec<Option<Vec<TenantId>>> = Vec::new();
    let mut needs_hash_key = false;
    for (i, r) in policy.rules.iter().enumerate().take(u16::MAX as usize) {
        let field = format!("rules[{i}]");
        let label = compile_match(
            &r.matcher.name,
            &format!("{field}.match.name"),
            &mut problems,
        );
        let value = r
            .matcher
            .value
            .as_ref()
            .map(|v| compile_match(v, &format!("{field}.match.value"), &mut problems));
        let action = match r.action {
            ActionPolicy::Classify => match &r.class {
                None => {
                    problems.push(format!("{field}.class: required with action classify"));
                    None
                }
                Some(c) => match class_index.get(c.as_str()) {
                    Some(&idx) => Some(Action::Classify(idx)),
                    None => {
                        problems.push(format!(
                            "{field}.class: {c:?} is not a class of this policy (classes: {})",
                            class_names
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                        None
                    }
                },
            },
            ActionPolicy::DropLabel => Some(Action::DropLabel),
            ActionPolicy::HashLabel => {
                needs_hash_key = true;
                Some(Action::HashLabel)
            }
            ActionPolicy::DenySeries => Some(Action::DenySeries),
            ActionPolicy::DenyRequest => Some(Action::DenyRequest),
        };
        if r.class.is_some() && r.action != ActionPolicy::Classify {
            problems.push(format!(
                "{field}.class: only meaningful with action classify"
            ));
        }
        if matches!(r.action, ActionPolicy::DropLabel | ActionPolicy::HashLabel) {
            if let Some(Matcher::Exact(n)) = &label {
                if &**n == "__name__" {
                    problems.push(format!(
                        "{field}.match.name: a series cannot lose or hide its metric name (__name__)"
                    ));
                }
            }
        }
        let tenants = r.tenants.as_ref().map(|list| {
            list.iter()
                .enumerate()
                .filter_map(|(j, t)| match TenantId::parse(t) {
                    Ok(t) if policy.tenants.iter().any(|p| p.id == t.as_str()) => Some(t),
                    Ok(_) => {
                        problems.push(format!(
                            "{field}.tenants[{j}]: {t:?} is not a tenant of this policy"
                        ));
                        None
                    }
                    Err(e) => {
                        problems.push(format!("{field}.tenants[{j}]: {e}"));
                        None
                    }
                })
                .collect::<Vec<_>>()
        });
        let name: Arc<str> = r.name.clone().unwrap_or_else(|| field.clone()).into();
        let reason: Arc<str> = r
            .reason
            .clone()
            .unwrap_or_else(|| format!("denied by residency rule {name:?}"))
            .into();
        // `Some(None)`: a value matcher was given and failed to compile (already reported).
        let value_ok = !matches!(value, Some(None));
        if let (Some(label), Some(action), true) = (label, action, value_ok) {
            rules.push(Rule {
                name,
                label,
                value: value.flatten(),
                action,
                reason,
            });
            rule_tenants.push(tenants);
        }
    }

    let hash_key = match &policy.hash_key {
        Some(k) if k.len() < 16 => {
            problems.push(format!(
                "hash_key: {} bytes, at least 16 are needed so hashed values cannot be guessed by brute force over the key",
                k.len()
            ));
            None
        }
        Some(k) => Some(blake3::derive_key(HASH_CONTEXT, k.as_bytes())),
        None => {
            if needs_hash_key {
                problems
                    .push("hash_key: required because a rule uses action hash_label".to_string());
            }
            None
        }
    };

    // Tenants.
    let build_entry = |field: &str,
                       tenant: Option<&TenantId>,
                       home: u8,
                       order: Vec<u8>,
                       default_class: Option<usize>,
                       problems: &mut Vec<String>|
     -> TenantEntry {
        let allowed_mask = mask_of(&order);
        let home_jurisdiction = &regions[home as usize].jurisdiction;
        let class_masks: Vec<u64> = class_region_masks
            .iter()
            .enumerate()
            .map(|(ci, &(scope, list_mask))| {
                let scoped = match scope {
                    ClassScope::Allowed => allowed_mask,
                    ClassScope::Home => 1 << home,
                    ClassScope::Jurisdiction => order
                        .iter()
                        .filter(|&&r| regions[r as usize].jurisdiction == *home_jurisdiction)
                        .fold(0, |m, &r| m | (1 << r)),
                };
                let mask = scoped & list_mask;
                if mask == 0 {
                    problems.push(format!(
                        "{field}: class {:?} leaves this tenant no region (its allowed regions and the class's regions do not overlap)",
                        class_names[ci]
                    ));
                }
                mask
            })
            .collect();
        let default_mask = default_class.map_or(allowed_mask, |c| class_masks[c]);
        let mut set = RuleSet::default();
        for (idx, (rule, scope)) in rules.iter().zip(&rule_tenants).enumerate() {
            let applies = match (scope, tenant) {
                (None, _) => true,
                (Some(list), Some(t)) => list.contains(t),
                (Some(_), None) => false,
            };
            if applies {
                set.add(idx as u16, &rule.label);
            }
        }
        TenantEntry {
            home,
            order,
            allowed_mask,
            default_mask,
            class_masks,
            rules: set,
        }
    };

    let mut tenants = HashMap::new();
    for (i, t) in policy.tenants.iter().enumerate() {
        let field = format!("tenants[{i}]");
        let id = match TenantId::parse(&t.id) {
            Ok(id) => id,
            Err(e) => {
                problems.push(format!("{field}.id: {e}"));
                continue;
            }
        };
        if tenants.contains_key(&id) {
            problems.push(format!("{field}.id: {:?} is defined twice", t.id));
            continue;
        }
        let default_class = match &t.default_class {
            None => None,
            Some(c) => match class_index.get(c.as_str()) {
                Some(&idx) => Some(idx),
                None => {
                    problems.push(format!(
                        "{field}.default_class: {c:?} is not a class of this policy"
                    ));
                    continue;
                }
            },
        };
        let Some((home, order)) = table.order(&field, &t.home, &t.allowed, &mut problems) else {
            continue;
        };
        let entry = build_entry(&field, Some(&id), home, order, default_class, &mut problems);
        tenants.insert(id, entry);
    }

    let unknown = match &policy.unknown_tenants {
        UnknownTenants::Deny => None,
        UnknownTenants::Allow { home, allowed } => table
            .order("unknown_tenants", home, allowed, &mut problems)
            .map(|(home, order)| {
                build_entry("unknown_tenants", None, home, order, None, &mut problems)
            }),
    };

    if !problems.is_empty() {
        return Err(PolicyError { problems });
    }
    Ok(CompiledPolicy {
        regions,
        region_index,
        classes: class_names.iter().map(|s| Arc::from(s.as_str())).collect(),
        tenants,
        unknown,
        rules,
        hash_key,
    })
}

/// Label names of the Prometheus data model, excluding the reserved `__` prefix.
pub(crate) fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}
