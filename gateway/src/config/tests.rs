use super::*;

#[test]
fn embedded_default_is_valid_and_auth_off() {
    let c = Config::embedded_default();
    assert_eq!(c.regions.len(), 1);
    assert_eq!(c.regions[0].id.as_str(), "local");
    assert!(matches!(c.auth, AuthPolicy::Off { .. }));
    assert_eq!(
        c.regions[0].parquet.as_ref().unwrap().path,
        PathBuf::from("./data")
    );
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
    assert_eq!(c.region_of(&acme).unwrap().as_str(), "us");
    assert_eq!(c.region_of(&other).unwrap().as_str(), "eu");
}

#[test]
fn required_mode_knows_only_listed_tenants() {
    let yaml = r#"
regions: [{ id: eu, sinks: { parquet: { path: /tmp/x } } }]
tenants: [{ id: acme, region: eu, passwords: [p] }]
"#;
    let c = Config::from_yaml("g.yaml", yaml).unwrap();
    assert!(c.region_of(&TenantId::parse("stranger").unwrap()).is_none());
}
