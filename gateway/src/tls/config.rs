//! `tls:`: TLS on every listener, and what a client certificate proves. Files are PEM; they
//! are checked at load (they exist, parse, and the key matches the certificate) so that a bad
//! file is a config error naming the field, not a failed handshake later.

use std::path::PathBuf;

use serde::Deserialize;

/// `tls:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// The server's certificate chain (PEM, leaf first).
    pub cert_file: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; needed for
    /// `client_auth: optional | required`.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// `none` (default): no client certificates asked for; `optional`: asked for and checked
    /// when sent; `required`: a client without a valid certificate is refused at the handshake.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Which part of a client certificate names the tenant: `none` (default), `cn` (the
    /// subject's common name), `san_dns` or `san_uri` (the first DNS or URI subject
    /// alternative name). A certificate tenant counts as credentials: a request whose
    /// `X-Scope-OrgID` or basic auth names another tenant is refused.
    #[serde(default)]
    pub tenant_from: TenantFrom,
    /// Stripped from the start of the certificate field before it is read as a tenant id
    /// (e.g. `spiffe://example.org/tenant/`); a field without it names no tenant.
    #[serde(default)]
    pub tenant_prefix: Option<String>,
}

/// `tls.client_auth`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    None,
    /// Asked for; checked against `client_ca_file` when sent.
    Optional,
    /// Required: no valid certificate, no connection.
    Required,
}

/// `tls.tenant_from`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TenantFrom {
    /// Certificates name no tenant.
    #[default]
    None,
    /// The subject's common name.
    Cn,
    /// The first DNS subject alternative name.
    SanDns,
    /// The first URI subject alternative name.
    SanUri,
}

/// `tls:` validated.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Certificate chain file.
    pub cert_file: PathBuf,
    /// Key file.
    pub key_file: PathBuf,
    /// Client CA file.
    pub client_ca_file: Option<PathBuf>,
    /// Client certificate policy.
    pub client_auth: ClientAuth,
    /// Where a certificate names its tenant.
    pub tenant_from: TenantFrom,
    /// Prefix to strip from that field.
    pub tenant_prefix: Option<String>,
}

impl TlsFile {
    /// Checks meaning, naming each bad field under `tls.`, and loads the files with the
    /// listeners' own loader ([`super::server_config`]), so what passes here is what the
    /// listeners will serve.
    pub fn validate(self, problems: &mut Vec<String>) -> TlsSettings {
        let before = problems.len();
        if self.client_auth != ClientAuth::None && self.client_ca_file.is_none() {
            problems.push(format!(
                "tls.client_ca_file: required with client_auth: {}",
                if self.client_auth == ClientAuth::Required {
                    "required"
                } else {
                    "optional"
                }
            ));
        }
        if self.tenant_from != TenantFrom::None && self.client_auth == ClientAuth::None {
            problems.push(
                "tls.tenant_from: needs client certificates (client_auth: optional or required)"
                    .to_string(),
            );
        }
        if self.tenant_prefix.as_deref() == Some("") {
            problems.push("tls.tenant_prefix: is empty; remove it or give the prefix".into());
        }
        let settings = TlsSettings {
            cert_file: self.cert_file,
            key_file: self.key_file,
            client_ca_file: self.client_ca_file,
            client_auth: self.client_auth,
            tenant_from: self.tenant_from,
            tenant_prefix: self.tenant_prefix,
        };
        if problems.len() == before {
            if let Err(e) = super::server_config(&settings) {
                problems.push(format!("tls.{}: {}", e.field, e.why));
            }
        }
        settings
    }
}
