//! TLS toward an upstream (an HTTPS remote-write endpoint): which CAs to trust, the client
//! certificate to show, the name to verify. Never insecure: there is no setting that turns
//! verification off, and without `ca_file` the system's CA bundle is trusted.
//!
//! The files are loaded by [`ClientTlsSettings::load`], which config validation runs (so a
//! bad file is a config error naming the field) and the sink runs again when the files change
//! (so cert-manager's rotation of a client certificate needs no restart).

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

/// Where Debian (and most distributions) keep the system CA bundle.
pub(crate) const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// An upstream's `tls:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsFile {
    /// CA certificates (PEM) the upstream's certificate must chain to. Default: the system
    /// bundle (`$SSL_CERT_FILE`, else `/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mTLS; needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the upstream's certificate must carry (and the SNI sent). Default: the URL's
    /// host. The connection still goes to the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// An upstream's TLS, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsSettings {
    /// Trusted CAs.
    pub ca_file: PathBuf,
    /// Client certificate and key, for mTLS.
    pub client: Option<(PathBuf, PathBuf)>,
    /// Name to verify instead of the URL's host.
    pub server_name: Option<String>,
}

/// The material [`ClientTlsSettings::load`] read.
#[derive(Debug)]
pub struct ClientTlsMaterial {
    /// Trusted CAs.
    pub roots: Vec<CertificateDer<'static>>,
    /// Client chain and key.
    pub client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

fn certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, (String, String)> {
    let list: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|e| (field.to_string(), format!("{}: {e}", path.display())))?;
    if list.is_empty() {
        return Err((
            field.to_string(),
            format!("{}: no PEM certificate in it", path.display()),
        ));
    }
    Ok(list)
}

impl ClientTlsSettings {
    /// Reads and checks the files: they parse, the CAs are usable roots, the key matches the
    /// client certificate. The error is `(field, why)`; `why` names the file, never a key.
    pub fn load(&self) -> Result<ClientTlsMaterial, (String, String)> {
        let roots = certs(&self.ca_file, "ca_file")?;
        let mut store = rustls::RootCertStore::empty();
        let (added, _) = store.add_parsable_certificates(roots.iter().cloned());
        if added == 0 {
            return Err((
                "ca_file".into(),
                format!("{}: no usable CA certificate in it", self.ca_file.display()),
            ));
        }
        let client = match &self.client {
            None => None,
            Some((cert, key)) => {
                let chain = certs(cert, "cert_file")?;
                let k = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| ("key_file".to_string(), format!("{}: {e}", key.display())))?;
                let provider = rustls::crypto::ring::default_provider();
                rustls::sign::CertifiedKey::from_der(chain.clone(), k.clone_key(), &provider)
                    .map_err(|e| {
                        (
                            "key_file".to_string(),
                            format!(
                                "{}: does not go with {} ({e})",
                                key.display(),
                                cert.display()
                            ),
                        )
                    })?;
                Some((chain, k))
            }
        };
        Ok(ClientTlsMaterial { roots, client })
    }

    /// The files' stamps, to notice a rotation.
    pub fn stamp(&self) -> Vec<super::FileStamp> {
        let mut files = vec![self.ca_file.as_path()];
        if let Some((c, k)) = &self.client {
            files.push(c);
            files.push(k);
        }
        files.into_iter().map(super::stamp_of).collect()
    }
}

/// The system CA bundle, if there is one.
pub(crate) fn system_bundle() -> Option<PathBuf> {
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| Some(PathBuf::from(SYSTEM_CA_BUNDLE)).filter(|p| p.is_file()))
}

impl ClientTlsFile {
    /// Checks meaning and loads the files; problems name `prefix.tls.<field>`.
    pub fn validate(self, prefix: &str, problems: &mut Vec<String>) -> Option<ClientTlsSettings> {
        let before = problems.len();
        let ca_file = match self.ca_file {
            Some(p) => Some(p),
            None => {
                let found = system_bundle();
                if found.is_none() {
                    problems.push(format!(
                        "{prefix}.tls.ca_file: required: no system CA bundle ($SSL_CERT_FILE or {SYSTEM_CA_BUNDLE})"
                    ));
                }
                found
            }
        };
        let client = match (self.cert_file, self.key_file) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                problems.push(format!("{prefix}.tls.key_file: required with cert_file"));
                None
            }
            (None, Some(_)) => {
                problems.push(format!("{prefix}.tls.cert_file: required with key_file"));
                None
            }
        };
        if let Some(n) = &self.server_name {
            if ServerName::try_from(n.as_str()).is_err() {
                problems.push(format!(
                    "{prefix}.tls.server_name: {n:?} is not a DNS name or IP address"
                ));
            }
        }
        let s = ClientTlsSettings {
            ca_file: ca_file?,
            client,
            server_name: self.server_name,
        };
        if problems.len() == before {
            if let Err((field, why)) = s.load() {
                problems.push(format!("{prefix}.tls.{field}: {why}"));
            }
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pki(dir: &Path) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["client".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let other = KeyPair::generate().unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("c.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("other.key"), other.serialize_pem()).unwrap();
    }

    fn file(dir: &Path, key: &str) -> ClientTlsFile {
        ClientTlsFile {
            ca_file: Some(dir.join("ca.pem")),
            cert_file: Some(dir.join("c.pem")),
            key_file: Some(dir.join(key)),
            server_name: Some("prom.internal".into()),
        }
    }

    #[test]
    fn loads_ca_and_client_certificate_and_names_the_field_of_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path());
        let mut problems = Vec::new();
        let s = file(dir.path(), "c.key")
            .validate("regions[0].sinks.remote_write[0]", &mut problems)
            .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let m = s.load().unwrap();
        assert_eq!(m.roots.len(), 1);
        assert!(m.client.is_some());
        assert_eq!(s.stamp().len(), 3);

        let mut problems = Vec::new();
        file(dir.path(), "other.key").validate("rw", &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("rw.tls.key_file: "), "{problems:?}");
        assert!(problems[0].contains("does not go with"), "{problems:?}");

        let mut problems = Vec::new();
        let mut f = file(dir.path(), "c.key");
        f.key_file = None;
        f.server_name = Some("not a name".into());
        f.ca_file = Some(dir.path().join("missing.pem"));
        f.validate("rw", &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("rw.tls.key_file: required"));
        assert!(problems[1].starts_with("rw.tls.server_name: "));

        let mut problems = Vec::new();
        let mut f = file(dir.path(), "c.key");
        f.ca_file = Some(dir.path().join("c.key"));
        f.validate("rw", &mut problems);
        assert!(problems[0].starts_with("rw.tls.ca_file: "), "{problems:?}");
    }
}
