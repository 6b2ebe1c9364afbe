//! TLS for the listeners: rustls with the `ring` provider (one TLS stack in the tree; `ring`
//! builds with the C compiler alone, where aws-lc-rs needs cmake), TLS 1.2 and 1.3, ALPN `h2`
//! and `http/1.1`, optional or required client certificates checked against a CA bundle, and
//! the tenant a client certificate names (`tls.tenant_from`).
//!
//! The loader here is the one config validation runs and the listeners serve, so a file that
//! passes `check-config` is a file the listener can use. [`client`] does the same for TLS
//! toward upstreams (HTTPS remote-write endpoints).
//!
//! May call: nothing of the crate (a leaf: `config` composes its section, `listen` serves it).

pub mod client;
pub mod config;

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

pub use config::{ClientAuth, TenantFrom, TlsFile, TlsSettings};

/// Why the TLS files cannot be served, by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tls.{field}: {why}")]
pub struct LoadError {
    /// The `tls.` field whose file is at fault.
    pub field: &'static str,
    /// What is wrong with it.
    pub why: String,
}

fn err(field: &'static str, why: impl Into<String>) -> LoadError {
    LoadError {
        field,
        why: why.into(),
    }
}

/// The certificates of the PEM file at `path`; at least one.
fn read_certs(path: &Path, field: &'static str) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(field, format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(field, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(
            field,
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(certs)
}

/// The rustls provider every listener uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the listeners' TLS configuration from `s`'s files: the certificate chain, its key
/// (which must match), the client CA bundle, ALPN `h2` and `http/1.1`.
pub fn server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, LoadError> {
    let certs = read_certs(&s.cert_file, "cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&s.key_file)
        .map_err(|e| err("key_file", format!("{}: {e}", s.key_file.display())))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err("cert_file", e.to_string()))?;
    let builder = match (s.client_auth, &s.client_ca_file) {
        (ClientAuth::None, _) | (_, None) => builder.with_no_client_auth(),
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca, "client_ca_file")? {
                roots
                    .add(c)
                    .map_err(|e| err("client_ca_file", format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider());
            let verifier = if auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| err("client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        err(
            "key_file",
            format!(
                "{}: does not go with {} ({e})",
                s.key_file.display(),
                s.cert_file.display()
            ),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What tells a replaced file from an unchanged one: modification time, size and inode.
/// The time alone is not enough: file times come from the kernel's coarse clock, so a file
/// replaced by one written within the same few milliseconds (an atomic rename, a Kubernetes
/// secret's symlink swap) keeps the old time; the inode changes with either.
pub type FileStamp = Option<(std::time::SystemTime, u64, u64)>;

/// The [`FileStamp`] of `path` now (`None` if it cannot be read).
pub fn stamp_of(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// When the first certificate of the PEM file at `path` expires, in seconds since the epoch.
pub fn expiry_of(path: &Path) -> Option<i64> {
    let first = read_certs(path, "cert_file").ok()?.into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&first).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The tenant `cert` (a client certificate the handshake verified) names under `s`, if any:
/// its common name or first DNS or URI alternative name, without `tls.tenant_prefix`.
pub fn tenant_of(cert: &CertificateDer<'_>, s: &TlsSettings) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    let field: String = match s.tenant_from {
        TenantFrom::None => return None,
        TenantFrom::Cn => cert
            .subject()
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_string(),
        TenantFrom::SanDns | TenantFrom::SanUri => {
            let san = cert.subject_alternative_name().ok()??;
            san.value
                .general_names
                .iter()
                .find_map(|n| match (n, s.tenant_from) {
                    (GeneralName::DNSName(d), TenantFrom::SanDns) => Some(d.to_string()),
                    (GeneralName::URI(u), TenantFrom::SanUri) => Some(u.to_string()),
                    _ => None,
                })?
        }
    };
    match &s.tenant_prefix {
        Some(p) => field.strip_prefix(p.as_str()).map(str::to_string),
        None => Some(field),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, a server certificate for `localhost`, and a client certificate with `cn` and a
    /// URI alternative name, written under `dir`.
    fn pki(dir: &Path, cn: &str) -> TlsSettings {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, cn);
        client.subject_alt_names = vec![SanType::URI(
            format!("spiffe://example.org/tenant/{cn}")
                .try_into()
                .unwrap(),
        )];
        let client = client.signed_by(&client_key, &ca, &ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("client.pem"), client.pem()).unwrap();
        std::fs::write(dir.join("client.key"), client_key.serialize_pem()).unwrap();
        TlsSettings {
            cert_file: dir.join("server.pem"),
            key_file: dir.join("server.key"),
            client_ca_file: Some(dir.join("ca.pem")),
            client_auth: ClientAuth::Required,
            tenant_from: TenantFrom::Cn,
            tenant_prefix: None,
        }
    }

    #[test]
    fn loads_a_chain_and_names_the_field_of_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = pki(dir.path(), "team-a");
        let c = server_config(&s).unwrap();
        assert_eq!(c.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(expiry_of(&s.cert_file).is_some_and(|t| t > 0));

        let mut wrong_key = s.clone();
        wrong_key.key_file = dir.path().join("client.key");
        let e = server_config(&wrong_key).unwrap_err();
        assert_eq!(e.field, "key_file", "{e}");
        assert!(e.why.contains("does not go with"), "{e}");

        let mut missing = s.clone();
        missing.client_ca_file = Some(dir.path().join("nope.pem"));
        assert_eq!(server_config(&missing).unwrap_err().field, "client_ca_file");

        let mut not_pem = s.clone();
        std::fs::write(dir.path().join("junk.pem"), "not a certificate").unwrap();
        not_pem.cert_file = dir.path().join("junk.pem");
        let e = server_config(&not_pem).unwrap_err();
        assert_eq!(e.field, "cert_file");
        assert!(e.why.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn a_client_certificate_names_its_tenant_by_the_configured_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = pki(dir.path(), "team-a");
        let cert = read_certs(&dir.path().join("client.pem"), "x")
            .unwrap()
            .remove(0);
        assert_eq!(tenant_of(&cert, &s).as_deref(), Some("team-a"));
        s.tenant_from = TenantFrom::SanUri;
        s.tenant_prefix = Some("spiffe://example.org/tenant/".into());
        assert_eq!(tenant_of(&cert, &s).as_deref(), Some("team-a"));
        s.tenant_prefix = Some("spiffe://other.org/".into());
        assert_eq!(
            tenant_of(&cert, &s),
            None,
            "a field without the prefix names no one"
        );
        s.tenant_from = TenantFrom::SanDns;
        s.tenant_prefix = None;
        assert_eq!(
            tenant_of(&cert, &s),
            None,
            "no DNS name in this certificate"
        );
    }
}
