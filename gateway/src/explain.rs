//! `traceo-gateway explain`: a residency decision for a person (or, with `--json`, a script).
//! Pure functions over a compiled policy, so the exact output is unit-tested.

use std::collections::HashSet;

use residency_rules::{CompiledPolicy, DenyScope, RegionId, SeriesDecision, TenantId};
use serde::Serialize;

use crate::pipeline::choose_region;
use crate::share::{gateway_tags, output_labels, resolve_edits};

/// What of the gateway's configuration shapes a decision beyond the policy: the names of the
/// tags it adds (`tags.*`) and which regions have sinks (the region choice skips the others).
/// The default is what a gateway without a configuration file would do: `tenant` and
/// `region`, and every region counted as having sinks.
#[derive(Debug, Clone)]
pub struct WritePath {
    /// `tags.tenant_label`.
    pub tenant_label: String,
    /// `tags.region_label`.
    pub region_label: String,
    /// Regions with sinks; `None`: every region.
    pub regions_with_sinks: Option<HashSet<RegionId>>,
}

impl Default for WritePath {
    fn default() -> Self {
        Self {
            tenant_label: "tenant".into(),
            region_label: "region".into(),
            regions_with_sinks: None,
        }
    }
}

impl WritePath {
    /// The write path of `config`.
    pub fn of(config: &crate::config::Config) -> Self {
        Self {
            tenant_label: config.tenant_label.clone(),
            region_label: config.region_label.clone(),
            regions_with_sinks: Some(
                config
                    .regions
                    .iter()
                    .filter(|r| !r.sinks.is_empty())
                    .map(|r| r.id.clone())
                    .collect(),
            ),
        }
    }
}

/// Parses `{name="value", ...}` or `metric{name="value", ...}` (PromQL selector syntax with
/// `=` only; values may use `\"`, `\\` and `\n`). Returns the labels sorted by name.
pub fn parse_labels(input: &str) -> Result<Vec<(String, String)>, String> {
    let s = input.trim();
    let (metric, rest) = match s.find('{') {
        Some(i) => (s[..i].trim(), &s[i..]),
        None if !s.is_empty() => (s, "{}"),
        None => return Err("expected {name=\"value\", ...}".into()),
    };
    let body = rest
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or("labels must be enclosed in { }")?;
    let mut labels = Vec::new();
    if !metric.is_empty() {
        labels.push(("__name__".to_string(), metric.to_string()));
    }
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if name.is_empty() {
            return Err(format!(
                "expected a label name at {:?}",
                chars.collect::<String>()
            ));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(format!("label {name}: expected ="));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('"') {
            return Err(format!("label {name}: the value must be in double quotes"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                None => return Err(format!("label {name}: unterminated value")),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c @ ('"' | '\\')) => value.push(c),
                    other => {
                        return Err(format!(
                            "label {name}: unknown escape \\{}",
                            other.unwrap_or(' ')
                        ))
                    }
                },
                Some(c) => value.push(c),
            }
        }
        labels.push((name, value));
    }
    labels.sort();
    if let Some(w) = labels.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("label {} is given twice", w[0].0));
    }
    Ok(labels)
}

/// One explained decision.
#[derive(Debug, Serialize, PartialEq)]
pub struct Explanation {
    /// The tenant asked about.
    pub tenant: String,
    /// Whether the policy lists it by name.
    pub listed: bool,
    /// Home region (absent for a refused tenant).
    pub home: Option<String>,
    /// Allowed regions in failover order.
    pub allowed: Vec<String>,
    /// `allow`, `deny_series` or `deny_request`.
    pub decision: &'static str,
    /// Regions the series may reach, in failover order (empty when denied).
    pub regions: Vec<String>,
    /// The rule that denied, if one did.
    pub denied_by: Option<String>,
    /// Why it was denied.
    pub reason: Option<String>,
    /// Every rule that matched, in evaluation order.
    pub matched: Vec<Matched>,
    /// The region the write path stores it in: the first allowed region with sinks (absent
    /// when denied, or when no allowed region has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_in: Option<String>,
    /// The labels as stored there, with the gateway's tags.
    pub stored_labels: Vec<(String, String)>,
}

/// A rule that matched.
#[derive(Debug, Serialize, PartialEq)]
pub struct Matched {
    /// Rule name.
    pub rule: String,
    /// The label it matched.
    pub label: String,
    /// What it did.
    pub effect: String,
}

/// Explains the decision for `tenant` and `labels` (sorted, as [`parse_labels`] returns) for
/// a gateway without a configuration file (see [`WritePath::default`]).
pub fn explain(
    policy: &CompiledPolicy,
    tenant: &TenantId,
    labels: &[(String, String)],
) -> Explanation {
    explain_for(policy, tenant, labels, &WritePath::default())
}

/// Explains the decision as the gateway with `write_path` would take it: the same decoder,
/// the same label edits, tags and region choice as the write path.
pub fn explain_for(
    policy: &CompiledPolicy,
    tenant: &TenantId,
    labels: &[(String, String)],
    write_path: &WritePath,
) -> Explanation {
    let mut out = Explanation {
        tenant: tenant.to_string(),
        listed: policy.lists_tenant(tenant),
        home: None,
        allowed: Vec::new(),
        decision: "deny_request",
        regions: Vec::new(),
        denied_by: None,
        reason: None,
        matched: Vec::new(),
        stored_in: None,
        stored_labels: Vec::new(),
    };
    let view = match policy.tenant(tenant) {
        Ok(v) => v,
        Err(e) => {
            out.reason = Some(e.to_string());
            return out;
        }
    };
    out.home = Some(view.home().to_string());
    out.allowed = view.route(view.allowed()).map(|r| r.to_string()).collect();
    // The series as the gateway would decode it, so the stored labels below come from the
    // same code the write path uses (`share::output_labels`), not a copy of its rules.
    let batch = match single_series(labels) {
        Ok(b) => b,
        Err(e) => {
            out.reason = Some(format!("not a valid series: {e}"));
            return out;
        }
    };
    let Some(series) = batch.series().next() else {
        out.reason = Some("not a valid series: no labels".into());
        return out;
    };
    let (decision, trace) = view.explain(series.labels().iter());
    out.matched = trace
        .into_iter()
        .map(|t| Matched {
            rule: t.rule.to_string(),
            label: t.label,
            effect: t.effect,
        })
        .collect();
    match decision {
        SeriesDecision::Allow { regions, edits } => {
            out.decision = "allow";
            out.regions = view.route(regions).map(|r| r.to_string()).collect();
            let edits = resolve_edits(&edits, &series, policy);
            let serves = |r: &RegionId| {
                write_path
                    .regions_with_sinks
                    .as_ref()
                    .is_none_or(|s| s.contains(r))
            };
            if let Some(region) = choose_region(&view, regions, serves, |_| true) {
                out.stored_in = Some(region.to_string());
                let tags = gateway_tags(
                    &write_path.tenant_label,
                    &write_path.region_label,
                    tenant,
                    region,
                    policy,
                );
                out.stored_labels = output_labels(&series, &edits, &tags)
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.to_string()))
                    .collect();
            }
        }
        SeriesDecision::Deny(d) => {
            out.decision = match d.scope {
                DenyScope::Series => "deny_series",
                DenyScope::Request => "deny_request",
            };
            out.denied_by = d.rule.map(|r| r.to_string());
            out.reason = Some(d.reason.to_string());
        }
    }
    out
}

/// One series with one sample, decoded by the write path's decoder.
fn single_series(labels: &[(String, String)]) -> Result<protocols::Batch, protocols::DecodeError> {
    use prost::Message;
    use protocols::remote_write::v1::reference as pb;
    let req = pb::WriteRequest {
        timeseries: vec![pb::TimeSeries {
            labels: labels
                .iter()
                .map(|(name, value)| pb::Label {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            samples: vec![pb::Sample {
                value: 0.0,
                timestamp: 0,
            }],
            ..Default::default()
        }],
        metadata: Vec::new(),
    };
    protocols::remote_write::v1::decode_message(
        bytes::Bytes::from(req.encode_to_vec()),
        &protocols::DecodeLimits::default(),
    )
}

fn selector(labels: &[(String, String)]) -> String {
    let inner: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// The explanation for a person.
pub fn render_text(e: &Explanation, labels: &[(String, String)]) -> String {
    let mut s = String::new();
    let who = match (&e.home, e.listed) {
        (Some(home), true) => format!(
            "{} (home {home}; allowed, in failover order: {})",
            e.tenant,
            e.allowed.join(", ")
        ),
        (Some(home), false) => format!(
            "{} (not listed; unknown_tenants sends it to {home}; allowed: {})",
            e.tenant,
            e.allowed.join(", ")
        ),
        (None, _) => format!("{} (not known to the policy)", e.tenant),
    };
    s.push_str(&format!("tenant:   {who}\n"));
    s.push_str(&format!("series:   {}\n", selector(labels)));
    let verdict = match e.decision {
        "allow" => "ALLOW".to_string(),
        "deny_series" => "DENY (this series is dropped, the rest of the request goes on)".into(),
        _ => "DENY (the whole request is refused with 403)".into(),
    };
    s.push_str(&format!("decision: {verdict}\n"));
    if let Some(r) = &e.reason {
        s.push_str(&format!("reason:   {r}\n"));
    }
    if e.decision == "allow" {
        s.push_str(&format!(
            "regions:  {} (the first with a sink is used; failover follows this order)\n",
            e.regions.join(", ")
        ));
    }
    if e.matched.is_empty() {
        s.push_str("rules:    none matched\n");
    } else {
        s.push_str("rules:\n");
        for m in &e.matched {
            s.push_str(&format!("  {}: {} -> {}\n", m.rule, m.label, m.effect));
        }
    }
    if e.decision == "allow" {
        match &e.stored_in {
            Some(_) => s.push_str(&format!("stored:   {}\n", selector(&e.stored_labels))),
            None => s.push_str("stored:   nowhere: no allowed region has a sink\n"),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
regions:
  - { id: eu-west, jurisdiction: EU, tags: { jurisdiction: eu } }
  - { id: eu-central, jurisdiction: EU }
tenants:
  - { id: acme-eu, home: eu-west, allowed: [eu-west, eu-central] }
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
    match: { name: env, value: debug }
    action: deny_request
    reason: debug data stays in the cluster
hash_key: "explain-test-key-123"
"#;

    #[test]
    fn parses_selectors() {
        assert_eq!(
            parse_labels(r#"http_requests{path="/a\"b", code = "200"}"#).unwrap(),
            [
                ("__name__".to_string(), "http_requests".to_string()),
                ("code".into(), "200".into()),
                ("path".into(), "/a\"b".into()),
            ]
        );
        assert_eq!(
            parse_labels(r#"{a="1",a="2"}"#).unwrap_err(),
            "label a is given twice"
        );
        assert_eq!(
            parse_labels(r#"{a=1}"#).unwrap_err(),
            "label a: the value must be in double quotes"
        );
        assert_eq!(
            parse_labels(r#"{a="1""#).unwrap_err(),
            "labels must be enclosed in { }"
        );
    }

    #[test]
    fn explains_personal_data_for_a_person() {
        let policy = residency_rules::load(POLICY).unwrap();
        let labels =
            parse_labels(r#"{__name__="x",email="a@b",user_id="42",region="us"}"#).unwrap();
        let e = explain(&policy, &TenantId::parse("acme-eu").unwrap(), &labels);
        let hash = policy.hash_value("42");
        assert_eq!(
            render_text(&e, &labels),
            format!(
                "tenant:   acme-eu (home eu-west; allowed, in failover order: eu-west, eu-central)
series:   {{__name__=\"x\", email=\"a@b\", region=\"us\", user_id=\"42\"}}
decision: ALLOW
regions:  eu-west (the first with a sink is used; failover follows this order)
rules:
  email-is-personal: email=\"a@b\" -> class personal
  hash-user: user_id=\"42\" -> value hashed
stored:   {{__name__=\"x\", email=\"a@b\", exported_region=\"us\", jurisdiction=\"eu\", region=\"eu-west\", tenant=\"acme-eu\", user_id=\"{hash}\"}}
"
            )
        );
    }

    #[test]
    fn follows_the_configured_tags_and_skips_regions_without_sinks() {
        let policy = residency_rules::load(POLICY).unwrap();
        let labels = parse_labels(r#"{__name__="x",job="j"}"#).unwrap();
        let tenant = TenantId::parse("acme-eu").unwrap();
        let write_path = WritePath {
            tenant_label: "org".into(),
            region_label: "site".into(),
            regions_with_sinks: Some([RegionId::parse("eu-central").unwrap()].into()),
        };
        let e = explain_for(&policy, &tenant, &labels, &write_path);
        assert_eq!(e.stored_in.as_deref(), Some("eu-central"));
        let tags: Vec<(&str, &str)> = e
            .stored_labels
            .iter()
            .filter(|(k, _)| k == "org" || k == "site")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(tags, [("org", "acme-eu"), ("site", "eu-central")]);
        // No allowed region has a sink: nothing is stored, and the text says so.
        let nowhere = WritePath {
            regions_with_sinks: Some(HashSet::new()),
            ..WritePath::default()
        };
        let e = explain_for(&policy, &tenant, &labels, &nowhere);
        assert_eq!(e.stored_in, None);
        assert!(render_text(&e, &labels).contains("stored:   nowhere"));
    }

    #[test]
    fn explains_denials_and_unknown_tenants() {
        let policy = residency_rules::load(POLICY).unwrap();
        let labels = parse_labels(r#"{__name__="x",env="debug"}"#).unwrap();
        let e = explain(&policy, &TenantId::parse("acme-eu").unwrap(), &labels);
        assert_eq!(
            render_text(&e, &labels),
            "tenant:   acme-eu (home eu-west; allowed, in failover order: eu-west, eu-central)
series:   {__name__=\"x\", env=\"debug\"}
decision: DENY (the whole request is refused with 403)
reason:   debug data stays in the cluster
rules:
  no-debug: env=\"debug\" -> request denied
"
        );
        let e = explain(&policy, &TenantId::parse("ghost").unwrap(), &labels);
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"tenant":"ghost","listed":false,"home":null,"allowed":[],"decision":"deny_request","regions":[],"denied_by":null,"reason":"tenant ghost is not known to the residency policy","matched":[],"stored_labels":[]}"#
        );
    }
}
