//! `regions[].sinks.remote_write[]`: a remote-write endpoint's section as written, its
//! defaults, and its validation into [`RemoteWriteSinkConfig`].

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::sinks::frame::KafkaFormat;
use crate::tls::client::{ClientTlsFile, ClientTlsSettings};
use crate::yaml::HumanDuration;

/// One entry of `regions[].sinks.remote_write:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteFile {
    /// Names the endpoint in metrics, logs and its delivery cursor; unique in the region.
    pub name: String,
    /// Endpoint, e.g. `https://prometheus-eu:9090/api/v1/write`. No credentials in it: they
    /// would show in logs; use `basic_auth` or `bearer_token_file`.
    pub url: String,
    /// TLS toward an `https://` endpoint: `ca_file` (default: the system bundle),
    /// `cert_file` and `key_file` for mTLS, `server_name` to verify instead of the URL's host.
    #[serde(default)]
    pub tls: Option<ClientTlsFile>,
    /// `Authorization: Bearer <token>`, the token read from this file (re-read when it
    /// changes).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Basic auth, the password read from `password_file` (re-read when it changes).
    #[serde(default)]
    pub basic_auth: Option<BasicAuthFile>,
    /// `remote_write_v1` (default) or `remote_write_v2`.
    #[serde(default)]
    pub format: KafkaFormat,
    /// Header that carries the tenant id. Default `X-Scope-OrgID`; empty sends none.
    #[serde(default = "default_tenant_header")]
    pub tenant_header: String,
    /// Extra headers sent with every request. For credentials prefer `bearer_token_file` or
    /// `basic_auth`: a secret here sits in the config file.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// One attempt gives up after this long. Default `30s`.
    #[serde(default = "default_rw_timeout")]
    pub timeout: HumanDuration,
    /// First wait before retrying a 5xx, a 429 or a network error; doubles up to
    /// `max_backoff`. A `Retry-After` from the endpoint is honoured up to `max_backoff`.
    #[serde(default = "default_min_backoff")]
    pub min_backoff: HumanDuration,
    /// Longest wait between retries. Default `10s`.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: HumanDuration,
    /// A batch still failing after this long fails (the write-ahead log keeps it and
    /// delivers it again). Default `5m`.
    #[serde(default = "default_max_retry_time")]
    pub max_retry_time: HumanDuration,
    /// Requests queued at once for one tenant are sent as one, up to this many bytes before
    /// compression. Default 4 MiB.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// Requests queued for the sink. Default 1024.
    #[serde(default = "crate::sinks::default_queue_capacity")]
    pub queue_capacity: usize,
}

/// `basic_auth:` of an endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthFile {
    /// User name.
    pub username: String,
    /// File holding the password (trailing newline ignored).
    pub password_file: PathBuf,
}

/// Credentials an endpoint gets, from files so they never sit in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: Bearer`, token from the file.
    Bearer(PathBuf),
    /// `Authorization: Basic`, password from the file.
    Basic {
        /// User name.
        username: String,
        /// Password file.
        password_file: PathBuf,
    },
}

impl Credentials {
    /// The `Authorization` value, read from the file now. The error names the file, never
    /// its content.
    pub fn header(&self) -> Result<String, String> {
        use base64::Engine as _;
        let read = |p: &PathBuf| crate::yaml::read_secret_file(p);
        Ok(match self {
            Credentials::Bearer(p) => format!("Bearer {}", read(p)?),
            Credentials::Basic {
                username,
                password_file,
            } => {
                let pair = format!("{username}:{}", read(password_file)?);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
        })
    }

    /// The file to watch for a change.
    pub fn file(&self) -> &PathBuf {
        match self {
            Credentials::Bearer(p) => p,
            Credentials::Basic { password_file, .. } => password_file,
        }
    }
}

fn default_tenant_header() -> String {
    "X-Scope-OrgID".into()
}
const fn default_rw_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
const fn default_min_backoff() -> HumanDuration {
    HumanDuration(Duration::from_millis(100))
}
const fn default_max_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
const fn default_max_retry_time() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
const fn default_max_batch_bytes() -> usize {
    4 << 20
}

/// One remote-write endpoint of a region (`regions[].sinks.remote_write[]`).
#[derive(Debug, Clone)]
pub struct RemoteWriteSinkConfig {
    /// Unique within the region.
    pub name: String,
    /// `http://` or `https://` endpoint.
    pub url: String,
    /// TLS, for an `https://` endpoint (always set for one).
    pub tls: Option<ClientTlsSettings>,
    /// Credentials from files.
    pub credentials: Option<Credentials>,
    /// 1.0 or 2.0.
    pub format: KafkaFormat,
    /// Header carrying the tenant id; empty for none.
    pub tenant_header: String,
    /// Extra headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Per attempt.
    pub timeout: Duration,
    /// First retry wait.
    pub min_backoff: Duration,
    /// Longest retry wait.
    pub max_backoff: Duration,
    /// Give up on a batch after this long.
    pub max_retry_time: Duration,
    /// Batch size before compression.
    pub max_batch_bytes: usize,
    /// Queue capacity.
    pub queue_capacity: usize,
}

impl RemoteWriteFile {
    /// Checks meaning; every problem names its field under `prefix`. `rw_names` holds the
    /// names already used in the region.
    pub(crate) fn validate(
        self,
        prefix: &str,
        rw_names: &mut HashSet<String>,
        problems: &mut Vec<String>,
    ) -> RemoteWriteSinkConfig {
        let w = self;
        if w.name.is_empty()
            || !w
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            problems.push(format!(
                "{prefix}.name: {:?} must be ASCII letters, digits, '-' or '_'",
                w.name
            ));
        } else if !rw_names.insert(w.name.clone()) {
            problems.push(format!(
                "{prefix}.name: {:?} is used twice in this region",
                w.name
            ));
        }
        let https = match w.url.parse::<http::Uri>() {
            Ok(u) if u.authority().is_some_and(|a| a.as_str().contains('@')) => {
                problems.push(format!(
                    "{prefix}.url: has credentials in it (they would show in logs); use basic_auth or bearer_token_file"
                ));
                false
            }
            Ok(u) if u.host().is_some() && u.scheme_str() == Some("https") => true,
            Ok(u) if u.host().is_some() && u.scheme_str() == Some("http") => false,
            Ok(_) => {
                problems.push(format!(
                    "{prefix}.url: {:?} must be an http:// or https:// URL with a host",
                    w.url
                ));
                false
            }
            Err(e) => {
                problems.push(format!("{prefix}.url: {:?}: {e}", w.url));
                false
            }
        };
        let tls = match (w.tls, https) {
            (Some(t), true) => t.validate(prefix, problems),
            // https with no `tls:` trusts the system bundle: secure by default.
            (None, true) => ClientTlsFile::default().validate(prefix, problems),
            (Some(_), false) => {
                problems.push(format!("{prefix}.tls: set, but the url is not https://"));
                None
            }
            (None, false) => None,
        };
        let credentials = match (w.bearer_token_file, w.basic_auth) {
            (Some(_), Some(_)) => {
                problems.push(format!(
                    "{prefix}.basic_auth: set together with bearer_token_file; choose one"
                ));
                None
            }
            (Some(p), None) => Some(Credentials::Bearer(p)),
            (None, Some(b)) => {
                if b.username.is_empty() || b.username.contains(':') {
                    problems.push(format!(
                        "{prefix}.basic_auth.username: must be non-empty without ':'"
                    ));
                }
                Some(Credentials::Basic {
                    username: b.username,
                    password_file: b.password_file,
                })
            }
            (None, None) => None,
        };
        if credentials.is_some() && !https {
            problems.push(format!(
                "{prefix}.url: credentials (basic_auth, bearer_token_file) need an https:// url; over http they travel in clear"
            ));
        }
        if let Some(c) = &credentials {
            let field = match c {
                Credentials::Bearer(_) => "bearer_token_file",
                Credentials::Basic { .. } => "basic_auth.password_file",
            };
            if let Err(why) = c.header() {
                problems.push(format!("{prefix}.{field}: {why}"));
            }
            if w.headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("authorization"))
            {
                problems.push(format!(
                    "{prefix}.headers.Authorization: set together with {field}; choose one"
                ));
            }
        }
        if !w.tenant_header.is_empty()
            && http::HeaderName::from_bytes(w.tenant_header.as_bytes()).is_err()
        {
            problems.push(format!(
                "{prefix}.tenant_header: {:?} is not a header name",
                w.tenant_header
            ));
        }
        for (k, v) in &w.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err()
                || http::HeaderValue::from_str(v).is_err()
            {
                problems.push(format!("{prefix}.headers.{k}: not a valid header"));
            }
        }
        for (field, d) in [
            ("timeout", w.timeout.0),
            ("min_backoff", w.min_backoff.0),
            ("max_backoff", w.max_backoff.0),
            ("max_retry_time", w.max_retry_time.0),
        ] {
            if d.is_zero() {
                problems.push(format!("{prefix}.{field}: must be greater than 0"));
            }
        }
        if w.min_backoff.0 > w.max_backoff.0 {
            problems.push(format!(
                "{prefix}.min_backoff: above max_backoff ({:?} > {:?})",
                w.min_backoff.0, w.max_backoff.0
            ));
        }
        if w.max_batch_bytes == 0 {
            problems.push(format!("{prefix}.max_batch_bytes: must be greater than 0"));
        }
        if w.queue_capacity == 0 {
            problems.push(format!("{prefix}.queue_capacity: must be greater than 0"));
        }
        RemoteWriteSinkConfig {
            name: w.name,
            url: w.url,
            tls,
            credentials,
            format: w.format,
            tenant_header: w.tenant_header,
            headers: w.headers,
            timeout: w.timeout.0,
            min_backoff: w.min_backoff.0,
            max_backoff: w.max_backoff.0,
            max_retry_time: w.max_retry_time.0,
            max_batch_bytes: w.max_batch_bytes,
            queue_capacity: w.queue_capacity,
        }
    }
}
