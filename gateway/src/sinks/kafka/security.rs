//! `regions[].sinks.kafka.tls` and `.sasl`: TLS and SASL toward the region's Kafka clusters,
//! mapped onto librdkafka's `security.protocol`, `ssl.*` and `sasl.*` settings for the sink's
//! producers and the probes alike.
//!
//! librdkafka does TLS with OpenSSL (the C library it is built against); the gateway's own
//! TLS, everywhere else, is rustls. The files are still checked at load with our loader, so a
//! bad file is a config error naming the field, not a failed handshake later. Secrets come
//! from files, read when a client is created (a rotated password file is used by the next
//! producer), never kept in the config or printed.

use std::path::PathBuf;

use rdkafka::config::ClientConfig;
use serde::Deserialize;

use crate::tls::client::{ClientTlsFile, ClientTlsSettings};

/// `sasl:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslFile {
    /// `plain`, `scram-sha-256` or `scram-sha-512`.
    pub mechanism: SaslMechanism,
    /// User name.
    pub username: String,
    /// File holding the password (trailing newline ignored).
    pub password_file: PathBuf,
}

/// `sasl.mechanism`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SaslMechanism {
    /// `PLAIN`: the password itself goes to the broker (use it over TLS).
    Plain,
    /// `SCRAM-SHA-256`. (Named explicitly: kebab-case alone would spell it `scram-sha256`,
    /// not what the documentation and Kafka's own name say.)
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn as_kafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// SASL, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sasl {
    /// Mechanism.
    pub mechanism: SaslMechanism,
    /// User name.
    pub username: String,
    /// Password file.
    pub password_file: PathBuf,
}

/// TLS and SASL of a Kafka sink, validated; empty means plaintext.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    /// TLS.
    pub tls: Option<ClientTlsSettings>,
    /// SASL.
    pub sasl: Option<Sasl>,
}

/// Checks `properties` against what [`KafkaSecurity`] owns; problems name the property.
/// Security settings are refused outright rather than by value: librdkafka reads booleans
/// and names case-insensitively and in several spellings (`false`, `0`, `f`, `NONE`), and a
/// secret there would sit in the config; `tls:` and `sasl:` are the one way to set them.
pub fn check_properties(
    prefix: &str,
    properties: &std::collections::BTreeMap<String, String>,
    problems: &mut Vec<String>,
) {
    for k in properties.keys() {
        let owned = k == "security.protocol"
            || k == "enable.ssl.certificate.verification"
            || k.starts_with("ssl.")
            || k.starts_with("sasl.");
        if owned {
            problems.push(format!(
                "{prefix}.properties.{k}: TLS and SASL are set with {prefix}.tls and {prefix}.sasl (secrets from files, verification always on), not properties"
            ));
        }
    }
}

impl KafkaSecurity {
    /// Validates `tls:` and `sasl:`; problems name `prefix.tls.*` and `prefix.sasl.*`.
    pub fn validate(
        prefix: &str,
        tls: Option<ClientTlsFile>,
        sasl: Option<SaslFile>,
        problems: &mut Vec<String>,
    ) -> KafkaSecurity {
        let tls = tls.and_then(|t| {
            if t.server_name.is_some() {
                problems.push(format!(
                    "{prefix}.tls.server_name: not supported for Kafka (librdkafka verifies each broker's advertised host name)"
                ));
            }
            t.validate(prefix, problems)
        });
        let plain_in_clear = tls.is_none()
            && sasl
                .as_ref()
                .is_some_and(|s| s.mechanism == SaslMechanism::Plain);
        if plain_in_clear {
            problems.push(format!(
                "{prefix}.sasl.mechanism: plain sends the password itself; it needs {prefix}.tls"
            ));
        }
        let sasl = sasl.map(|s| {
            if s.username.is_empty() {
                problems.push(format!("{prefix}.sasl.username: must not be empty"));
            }
            let sasl = Sasl {
                mechanism: s.mechanism,
                username: s.username,
                password_file: s.password_file,
            };
            if let Err(why) = sasl.password() {
                problems.push(format!("{prefix}.sasl.password_file: {why}"));
            }
            sasl
        });
        KafkaSecurity { tls, sasl }
    }

    /// `security.protocol` for these settings.
    pub fn protocol(&self) -> &'static str {
        match (&self.tls, &self.sasl) {
            (None, None) => "PLAINTEXT",
            (Some(_), None) => "SSL",
            (None, Some(_)) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        }
    }

    /// Sets the librdkafka settings on `c`, reading the password file now. The error names
    /// the file, never its content.
    pub fn apply(&self, c: &mut ClientConfig) -> Result<(), String> {
        if self.tls.is_none() && self.sasl.is_none() {
            return Ok(());
        }
        c.set("security.protocol", self.protocol());
        if let Some(t) = &self.tls {
            c.set("ssl.ca.location", t.ca_file.display().to_string())
                .set("enable.ssl.certificate.verification", "true")
                .set("ssl.endpoint.identification.algorithm", "https");
            if let Some((cert, key)) = &t.client {
                c.set("ssl.certificate.location", cert.display().to_string())
                    .set("ssl.key.location", key.display().to_string());
            }
        }
        if let Some(s) = &self.sasl {
            c.set("sasl.mechanism", s.mechanism.as_kafka())
                .set("sasl.username", &s.username)
                .set("sasl.password", s.password()?);
        }
        Ok(())
    }
}

impl Sasl {
    fn password(&self) -> Result<String, String> {
        crate::yaml::read_secret_file(&self.password_file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_are_spelled_as_documented() {
        for (text, want) in [
            ("plain", SaslMechanism::Plain),
            ("scram-sha-256", SaslMechanism::ScramSha256),
            ("scram-sha-512", SaslMechanism::ScramSha512),
        ] {
            let got: SaslMechanism = serde_yaml::from_str(text).unwrap();
            assert_eq!(got, want, "{text}");
        }
        assert!(serde_yaml::from_str::<SaslMechanism>("scram-sha256").is_err());
    }

    #[test]
    fn sasl_and_tls_map_onto_librdkafka_and_secrets_stay_in_files() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let mut problems = Vec::new();
        let s = KafkaSecurity::validate(
            "k",
            None,
            Some(SaslFile {
                mechanism: SaslMechanism::ScramSha512,
                username: "gw".into(),
                password_file: pw.clone(),
            }),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.protocol(), "SASL_PLAINTEXT");
        let mut c = ClientConfig::new();
        s.apply(&mut c).unwrap();
        assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(c.get("sasl.password"), Some("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"));

        std::fs::write(&pw, "").unwrap();
        let mut problems = Vec::new();
        KafkaSecurity::validate(
            "k",
            None,
            Some(SaslFile {
                mechanism: SaslMechanism::Plain,
                username: String::new(),
                password_file: pw,
            }),
            &mut problems,
        );
        // Empty user, empty password file, and PLAIN without TLS.
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].contains("plain sends the password itself"),
            "{problems:?}"
        );

        let mut problems = Vec::new();
        let props = [
            ("sasl.password", "hunter2"),
            ("enable.ssl.certificate.verification", "0"),
            ("ssl.endpoint.identification.algorithm", "NONE"),
            ("security.protocol", "SSL"),
            ("client.id", "ok"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        check_properties("k", &props, &mut problems);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            !problems.iter().any(|p| p.contains("hunter2")),
            "{problems:?}"
        );
    }
}
