//! `regions[].sinks.parquet:`: the Parquet sink's section as written, its defaults, and its
//! validation into [`ParquetSinkConfig`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

use super::store::{check_option, cloud_kind, StoreLocation};
use crate::yaml::HumanDuration;

/// `regions[].sinks.parquet:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetFile {
    /// Local directory to write under (created if missing): shorthand for `url: file:///...`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Where files go: `file:///dir`, `s3://bucket/prefix`, `gs://bucket/prefix` or
    /// `az://container/prefix`. Exactly one of `path` and `url`.
    #[serde(default)]
    pub url: Option<String>,
    /// The object store's own configuration keys, as object_store documents them
    /// (`aws_endpoint`, `aws_region`, `aws_allow_http`, `aws_virtual_hosted_style_request`,
    /// `timeout`, ...). Credentials left out come from the environment, files or instance
    /// metadata. Values are never logged.
    #[serde(default)]
    pub options: BTreeMap<String, OptionValue>,
    /// CA certificates (PEM) a cloud store's TLS certificate must chain to. Default: the
    /// system bundle (`$SSL_CERT_FILE`, else `/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A file larger than this is uploaded in parts of this size (a multipart upload, visible
    /// only once completed). Default 8 MiB; S3 needs at least 5 MiB.
    #[serde(default = "default_part_bytes")]
    pub multipart_part_bytes: usize,
    /// Rotate a file at this many buffered bytes. Default 64 MiB.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: usize,
    /// Rotate a file when its oldest row is this old. Requests are acknowledged when their
    /// file is committed, so this bounds request latency. Default `5s`.
    #[serde(default = "default_max_file_age")]
    pub max_file_age: HumanDuration,
    /// Requests queued for the sink before new ones get 503. Default 1024.
    #[serde(default = "crate::sinks::default_queue_capacity")]
    pub queue_capacity: usize,
}

/// An option's value: YAML may write `true` or `30` where the store wants a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    /// A string.
    Text(String),
    /// `true` / `false`.
    Bool(bool),
    /// A number.
    Number(serde_yaml::Number),
}

impl OptionValue {
    fn into_string(self) -> String {
        match self {
            OptionValue::Text(s) => s,
            OptionValue::Bool(b) => b.to_string(),
            OptionValue::Number(n) => n.to_string(),
        }
    }
}

const fn default_max_file_bytes() -> usize {
    64 << 20
}
const fn default_part_bytes() -> usize {
    8 << 20
}
/// S3's smallest part (all but the last).
const MIN_PART_BYTES: usize = 5 << 20;
/// S3's largest part.
const MAX_PART_BYTES: usize = 5 << 30;
const fn default_max_file_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

/// The Parquet sink of one region.
#[derive(Debug, Clone)]
pub struct ParquetSinkConfig {
    /// Where the files go.
    pub store: StoreLocation,
    /// Files larger than this are uploaded in parts of this size.
    pub multipart_part_bytes: usize,
    /// Close a file once its buffered rows reach this many bytes (estimated, uncompressed).
    pub max_file_bytes: usize,
    /// Close a file once its first row is this old.
    pub max_file_age: Duration,
    /// Requests queued for the sink before new ones are refused with 503.
    pub queue_capacity: usize,
}

impl ParquetFile {
    /// Checks meaning; every problem names its field under `prefix`.
    pub(crate) fn validate(self, prefix: &str, problems: &mut Vec<String>) -> ParquetSinkConfig {
        let p = self;
        if p.max_file_bytes == 0 {
            problems.push(format!("{prefix}.max_file_bytes: must be greater than 0"));
        }
        if p.max_file_age.0.is_zero() {
            problems.push(format!("{prefix}.max_file_age: must be greater than 0"));
        }
        if p.queue_capacity == 0 {
            problems.push(format!("{prefix}.queue_capacity: must be greater than 0"));
        }
        if !(MIN_PART_BYTES..=MAX_PART_BYTES).contains(&p.multipart_part_bytes) {
            problems.push(format!(
                "{prefix}.multipart_part_bytes: must be within {MIN_PART_BYTES}..={MAX_PART_BYTES} (S3's part sizes)"
            ));
        }
        let options: BTreeMap<String, String> = p
            .options
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.into_string()))
            .collect();
        let store = match (p.path, p.url) {
            (Some(_), Some(_)) => {
                problems.push(format!("{prefix}: give either path or url, not both"));
                None
            }
            (None, None) => {
                problems.push(format!("{prefix}: needs path (a local directory) or url (file://, s3://, gs://, az://)"));
                None
            }
            (Some(path), None) => {
                if path.as_os_str().is_empty() {
                    problems.push(format!("{prefix}.path: must not be empty"));
                }
                local_only(prefix, &options, p.ca_file.is_some(), problems);
                Some(StoreLocation::Local(path))
            }
            (None, Some(raw)) => store_at(prefix, &raw, options, p.ca_file, problems),
        };
        ParquetSinkConfig {
            store: store.unwrap_or_else(|| StoreLocation::Local(PathBuf::new())),
            multipart_part_bytes: p.multipart_part_bytes,
            max_file_bytes: p.max_file_bytes,
            max_file_age: p.max_file_age.0,
            queue_capacity: p.queue_capacity,
        }
    }
}

fn local_only(
    prefix: &str,
    options: &BTreeMap<String, String>,
    ca_file: bool,
    problems: &mut Vec<String>,
) {
    if let Some(k) = options.keys().next() {
        problems.push(format!(
            "{prefix}.options.{k}: a local directory takes no options"
        ));
    }
    if ca_file {
        problems.push(format!("{prefix}.ca_file: only for a cloud store"));
    }
}

fn store_at(
    prefix: &str,
    raw: &str,
    options: BTreeMap<String, String>,
    ca_file: Option<PathBuf>,
    problems: &mut Vec<String>,
) -> Option<StoreLocation> {
    let url = match url::Url::parse(raw) {
        Ok(u) => u,
        Err(e) => {
            problems.push(format!("{prefix}.url: {e}"));
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        problems.push(format!(
            "{prefix}.url: no credentials in the URL (they would show in logs); use options or the environment"
        ));
        return None;
    }
    if url.query().is_some() || url.fragment().is_some() {
        problems.push(format!("{prefix}.url: no query or fragment; use options"));
        return None;
    }
    if url.scheme() == "file" {
        local_only(prefix, &options, ca_file.is_some(), problems);
        return match url.to_file_path() {
            Ok(p) => Some(StoreLocation::Local(p)),
            Err(()) => {
                problems.push(format!("{prefix}.url: not a local absolute path"));
                None
            }
        };
    }
    let kind = match cloud_kind(&url) {
        Ok(k) => k,
        Err(why) => {
            problems.push(format!("{prefix}.url: {why}"));
            return None;
        }
    };
    if url.host_str().is_none_or(str::is_empty) {
        problems.push(format!("{prefix}.url: names no bucket"));
        return None;
    }
    let before = problems.len();
    for k in options.keys() {
        if let Err(why) = check_option(kind, k) {
            problems.push(format!("{prefix}.options.{k}: {why}"));
        }
    }
    let roots = roots(prefix, ca_file, problems);
    if problems.len() != before {
        return None;
    }
    let store = StoreLocation::Cloud {
        kind,
        prefix: url.path().trim_matches('/').to_string(),
        url,
        options,
        roots: Arc::new(roots),
    };
    // The builders check the bucket name, region and option values without the network.
    if let Err(e) = store.open() {
        problems.push(format!("{prefix}: {e}"));
        return None;
    }
    Some(store)
}

fn roots(
    prefix: &str,
    ca_file: Option<PathBuf>,
    problems: &mut Vec<String>,
) -> Vec<CertificateDer<'static>> {
    let (field, path) = match ca_file {
        Some(p) => ("ca_file", p),
        None => match crate::tls::client::system_bundle() {
            Some(p) => ("ca_file (the system bundle)", p),
            None => {
                problems.push(format!(
                    "{prefix}.ca_file: required: no system CA bundle ($SSL_CERT_FILE or {})",
                    crate::tls::client::SYSTEM_CA_BUNDLE
                ));
                return Vec::new();
            }
        },
    };
    let read: Result<Vec<CertificateDer<'static>>, _> =
        CertificateDer::pem_file_iter(&path).and_then(|it| it.collect());
    match read {
        Ok(list) if !list.is_empty() => list,
        Ok(_) => {
            problems.push(format!(
                "{prefix}.{field}: {}: no PEM certificate in it",
                path.display()
            ));
            Vec::new()
        }
        Err(e) => {
            problems.push(format!("{prefix}.{field}: {}: {e}", path.display()));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::SinkConfig;

    #[test]
    fn the_embedded_default_writes_parquet_under_data() {
        let c = crate::config::Config::embedded_default();
        let SinkConfig::Parquet(p) = &c.regions[0].sinks[0] else {
            panic!("a parquet sink")
        };
        assert_eq!(p.store.local_root(), Some(&PathBuf::from("./data")));
    }

    fn problems_of(section: &str) -> Vec<String> {
        let f: ParquetFile = serde_yaml::from_str(section).unwrap();
        let mut problems = Vec::new();
        f.validate("regions[0].sinks.parquet", &mut problems);
        problems
    }

    #[test]
    fn an_s3_url_with_its_options_is_a_cloud_store() {
        let f: ParquetFile = serde_yaml::from_str(
            "{ url: 's3://eu-metrics/traceo/', options: { aws_endpoint: 'http://127.0.0.1:9000', aws_region: eu-west-1, aws_allow_http: true, AWS_VIRTUAL_HOSTED_STYLE_REQUEST: false } }",
        )
        .unwrap();
        let mut problems = Vec::new();
        let c = f.validate("p", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let StoreLocation::Cloud {
            prefix, options, ..
        } = &c.store
        else {
            panic!("a cloud store: {:?}", c.store)
        };
        assert_eq!(prefix, "traceo");
        assert_eq!(options["aws_allow_http"], "true");
        assert!(options.contains_key("aws_virtual_hosted_style_request"));
        assert!(c.store.local_root().is_none());
    }

    #[test]
    fn a_file_url_is_a_local_directory() {
        let f: ParquetFile =
            serde_yaml::from_str("{ url: 'file:///var/lib/traceo/parquet' }").unwrap();
        let mut problems = Vec::new();
        let c = f.validate("p", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            c.store.local_root(),
            Some(&PathBuf::from("/var/lib/traceo/parquet"))
        );
    }

    #[test]
    fn store_mistakes_name_their_field() {
        let p = problems_of("{ path: /tmp/x, url: 's3://b/p' }");
        assert!(p[0].contains("either path or url"), "{p:?}");
        let p = problems_of("{ max_file_age: 1s }");
        assert!(p[0].contains("needs path"), "{p:?}");
        let p = problems_of("{ url: 's3://b/p', options: { aws_endpiont: x } }");
        assert!(
            p[0].contains("regions[0].sinks.parquet.options.aws_endpiont"),
            "{p:?}"
        );
        let p = problems_of("{ url: 'ftp://b/p' }");
        assert!(p[0].contains(".url: scheme"), "{p:?}");
        let p = problems_of("{ url: 's3://key:secret@b/p' }");
        assert!(p[0].contains("no credentials"), "{p:?}");
        assert!(!p[0].contains("secret@"), "{p:?}");
        let p = problems_of("{ path: /tmp/x, options: { aws_region: eu } }");
        assert!(
            p[0].contains("options.aws_region: a local directory"),
            "{p:?}"
        );
        let p =
            problems_of("{ url: 's3://b/p', options: { aws_allow_invalid_certificates: true } }");
        assert!(p[0].contains("verification"), "{p:?}");
        let p = problems_of("{ url: 's3://b/p', multipart_part_bytes: 1024 }");
        assert!(p[0].contains("multipart_part_bytes"), "{p:?}");
    }
}
