//! The gossip value of one HA pair's election (key `ha.<hash>`): who the pair is, which
//! replica is elected, when it was elected and last seen. Peers are authenticated, but a value
//! is still checked like any input: bounded in size before parsing, every field bounded.

/// Largest value accepted, bytes (what a gossip value may be, see [`super::chitchat`]).
pub const MAX_VALUE_BYTES: usize = 1024;
/// Longest tenant id.
pub const MAX_TENANT_BYTES: usize = 150;
/// Longest cluster or replica label value.
pub const MAX_LABEL_BYTES: usize = 128;

/// One pair's election as gossiped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaPairValue {
    /// Tenant id.
    pub tenant: String,
    /// Cluster label value.
    pub cluster: String,
    /// Elected replica label value.
    pub replica: String,
    /// Unix ms it was elected.
    pub elected_at_ms: u64,
    /// Unix ms a node last accepted a request from it (never before `elected_at_ms`).
    pub last_seen_ms: u64,
}

/// Why a gossiped value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HaValueError {
    /// Over [`MAX_VALUE_BYTES`].
    #[error("value of {0} bytes is over {MAX_VALUE_BYTES}")]
    TooLarge(usize),
    /// Not the JSON array this module writes.
    #[error("not an HA pair value: {0}")]
    Malformed(String),
    /// A field over its bound, or empty.
    #[error("{field} is empty or over {limit} bytes")]
    Field {
        /// Which.
        field: &'static str,
        /// Its bound.
        limit: usize,
    },
}

impl HaPairValue {
    /// The value as gossiped: a JSON array, so label values need no escaping of our own.
    pub fn encode(&self) -> String {
        serde_json::json!([
            self.tenant,
            self.cluster,
            self.replica,
            self.elected_at_ms,
            self.last_seen_ms
        ])
        .to_string()
    }

    /// Parses and checks a peer's value.
    pub fn decode(value: &str) -> Result<HaPairValue, HaValueError> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(HaValueError::TooLarge(value.len()));
        }
        let (tenant, cluster, replica, elected_at_ms, last_seen_ms): (
            String,
            String,
            String,
            u64,
            u64,
        ) = serde_json::from_str(value).map_err(|e| HaValueError::Malformed(e.to_string()))?;
        for (field, v, limit) in [
            ("tenant", &tenant, MAX_TENANT_BYTES),
            ("cluster", &cluster, MAX_LABEL_BYTES),
            ("replica", &replica, MAX_LABEL_BYTES),
        ] {
            if v.is_empty() || v.len() > limit {
                return Err(HaValueError::Field { field, limit });
            }
        }
        Ok(HaPairValue {
            tenant,
            cluster,
            replica,
            elected_at_ms,
            last_seen_ms: last_seen_ms.max(elected_at_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_round_trips_and_bad_ones_are_errors_not_panics() {
        let v = HaPairValue {
            tenant: "team-a".into(),
            cluster: "c\t1\"".into(),
            replica: "a".into(),
            elected_at_ms: 5,
            last_seen_ms: 9,
        };
        assert_eq!(HaPairValue::decode(&v.encode()), Ok(v));
        for bad in [
            "",
            "[]",
            "{}",
            "[\"t\",\"c\",\"r\",1]",
            "[\"\",\"c\",\"r\",1,2]",
            "[\"t\",\"c\",\"r\",-1,2]",
        ] {
            assert!(HaPairValue::decode(bad).is_err(), "{bad}");
        }
        let long = format!("[\"t\",\"{}\",\"r\",1,2]", "x".repeat(129));
        assert!(matches!(
            HaPairValue::decode(&long),
            Err(HaValueError::Field {
                field: "cluster",
                ..
            })
        ));
        assert!(matches!(
            HaPairValue::decode(&"x".repeat(2000)),
            Err(HaValueError::TooLarge(2000))
        ));
        // last_seen never before the election.
        assert_eq!(
            HaPairValue::decode("[\"t\",\"c\",\"r\",10,2]")
                .unwrap()
                .last_seen_ms,
            10
        );
    }
}
