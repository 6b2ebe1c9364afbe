//! The HTTP client the cloud object stores (S3, GCS, Azure) send their requests through:
//! hyper over our rustls with its ring provider, so the tree keeps one TLS stack and one
//! crypto library (object_store's own reqwest client would bring aws-lc-rs).
//!
//! It honours the object store's client options that apply to a plain client: `allow_http`,
//! `timeout` (a whole request, default 30 s), `connect_timeout` (default 5 s), `http1_only`,
//! `http2_only`, `user_agent` and the store's default headers. Options it cannot honour
//! (`proxy_url`, `allow_invalid_certificates`) are refused when the config is validated
//! ([`UNSUPPORTED_OPTIONS`]), never silently ignored. Retries stay object_store's: it classes
//! the error kinds this returns.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use object_store::client::{
    ClientConfigKey, ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind,
    HttpRequest, HttpRequestBody, HttpResponse, HttpResponseBody, HttpService,
};
use rustls::pki_types::CertificateDer;

/// Client options (as object_store spells them, without a store's prefix) this client cannot
/// honour: the config refuses them instead of ignoring them.
pub const UNSUPPORTED_OPTIONS: [(ClientConfigKey, &str); 4] = [
    (
        ClientConfigKey::ProxyUrl,
        "proxies are not supported; reach the store directly",
    ),
    (
        ClientConfigKey::ProxyCaCertificate,
        "proxies are not supported; reach the store directly",
    ),
    (
        ClientConfigKey::ProxyExcludes,
        "proxies are not supported; reach the store directly",
    ),
    (
        ClientConfigKey::AllowInvalidCertificates,
        "certificate verification cannot be turned off; trust the store's CA with tls.ca_file",
    ),
];

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Makes [`HttpClient`]s for the stores of one sink, trusting `roots`.
#[derive(Clone)]
pub struct RustlsConnector {
    roots: Arc<Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for RustlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RustlsConnector({} roots)", self.roots.len())
    }
}

impl RustlsConnector {
    /// A connector whose TLS trusts exactly `roots`.
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Self {
        RustlsConnector {
            roots: Arc::new(roots),
        }
    }
}

fn flag(options: &ClientOptions, key: ClientConfigKey) -> bool {
    options
        .get_config_value(&key)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn duration(options: &ClientOptions, key: ClientConfigKey, default: Duration) -> Duration {
    options
        .get_config_value(&key)
        .and_then(|v| humantime_like(&v))
        .unwrap_or(default)
}

/// object_store prints durations with humantime (`30s`, `1m 30s`, `500ms`).
fn humantime_like(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for part in s.split_whitespace() {
        let split = part.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = part.split_at(split);
        let n: u64 = n.parse().ok()?;
        total += match unit {
            "ns" => Duration::from_nanos(n),
            "us" | "µs" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" | "sec" => Duration::from_secs(n),
            "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return None,
        };
    }
    Some(total)
}

impl HttpConnector for RustlsConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let generic = |msg: String| object_store::Error::Generic {
            store: "http",
            source: msg.into(),
        };
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(self.roots.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| generic(format!("TLS: {e}")))?
        .with_root_certificates(store)
        .with_no_client_auth();
        let allow_http = flag(options, ClientConfigKey::AllowHttp);
        let mut tcp = TcpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(duration(
            options,
            ClientConfigKey::ConnectTimeout,
            DEFAULT_CONNECT_TIMEOUT,
        )));
        let schemes = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let schemes = if allow_http {
            schemes.https_or_http()
        } else {
            schemes.https_only()
        };
        let http1_only = flag(options, ClientConfigKey::Http1Only);
        let http2_only = flag(options, ClientConfigKey::Http2Only);
        let connector = if http1_only {
            schemes.enable_http1().wrap_connector(tcp)
        } else if http2_only {
            schemes.enable_http2().wrap_connector(tcp)
        } else {
            schemes.enable_http1().enable_http2().wrap_connector(tcp)
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder.http2_only(http2_only);
        let client = builder.build(connector);
        let user_agent = options
            .get_config_value(&ClientConfigKey::UserAgent)
            .unwrap_or_else(|| format!("traceo-gateway/{}", env!("CARGO_PKG_VERSION")));
        Ok(HttpClient::new(Service {
            client,
            timeout: duration(options, ClientConfigKey::Timeout, DEFAULT_TIMEOUT),
            user_agent: http::HeaderValue::from_str(&user_agent)
                .map_err(|e| generic(format!("user_agent: {e}")))?,
            default_headers: options.get_default_headers().cloned().unwrap_or_default(),
        }))
    }
}

type Https = hyper_rustls::HttpsConnector<TcpConnector>;

struct Service {
    client: Client<Https, HttpRequestBody>,
    timeout: Duration,
    user_agent: http::HeaderValue,
    default_headers: http::HeaderMap,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "object store HTTP client (timeout {:?})", self.timeout)
    }
}

/// The kind object_store's retry logic reads: a request that never left is safe to resend.
fn kind_of(e: &hyper_util::client::legacy::Error) -> HttpErrorKind {
    if e.is_connect() {
        HttpErrorKind::Connect
    } else {
        HttpErrorKind::Request
    }
}

#[async_trait]
impl HttpService for Service {
    async fn call(&self, mut req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let headers = req.headers_mut();
        for (k, v) in &self.default_headers {
            if !headers.contains_key(k) {
                headers.insert(k, v.clone());
            }
        }
        if !headers.contains_key(http::header::USER_AGENT) {
            headers.insert(http::header::USER_AGENT, self.user_agent.clone());
        }
        let sent = tokio::time::timeout(self.timeout, self.client.request(req)).await;
        let res = match sent {
            Err(_) => {
                return Err(HttpError::new(
                    HttpErrorKind::Timeout,
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no response within {:?}", self.timeout),
                    ),
                ))
            }
            Ok(Err(e)) => return Err(HttpError::new(kind_of(&e), e)),
            Ok(Ok(res)) => res,
        };
        let (parts, body) = res.into_parts();
        let body = body.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e));
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_object_store_prints_them_parse() {
        assert_eq!(humantime_like("30s"), Some(Duration::from_secs(30)));
        assert_eq!(humantime_like("1m 30s"), Some(Duration::from_secs(90)));
        assert_eq!(humantime_like("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(humantime_like("5x"), None);
        assert_eq!(humantime_like("s"), None);
    }

    #[test]
    fn options_set_the_client_and_defaults_apply() {
        let o = ClientOptions::new().with_timeout(Duration::from_secs(7));
        assert_eq!(
            duration(&o, ClientConfigKey::Timeout, DEFAULT_TIMEOUT),
            Duration::from_secs(7)
        );
        assert!(!flag(&o, ClientConfigKey::AllowHttp));
        assert!(flag(&o.with_allow_http(true), ClientConfigKey::AllowHttp));
    }
}
