//! Where a region's Parquet files go: a local directory, or a bucket (S3 and compatible
//! stores such as MinIO, GCS, Azure Blob) named by URL with the store's own option keys.
//!
//! The keys are parsed with object_store's own key types, the ones its `parse_url_opts`
//! uses, so the names match the crate's documentation (`aws_endpoint`, `aws_region`,
//! `google_service_account`, `azure_storage_account_name`, ...). Two differences from
//! `parse_url_opts`: an unknown key is a config error (it silently drops them), and every store
//! gets our rustls connector ([`super::http`]). Credentials the options leave out come from the
//! store's usual places: the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`), web-identity and
//! service-account files, instance metadata. Option values are never printed: `Debug` shows
//! only their keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::client::ClientConfigKey;
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;
use rustls::pki_types::CertificateDer;

use super::http::{RustlsConnector, UNSUPPORTED_OPTIONS};

/// The cloud store kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// `s3://bucket/prefix`
    S3,
    /// `gs://bucket/prefix`
    Gcs,
    /// `az://container/prefix` (also `abfs[s]://`, `azure://`)
    Azure,
}

/// A region's object store, validated.
#[derive(Clone)]
pub enum StoreLocation {
    /// A local directory: files are fsynced before their rows are acknowledged.
    Local(PathBuf),
    /// A bucket.
    Cloud {
        /// Which store.
        kind: Cloud,
        /// The URL as written (`s3://bucket/prefix`); no credentials can be in it.
        url: url::Url,
        /// The key prefix inside the bucket (from the URL's path).
        prefix: String,
        /// The store's options, keys lower-cased. Values may be secrets.
        options: BTreeMap<String, String>,
        /// CAs the store's TLS certificate must chain to.
        roots: Arc<Vec<CertificateDer<'static>>>,
    },
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Local(p) => write!(f, "Local({})", p.display()),
            StoreLocation::Cloud {
                kind, url, options, ..
            } => f
                .debug_struct("Cloud")
                .field("kind", kind)
                .field("url", &url.as_str())
                .field("option_keys", &options.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// Why a store could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The local directory cannot be used.
    #[error("cannot use {path}: {source}")]
    Dir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The store's builder refused the URL or the options.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

impl StoreLocation {
    /// `bucket/prefix` of a cloud store, the directory of a local one.
    pub fn describe(&self) -> String {
        match self {
            StoreLocation::Local(p) => p.display().to_string(),
            StoreLocation::Cloud { url, .. } => url.as_str().to_string(),
        }
    }

    /// The directory files are fsynced under, for a local store.
    pub fn local_root(&self) -> Option<&PathBuf> {
        match self {
            StoreLocation::Local(p) => Some(p),
            StoreLocation::Cloud { .. } => None,
        }
    }

    /// Makes the store. A local directory is created if missing and canonicalised; returns
    /// the store and, for a local one, its canonical root.
    pub fn open(&self) -> Result<(Arc<dyn ObjectStore>, Option<PathBuf>), StoreError> {
        match self {
            StoreLocation::Local(path) => {
                let dir_err = |source| StoreError::Dir {
                    path: path.clone(),
                    source,
                };
                std::fs::create_dir_all(path).map_err(dir_err)?;
                let root = std::fs::canonicalize(path).map_err(dir_err)?;
                let store = LocalFileSystem::new_with_prefix(&root)?;
                Ok((Arc::new(store), Some(root)))
            }
            StoreLocation::Cloud {
                kind,
                url,
                prefix,
                options,
                roots,
            } => {
                let store =
                    build_cloud(*kind, url, options, RustlsConnector::new((**roots).clone()))?;
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    store
                } else {
                    Arc::new(PrefixStore::new(store, prefix.as_str()))
                };
                Ok((store, None))
            }
        }
    }
}

/// The store kind a URL names, or why it names none.
pub fn cloud_kind(url: &url::Url) -> Result<Cloud, String> {
    match url.scheme() {
        "s3" | "s3a" => Ok(Cloud::S3),
        "gs" => Ok(Cloud::Gcs),
        "az" | "azure" | "abfs" | "abfss" | "adl" => Ok(Cloud::Azure),
        other => Err(format!(
            "scheme {other:?} is not one of file, s3, gs, az (abfs, abfss, azure, adl)"
        )),
    }
}

/// Checks that `key` is an option of `kind`'s store and one our client honours; the problem
/// is the reason, to be put after the field's name.
pub fn check_option(kind: Cloud, key: &str) -> Result<(), String> {
    let client: Option<ClientConfigKey> = match kind {
        Cloud::S3 => match AmazonS3ConfigKey::from_str(key) {
            Ok(AmazonS3ConfigKey::Client(c)) => Some(c),
            Ok(_) => None,
            Err(_) => return Err(
                "not an S3 option of object_store (e.g. aws_endpoint, aws_region, aws_allow_http)"
                    .to_string(),
            ),
        },
        Cloud::Gcs => match GoogleConfigKey::from_str(key) {
            Ok(GoogleConfigKey::Client(c)) => Some(c),
            Ok(_) => None,
            Err(_) => {
                return Err("not a GCS option of object_store (e.g. google_service_account)".into())
            }
        },
        Cloud::Azure => match AzureConfigKey::from_str(key) {
            Ok(AzureConfigKey::Client(c)) => Some(c),
            Ok(_) => None,
            Err(_) => {
                return Err(
                    "not an Azure option of object_store (e.g. azure_storage_account_name)".into(),
                )
            }
        },
    };
    if let Some(c) = client {
        if let Some((_, why)) = UNSUPPORTED_OPTIONS.iter().find(|(k, _)| *k == c) {
            return Err((*why).to_string());
        }
    }
    Ok(())
}

fn build_cloud(
    kind: Cloud,
    url: &url::Url,
    options: &BTreeMap<String, String>,
    connector: RustlsConnector,
) -> object_store::Result<Arc<dyn ObjectStore>> {
    let bad_key = |k: &str| object_store::Error::Generic {
        store: "config",
        source: format!("unknown option {k}").into(),
    };
    Ok(match kind {
        Cloud::S3 => {
            let mut b = AmazonS3Builder::from_env().with_url(url.as_str());
            for (k, v) in options {
                b = b.with_config(k.parse().map_err(|_| bad_key(k))?, v);
            }
            Arc::new(b.with_http_connector(connector).build()?)
        }
        Cloud::Gcs => {
            let mut b = GoogleCloudStorageBuilder::from_env().with_url(url.as_str());
            for (k, v) in options {
                b = b.with_config(k.parse().map_err(|_| bad_key(k))?, v);
            }
            Arc::new(b.with_http_connector(connector).build()?)
        }
        Cloud::Azure => {
            let mut b = MicrosoftAzureBuilder::from_env().with_url(url.as_str());
            for (k, v) in options {
                b = b.with_config(k.parse().map_err(|_| bad_key(k))?, v);
            }
            Arc::new(b.with_http_connector(connector).build()?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(options: &[(&str, &str)]) -> StoreLocation {
        let url = url::Url::parse("s3://bucket-eu/traceo").unwrap();
        StoreLocation::Cloud {
            kind: Cloud::S3,
            url,
            prefix: "traceo".into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            roots: Arc::new(Vec::new()),
        }
    }

    #[test]
    fn an_s3_store_builds_from_url_and_options_without_network() {
        let loc = s3(&[
            ("aws_endpoint", "http://127.0.0.1:9"),
            ("aws_region", "eu-west-1"),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "AKIDEXAMPLE"),
            ("aws_secret_access_key", "very-secret"),
        ]);
        let (store, root) = loc.clone().open().unwrap();
        assert!(root.is_none());
        // The URL's path is a key prefix over the bucket's store.
        assert!(format!("{store}").contains("traceo"), "{store}");
        let StoreLocation::Cloud {
            kind,
            url,
            options,
            roots,
            ..
        } = loc
        else {
            unreachable!()
        };
        let bare = StoreLocation::Cloud {
            kind,
            url,
            prefix: String::new(),
            options,
            roots,
        };
        let (store, _) = bare.open().unwrap();
        assert!(format!("{store}").contains("bucket-eu"), "{store}");
    }

    #[test]
    fn debug_shows_option_keys_never_values() {
        let shown = format!("{:?}", s3(&[("aws_secret_access_key", "very-secret")]));
        assert!(shown.contains("aws_secret_access_key"), "{shown}");
        assert!(!shown.contains("very-secret"), "{shown}");
    }

    #[test]
    fn options_are_checked_against_the_stores_own_keys() {
        assert!(check_option(Cloud::S3, "aws_endpoint").is_ok());
        assert!(check_option(Cloud::S3, "aws_allow_http").is_ok());
        assert!(check_option(Cloud::S3, "timeout").is_ok());
        assert!(check_option(Cloud::S3, "aws_endpiont").is_err());
        assert!(check_option(Cloud::Gcs, "google_service_account").is_ok());
        assert!(check_option(Cloud::Azure, "azure_storage_account_name").is_ok());
        let why = check_option(Cloud::S3, "aws_proxy_url").unwrap_err();
        assert!(why.contains("prox"), "{why}");
        let why = check_option(Cloud::S3, "aws_allow_invalid_certificates").unwrap_err();
        assert!(why.contains("verification"), "{why}");
    }

    #[test]
    fn schemes_name_their_store() {
        let k = |s: &str| cloud_kind(&url::Url::parse(s).unwrap());
        assert_eq!(k("s3://b/p"), Ok(Cloud::S3));
        assert_eq!(k("gs://b/p"), Ok(Cloud::Gcs));
        assert_eq!(k("az://c/p"), Ok(Cloud::Azure));
        assert!(k("ftp://x/y").is_err());
    }
}
