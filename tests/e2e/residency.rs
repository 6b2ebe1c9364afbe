//! Residency end to end: a real gateway with two regions, each with its own Parquet root and
//! its own Kafka broker (`tansu`), and three tenants (EU only, US only, EU with an EU failover region). Every sample must land
//! only in a root its tenant is allowed, a spoofed `region` label must arrive as
//! `exported_region`, hashed values must never be stored in clear, and denied requests and
//! series must leave no trace. A policy reload takes effect; a broken one is refused and the
//! old one keeps working.

use std::path::Path;
use std::time::Duration;

use traceo_e2e::{
    get, now_ms, post_remote_write, read_rows, remote_write_body, tail_json, wait_for, Broker,
    Gateway, Row,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

const POLICY: &str = r#"
regions:
  - { id: eu-west, jurisdiction: EU, tags: { jurisdiction: eu } }
  - { id: eu-central, jurisdiction: EU }
  - { id: us-east, jurisdiction: US }
tenants:
  - { id: eu-only, home: eu-west }
  - { id: eu-failover, home: eu-west, allowed: [eu-west, eu-central] }
  - { id: us-only, home: us-east }
classes:
  personal: { scope: home }
rules:
  - name: email-is-personal
    match: { name: email }
    action: classify
    class: personal
  - name: hash-user-ids
    match: { name: user_id }
    action: hash_label
  - name: no-debug-dumps
    match: { name: env, value: debug }
    action: deny_request
    reason: debug dumps must not leave the cluster
  - name: no-secrets
    match: { name: __name__, value: { prefix: secret_ } }
    action: deny_series
hash_key: "e2e-residency-key-0123456789"
"#;

const CONFIG: &str = r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: null, http_listen: null }
auth: { mode: off }
residency: { policy: policy.yaml, poll_interval: 200ms }
regions:
  - id: eu-west
    sinks:
      parquet: { path: "{dir}/eu-west", max_file_age: 300ms }
      KAFKA_EU
  - id: us-east
    sinks:
      parquet: { path: "{dir}/us-east", max_file_age: 300ms }
      KAFKA_US
"#;

/// Starts the gateway, with a Kafka broker per region when `brokers` is given.
fn start(dir: &Path, brokers: Option<(&Broker, &Broker)>) -> Gateway {
    std::fs::write(dir.join("policy.yaml"), POLICY).expect("write policy");
    let config = match brokers {
        Some((eu, us)) => CONFIG
            .replace(
                "KAFKA_EU",
                &format!("kafka: {{ brokers: \"{}\", linger: 2ms }}", eu.addr()),
            )
            .replace(
                "KAFKA_US",
                &format!("kafka: {{ brokers: \"{}\", linger: 2ms }}", us.addr()),
            ),
        None => CONFIG.replace("KAFKA_EU", "").replace("KAFKA_US", ""),
    };
    Gateway::start(GATEWAY, dir, &config)
}

fn write(gw: &Gateway, tenant: &str, series: &[&[(&str, &str)]]) -> (u16, String) {
    post_remote_write(
        &gw.url("/api/v1/write"),
        &remote_write_body(series, now_ms()),
        &[("x-scope-orgid", tenant)],
    )
}

fn rows_of(rows: &[Row], tenant: &str, metric: &str) -> Vec<Row> {
    rows.iter()
        .filter(|r| r.tenant == tenant && r.metric == metric)
        .cloned()
        .collect()
}

#[test]
fn samples_land_only_in_allowed_regions_and_denied_data_leaves_no_trace() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let eu_broker = Broker::start(dir, "tansu-eu");
    eu_broker.create_topic("metrics.eu-west", 2);
    let us_broker = Broker::start(dir, "tansu-us");
    us_broker.create_topic("metrics.us-east", 2);
    let gw = start(dir, Some((&eu_broker, &us_broker)));

    for tenant in ["eu-only", "eu-failover", "us-only"] {
        let (status, body) = write(
            &gw,
            tenant,
            &[
                &[
                    ("__name__", "resid_up"),
                    ("job", "api"),
                    ("region", "spoofed-us"),
                ],
                &[("__name__", "resid_personal"), ("email", "ann@example.com")],
                &[("__name__", "resid_user"), ("user_id", "user-12345")],
                &[("__name__", "secret_token_age"), ("job", "api")],
            ],
        );
        assert_eq!(status, 204, "{tenant}: {body}");
    }

    // A denied request: 403 with the policy's reason, nothing of it stored.
    let (status, body) = write(
        &gw,
        "eu-only",
        &[
            &[("__name__", "resid_denied_marker"), ("job", "api")],
            &[("__name__", "resid_dump"), ("env", "debug")],
        ],
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body.trim(),
        "refused by residency policy: debug dumps must not leave the cluster"
    );

    // An unknown tenant: 403 (the configured status), nothing stored.
    let (status, body) = write(&gw, "stranger", &[&[("__name__", "resid_stranger")]]);
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body.trim(),
        "tenant stranger is not known to the residency policy"
    );

    let eu_root = dir.join("eu-west");
    let us_root = dir.join("us-east");
    let (eu, us) = wait_for("rows of all three tenants", Duration::from_secs(30), || {
        let eu = read_rows(&eu_root);
        let us = read_rows(&us_root);
        let done = ["eu-only", "eu-failover"]
            .iter()
            .all(|t| rows_of(&eu, t, "resid_user").len() == 1)
            && rows_of(&us, "us-only", "resid_user").len() == 1;
        done.then_some((eu, us))
    });

    // Invariant: each root holds only tenants allowed there, tagged with that region.
    for r in &eu {
        assert!(
            r.tenant == "eu-only" || r.tenant == "eu-failover",
            "tenant {} in the EU root: {r:?}",
            r.tenant
        );
        assert_eq!(r.region, "eu-west", "{r:?}");
        assert_eq!(r.labels.get("region").map(String::as_str), Some("eu-west"));
        assert_eq!(r.labels.get("jurisdiction").map(String::as_str), Some("eu"));
        assert_eq!(r.labels.get("tenant"), Some(&r.tenant));
    }
    for r in &us {
        assert_eq!(
            r.tenant, "us-only",
            "tenant {} in the US root: {r:?}",
            r.tenant
        );
        assert_eq!(r.region, "us-east", "{r:?}");
        assert_eq!(r.labels.get("region").map(String::as_str), Some("us-east"));
        assert!(!r.labels.contains_key("jurisdiction"), "{r:?}");
    }

    for (tenant, rows) in [("eu-only", &eu), ("eu-failover", &eu), ("us-only", &us)] {
        // The spoofed region label is kept, renamed.
        let up = rows_of(rows, tenant, "resid_up");
        assert_eq!(up.len(), 1, "{tenant}: {up:?}");
        assert_eq!(
            up[0].labels.get("exported_region").map(String::as_str),
            Some("spoofed-us")
        );
        assert_eq!(up[0].labels.get("job").map(String::as_str), Some("api"));
        // Personal data stays in the home region (the only root the tenant has here).
        assert_eq!(rows_of(rows, tenant, "resid_personal").len(), 1, "{tenant}");
        // Hashed ids: 32 hex digits, equal for every tenant under one key, never in clear.
        let user = rows_of(rows, tenant, "resid_user");
        let hashed = user[0].labels.get("user_id").expect("user_id kept, hashed");
        assert_eq!(hashed.len(), 32, "{hashed}");
        assert!(hashed.bytes().all(|b| b.is_ascii_hexdigit()), "{hashed}");
    }

    // Denied data is nowhere: not the denied series, not any series of the denied request,
    // not the unknown tenant; and no stored value holds the clear user id.
    for r in eu.iter().chain(&us) {
        assert!(
            !matches!(
                r.metric.as_str(),
                "secret_token_age" | "resid_denied_marker" | "resid_dump" | "resid_stranger"
            ),
            "denied data stored: {r:?}"
        );
        assert!(
            r.labels.values().all(|v| v != "user-12345"),
            "clear user id stored: {r:?}"
        );
    }

    // The same holds for each region's Kafka broker.
    let eu_kafka = tail_json(GATEWAY, &eu_broker.addr(), "metrics.eu-west", 3);
    let us_kafka = tail_json(GATEWAY, &us_broker.addr(), "metrics.us-east", 3);
    for (region, lines, tenants) in [
        ("eu-west", &eu_kafka, &["eu-only", "eu-failover"][..]),
        ("us-east", &us_kafka, &["us-only"][..]),
    ] {
        for t in tenants {
            let ups: Vec<_> = lines
                .iter()
                .filter(|l| l["tenant"] == *t && l["labels"]["__name__"] == "resid_up")
                .collect();
            assert_eq!(ups.len(), 1, "{t} in {region}: {lines:?}");
            assert_eq!(ups[0]["labels"]["exported_region"], "spoofed-us");
        }
        for l in lines.iter() {
            let tenant = l["tenant"].as_str().unwrap_or_default();
            assert!(
                tenants.contains(&tenant),
                "tenant {tenant} in the {region} broker: {l}"
            );
            assert_eq!(l["region"], region, "{l}");
            assert_eq!(l["labels"]["region"], region, "{l}");
            assert_eq!(l["labels"]["tenant"], tenant, "{l}");
            let name = l["labels"]["__name__"].as_str().unwrap_or_default();
            assert!(
                !matches!(
                    name,
                    "secret_token_age" | "resid_denied_marker" | "resid_dump" | "resid_stranger"
                ),
                "denied data in Kafka: {l}"
            );
            if name == "resid_user" {
                let v = l["labels"]["user_id"].as_str().unwrap_or_default();
                assert!(v.len() == 32 && v != "user-12345", "{l}");
            }
        }
    }

    // The denials are counted by rule.
    let (_, metrics) = get(&gw.url("/metrics")).expect("metrics");
    for needle in [
        r#"traceo_residency_denied_total{tenant="eu-only",scope="series",rule="no-secrets"} 1"#,
        r#"traceo_residency_denied_total{tenant="eu-only",scope="request",rule="no-debug-dumps"} 1"#,
        r#"reason="unknown_tenant""#,
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
}

#[test]
fn policy_reload_applies_good_policies_and_keeps_the_old_one_on_errors() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let gw = start(dir, None);
    let probe = |gw: &Gateway| {
        write(
            gw,
            "eu-only",
            &[&[("__name__", "resid_probe"), ("team", "blue")]],
        )
    };
    assert_eq!(probe(&gw).0, 204);

    // A broken policy (unknown region) is refused; the old one stays in force.
    std::fs::write(
        dir.join("policy.yaml"),
        POLICY.replace("home: us-east", "home: us-west"),
    )
    .expect("write policy");
    wait_for(
        "the failed reload to be counted",
        Duration::from_secs(10),
        || {
            let (_, m) = get(&gw.url("/metrics"))?;
            m.contains(r#"traceo_policy_reloads_total{result="failure"}"#)
                .then_some(())
        },
    );
    assert_eq!(probe(&gw).0, 204, "the old policy must keep working");
    assert!(gw.proc.log().contains("residency policy reload refused"));
    assert!(
        gw.proc
            .log()
            .contains(r#"tenants[2].home: "us-west" is not a region of this policy"#),
        "the log names the bad field:\n{}",
        gw.proc.log()
    );

    // A good policy that denies team=blue takes effect without a restart.
    let stricter = format!(
        "{POLICY}  - name: no-blue\n    match: {{ name: team, value: blue }}\n    action: deny_request\n    reason: blue is retired\n"
    );
    // `hash_key` follows `rules` in POLICY; put the new rule before it.
    let stricter = stricter.replace(
        "hash_key: \"e2e-residency-key-0123456789\"\n  - name: no-blue",
        "  - name: no-blue",
    ) + "hash_key: \"e2e-residency-key-0123456789\"\n";
    std::fs::write(dir.join("policy.yaml"), stricter).expect("write policy");
    let (status, body) = wait_for("the new policy to apply", Duration::from_secs(10), || {
        let a = probe(&gw);
        (a.0 == 403).then_some(a)
    });
    assert_eq!(status, 403);
    assert_eq!(body.trim(), "refused by residency policy: blue is retired");
}

#[test]
fn written_counts_exclude_series_the_policy_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), None);
    let body = remote_write_body(
        &[
            &[("__name__", "up"), ("job", "kept")],
            &[("__name__", "secret_token_age"), ("job", "dropped")],
            &[("__name__", "up"), ("job", "kept-too")],
        ],
        now_ms(),
    );
    let a = traceo_e2e::post_with(
        &gw.url("/api/v1/write"),
        &body,
        &[
            traceo_e2e::REMOTE_WRITE_V1_HEADERS.as_slice(),
            &[("x-scope-orgid", "eu-only")],
        ]
        .concat(),
    );
    assert_eq!(a.status, 204, "{}", a.body);
    // Three series sent, one denied by `no-secrets`: two samples were made durable.
    assert_eq!(
        a.header("x-prometheus-remote-write-samples-written"),
        Some("2"),
        "{:?}",
        a.headers
    );
    let rows = wait_for("the kept rows", Duration::from_secs(20), || {
        let rows = read_rows(&dir.path().join("eu-west"));
        (rows.len() >= 2).then_some(rows)
    });
    assert!(rows.iter().all(|r| r.metric != "secret_token_age"));
}
