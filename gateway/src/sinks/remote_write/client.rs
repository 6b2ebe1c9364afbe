//! The HTTP client of one remote-write endpoint: TLS (CA bundle, client certificate, the
//! name to verify), credentials from files, and picking up rotated files without a restart.
//!
//! `tls.server_name` is done by sending the request to that name (so it is the SNI, the name
//! verified and the `Host`) while a resolver sends the connection to the URL's own host: the
//! certificate is checked against the name the operator expects, not the address used.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use super::config::RemoteWriteSinkConfig;
use crate::tls::client::ClientTlsSettings;
use crate::tls::FileStamp;

/// How often the TLS and credential files are checked for a change: cert-manager renews well
/// before expiry, so a few seconds' delay costs nothing, and a `stat` per file per interval
/// is nothing either.
const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Resolves `name` (the URL host rewritten to `tls.server_name`) as the URL's real host.
#[derive(Debug)]
struct PinnedName {
    name: String,
    real: http::Uri,
    inner: DefaultResolver,
}

impl Resolver for PinnedName {
    fn resolve(
        &self,
        uri: &http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        // `Uri::host` keeps an IPv6 literal's brackets; `name` has none.
        let host = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'));
        if host == Some(self.name.as_str()) {
            self.inner.resolve(&self.real, config, timeout)
        } else {
            self.inner.resolve(uri, config, timeout)
        }
    }
}

/// The URL with its host replaced by `name`, keeping scheme, port and path.
fn with_host(url: &http::Uri, name: &str) -> Result<String, String> {
    let host = if name.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{name}]")
    } else {
        name.to_string()
    };
    let port = url.port_u16().unwrap_or(443);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let out = format!("https://{host}:{port}{path}");
    out.parse::<http::Uri>()
        .map(|_| out.clone())
        .map_err(|e| format!("{out}: {e}"))
}

/// What [`Client::build`] makes.
struct Built {
    agent: ureq::Agent,
    url: String,
    authorization: Option<String>,
}

/// The endpoint's client; one per worker thread.
pub struct Client {
    name: String,
    cfg: RemoteWriteSinkConfig,
    built: Built,
    stamp: Vec<FileStamp>,
    checked: Instant,
}

fn tls_config(t: &ClientTlsSettings) -> Result<ureq::tls::TlsConfig, String> {
    let m = t.load().map_err(|(f, why)| format!("tls.{f}: {why}"))?;
    let roots: Vec<ureq::tls::Certificate<'static>> = m
        .roots
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    let mut b = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
    if let (Some((chain, _)), Some((_, key_file))) = (&m.client, &t.client) {
        let chain: Vec<ureq::tls::Certificate<'static>> = chain
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        // ureq reads the key from PEM itself; `load` already checked it matches the chain.
        let pem = std::fs::read(key_file)
            .map_err(|e| format!("tls.key_file: {}: {e}", key_file.display()))?;
        let key = ureq::tls::PrivateKey::from_pem(&pem)
            .map_err(|e| format!("tls.key_file: {}: {e}", key_file.display()))?
            .to_owned();
        b = b.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
    }
    Ok(b.build())
}

impl Client {
    /// The client for `cfg`'s endpoint, its files loaded.
    pub fn new(name: &str, cfg: &RemoteWriteSinkConfig) -> Result<Client, String> {
        // Stamped before loading: a file replaced in between is noticed on the next check.
        let stamp = Self::stamp_of(cfg);
        let built = Self::build(cfg)?;
        Ok(Client {
            name: name.to_string(),
            cfg: cfg.clone(),
            built,
            stamp,
            checked: Instant::now(),
        })
    }

    fn stamp_of(cfg: &RemoteWriteSinkConfig) -> Vec<FileStamp> {
        let mut s = cfg
            .tls
            .as_ref()
            .map(ClientTlsSettings::stamp)
            .unwrap_or_default();
        if let Some(c) = &cfg.credentials {
            s.push(crate::tls::stamp_of(c.file()));
        }
        s
    }

    fn build(cfg: &RemoteWriteSinkConfig) -> Result<Built, String> {
        // No redirects: a remote-write endpoint answers where it is, and a redirect would carry
        // the tenant header and `headers` to wherever it points.
        let mut b = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(cfg.timeout))
            .max_redirects(0)
            .user_agent(concat!("traceo-gateway/", env!("CARGO_PKG_VERSION")));
        if cfg.tls.as_ref().is_some_and(|t| t.server_name.is_some()) {
            // A proxy from the environment would be asked to CONNECT to the server name,
            // skipping the pinned resolver.
            b = b.proxy(None);
        }
        if let Some(t) = &cfg.tls {
            b = b.tls_config(tls_config(t)?).https_only(true);
        }
        let config = b.build();
        let real: http::Uri = cfg.url.parse().map_err(|e| format!("url: {e}"))?;
        let (agent, url) = match cfg.tls.as_ref().and_then(|t| t.server_name.clone()) {
            Some(name) => {
                let url = with_host(&real, &name)?;
                let resolver = PinnedName {
                    name,
                    real,
                    inner: DefaultResolver::default(),
                };
                (
                    ureq::Agent::with_parts(config, DefaultConnector::new(), resolver),
                    url,
                )
            }
            None => (config.into(), cfg.url.clone()),
        };
        let authorization = match &cfg.credentials {
            Some(c) => Some(c.header().map_err(|e| format!("credentials: {e}"))?),
            None => None,
        };
        Ok(Built {
            agent,
            url,
            authorization,
        })
    }

    /// Rebuilds the client if a TLS or credential file changed since the last look (at most
    /// every [`RELOAD_CHECK`]). A file that no longer loads keeps the old client, loudly.
    pub fn refresh(&mut self) {
        if self.checked.elapsed() < RELOAD_CHECK {
            return;
        }
        self.checked = Instant::now();
        let stamp = Self::stamp_of(&self.cfg);
        if stamp == self.stamp {
            return;
        }
        match Self::build(&self.cfg) {
            Ok(b) => {
                self.built = b;
                self.stamp = stamp;
                metrics::counter!("traceo_remote_write_client_reloads_total", "sink" => self.name.clone(), "result" => "success").increment(1);
                info!(sink = %self.name, "remote-write TLS or credential files changed; new connections use them");
            }
            Err(e) => {
                // Said once per change of the files: the next change is tried again.
                self.stamp = stamp;
                metrics::counter!("traceo_remote_write_client_reloads_total", "sink" => self.name.clone(), "result" => "failure").increment(1);
                warn!(sink = %self.name, error = %e, "remote-write TLS or credential files changed but do not load; keeping the previous ones");
            }
        }
    }

    /// A POST to the endpoint, with its credentials.
    pub fn post(&self) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let mut req = self.built.agent.post(&self.built.url);
        if let Some(a) = &self.built.authorization {
            req = req.header("authorization", a.as_str());
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_replaces_the_host_and_keeps_port_and_path() {
        let u: http::Uri = "https://10.0.0.5:9090/api/v1/write?x=1".parse().unwrap();
        assert_eq!(
            with_host(&u, "prom.internal").unwrap(),
            "https://prom.internal:9090/api/v1/write?x=1"
        );
        let u: http::Uri = "https://10.0.0.5/api/v1/write".parse().unwrap();
        assert_eq!(
            with_host(&u, "::1").unwrap(),
            "https://[::1]:443/api/v1/write"
        );
    }
}
