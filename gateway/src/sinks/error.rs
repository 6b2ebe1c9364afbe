//! The one error every sink reports, and what the delivery loop decides from it.
//!
//! A sink says either "try again" ([`SinkError::Retryable`]: an outage, a timeout, a full
//! queue; the log keeps the record and its feeder retries with backoff) or "never" ([`SinkError::Permanent`]:
//! the upstream refused this data for a reason that sending it again cannot change, such as
//! a message over the broker's size limit, a topic that does not exist, a 4xx from a
//! remote-write endpoint). A permanent refusal sends the record to the region's quarantine
//! (`crate::quarantine`) so that delivery goes on with the next record instead of retrying
//! one record forever and stalling the whole region behind it.
//!
//! Each error carries a short, stable [`Reason`] (a metric label and what `quarantine list`
//! prints) and the upstream's own answer (what an operator needs to fix the cause).

use std::fmt;

/// Why a sink failed, in a few stable words: the `reason` label of
/// `traceo_quarantined_records_total` and of the quarantine's entries. Adding a variant is
/// fine; renaming one breaks dashboards and alert rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The message is larger than the producer or the broker accepts.
    MessageTooLarge,
    /// The topic (or partition) does not exist on the cluster.
    UnknownTopic,
    /// The topic name is not valid on the cluster.
    InvalidTopic,
    /// The cluster does not let this gateway write there.
    NotAuthorized,
    /// The object store's bucket (or container) does not exist.
    NoSuchBucket,
    /// The broker refused the record's content (timestamp, policy, format).
    InvalidRecord,
    /// A remote-write endpoint answered a 4xx other than 429.
    ClientError4xx,
    /// The rows could not be encoded (Arrow or Parquet refused them).
    Encoding,
    /// The write-ahead log record does not decode.
    Undecodable,
    /// The write-ahead log record names another region than the log holding it.
    ForeignRegion,
    /// The write-ahead log bytes failed their checksum or framing.
    Corrupt,
    /// The network or the broker connection failed.
    Transport,
    /// The upstream did not answer in time.
    Timeout,
    /// A local queue (librdkafka's) stayed full.
    QueueFull,
    /// The upstream is there but cannot take data now (5xx, no leader, too few replicas).
    Unavailable,
    /// The upstream asked to slow down (429).
    RateLimited,
    /// Local storage failed.
    Io,
    /// The sink stopped before it finished.
    Stopped,
    /// Anything else; retried.
    Other,
}

impl Reason {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::MessageTooLarge => "message_too_large",
            Reason::UnknownTopic => "unknown_topic",
            Reason::InvalidTopic => "invalid_topic",
            Reason::NotAuthorized => "not_authorized",
            Reason::NoSuchBucket => "no_such_bucket",
            Reason::InvalidRecord => "invalid_record",
            Reason::ClientError4xx => "client_error_4xx",
            Reason::Encoding => "encoding",
            Reason::Undecodable => "undecodable",
            Reason::ForeignRegion => "foreign_region",
            Reason::Corrupt => "corrupt",
            Reason::Transport => "transport",
            Reason::Timeout => "timeout",
            Reason::QueueFull => "queue_full",
            Reason::Unavailable => "unavailable",
            Reason::RateLimited => "rate_limited",
            Reason::Io => "io",
            Reason::Stopped => "stopped",
            Reason::Other => "other",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a sink could not make a batch durable, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: the same data may be taken later.
    #[error("{answer}")]
    Retryable {
        /// In a few words.
        reason: Reason,
        /// What failed, with the upstream's answer.
        answer: String,
    },
    /// Refused for good: sending the same data again gets the same answer.
    #[error("{answer} (refused for good: {reason})")]
    Permanent {
        /// In a few words.
        reason: Reason,
        /// What failed, with the upstream's answer.
        answer: String,
    },
}

impl SinkError {
    /// A failure worth retrying.
    pub fn retryable(reason: Reason, answer: impl Into<String>) -> Self {
        SinkError::Retryable {
            reason,
            answer: answer.into(),
        }
    }

    /// A refusal that retrying cannot change.
    pub fn permanent(reason: Reason, answer: impl Into<String>) -> Self {
        SinkError::Permanent {
            reason,
            answer: answer.into(),
        }
    }

    /// Whether the record goes to quarantine rather than being retried.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SinkError::Permanent { .. })
    }

    /// The short reason.
    pub fn reason(&self) -> Reason {
        match self {
            SinkError::Retryable { reason, .. } | SinkError::Permanent { reason, .. } => *reason,
        }
    }

    /// What failed, with the upstream's answer.
    pub fn answer(&self) -> &str {
        match self {
            SinkError::Retryable { answer, .. } | SinkError::Permanent { answer, .. } => answer,
        }
    }

    /// The remote-write spec's rule for an HTTP answer that is not 2xx: "5xx and 429 MUST
    /// be retried ... 4xx other than 429 MUST NOT be retried" (Prometheus Remote-Write 1.0,
    /// "Retries & Backoff"; the same in 2.0). `answer` describes the attempt.
    pub fn from_http_status(status: u16, answer: impl Into<String>) -> Self {
        match status {
            429 => SinkError::retryable(Reason::RateLimited, answer),
            400..=499 => SinkError::permanent(Reason::ClientError4xx, answer),
            500..=599 => SinkError::retryable(Reason::Unavailable, answer),
            // 1xx and 3xx are not answers the spec defines; retried like an outage.
            _ => SinkError::retryable(Reason::Other, answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_write_4xx_other_than_429_is_permanent() {
        for status in [400, 401, 403, 404, 409, 413, 422] {
            let e = SinkError::from_http_status(status, "refused");
            assert!(e.is_permanent(), "{status}");
            assert_eq!(e.reason(), Reason::ClientError4xx);
        }
    }

    #[test]
    fn remote_write_429_and_5xx_are_retryable() {
        for status in [429, 500, 502, 503, 504] {
            assert!(
                !SinkError::from_http_status(status, "busy").is_permanent(),
                "{status}"
            );
        }
        assert_eq!(
            SinkError::from_http_status(429, "slow down").reason(),
            Reason::RateLimited
        );
    }

    #[test]
    fn a_permanent_error_names_its_reason_and_keeps_the_answer() {
        let e = SinkError::permanent(Reason::UnknownTopic, "topic metrics.a: UnknownTopic");
        assert_eq!(e.answer(), "topic metrics.a: UnknownTopic");
        assert_eq!(
            e.to_string(),
            "topic metrics.a: UnknownTopic (refused for good: unknown_topic)"
        );
    }
}
