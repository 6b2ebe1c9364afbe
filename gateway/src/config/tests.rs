use super::*;

#[test]
fn embedded_default_is_valid_and_auth_off() {
    let c = Config::embedded_default();
    assert_eq!(c.regions.len(), 1);
    assert_eq!(c.regions[0].id.as_str(), "local");
    assert!(matches!(c.auth, AuthPolicy::Off { .. }));
    assert_eq!(c.regions[0].sinks.len(), 1);
}

#[test]
fn unknown_field_is_refused_with_its_name() {
    let err = Config::from_yaml("g.yaml", "regions: []\nlisten: {htp: x}\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("g.yaml: "), "{msg}");
    assert!(msg.contains("unknown field `htp`"), "{msg}");
}

#[test]
fn collects_every_problem_with_field_paths() {
    let yaml = r#"
listen: { http: "nope" }
limits: { max_series_per_request: 0 }
regions:
  - id: eu
  - id: "bad/region"
tenants:
  - id: acme
    region: us
    passwords: ["x"]
"#;
    let err = Config::from_yaml("g.yaml", yaml).unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("expected Invalid, got {err}")
    };
    let all = problems.join("\n");
    for needle in [
        "listen.http: \"nope\"",
        "limits.max_series_per_request: must be greater than 0",
        "regions[0].sinks: region eu has no sink",
        "regions[1].id: region id \"bad/region\"",
        "tenants[0].region: tenant acme names region us",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
}

#[test]
fn required_auth_without_credentials_is_refused() {
    let yaml = r#"
regions: [{ id: eu, sinks: { parquet: { path: /tmp/x } } }]
tenants: [{ id: acme, region: eu }]
"#;
    let err = Config::from_yaml("g.yaml", yaml).unwrap_err().to_string();
    assert!(
        err.contains("auth.mode: required, but no tenant has"),
        "{err}"
    );
}

#[test]
fn duplicate_bearer_token_names_both_tenants() {
    let yaml = r#"
regions: [{ id: eu, sinks: { parquet: { path: /tmp/x } } }]
tenants:
  - { id: a, region: eu, bearer_tokens: [t1] }
  - { id: b, region: eu, bearer_tokens: [t1] }
"#;
    let err = Config::from_yaml("g.yaml", yaml).unwrap_err().to_string();
    assert!(
        err.contains("tenants[1].bearer_tokens[0]: token already identifies tenant a"),
        "{err}"
    );
}

#[test]
fn off_mode_routes_unlisted_tenants_to_default_region() {
    let yaml = r#"
auth: { mode: off, default_region: eu }
regions:
  - { id: eu, sinks: { parquet: { path: /tmp/x } } }
  - { id: us, sinks: { parquet: { path: /tmp/y } } }
tenants: [{ id: acme, region: us }]
"#;
    let c = Config::from_yaml("g.yaml", yaml).unwrap();
    let acme = TenantId::parse("acme").unwrap();
    let other = TenantId::parse("other").unwrap();
    assert_eq!(home(&c, &acme).as_deref(), Some("us"));
    assert_eq!(home(&c, &other).as_deref(), Some("eu"));
}

#[test]
fn required_mode_knows_only_listed_tenants() {
    let yaml = r#"
regions: [{ id: eu, sinks: { parquet: { path: /tmp/x } } }]
tenants: [{ id: acme, region: eu, passwords: [p] }]
"#;
    let c = Config::from_yaml("g.yaml", yaml).unwrap();
    assert!(home(&c, &TenantId::parse("stranger").unwrap()).is_none());
}

/// The implicit policy's home region of a tenant, `None` when it is refused.
fn home(c: &Config, t: &TenantId) -> Option<String> {
    let p = c.policy();
    let h = p.tenant(t).ok().map(|v| v.home().to_string());
    h
}

/// Writes a gateway config and a policy beside it; returns the load result's message.
fn load_with_policy(gateway: &str, policy: &str) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
    let file = dir.path().join("gateway.yaml");
    std::fs::write(&file, gateway).unwrap();
    Config::load(&file).map_err(|e| {
        e.to_string()
            .replace(&dir.path().display().to_string(), "DIR")
    })
}

const TWO_REGION_POLICY: &str = r#"
regions:
  - { id: eu-west, jurisdiction: EU }
  - { id: eu-central, jurisdiction: EU }
  - { id: us-east, jurisdiction: US }
tenants:
  - { id: eu-only, home: eu-west }
  - { id: eu-failover, home: eu-west, allowed: [eu-west, eu-central] }
  - { id: us-only, home: us-east }
classes:
  personal: { scope: home }
"#;

#[test]
fn policy_file_loads_relative_to_the_config() {
    let c = load_with_policy(
        r#"
auth: { mode: off }
residency: { policy: policy.yaml }
regions:
  - { id: eu-west, sinks: { parquet: { path: /tmp/eu } } }
  - { id: us-east, sinks: { parquet: { path: /tmp/us } } }
"#,
        TWO_REGION_POLICY,
    )
    .unwrap();
    let p = c.policy();
    let v = p.tenant(&TenantId::parse("eu-failover").unwrap()).unwrap();
    let route: Vec<String> = v.route(v.allowed()).map(|r| r.to_string()).collect();
    assert_eq!(route, ["eu-west", "eu-central"]);
}

#[test]
fn a_region_whose_only_sinks_are_remote_write_endpoints_serves_the_policy() {
    let c = load_with_policy(
        r#"
auth: { mode: off }
residency: { policy: policy.yaml }
regions:
  - id: eu-west
    sinks: { remote_write: [{ name: prom, url: "http://prom-eu:9090/api/v1/write" }] }
  - { id: us-east, sinks: { parquet: { path: /tmp/us } } }
"#,
        TWO_REGION_POLICY,
    );
    assert!(c.is_ok(), "{:?}", c.err());
}

#[test]
fn refuses_sinks_of_a_region_the_policy_lacks_and_tenants_without_sinks() {
    let err = load_with_policy(
        r#"
auth: { mode: off }
residency: { policy: policy.yaml }
regions:
  - { id: eu-central, sinks: { parquet: { path: /tmp/eu } } }
  - { id: mars, sinks: { parquet: { path: /tmp/mars } } }
"#,
        TWO_REGION_POLICY,
    )
    .unwrap_err();
    assert_eq!(
        err,
        "DIR/gateway.yaml: invalid configuration:
  - regions[1].id: region mars is not in the residency policy DIR/policy.yaml, so its sinks would never receive data
  - residency.policy (DIR/policy.yaml): tenant eu-failover: class personal allows only (eu-west), and none has a sink in this configuration
  - residency.policy (DIR/policy.yaml): tenant eu-only: none of its allowed regions (eu-west) has a sink in this configuration
  - residency.policy (DIR/policy.yaml): tenant eu-only: class personal allows only (eu-west), and none has a sink in this configuration
  - residency.policy (DIR/policy.yaml): tenant us-only: none of its allowed regions (us-east) has a sink in this configuration
  - residency.policy (DIR/policy.yaml): tenant us-only: class personal allows only (us-east), and none has a sink in this configuration"
    );
}

#[test]
fn refuses_region_fields_that_the_policy_owns() {
    let err = load_with_policy(
        r#"
auth: { mode: required }
residency: { policy: policy.yaml, unknown_tenant_status: 404 }
regions:
  - { id: eu-west, sinks: { parquet: { path: /tmp/eu } } }
  - { id: us-east, sinks: { parquet: { path: /tmp/us } } }
tenants:
  - { id: eu-only, region: eu-west, passwords: [p] }
"#,
        TWO_REGION_POLICY,
    )
    .unwrap_err();
    assert_eq!(
        err,
        "DIR/gateway.yaml: invalid configuration:
  - residency.unknown_tenant_status: 404 is neither 401 nor 403
  - tenants[0].region: the residency policy (residency.policy) decides where tenant eu-only's data goes; remove this field"
    );
}

#[test]
fn refuses_credentials_for_a_tenant_the_policy_would_refuse() {
    let err = load_with_policy(
        r#"
residency: { policy: policy.yaml }
regions:
  - { id: eu-west, sinks: { parquet: { path: /tmp/eu } } }
  - { id: us-east, sinks: { parquet: { path: /tmp/us } } }
tenants:
  - { id: stranger, passwords: [p] }
"#,
        TWO_REGION_POLICY,
    )
    .unwrap_err();
    assert_eq!(
        err,
        "DIR/gateway.yaml: invalid configuration:
  - tenants: tenant stranger has credentials here but the residency policy DIR/policy.yaml does not know it, so all its requests would be refused"
    );
}

#[test]
fn otlp_settings_default_to_the_otlp_ports_and_are_checked() {
    let c = Config::embedded_default();
    assert_eq!(c.otlp.grpc_addr, Some("0.0.0.0:4317".parse().unwrap()));
    assert_eq!(c.otlp.http_addr, Some("0.0.0.0:4318".parse().unwrap()));
    assert_eq!(
        c.otlp.translate.naming,
        protocols::otlp::Naming::UnderscoreEscapingWithSuffixes
    );

    let base = "auth: { mode: off, default_region: local }\nregions: [{ id: local, sinks: { parquet: { path: ./d } } }]\n";
    let off = format!("{base}otlp: {{ grpc_listen: null, http_listen: null, translation: no_translation, tenant_attribute: tenant.id }}\n");
    let c = Config::from_yaml("g.yaml", &off).unwrap();
    assert_eq!((c.otlp.grpc_addr, c.otlp.http_addr), (None, None));
    assert_eq!(
        c.otlp.translate.naming,
        protocols::otlp::Naming::NoTranslation
    );
    assert_eq!(
        c.otlp.translate.tenant_attribute.as_deref(),
        Some("tenant.id")
    );

    let bad = format!(
        "{base}listen: {{ http: \"0.0.0.0:9000\" }}\notlp: {{ grpc_listen: \"0.0.0.0:9000\", http_listen: \"x\", promote_resource_attributes: [a, \" \", a], tenant_attribute: \"\" }}\n"
    );
    let ConfigError::Invalid { problems, .. } = Config::from_yaml("g.yaml", &bad).unwrap_err()
    else {
        panic!("expected Invalid")
    };
    let all = problems.join("\n");
    for expected in [
        "otlp.grpc_listen: \"0.0.0.0:9000\" is listen.http's address",
        "otlp.http_listen: \"x\" is not an address",
        "otlp.promote_resource_attributes[1]: is empty",
        "otlp.promote_resource_attributes[2]: \"a\" is listed twice",
        "otlp.tenant_attribute: is empty",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    let err = Config::from_yaml("g.yaml", &format!("{base}otlp: {{ translation: utf8 }}\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variant `utf8`"), "{err}");
}

#[test]
fn pipeline_shards_default_to_the_cores_and_are_checked() {
    let base =
        "auth: { mode: off, default_region: eu }\nregions:\n  - id: eu\n    sinks: { null: {} }\n";
    let c = Config::from_yaml("g.yaml", base).unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(c.shards, cores);
    let c = Config::from_yaml("g.yaml", &format!("{base}pipeline: {{ shards: 3 }}\n")).unwrap();
    assert_eq!(c.shards, 3);
    for bad in ["0", "100000"] {
        let err = Config::from_yaml("g.yaml", &format!("{base}pipeline: {{ shards: {bad} }}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pipeline.shards: "), "{err}");
    }
}

#[test]
fn kafka_upstreams_and_cluster_settings_are_checked() {
    let yaml = r#"
auth: { mode: off, default_region: eu }
cluster:
  node_id: "gw 1"
  gossip_listen: "0.0.0.0:7946"
  seeds: ["gw-2:7946", "no-port"]
  gossip_interval: 1s
  dead_after: 1s
  probe_interval: 2s
  fresh: 1s
  fail_after: 0
regions:
  - id: eu
    sinks:
      kafka:
        brokers: "b:9092"
        upstreams: [{ name: eu-primary, brokers: "p:9092" }]
  - id: us
    sinks:
      kafka:
        health_topic: "bad/topic"
        upstreams:
          - { name: us-primary, brokers: "p:9092" }
          - { name: us-primary, brokers: "s:9092" }
          - { name: "us secondary", brokers: "" }
  - id: ap
    sinks:
      kafka: {}
"#;
    let err = Config::from_yaml("g.yaml", yaml).unwrap_err().to_string();
    assert_eq!(
        err,
        "g.yaml: invalid configuration:
  - cluster.node_id: \"gw 1\" must be non-empty without spaces
  - cluster.dead_after: 1s must be at least two gossip intervals (2s)
  - cluster.fresh: 1s is shorter than probe_interval (2s): every peer observation would be stale
  - cluster.fail_after: must be at least 1
  - cluster.gossip_advertise: required when gossip_listen (0.0.0.0:7946) does not name an IP peers can reach
  - regions[0].sinks.kafka: give either brokers (one cluster) or upstreams (several), not both
  - regions[1].sinks.kafka.upstreams[1].name: \"us-primary\" is already used; upstream names are unique over all regions
  - regions[1].sinks.kafka.upstreams[2].brokers: must not be empty
  - regions[1].sinks.kafka.upstreams[2].name: \"us secondary\" must be ASCII letters, digits, '_' or '-'
  - regions[1].sinks.kafka.health_topic: \"bad/topic\" is not a valid topic name (ASCII letters, digits, '.', '_', '-')
  - regions[2].sinks.kafka.brokers: missing (or list the region's clusters in upstreams)"
    );
}

#[test]
fn credentials_under_auth_off_are_a_config_error() {
    let err = Config::from_yaml(
        "g.yaml",
        r#"
auth: { mode: off, default_region: eu }
regions: [{ id: eu, sinks: { parquet: { path: /tmp/x } } }]
tenants:
  - { id: acme, region: eu, passwords: [p] }
  - { id: plain, region: eu }
  - { id: globex, region: eu, bearer_tokens: [t] }
"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(
            "tenants[0]: tenant acme has passwords or bearer_tokens, but auth.mode is off"
        ),
        "{err}"
    );
    assert!(err.contains("tenants[2]: tenant globex"), "{err}");
    assert!(!err.contains("tenants[1]"), "{err}");
}

#[test]
fn listener_bounds_are_validated_with_the_field_named() {
    let err = Config::from_yaml(
        "g.yaml",
        r#"
auth: { mode: off, default_region: eu }
listen: { max_connections: 0, header_read_timeout: 0s, http2_max_concurrent_streams: 0, max_inflight_bytes: 1000 }
limits: { max_body_bytes: 2000 }
regions: [{ id: eu, sinks: { parquet: { path: /tmp/x } } }]
"#,
    )
    .unwrap_err()
    .to_string();
    for field in [
        "listen.max_connections",
        "listen.header_read_timeout",
        "listen.http2_max_concurrent_streams",
        "listen.max_inflight_bytes: 1000 is below limits.max_body_bytes (2000)",
    ] {
        assert!(err.contains(field), "{field} missing from {err}");
    }
    let ok = Config::from_yaml(
        "g.yaml",
        "auth: { mode: off, default_region: eu }\nlisten: { idle_timeout: 5s }\nregions: [{ id: eu, sinks: { parquet: { path: /tmp/x } } }]\n",
    )
    .unwrap();
    assert_eq!(ok.listen.idle_timeout, std::time::Duration::from_secs(5));
    assert_eq!(ok.listen.max_connections, 4096);
}

#[test]
fn quarantine_bound_defaults_to_one_gib_and_is_checked() {
    let base =
        "auth: { mode: off, default_region: eu }\nregions:\n  - id: eu\n    sinks: { null: {} }\n";
    let c = Config::from_yaml("g.yaml", base).unwrap();
    assert_eq!(c.durability.quarantine_max_bytes, 1 << 30);
    let c = Config::from_yaml(
        "g.yaml",
        &format!("{base}durability: {{ quarantine_max_bytes: 2097152 }}\n"),
    )
    .unwrap();
    assert_eq!(c.durability.quarantine_max_bytes, 2 << 20);
    let err = Config::from_yaml(
        "g.yaml",
        &format!("{base}durability: {{ quarantine_max_bytes: 1000 }}\n"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("durability.quarantine_max_bytes: 1000 is below the minimum"),
        "{err}"
    );
}

const ONE_REGION: &str = "auth: { mode: off, default_region: eu }\nregions: [{ id: eu, sinks: { parquet: { path: ./data } } }]\n";

fn problems_of(yaml: &str) -> String {
    match Config::from_yaml("g.yaml", yaml) {
        Err(ConfigError::Invalid { problems, .. }) => problems.join("\n"),
        Err(e) => panic!("expected Invalid, got {e}"),
        Ok(_) => panic!("expected problems in {yaml}"),
    }
}

#[test]
fn a_tenant_share_defaults_to_a_quarter_of_the_region_log() {
    let c = Config::from_yaml(
        "g.yaml",
        &format!(
            "durability: {{ segment_bytes: 4096, max_bytes_per_region: 8388608 }}\n{ONE_REGION}"
        ),
    )
    .unwrap();
    assert_eq!(c.durability.limits.max_bytes_per_owner, 2 << 20);
    let c = Config::from_yaml(
        "g.yaml",
        &format!("durability: {{ max_bytes_per_tenant: 1000 }}\n{ONE_REGION}"),
    )
    .unwrap();
    assert_eq!(c.durability.limits.max_bytes_per_owner, 1000);
    // The log learns a record's tenant from the record's own header.
    let tenant_of = c.durability.limits.owner_of;
    let share = crate::share::testing::share(1);
    let record = crate::share::record::encode(&share, 1);
    assert_eq!(tenant_of(&record), Some(share.tenant.as_str().as_bytes()));
}

#[test]
fn a_tenant_share_must_be_positive_and_within_the_region_log() {
    for bad in ["0", "4294967297"] {
        let all = problems_of(&format!(
            "durability: {{ max_bytes_per_tenant: {bad} }}\n{ONE_REGION}"
        ));
        assert!(
            all.contains(&format!(
                "durability.max_bytes_per_tenant: {bad} is outside 1..=max_bytes_per_region (4294967296)"
            )),
            "{all}"
        );
    }
}

#[test]
fn limits_a_log_record_cannot_hold_are_refused() {
    let all = problems_of(&format!(
        "limits: {{ max_labels_per_series: 5000, max_label_name_bytes: 65536, max_label_value_bytes: 2000000 }}\n{ONE_REGION}"
    ));
    for field in [
        "limits.max_labels_per_series: 5000 is over 4032",
        "limits.max_label_name_bytes: 65536 is over 65472",
        "limits.max_label_value_bytes: 2000000 is over 1048576",
    ] {
        assert!(all.contains(field), "{field} in {all}");
    }
}

#[test]
fn tenant_limits_are_validated_at_load_and_the_overrides_file_read_beside_the_config() {
    let base = "auth: { mode: off, default_region: local }\nregions:\n  - { id: local, sinks: { null: {} } }\n";
    let bad = format!(
        "{base}limits:\n  tenant: {{ ingestion_rate: -1, rate_limited_status: 500 }}\n  max_tenants: 0\n"
    );
    let err = Config::from_yaml("g.yaml", &bad).unwrap_err().to_string();
    for needle in [
        "limits.tenant.ingestion_rate: -1",
        "limits.tenant.rate_limited_status: 500 is neither 429 nor 503",
        "limits.max_tenants: must be at least 1",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!("{base}limits:\n  tenant: {{ ingestion_rate: 100 }}\n  overrides_file: o.yaml\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("o.yaml"),
        "overrides:\n  team-a: { max_active_series: 5 }\n",
    )
    .unwrap();
    let c = Config::load(&cfg).unwrap();
    let a = &c.tenant_limits.overrides[&TenantId::parse("team-a").unwrap()];
    assert_eq!(a.max_active_series, 5);
    assert_eq!(
        a.ingestion_rate, 100.0,
        "an override keeps the defaults it does not name"
    );
    std::fs::write(
        dir.path().join("o.yaml"),
        "overrides:\n  team-a: { max_active_series: x }\n",
    )
    .unwrap();
    let err = Config::load(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("limits.overrides_file") && err.contains("o.yaml"),
        "{err}"
    );
}

#[test]
fn ha_dedup_is_validated_with_field_names() {
    let base = "auth: { mode: off, default_region: local }\nregions:\n  - { id: local, sinks: { null: {} } }\n";
    let bad = format!(
        "{base}ha_dedup:\n  tenants: some\n  cluster_label: x\n  replica_label: x\n  failover_timeout: 0s\n  \
         max_pairs: 0\n  tenant_labels: {{ team-a: {{ replica_label: \"9bad\" }} }}\n"
    );
    let err = Config::from_yaml("g.yaml", &bad).unwrap_err().to_string();
    for needle in [
        "ha_dedup.tenants: \"some\" is neither `all`",
        "ha_dedup.replica_label: must differ from cluster_label",
        "ha_dedup.failover_timeout: must be within 1s..=1h",
        "ha_dedup.max_pairs",
        "ha_dedup.tenant_labels.team-a.replica_label: \"9bad\" is not a label name",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from {err}");
    }
    let good = format!("{base}ha_dedup:\n  tenants: [team-a]\n");
    let c = Config::from_yaml("g.yaml", &good).unwrap();
    let ha = c.ha_dedup.unwrap();
    assert_eq!(ha.tenants, Some(vec![TenantId::parse("team-a").unwrap()]));
    assert_eq!(ha.labels.replica, "__replica__");
    assert_eq!(ha.failover_timeout, std::time::Duration::from_secs(30));
}
