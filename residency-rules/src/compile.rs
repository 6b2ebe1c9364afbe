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
    /// The regex, and the literal prefixes every match starts with when those are finite:
    /// testing them first keeps the regex engine off the path for almost every label.
    Regex(regex::Regex, Option<Box<[Box<[u8]>]>>),
}

impl Matcher {
    #[inline]
    pub(crate) fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(e) => bytes_eq(s.as_bytes(), e.as_bytes()),
            Matcher::Prefix(p) => {
                s.len() >= p.len() && bytes_eq(&s.as_bytes()[..p.len()], p.as_bytes())
            }
            Matcher::Regex(r, prefixes) => {
                if let Some(prefixes) = prefixes {
                    let b = s.as_bytes();
                    let hit = prefixes
                        .iter()
                        .any(|p| b.len() >= p.len() && bytes_eq(&b[..p.len()], p));
                    if !hit {
                        return false;
                    }
                }
                r.is_match(s)
            }
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
    /// Exact label names, each with its hash and its rules in policy order.
    exact: Vec<ExactName>,
    /// Open-addressing index into `exact` (entry + 1; 0 is empty), a power of two long. A
    /// binary search over names spent half the bench time in `memcmp`; this compares once.
    table: Vec<u32>,
    /// Rules whose label name is a prefix or regex: tried on every label whose first byte
    /// is in `pattern_first_byte`.
    pattern: Vec<u16>,
    /// Bytes a name matched by some pattern rule can start with (all, when a regex has no
    /// literal prefix). Without it a single name regex cost more than all exact rules
    /// together in the bench.
    pattern_first_byte: [u64; 4],
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
                    set_bit(&mut self.first_byte, b);
                }
                match self.exact.iter_mut().find(|e| e.name == *name) {
                    Some(e) => e.rules.push(idx),
                    None => self.exact.push(ExactName {
                        hash: name_hash(name.as_bytes()),
                        name: name.clone(),
                        rules: vec![idx],
                    }),
                }
            }
            Matcher::Prefix(p) => {
                self.pattern.push(idx);
                match p.as_bytes().first() {
                    Some(&b) => set_bit(&mut self.pattern_first_byte, b),
                    None => self.pattern_first_byte = [u64::MAX; 4],
                }
            }
            Matcher::Regex(_, prefixes) => {
                self.pattern.push(idx);
                let firsts: Option<Vec<u8>> = prefixes
                    .as_ref()
                    .and_then(|ps| ps.iter().map(|p| p.first().copied()).collect());
                match firsts {
                    Some(bytes) => {
                        for b in bytes {
                            set_bit(&mut self.pattern_first_byte, b);
                        }
                    }
                    None => self.pattern_first_byte = [u64::MAX; 4],
                }
            }
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
        if !has_bit(&self.first_byte, b) {
            return &[];
        }
        if self.table.is_empty() {
            return &[];
        }
        let hash = name_hash(name.as_bytes());
        let mask = self.table.len() - 1;
        let mut slot = hash as usize & mask;
        loop {
            match self.table[slot] {
                0 => return &[],
                i => {
                    let e = &self.exact[i as usize - 1];
                    if e.hash == hash && bytes_eq(e.name.as_bytes(), name.as_bytes()) {
                        return &e.rules;
                    }
                }
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Builds the lookup table once all rules are added.
    fn finish(&mut self) {
        if self.exact.is_empty() {
            return;
        }
        let size = (self.exact.len() * 2).next_power_of_two();
        self.table = vec![0; size];
        for (i, e) in self.exact.iter().enumerate() {
            let mut slot = e.hash as usize & (size - 1);
            while self.table[slot] != 0 {
                slot = (slot + 1) & (size - 1);
            }
            self.table[slot] = i as u32 + 1;
        }
    }

    /// Rules whose label-name matcher is a pattern that may match `name`.
    #[inline]
    pub(crate) fn pattern_rules(&self, name: &str) -> &[u16] {
        match name.as_bytes().first() {
            Some(&b) if has_bit(&self.pattern_first_byte, b) => &self.pattern,
            // The empty name: only a pattern that can match it (no first byte) applies.
            None if self.pattern_first_byte == [u64::MAX; 4] => &self.pattern,
            _ => &[],
        }
    }
}

#[derive(Debug, Clone)]
struct ExactName {
    hash: u64,
    name: Box<str>,
    rules: Vec<u16>,
}

/// A fast, non-cryptographic hash of a label name for the lookup table: its length, first
/// and last eight bytes. Names with a common prefix (`pii_field_1`, `pii_field_2`,
/// `kubernetes_pod_name`, ...) are common in policies, so the tail must count too: hashing
/// the head alone made probe chains as long as the rule list.
#[inline]
fn name_hash(s: &[u8]) -> u64 {
    const K1: u64 = 0x9E37_79B9_7F4A_7C15;
    const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;
    let load = |part: &[u8]| {
        let mut b = [0u8; 8];
        b[..part.len()].copy_from_slice(part);
        u64::from_le_bytes(b)
    };
    let n = s.len();
    let head = load(&s[..n.min(8)]);
    let tail = load(&s[n.saturating_sub(8)..]);
    let h = (head ^ (n as u64) << 56).wrapping_mul(K1) ^ tail.wrapping_mul(K2);
    h ^ (h >> 31)
}

/// Byte equality without a call into libc's `memcmp`, which dominated the profile for these
/// short strings (label names and prefixes are mostly under 32 bytes).
#[inline]
pub(crate) fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        let x = u64::from_le_bytes([x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]]);
        let y = u64::from_le_bytes([y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]]);
        if x != y {
            return false;
        }
    }
    ca.remainder()
        .iter()
        .zip(cb.remainder())
        .all(|(x, y)| x == y)
}

#[inline]
fn set_bit(set: &mut [u64; 4], b: u8) {
    set[(b >> 6) as usize] |= 1 << (b & 63);
}

#[inline]
fn has_bit(set: &[u64; 4], b: u8) -> bool {
    set[(b >> 6) as usize] & (1 << (b & 63)) != 0
}

/// The literal prefixes every match of an (anchored) regex starts with, when they are finite;
/// `None` when no such finite set is known (then every string must be tried).
fn regex_prefixes(anchored: &str) -> Option<Box<[Box<[u8]>]>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let hir = regex_syntax::Parser::new().parse(anchored).ok()?;
    let mut extractor = Extractor::new();
    extractor.kind(ExtractKind::Prefix);
    let seq = extractor.extract(&hir);
    let literals = seq.literals()?;
    Some(literals.iter().map(|l| Box::from(l.as_bytes())).collect())
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
            let anchored = format!("^(?:{r})$");
            let prefixes = regex_prefixes(&anchored);
            regex::Regex::new(&anchored)
                .map(|re| Matcher::Regex(re, prefixes))
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
        // Whatever its form (exact, prefix, regex): a series left without `__name__` could
        // not be stored, so every request it matched would be refused.
        if matches!(r.action, ActionPolicy::DropLabel | ActionPolicy::HashLabel)
            && label.as_ref().is_some_and(|m| m.matches("__name__"))
        {
            problems.push(format!(
                "{field}.match.name: a series cannot lose or hide its metric name (__name__)"
            ));
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
        set.finish();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_prefixes_are_the_literal_prefixes() {
        let p = regex_prefixes("^(?:(email|phone)_.*)$").unwrap();
        let p: Vec<&[u8]> = p.iter().map(|b| &b[..]).collect();
        assert_eq!(p, [&b"email_"[..], &b"phone_"[..]]);
        assert!(regex_prefixes("^(?:.*_id)$").is_none());
        let m = Matcher::Regex(
            regex::Regex::new("^(?:(email|phone)_.*)$").unwrap(),
            regex_prefixes("^(?:(email|phone)_.*)$"),
        );
        assert!(m.matches("email_work") && m.matches("phone_") && !m.matches("endpoint"));
    }

    #[test]
    fn bytes_eq_agrees_with_slice_eq() {
        let words = [
            "",
            "a",
            "abcdefgh",
            "abcdefghi",
            "abcdefgX",
            "abcdefghij_longer",
        ];
        for a in words {
            for b in words {
                assert_eq!(bytes_eq(a.as_bytes(), b.as_bytes()), a == b, "{a} {b}");
            }
        }
    }
}
