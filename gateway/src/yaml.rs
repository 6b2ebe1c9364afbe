//! Building blocks of the YAML configuration that every section's format shares (a duration
//! written for people). Each component defines and validates its own section with these; the
//! `config` module only composes the sections.
//!
//! May call: nothing of the crate.

use std::fmt;
use std::time::Duration;

/// Deserializes a list of secrets (passwords, tokens) without ever putting one in an error:
/// serde's own messages quote the value they did not expect (`invalid type: string
/// "hunter2", expected a sequence`), and config errors are printed by `check-config` and logged.
pub fn secret_list<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error as _;
    use serde::Deserialize as _;
    let v = serde_yaml::Value::deserialize(d)?;
    match v {
        serde_yaml::Value::Null => Ok(Vec::new()),
        serde_yaml::Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                serde_yaml::Value::String(s) => Ok(s),
                _ => Err(D::Error::custom(format!(
                    "entry {i} is not a string (the value is a secret and not shown)"
                ))),
            })
            .collect(),
        _ => Err(D::Error::custom(
            "expected a list of strings, e.g. [\"...\"] (the value is a secret and not shown)",
        )),
    }
}

/// Reads a one-line secret (a password, a token) from `path`, without its trailing newline.
/// The error names the file, never its content.
pub fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if secret.contains(['\r', '\n']) {
        return Err(format!("{} holds more than one line", path.display()));
    }
    Ok(secret.to_string())
}

/// A duration written for people: `250ms`, `10s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses `<integer><unit>` with unit one of `ms`, `s`, `m`, `h`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{s:?} has no unit (use ms, s, m or h)"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} does not start with a whole number"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => {
                return Err(format!(
                    "{s:?} has unknown unit {unit:?} (use ms, s, m or h)"
                ))
            }
        };
        Ok(HumanDuration(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misplaced_secret_is_never_quoted_in_the_error() {
        #[derive(Debug, serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "secret_list")]
            #[allow(dead_code)]
            passwords: Vec<String>,
        }
        let e = serde_yaml::from_str::<T>("passwords: hunter2-secret").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("list of strings"), "{e}");
        let e = serde_yaml::from_str::<T>("passwords: [ok, {x: hunter2-secret}]").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let t: T = serde_yaml::from_str("passwords: [a, b]").unwrap();
        assert_eq!(t.passwords, ["a", "b"]);
    }

    #[test]
    fn parses_units() {
        assert_eq!(
            HumanDuration::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            HumanDuration::parse("10s").unwrap().0,
            Duration::from_secs(10)
        );
        assert_eq!(
            HumanDuration::parse("2m").unwrap().0,
            Duration::from_secs(120)
        );
        assert_eq!(
            HumanDuration::parse("1h").unwrap().0,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn rejects_missing_or_unknown_unit() {
        assert!(HumanDuration::parse("10").is_err());
        assert!(HumanDuration::parse("10d").is_err());
        assert!(HumanDuration::parse("s").is_err());
    }
}
