use std::fmt;
use std::sync::Arc;

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Empty string.
    #[error("{kind} must not be empty")]
    Empty {
        /// "tenant id" or "region id".
        kind: &'static str,
    },
    /// Longer than allowed.
    #[error("{kind} is {len} bytes, over the limit of {limit}")]
    TooLong {
        /// "tenant id" or "region id".
        kind: &'static str,
        /// Length seen.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// A character outside the allowed set.
    #[error("{kind} {value:?} has {ch:?}; allowed are ASCII letters, digits, '-', '_' and '.'")]
    BadChar {
        /// "tenant id" or "region id".
        kind: &'static str,
        /// The offending value.
        value: String,
        /// First bad character.
        ch: char,
    },
    /// `.` or `..`, which would be path components.
    #[error("{kind} must not be {value:?}")]
    Reserved {
        /// "tenant id" or "region id".
        kind: &'static str,
        /// The offending value.
        value: String,
    },
}

/// Tenant ids follow Mimir's practical limit (150 bytes); region ids are short names.
const MAX_TENANT_LEN: usize = 150;
const MAX_REGION_LEN: usize = 64;

fn check(kind: &'static str, s: &str, limit: usize) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > limit {
        return Err(IdError::TooLong {
            kind,
            len: s.len(),
            limit,
        });
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(IdError::BadChar {
            kind,
            value: s.to_string(),
            ch,
        });
    }
    if s == "." || s == ".." {
        return Err(IdError::Reserved {
            kind,
            value: s.to_string(),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $limit:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Parses and validates an identifier.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check($kind, s, $limit)?;
                Ok(Self(Arc::from(s)))
            }

            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A tenant: the owner of the data in a request. Safe to use as a path component and a
    /// Kafka header value.
    TenantId,
    "tenant id",
    MAX_TENANT_LEN
);
id_type!(
    /// A region: a place data may be stored, with its own sinks.
    RegionId,
    "region id",
    MAX_REGION_LEN
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_ids() {
        for s in ["team-a", "acme_corp", "t.1", "A9"] {
            assert_eq!(TenantId::parse(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn rejects_path_traversal_and_separators() {
        for s in ["..", ".", "a/b", "a\\b", "x y", "é", "a=b"] {
            assert!(TenantId::parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn rejects_empty_and_long() {
        assert_eq!(
            TenantId::parse(""),
            Err(IdError::Empty { kind: "tenant id" })
        );
        assert!(matches!(
            RegionId::parse(&"r".repeat(65)),
            Err(IdError::TooLong { len: 65, .. })
        ));
    }
}
