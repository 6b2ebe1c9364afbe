//! Residency as an invariant: over random policies, tenants and label sets, the engine's
//! decisions must keep every series inside its tenant's allowed regions, keep personal data at
//! home, never leave a hashed value in clear, and never allow what a deny rule matched. A
//! deliberately naive evaluator over the uncompiled policy is the reference.

use std::collections::BTreeMap;

use proptest::prelude::*;
use residency_rules::policy::{
    ActionPolicy, ClassPolicy, ClassScope, MatchPolicy, RegionPolicy, RulePolicy, StringMatch,
    StringMatchForm, TenantPolicy, UnknownTenants,
};
use residency_rules::{compile, Decision, DenyScope, EditOp, Policy, RegionId, TenantId};

const NAMES: &[&str] = &["email", "user_id", "env", "pod", "ip", "team"];
const VALUES: &[&str] = &[
    "a@b.example",
    "prod",
    "dev",
    "10.0.0.1",
    "pod-7f9c",
    "x",
    "prod-eu",
];
const JURISDICTIONS: &[&str] = &["EU", "US", "JP"];

fn string_match(pool: &'static [&'static str]) -> impl Strategy<Value = StringMatch> {
    (prop::sample::select(pool), 0..3u8).prop_map(|(s, kind)| match kind {
        0 => StringMatch::Exact(s.to_string()),
        1 => StringMatch::Form(StringMatchForm::Prefix(s[..s.len().min(2)].to_string())),
        _ => StringMatch::Form(StringMatchForm::Regex(format!("{}.*", &s[..1]))),
    })
}

fn action() -> impl Strategy<Value = ActionPolicy> {
    prop_oneof![
        3 => Just(ActionPolicy::Classify),
        2 => Just(ActionPolicy::DropLabel),
        2 => Just(ActionPolicy::HashLabel),
        1 => Just(ActionPolicy::DenySeries),
        1 => Just(ActionPolicy::DenyRequest),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    (1usize..=6).prop_flat_map(|n_regions| {
        let regions = prop::collection::vec(prop::sample::select(JURISDICTIONS), n_regions);
        let tenants = prop::collection::vec(
            (
                0..n_regions,
                prop::collection::vec(0..n_regions, 0..4),
                prop::option::of(0..3usize),
            ),
            1..4,
        );
        let rules = prop::collection::vec(
            (
                string_match(NAMES),
                prop::option::of(string_match(VALUES)),
                action(),
                0..3usize,
                prop::option::of(prop::collection::vec(0..4usize, 1..3)),
            ),
            0..8,
        );
        let restricted = prop::collection::vec(0..n_regions, 1..3);
        let unknown = prop::option::of(0..n_regions);
        (regions, tenants, rules, restricted, unknown).prop_map(
            move |(jur, tenants, rules, restricted, unknown)| {
                let rid = |i: usize| format!("r{i}");
                // Every home is in the restricted class, so each class leaves each tenant at
                // least its home and the policy compiles: no generated case is vacuous.
                let mut restricted = restricted;
                restricted.extend(tenants.iter().map(|t| t.0));
                restricted.extend(unknown);
                let mut classes = BTreeMap::new();
                classes.insert(
                    "personal".to_string(),
                    ClassPolicy {
                        scope: ClassScope::Home,
                        regions: None,
                    },
                );
                classes.insert(
                    "local".to_string(),
                    ClassPolicy {
                        scope: ClassScope::Jurisdiction,
                        regions: None,
                    },
                );
                classes.insert(
                    "restricted".to_string(),
                    ClassPolicy {
                        scope: ClassScope::Allowed,
                        regions: Some(restricted.iter().map(|&i| rid(i)).collect()),
                    },
                );
                let class_names = ["personal", "local", "restricted"];
                let n_tenants = tenants.len();
                Policy {
                    regions: jur
                        .iter()
                        .enumerate()
                        .map(|(i, j)| RegionPolicy {
                            id: rid(i),
                            jurisdiction: j.to_string(),
                            tags: BTreeMap::new(),
                        })
                        .collect(),
                    tenants: tenants
                        .into_iter()
                        .enumerate()
                        .map(|(i, (home, extra, class))| {
                            let mut allowed = vec![home];
                            for e in extra {
                                if !allowed.contains(&e) {
                                    allowed.push(e);
                                }
                            }
                            TenantPolicy {
                                id: format!("t{i}"),
                                home: rid(home),
                                allowed: allowed.into_iter().map(rid).collect(),
                                default_class: class.map(|c| class_names[c].to_string()),
                            }
                        })
                        .collect(),
                    unknown_tenants: match unknown {
                        None => UnknownTenants::Deny,
                        Some(h) => UnknownTenants::Allow {
                            home: rid(h),
                            allowed: vec![],
                        },
                    },
                    classes,
                    rules: rules
                        .into_iter()
                        .enumerate()
                        .map(|(i, (name, value, action, class, tenants))| RulePolicy {
                            name: Some(format!("rule{i}")),
                            tenants: tenants.map(|ts| {
                                let mut ts: Vec<String> = ts
                                    .into_iter()
                                    .map(|t| format!("t{}", t % n_tenants))
                                    .collect();
                                ts.dedup();
                                ts
                            }),
                            matcher: MatchPolicy { name, value },
                            action,
                            class: (action == ActionPolicy::Classify)
                                .then(|| class_names[class].to_string()),
                            reason: None,
                        })
                        .collect(),
                    hash_key: Some("0123456789abcdef-test-key".to_string()),
                }
            },
        )
    })
}

fn labels() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map(
        prop::sample::select(NAMES),
        prop::sample::select(VALUES),
        0..5,
    )
    .prop_map(|m| {
        let mut v = vec![("__name__".to_string(), "http_requests_total".to_string())];
        v.extend(m.into_iter().map(|(k, v)| (k.to_string(), v.to_string())));
        v
    })
}

fn matches(m: &StringMatch, s: &str) -> bool {
    match m {
        StringMatch::Exact(e) | StringMatch::Form(StringMatchForm::Exact(e)) => s == e,
        StringMatch::Form(StringMatchForm::Prefix(p)) => s.starts_with(p.as_str()),
        StringMatch::Form(StringMatchForm::Regex(r)) => {
            // The generator only makes `<char>.*`.
            let first = r.chars().next().expect("non-empty regex");
            s.starts_with(first)
        }
    }
}

/// Naive reference: walk the uncompiled policy. Returns allowed regions in order, or the
/// deny scope, plus the set of hashed and dropped label names.
struct Expected {
    outcome: Result<Vec<String>, DenyScope>,
    hashed: Vec<String>,
    dropped: Vec<String>,
}

fn reference(p: &Policy, tenant: &str, labels: &[(String, String)]) -> Option<Expected> {
    let listed = p.tenants.iter().find(|t| t.id == tenant);
    let (home, allowed, default_class): (String, Vec<String>, Option<String>) = match listed {
        Some(t) => (t.home.clone(), t.allowed.clone(), t.default_class.clone()),
        None => match &p.unknown_tenants {
            UnknownTenants::Deny => return None,
            UnknownTenants::Allow { home, .. } => (home.clone(), vec![home.clone()], None),
        },
    };
    let jurisdiction = |r: &str| {
        p.regions
            .iter()
            .find(|x| x.id == r)
            .map(|x| x.jurisdiction.clone())
            .expect("region exists")
    };
    let class_regions = |c: &str| -> Vec<String> {
        let cp = &p.classes[c];
        allowed
            .iter()
            .filter(|r| match cp.scope {
                ClassScope::Allowed => true,
                ClassScope::Home => **r == home,
                ClassScope::Jurisdiction => jurisdiction(r) == jurisdiction(&home),
            })
            .filter(|r| cp.regions.as_ref().is_none_or(|l| l.contains(r)))
            .cloned()
            .collect()
    };
    let mut regions: Option<Vec<String>> = None;
    let mut hashed = Vec::new();
    let mut dropped = Vec::new();
    let mut deny = None;
    for (name, value) in labels {
        for rule in &p.rules {
            let applies = match &rule.tenants {
                None => true,
                Some(ts) => listed.is_some() && ts.iter().any(|t| t == tenant),
            };
            if !applies || !matches(&rule.matcher.name, name) {
                continue;
            }
            if let Some(v) = &rule.matcher.value {
                if !matches(v, value) {
                    continue;
                }
            }
            match rule.action {
                ActionPolicy::Classify => {
                    let c = class_regions(rule.class.as_deref().expect("class"));
                    regions = Some(match regions {
                        None => c,
                        Some(prev) => prev.into_iter().filter(|r| c.contains(r)).collect(),
                    });
                }
                ActionPolicy::DropLabel => dropped.push(name.clone()),
                ActionPolicy::HashLabel => hashed.push(name.clone()),
                ActionPolicy::DenySeries => {
                    deny = Some(deny.map_or(DenyScope::Series, |d: DenyScope| d));
                }
                ActionPolicy::DenyRequest => deny = Some(DenyScope::Request),
            }
        }
    }
    let regions = regions.unwrap_or_else(|| match &default_class {
        Some(c) => class_regions(c),
        None => allowed.clone(),
    });
    let outcome = match deny {
        Some(d) => Err(d),
        None if regions.is_empty() => Err(DenyScope::Series),
        None => Ok(regions),
    };
    hashed.retain(|h| !dropped.contains(h));
    Some(Expected {
        outcome,
        hashed,
        dropped,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decisions_keep_data_inside_allowed_regions(
        p in policy(),
        tenant_idx in 0..5usize,
        labels in labels(),
    ) {
        let compiled = compile(&p).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let tenant = format!("t{tenant_idx}");
        let tid = TenantId::parse(&tenant).unwrap();
        let pairs: Vec<(&str, &str)> =
            labels.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let decision = compiled.decide(&tid, pairs.iter().copied());
        let expected = reference(&p, &tenant, &labels);

        let Some(expected) = expected else {
            // Unknown tenant with unknown_tenants: deny.
            prop_assert!(matches!(decision, Decision::Deny(ref d) if d.scope == DenyScope::Request));
            return Ok(());
        };
        let allowed: Vec<String> = match p.tenants.iter().find(|t| t.id == tenant) {
            Some(t) => t.allowed.clone(),
            None => match &p.unknown_tenants {
                UnknownTenants::Allow { home, .. } => vec![home.clone()],
                UnknownTenants::Deny => unreachable!(),
            },
        };
        match (&decision, &expected.outcome) {
            (Decision::Allow { regions, edits }, Ok(exp)) => {
                let got: Vec<String> = regions.iter().map(RegionId::to_string).collect();
                prop_assert_eq!(&got, exp);
                // Invariant: inside the tenant's allowed list, in its failover order.
                let positions: Vec<usize> = got
                    .iter()
                    .map(|r| allowed.iter().position(|a| a == r).expect("region outside allowed list"))
                    .collect();
                prop_assert!(positions.windows(2).all(|w| w[0] < w[1]));
                // Invariant: personal data stays at home.
                let personal = p.rules.iter().any(|r| {
                    r.class.as_deref() == Some("personal")
                        && r.tenants.as_ref().is_none_or(|ts| ts.contains(&tenant))
                        && labels.iter().any(|(n, v)| {
                            matches(&r.matcher.name, n)
                                && r.matcher.value.as_ref().is_none_or(|m| matches(m, v))
                        })
                });
                if personal {
                    let home = p.tenants.iter().find(|t| t.id == tenant).map(|t| t.home.clone());
                    if let Some(home) = home {
                        prop_assert_eq!(&got, &vec![home]);
                    }
                }
                // Invariant: hashed values never in clear, dropped labels gone.
                let mut out: Vec<(String, String)> = Vec::new();
                for (i, (n, v)) in labels.iter().enumerate() {
                    match edits.iter().find(|e| e.index as usize == i).map(|e| e.op) {
                        Some(EditOp::Drop) => {}
                        Some(EditOp::Hash) => out.push((n.clone(), compiled.hash_value(v))),
                        None => out.push((n.clone(), v.clone())),
                    }
                }
                for d in &expected.dropped {
                    prop_assert!(out.iter().all(|(n, _)| n != d), "dropped label {} present", d);
                }
                for h in &expected.hashed {
                    let original = &labels.iter().find(|(n, _)| n == h).expect("label").1;
                    let (_, now) = out.iter().find(|(n, _)| n == h).expect("hashed label kept");
                    prop_assert_ne!(now, original);
                    prop_assert_eq!(now.len(), 32);
                }
            }
            (Decision::Deny(d), Err(scope)) => prop_assert_eq!(d.scope, *scope),
            (got, exp) => prop_assert!(false, "engine {:?} vs reference {:?}", got, exp),
        }
    }
}

fn base_policy() -> &'static str {
    r#"
regions:
  - { id: eu-west, jurisdiction: EU, tags: { jurisdiction: eu } }
  - { id: eu-central, jurisdiction: EU }
  - { id: us-east, jurisdiction: US }
tenants:
  - { id: acme-eu, home: eu-west, allowed: [eu-west, eu-central] }
  - { id: acme-us, home: us-east }
classes:
  personal: { scope: home }
rules:
  - name: email-is-personal
    match: { name: email }
    action: classify
    class: personal
  - name: hash-user
    match: { name: user_id }
    action: hash_label
  - name: no-debug
    match: { name: env, value: { exact: debug } }
    action: deny_request
    reason: debug data must not leave the cluster
hash_key: "a-long-enough-test-key"
"#
}

#[test]
fn eu_tenant_fails_over_inside_eu_and_personal_data_stays_home() {
    let p = residency_rules::load(base_policy()).unwrap();
    let t = TenantId::parse("acme-eu").unwrap();
    let regions = |d: Decision| match d {
        Decision::Allow { regions, .. } => {
            regions.iter().map(|r| r.to_string()).collect::<Vec<_>>()
        }
        Decision::Deny(d) => panic!("denied: {d:?}"),
    };
    assert_eq!(
        regions(p.decide(&t, [("__name__", "up")])),
        ["eu-west", "eu-central"]
    );
    assert_eq!(
        regions(p.decide(&t, [("__name__", "up"), ("email", "a@b")])),
        ["eu-west"]
    );
    let Decision::Deny(d) = p.decide(&t, [("__name__", "up"), ("env", "debug")]) else {
        panic!("not denied")
    };
    assert_eq!(d.scope, DenyScope::Request);
    assert_eq!(&*d.reason, "debug data must not leave the cluster");
    assert_eq!(d.rule.as_deref(), Some("no-debug"));
}

#[test]
fn unknown_tenant_is_refused_by_default() {
    let p = residency_rules::load(base_policy()).unwrap();
    let Decision::Deny(d) = p.decide(&TenantId::parse("nobody").unwrap(), [("__name__", "up")])
    else {
        panic!("allowed an unknown tenant")
    };
    assert_eq!(
        &*d.reason,
        "tenant nobody is not known to the residency policy"
    );
}

#[test]
fn hash_is_keyed_stable_and_unreadable() {
    let p = residency_rules::load(base_policy()).unwrap();
    let other = residency_rules::load(
        &base_policy().replace("a-long-enough-test-key", "another-key-of-16-bytes"),
    )
    .unwrap();
    let h = p.hash_value("user-42");
    assert_eq!(h, p.hash_value("user-42"));
    assert_ne!(h, p.hash_value("user-43"));
    assert_ne!(h, other.hash_value("user-42"));
    assert_eq!(h.len(), 32);
    assert!(!h.contains("user"));
}

#[test]
fn compile_errors_name_every_bad_field() {
    let bad = r#"
regions:
  - { id: eu-west, jurisdiction: EU }
  - { id: eu-west, jurisdiction: EU }
  - { id: "a/b", jurisdiction: US }
tenants:
  - { id: t1, home: us-west }
  - { id: t2, home: eu-west, allowed: [eu-central, eu-west] }
  - { id: t3, home: eu-west, default_class: secret }
classes:
  personal: { scope: home, regions: [mars] }
rules:
  - { match: { name: x }, action: classify }
  - { match: { name: y, value: { regex: "(" } }, action: drop_label }
  - { match: { name: __name__ }, action: hash_label }
  - { match: { name: z }, action: deny_series, tenants: [ghost] }
hash_key: short
"#;
    let err = residency_rules::load(bad).unwrap_err();
    let expected = [
        "regions[1].id: \"eu-west\" is defined twice",
        "regions[2].id: region id \"a/b\" has '/'; allowed are ASCII letters, digits, '-', '_' and '.'",
        "classes.personal.regions[0]: \"mars\" is not a region of this policy (regions: eu-west)",
        "rules[0].class: required with action classify",
        "rules[1].match.value.regex: \"(\" is not a valid regex: regex parse error:\n    (\n    ^\nerror: unclosed group",
        "rules[2].match.name: a series cannot lose or hide its metric name (__name__)",
        "rules[3].tenants[0]: \"ghost\" is not a tenant of this policy",
        "hash_key: 5 bytes, at least 16 are needed so hashed values cannot be guessed by brute force over the key",
        "tenants[0].home: \"us-west\" is not a region of this policy (regions: eu-west)",
        "tenants[1].allowed[0]: \"eu-central\" is not a region of this policy (regions: eu-west)",
        "tenants[2].default_class: \"secret\" is not a class of this policy",
    ];
    assert_eq!(err.problems, expected);
}

#[test]
fn allowed_list_must_start_at_home() {
    let p = r#"
regions:
  - { id: a, jurisdiction: EU }
  - { id: b, jurisdiction: EU }
tenants:
  - { id: t, home: a, allowed: [b, a] }
"#;
    assert_eq!(
        residency_rules::load(p).unwrap_err().problems,
        ["tenants[0].allowed: must start with the home region \"a\" (it is the failover order)"]
    );
}

#[test]
fn yaml_shape_errors_name_the_line() {
    let err = residency_rules::load("regions:\n  - { id: a, jurisdiction: EU, colour: red }\n")
        .unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert!(
        err.problems[0].contains("unknown field `colour`") && err.problems[0].contains("line 2"),
        "{}",
        err.problems[0]
    );
}

/// The worked example of `docs/residency.md` compiles and decides what the document says.
#[test]
fn documented_global_policy_decides_as_documented() {
    let p = residency_rules::load(include_str!("../../deploy/policy.yaml")).unwrap();
    let regions = |tenant: &str, labels: &[(&str, &str)]| match p
        .decide(&TenantId::parse(tenant).unwrap(), labels.iter().copied())
    {
        Decision::Allow { regions, .. } => regions.iter().map(|r| r.to_string()).collect(),
        Decision::Deny(d) => vec![format!("denied: {}", d.reason)],
    };
    let up = [("__name__", "up")];
    let personal = [("__name__", "logins_total"), ("email", "ann@example.com")];
    assert_eq!(regions("acme-eu", &up), ["eu-west", "eu-central"]);
    assert_eq!(regions("acme-eu", &personal), ["eu-west", "eu-central"]);
    assert_eq!(regions("panda-cn", &up), ["cn-north"]);
    assert_eq!(regions("panda-cn", &personal), ["cn-north"]);
    assert_eq!(regions("sakura-jp", &up), ["jp-east", "ap-southeast"]);
    assert_eq!(regions("sakura-jp", &personal), ["jp-east"]);
    assert_eq!(regions("globex", &personal), ["us-east"]);
    assert_eq!(
        regions("acme-eu", &[("__name__", "x"), ("env", "debug")]),
        ["denied: debug dumps of EU tenants must not leave the cluster"]
    );
    assert_eq!(
        regions("globex", &[("__name__", "x"), ("card_number", "4111")]),
        ["denied: card data is out of scope for metrics"]
    );
    assert_eq!(
        regions("initech", &up),
        ["denied: tenant initech is not known to the residency policy"]
    );
}

#[test]
fn a_drop_or_hash_rule_that_can_match_the_metric_name_is_refused_in_any_form() {
    for matcher in [
        "{ regex: \"__.*\" }",
        "{ regex: \".*name.*\" }",
        "{ prefix: \"__n\" }",
        "{ exact: __name__ }",
    ] {
        for action in ["drop_label", "hash_label"] {
            let text = format!(
                "regions: [{{ id: eu, jurisdiction: EU }}]\n\
                 tenants: [{{ id: t, home: eu }}]\n\
                 hash_key: 0123456789abcdef0123\n\
                 rules: [{{ match: {{ name: {matcher} }}, action: {action} }}]\n"
            );
            let err = residency_rules::load(&text).unwrap_err();
            assert_eq!(
                err.problems,
                ["rules[0].match.name: a series cannot lose or hide its metric name (__name__)"],
                "{matcher} {action}"
            );
        }
    }
    // A rule that cannot match it is fine.
    residency_rules::load(
        "regions: [{ id: eu, jurisdiction: EU }]\ntenants: [{ id: t, home: eu }]\n\
         rules: [{ match: { name: { regex: \"user_.*\" } }, action: drop_label }]\n",
    )
    .unwrap();
}
