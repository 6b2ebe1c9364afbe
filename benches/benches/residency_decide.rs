//! `TenantView::decide` per series with a 50-rule policy, over the realistic payload the
//! decode bench uses (2000 series x 10 labels, seed 42), so the figure is per real series.
//!
//! The policies: 7 regions, a tenant with 50 rules that apply to it: rules on exact PII label
//! names the payload does not carry (half with value matchers: exact, prefix, regex), 7 (worst
//! case) or 1 (typical) on label names every series carries (`namespace`, `pod`, ...) so their
//! value matchers run, and 3 on name prefixes or a name regex, tried on every label whose
//! first byte could match.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loadtest::gen::{Generator, PayloadSpec};
use protocols::{remote_write::v1, DecodeLimits};
use residency_rules::{SeriesDecision, TenantId};

/// `common`: how many of the payload's label names get a rule (7 = worst case, every series
/// evaluates a value matcher on 7 of its 10 labels; 1 = a typical policy whose rules name PII
/// labels the traffic rarely carries).
fn policy_yaml(common: usize) -> String {
    let mut y = String::from(
        r#"
regions:
  - { id: eu-west, jurisdiction: EU }
  - { id: eu-central, jurisdiction: EU }
  - { id: cn-north, jurisdiction: CN }
  - { id: in-south, jurisdiction: IN }
  - { id: jp-east, jurisdiction: JP }
  - { id: ap-southeast, jurisdiction: SG }
  - { id: us-east, jurisdiction: US }
tenants:
  - { id: bench, home: eu-west, allowed: [eu-west, eu-central] }
  - { id: plain, home: us-east }
classes:
  personal: { scope: home }
  eu-only: { scope: jurisdiction }
hash_key: "bench-key-0123456789"
rules:
"#,
    );
    let actions = ["classify", "drop_label", "hash_label", "deny_series"];
    for i in 0..(50 - 3 - common) {
        let action = actions[i % 4];
        let class = if action == "classify" {
            ", class: personal"
        } else {
            ""
        };
        let value = match i % 6 {
            0 => ", value: { exact: \"secret\" }",
            1 => ", value: { prefix: \"cust-\" }",
            2 => ", value: { regex: \"[0-9]{3}-[0-9]{2}-[0-9]{4}\" }",
            _ => "",
        };
        y.push_str(&format!(
            "  - {{ tenants: [bench], match: {{ name: pii_field_{i}{value} }}, action: {action}{class} }}\n"
        ));
    }
    // Names the payload carries: evaluated on every series, matching values that never occur.
    for name in [
        "namespace",
        "pod",
        "instance",
        "job",
        "cluster",
        "container",
        "node",
    ]
    .into_iter()
    .take(common)
    {
        y.push_str(&format!(
            "  - {{ tenants: [bench], match: {{ name: {name}, value: {{ prefix: \"customer-\" }} }}, action: classify, class: eu-only }}\n"
        ));
    }
    y.push_str(
        "  - { tenants: [bench], match: { name: { prefix: \"pii_\" } }, action: hash_label }\n",
    );
    y.push_str("  - { tenants: [bench], match: { name: { prefix: \"user_\" } }, action: classify, class: personal }\n");
    y.push_str("  - { tenants: [bench], match: { name: { regex: \"(email|phone)_.*\" } }, action: drop_label }\n");
    y
}

fn bench(c: &mut Criterion) {
    let worst = residency_rules::load(&policy_yaml(7)).expect("bench policy compiles");
    let typical = residency_rules::load(&policy_yaml(1)).expect("bench policy compiles");
    let spec = PayloadSpec::default();
    let body = Generator::new(spec).next_body(1_700_000_000_000);
    let batch = v1::decode(&body, &DecodeLimits::default()).expect("payload decodes");
    let mut group = c.benchmark_group("residency");
    group.throughput(Throughput::Elements(batch.series_count() as u64));

    let tenant = TenantId::parse("bench").expect("id");
    for (name, policy) in [
        ("decide_50_rules_7_on_common_labels", &worst),
        ("decide_50_rules_1_on_common_labels", &typical),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let view = policy.tenant(black_box(&tenant)).expect("known tenant");
                let mut allowed = 0usize;
                for series in batch.series() {
                    if let SeriesDecision::Allow { regions, .. } =
                        view.decide(series.labels().iter())
                    {
                        allowed += regions.len();
                    }
                }
                black_box(allowed)
            })
        });
    }

    // Floor: walking the labels at all, which any per-series decision has to do.
    group.bench_function("iterate_labels_only", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for series in batch.series() {
                for (name, value) in series.labels().iter() {
                    n += name.len() ^ value.len();
                }
            }
            black_box(n)
        })
    });

    let plain = TenantId::parse("plain").expect("id");
    group.bench_function("decide_tenant_without_rules", |b| {
        b.iter(|| {
            let view = typical.tenant(black_box(&plain)).expect("known tenant");
            let mut allowed = 0usize;
            for series in batch.series() {
                if let SeriesDecision::Allow { regions, .. } = view.decide(series.labels().iter()) {
                    allowed += regions.len();
                }
            }
            black_box(allowed)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
