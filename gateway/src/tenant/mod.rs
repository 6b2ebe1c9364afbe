//! Tenant identification and authentication.
//!
//! Owns the answer to "whose data is this?" for a request, from its headers alone. It may read
//! the [`Config`]; it does no I/O and never looks at the body.
//!
//! Clients differ in what they can send: Mimir-style `X-Scope-OrgID`, Grafana-Cloud-style basic
//! auth (user = tenant), or a bearer token mapped to a tenant. Debian's Prometheus 2.42 does
//! not send custom `headers:` from its `remote_write` config, but does send `basic_auth` and
//! `authorization`, so all three are first-class.

use base64::Engine;
use http::HeaderMap;

use residency_rules::{IdError, TenantId};

use crate::config::{AuthPolicy, Config, SecretDigest};

/// The header Mimir and Cortex use to name the tenant.
pub const ORG_ID_HEADER: &str = "x-scope-orgid";

/// The tenant used when authentication is off and the request names none.
pub const DEFAULT_TENANT: &str = "default";

/// Why a request has no acceptable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials at all where they are required.
    #[error("no credentials: send basic auth (user = tenant id) or a bearer token")]
    Missing,
    /// Credentials that do not match the configuration.
    #[error("invalid credentials for tenant {0:?}")]
    BadCredentials(String),
    /// A bearer token no tenant owns.
    #[error("unknown bearer token")]
    UnknownToken,
    /// An `Authorization` header that cannot be parsed.
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    /// The named tenant id is not a valid id.
    #[error("invalid tenant id: {0}")]
    InvalidTenant(#[from] IdError),
    /// Several tenant ids for one request (repeated `X-Scope-OrgID` headers, or a comma
    /// list): a request belongs to exactly one tenant, and picking one would be a guess.
    #[error("X-Scope-OrgID names several tenants ({0}); send exactly one")]
    MultipleTenants(String),
    /// A tenant the configuration does not know.
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    /// `X-Scope-OrgID` names a different tenant than the credentials.
    #[error("X-Scope-OrgID names tenant {header:?} but the credentials are for {authenticated:?}")]
    Mismatch {
        /// From the header.
        header: String,
        /// From the credentials.
        authenticated: String,
    },
}

enum Credentials {
    None,
    Basic { user: String, password: String },
    Bearer(String),
}

fn credentials(headers: &HeaderMap) -> Result<Credentials, AuthError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Ok(Credentials::None);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::Malformed("not visible ASCII"))?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or(AuthError::Malformed("expected '<scheme> <credentials>'"))?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| AuthError::Malformed("basic credentials are not base64"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| AuthError::Malformed("basic credentials are not UTF-8"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or(AuthError::Malformed("basic credentials lack ':'"))?;
        Ok(Credentials::Basic {
            user: user.to_string(),
            password: password.to_string(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Credentials::Bearer(rest.to_string()))
    } else {
        Err(AuthError::Malformed("scheme must be Basic or Bearer"))
    }
}

fn org_id(headers: &HeaderMap) -> Result<Option<TenantId>, AuthError> {
    let mut values = headers.get_all(ORG_ID_HEADER).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| AuthError::Malformed("X-Scope-OrgID is not visible ASCII"))?;
    if values.next().is_some() || s.contains(',') {
        let all: Vec<&str> = headers
            .get_all(ORG_ID_HEADER)
            .iter()
            .map(|v| v.to_str().unwrap_or("<not ASCII>"))
            .collect();
        return Err(AuthError::MultipleTenants(all.join(", ")));
    }
    Ok(Some(TenantId::parse(s.trim())?))
}

/// Checks what the headers alone can prove when the tenant itself comes later, from the body
/// (OTLP's `otlp.tenant_attribute`): credentials that are there must be valid, and with
/// required authentication and an untrusted header there must be credentials. Run before the
/// body is read, so a client without valid credentials cannot make the gateway read and
/// decode anything.
pub fn precheck(headers: &HeaderMap, config: &Config, cert: Option<&str>) -> Result<(), AuthError> {
    if cert.is_some() {
        return identify_with_cert(headers, config, cert).map(drop);
    }
    match (&config.auth, credentials(headers)?) {
        (
            AuthPolicy::Required {
                trust_org_id_header: false,
            },
            Credentials::None,
        ) => Err(AuthError::Missing),
        (_, Credentials::None) => org_id(headers).map(drop),
        _ => identify(headers, config).map(drop),
    }
}

/// Identifies the tenant of a request from its headers and, over TLS, the tenant its client
/// certificate names (`cert`: the certificate field `tls.tenant_from` picks, verified by the
/// handshake). A certificate tenant is a credential: a header or other credentials naming
/// another tenant are refused, as any two credentials that disagree are.
pub fn identify_with_cert(
    headers: &HeaderMap,
    config: &Config,
    cert: Option<&str>,
) -> Result<TenantId, AuthError> {
    let Some(cert) = cert else {
        return identify(headers, config);
    };
    let from_cert = TenantId::parse(cert)?;
    if let Some(h) = org_id(headers)?.filter(|h| *h != from_cert) {
        return Err(AuthError::Mismatch {
            header: h.to_string(),
            authenticated: from_cert.to_string(),
        });
    }
    if !matches!(credentials(headers)?, Credentials::None) {
        // Other credentials must be valid, and name the same tenant.
        let other = identify(headers, config)?;
        if other != from_cert {
            return Err(AuthError::Mismatch {
                header: other.to_string(),
                authenticated: from_cert.to_string(),
            });
        }
    }
    Ok(from_cert)
}

/// Identifies the tenant of a request from its headers, per the configured [`AuthPolicy`].
pub fn identify(headers: &HeaderMap, config: &Config) -> Result<TenantId, AuthError> {
    let header = org_id(headers)?;
    let creds = credentials(headers)?;
    match &config.auth {
        AuthPolicy::Off { .. } => {
            if let Some(t) = header {
                return Ok(t);
            }
            match creds {
                Credentials::Basic { user, .. } if !user.is_empty() => Ok(TenantId::parse(&user)?),
                _ => Ok(TenantId::parse(DEFAULT_TENANT)?),
            }
        }
        AuthPolicy::Required {
            trust_org_id_header,
        } => {
            let authenticated = match creds {
                Credentials::Basic { user, password } => {
                    let id = TenantId::parse(&user)?;
                    let tenant = config
                        .tenants
                        .get(&id)
                        .ok_or_else(|| AuthError::UnknownTenant(user.clone()))?;
                    // Digests, compared in constant time, and every configured password checked,
                    // so timing says nothing about length, prefix or which one matched.
                    let presented = SecretDigest::of(&password);
                    let ok = tenant
                        .passwords
                        .iter()
                        .fold(false, |acc, p| acc | p.matches(&presented));
                    if !ok {
                        return Err(AuthError::BadCredentials(user));
                    }
                    Some(id)
                }
                Credentials::Bearer(token) => Some(
                    config
                        .bearer_tokens
                        // Looked up by digest: the map's own comparisons then run over
                        // digests, which a guess cannot steer byte by byte.
                        .get(&SecretDigest::of(&token))
                        .cloned()
                        .ok_or(AuthError::UnknownToken)?,
                ),
                Credentials::None => None,
            };
            match (authenticated, header) {
                (Some(a), Some(h)) if a != h => Err(AuthError::Mismatch {
                    header: h.to_string(),
                    authenticated: a.to_string(),
                }),
                (Some(a), _) => Ok(a),
                (None, Some(h)) if *trust_org_id_header => {
                    if config.tenants.contains_key(&h) {
                        Ok(h)
                    } else {
                        Err(AuthError::UnknownTenant(h.to_string()))
                    }
                }
                (None, _) => Err(AuthError::Missing),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn basic(user: &str, pass: &str) -> HeaderValue {
        let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        HeaderValue::from_str(&format!("Basic {enc}")).unwrap()
    }

    fn required() -> Config {
        Config::from_yaml(
            "t.yaml",
            r#"
regions: [{ id: eu, sinks: { parquet: { path: /tmp/x } } }]
tenants:
  - { id: acme, region: eu, passwords: [old, new], bearer_tokens: [tok-acme] }
  - { id: globex, region: eu, bearer_tokens: [tok-globex] }
"#,
        )
        .unwrap()
    }

    fn headers(pairs: &[(&str, HeaderValue)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.clone(),
            );
        }
        h
    }

    #[test]
    fn off_mode_prefers_header_then_basic_user_then_default() {
        let c = Config::embedded_default();
        let h = headers(&[
            ("x-scope-orgid", HeaderValue::from_static("team-a")),
            ("authorization", basic("team-b", "")),
        ]);
        assert_eq!(identify(&h, &c).unwrap().as_str(), "team-a");
        let h = headers(&[("authorization", basic("team-b", "whatever"))]);
        assert_eq!(identify(&h, &c).unwrap().as_str(), "team-b");
        assert_eq!(identify(&HeaderMap::new(), &c).unwrap().as_str(), "default");
    }

    #[test]
    fn off_mode_rejects_invalid_tenant_ids() {
        let c = Config::embedded_default();
        let h = headers(&[("x-scope-orgid", HeaderValue::from_static("../etc"))]);
        assert!(matches!(identify(&h, &c), Err(AuthError::InvalidTenant(_))));
    }

    #[test]
    fn required_mode_checks_basic_password_any_of_rotation() {
        let c = required();
        for p in ["old", "new"] {
            let h = headers(&[("authorization", basic("acme", p))]);
            assert_eq!(identify(&h, &c).unwrap().as_str(), "acme");
        }
        let h = headers(&[("authorization", basic("acme", "wrong"))]);
        assert_eq!(
            identify(&h, &c),
            Err(AuthError::BadCredentials("acme".into()))
        );
    }

    #[test]
    fn required_mode_maps_bearer_tokens() {
        let c = required();
        let h = headers(&[(
            "authorization",
            HeaderValue::from_static("Bearer tok-globex"),
        )]);
        assert_eq!(identify(&h, &c).unwrap().as_str(), "globex");
        let h = headers(&[("authorization", HeaderValue::from_static("Bearer nope"))]);
        assert_eq!(identify(&h, &c), Err(AuthError::UnknownToken));
    }

    #[test]
    fn required_mode_refuses_missing_credentials_and_untrusted_header() {
        let c = required();
        assert_eq!(identify(&HeaderMap::new(), &c), Err(AuthError::Missing));
        let h = headers(&[("x-scope-orgid", HeaderValue::from_static("acme"))]);
        assert_eq!(identify(&h, &c), Err(AuthError::Missing));
    }

    #[test]
    fn required_mode_refuses_header_naming_another_tenant() {
        let c = required();
        let h = headers(&[
            ("authorization", HeaderValue::from_static("Bearer tok-acme")),
            ("x-scope-orgid", HeaderValue::from_static("globex")),
        ]);
        assert!(matches!(identify(&h, &c), Err(AuthError::Mismatch { .. })));
    }

    #[test]
    fn malformed_authorization_is_an_error_not_a_panic() {
        let c = required();
        for v in ["Basic !!!", "Basic", "Digest abc", "Basic dXNlcg=="] {
            let h = headers(&[("authorization", HeaderValue::from_static(v))]);
            assert!(identify(&h, &c).is_err(), "{v}");
        }
    }

    #[test]
    fn several_tenant_ids_are_refused_not_resolved_to_the_first() {
        let c = required();
        let mut h = HeaderMap::new();
        h.append(ORG_ID_HEADER, HeaderValue::from_static("acme"));
        h.append(ORG_ID_HEADER, HeaderValue::from_static("globex"));
        h.insert("authorization", basic("acme", "old"));
        assert_eq!(
            identify(&h, &c),
            Err(AuthError::MultipleTenants("acme, globex".into()))
        );
        let h = headers(&[
            (ORG_ID_HEADER, HeaderValue::from_static("acme,globex")),
            ("authorization", basic("acme", "old")),
        ]);
        assert!(matches!(
            identify(&h, &c),
            Err(AuthError::MultipleTenants(_))
        ));
        // Auth off too: the header alone names the tenant there.
        let off = Config::from_yaml(
            "t.yaml",
            "auth: { mode: off, default_region: eu }\nregions: [{ id: eu, sinks: { parquet: { path: /tmp/x } } }]\n",
        )
        .unwrap();
        let h = headers(&[(ORG_ID_HEADER, HeaderValue::from_static("a, b"))]);
        assert!(matches!(
            identify(&h, &off),
            Err(AuthError::MultipleTenants(_))
        ));
    }

    #[test]
    fn secrets_compare_by_digest_whatever_their_length() {
        let c = required();
        // A prefix, a longer string and an empty password all fail like any wrong one.
        for wrong in ["ol", "oldold", "", "new "] {
            let h = headers(&[("authorization", basic("acme", wrong))]);
            assert_eq!(
                identify(&h, &c),
                Err(AuthError::BadCredentials("acme".into())),
                "{wrong:?}"
            );
        }
        let h = headers(&[("authorization", HeaderValue::from_static("Bearer tok-acm"))]);
        assert_eq!(identify(&h, &c), Err(AuthError::UnknownToken));
        let h = headers(&[("authorization", HeaderValue::from_static("Bearer tok-acme"))]);
        assert_eq!(identify(&h, &c).unwrap().as_str(), "acme");
        // The configuration holds digests only: nothing prints a secret.
        let printed = format!("{:?} {:?}", c.tenants, c.bearer_tokens);
        assert!(
            !printed.contains("old") && !printed.contains("tok-acme"),
            "{printed}"
        );
    }

    #[test]
    fn precheck_refuses_bad_or_missing_credentials_before_any_body() {
        let c = required();
        assert_eq!(
            precheck(&HeaderMap::new(), &c, None),
            Err(AuthError::Missing)
        );
        let h = headers(&[("authorization", basic("acme", "wrong"))]);
        assert_eq!(
            precheck(&h, &c, None),
            Err(AuthError::BadCredentials("acme".into()))
        );
        let h = headers(&[("authorization", basic("acme", "new"))]);
        assert_eq!(precheck(&h, &c, None), Ok(()));
    }

    #[test]
    fn a_certificate_tenant_is_a_credential_that_others_must_agree_with() {
        let c = required();
        // Alone it identifies its tenant, even one without passwords here.
        assert_eq!(
            identify_with_cert(&HeaderMap::new(), &c, Some("initech"))
                .unwrap()
                .as_str(),
            "initech"
        );
        let h = headers(&[("x-scope-orgid", HeaderValue::from_static("acme"))]);
        assert_eq!(
            identify_with_cert(&h, &c, Some("acme")).unwrap().as_str(),
            "acme"
        );
        assert_eq!(
            identify_with_cert(&h, &c, Some("globex")),
            Err(AuthError::Mismatch {
                header: "acme".into(),
                authenticated: "globex".into()
            })
        );
        let h = headers(&[("authorization", basic("acme", "new"))]);
        assert!(matches!(
            identify_with_cert(&h, &c, Some("globex")),
            Err(AuthError::Mismatch { .. })
        ));
        let h = headers(&[("authorization", basic("acme", "wrong"))]);
        assert_eq!(
            identify_with_cert(&h, &c, Some("acme")),
            Err(AuthError::BadCredentials("acme".into()))
        );
        assert!(matches!(
            identify_with_cert(&HeaderMap::new(), &c, Some("not a tenant!")),
            Err(AuthError::InvalidTenant(_))
        ));
        assert_eq!(precheck(&HeaderMap::new(), &c, Some("acme")), Ok(()));
    }
}
