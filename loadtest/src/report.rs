//! What a run measured, per connection and merged: request latency in an HDR histogram,
//! answers by code, samples sent and acknowledged, requests that could not be sent on time,
//! answers that asked for a `Retry-After` pause. Rendered as one human line or as a JSON
//! report.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Highest latency the histogram holds (longer ones are clamped to it): ten minutes, far
/// beyond any request timeout a run uses.
const LATENCY_MAX_US: u64 = 600_000_000;
/// Significant digits of the histogram: 0.1 % relative error per bucket.
const LATENCY_SIGFIG: u8 = 3;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Code {
    /// An HTTP answer (for gRPC: a non-200 HTTP status).
    Http(u16),
    /// A gRPC answer: HTTP 200 with this `grpc-status` (in the trailers, or in the headers
    /// of a trailers-only answer).
    Grpc(u32),
    /// A gRPC answer without `grpc-status`: a protocol violation.
    GrpcMissing,
    /// No connection could be opened.
    Connect,
    /// The connection failed while the request was in flight.
    Io,
    /// No complete answer within the request timeout.
    Timeout,
}

impl Code {
    /// Whether the gateway acknowledged the request: 2xx, or gRPC status 0 (OK).
    pub fn is_ack(self) -> bool {
        match self {
            Self::Http(s) => (200..300).contains(&s),
            Self::Grpc(s) => s == 0,
            _ => false,
        }
    }

    /// Whether an answer arrived (its latency is measured).
    pub fn answered(self) -> bool {
        matches!(self, Self::Http(_) | Self::Grpc(_) | Self::GrpcMissing)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(s) => write!(f, "{s}"),
            Self::Grpc(s) => write!(f, "grpc_{s}"),
            Self::GrpcMissing => f.write_str("grpc_missing"),
            Self::Connect => f.write_str("connect_error"),
            Self::Io => f.write_str("connection_error"),
            Self::Timeout => f.write_str("timeout"),
        }
    }
}

/// A `Retry-After` header on an answer, counted so that a rate-limit test can check the
/// gateway tells a throttled client when to come back, not only that it refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// The delta-seconds form (RFC 9110 §10.2.3: `delay-seconds = 1*DIGIT`).
    Seconds(u64),
    /// An HTTP date or anything unparsable: the answer counts, its delay is unknown.
    Other,
}

impl RetryAfter {
    /// Reads a header value. Only the delta-seconds form gives a delay: the gateway sends
    /// that form, and a date would need the client's and the gateway's clocks to agree. A
    /// number beyond `u64` is no real delay and counts as [`RetryAfter::Other`].
    pub fn parse(value: &[u8]) -> Self {
        let digits = value.trim_ascii();
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Self::Other;
        }
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .map_or(Self::Other, Self::Seconds)
    }
}

/// Counters of one connection, or of a whole run once merged.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency of answered requests in microseconds: from the send for closed-loop runs,
    /// from the scheduled send time for open-loop runs.
    pub latency_us: Histogram<u64>,
    /// Requests by how they ended.
    pub codes: BTreeMap<Code, u64>,
    /// Requests that ended (answered or failed).
    pub requests: u64,
    /// Requests acknowledged.
    pub acked: u64,
    /// Samples in requests that ended.
    pub samples_sent: u64,
    /// Samples in acknowledged requests.
    pub samples_acked: u64,
    /// Body bytes of requests that ended.
    pub bytes_sent: u64,
    /// Open loop: requests that could not go at their scheduled time because the connection
    /// had `max_in_flight` requests outstanding or was reconnecting; sent as soon as
    /// possible after.
    pub late: u64,
    /// Open loop: requests scheduled before the run ended that were never sent.
    pub unsent: u64,
    /// OTLP: data points the gateway refused in `partial_success`.
    pub rejected_points: u64,
    /// Answers (any status) that carried a `Retry-After` header.
    pub retry_after_answers: u64,
    /// The longest delay a `Retry-After` header asked for, in seconds; `None` when no answer
    /// carried one in the delta-seconds form.
    pub retry_after_max_s: Option<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGFIG)
                .expect("constant bounds are valid"),
            codes: BTreeMap::new(),
            requests: 0,
            acked: 0,
            samples_sent: 0,
            samples_acked: 0,
            bytes_sent: 0,
            late: 0,
            unsent: 0,
            rejected_points: 0,
            retry_after_answers: 0,
            retry_after_max_s: None,
        }
    }
}

impl Stats {
    /// Counts one finished request.
    pub fn record(&mut self, code: Code, latency: Duration, samples: u64, bytes: u64) {
        self.requests += 1;
        self.samples_sent += samples;
        self.bytes_sent += bytes;
        *self.codes.entry(code).or_default() += 1;
        if code.answered() {
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency_us
                .saturating_record(us.clamp(1, LATENCY_MAX_US));
        }
        if code.is_ack() {
            self.acked += 1;
            self.samples_acked += samples;
        }
    }

    /// Counts an answer that carried a `Retry-After` header.
    pub fn record_retry_after(&mut self, r: RetryAfter) {
        self.retry_after_answers += 1;
        if let RetryAfter::Seconds(s) = r {
            self.retry_after_max_s = self.retry_after_max_s.max(Some(s));
        }
    }

    /// Adds another connection's counters.
    pub fn merge(&mut self, o: &Stats) {
        self.latency_us
            .add(&o.latency_us)
            .expect("histograms share their bounds");
        for (k, v) in &o.codes {
            *self.codes.entry(*k).or_default() += v;
        }
        self.requests += o.requests;
        self.acked += o.acked;
        self.samples_sent += o.samples_sent;
        self.samples_acked += o.samples_acked;
        self.bytes_sent += o.bytes_sent;
        self.late += o.late;
        self.unsent += o.unsent;
        self.rejected_points += o.rejected_points;
        self.retry_after_answers += o.retry_after_answers;
        // `None` orders before every `Some`: the larger known delay wins.
        self.retry_after_max_s = self.retry_after_max_s.max(o.retry_after_max_s);
    }

    /// Latency at quantile `q` (0..=1) in milliseconds; 0 without answers.
    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latency_us.is_empty() {
            return 0.0;
        }
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// The codes as `{"204": 10, "grpc_14": 2}`.
    pub fn codes_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.codes
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect()
    }

    /// The measurements of the JSON report (the caller adds the run's settings).
    pub fn json(&self, elapsed: Duration) -> serde_json::Value {
        let s = elapsed.as_secs_f64().max(1e-9);
        let mean_ms = if self.latency_us.is_empty() {
            0.0
        } else {
            self.latency_us.mean() / 1000.0
        };
        serde_json::json!({
            "elapsed_s": elapsed.as_secs_f64(),
            "requests": self.requests,
            "requests_acknowledged": self.acked,
            "requests_per_s": self.requests as f64 / s,
            "codes": self.codes_json(),
            "samples_sent": self.samples_sent,
            "samples_acknowledged": self.samples_acked,
            "samples_per_s": self.samples_acked as f64 / s,
            "bytes_sent": self.bytes_sent,
            "late": self.late,
            "unsent": self.unsent,
            "otlp_rejected_points": self.rejected_points,
            "retry_after_answers": self.retry_after_answers,
            "retry_after_max_s": self.retry_after_max_s,
            "latency_ms": {
                "p50": self.latency_ms(0.50),
                "p90": self.latency_ms(0.90),
                "p99": self.latency_ms(0.99),
                "p999": self.latency_ms(0.999),
                "max": self.latency_ms(1.0),
                "mean": mean_ms,
                "count": self.latency_us.len(),
            },
        })
    }

    /// One line for a person.
    pub fn summary(&self, elapsed: Duration) -> String {
        let s = elapsed.as_secs_f64().max(1e-9);
        let codes: Vec<String> = self
            .codes
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let mut line = format!(
            "{} requests in {:.2}s, {:.0} samples/s acknowledged ({} of {} samples); \
             latency ms p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; codes {{{}}}",
            self.requests,
            s,
            self.samples_acked as f64 / s,
            self.samples_acked,
            self.samples_sent,
            self.latency_ms(0.5),
            self.latency_ms(0.9),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.latency_ms(1.0),
            codes.join(", "),
        );
        if self.late + self.unsent > 0 {
            line.push_str(&format!("; late {} unsent {}", self.late, self.unsent));
        }
        if self.rejected_points > 0 {
            line.push_str(&format!("; OTLP points rejected {}", self.rejected_points));
        }
        if self.retry_after_answers > 0 {
            let max = self
                .retry_after_max_s
                .map_or_else(|| "unknown".to_string(), |s| format!("{s}s"));
            line.push_str(&format!(
                "; Retry-After on {} answers, max {max}",
                self.retry_after_answers
            ));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram_of_answered_requests() {
        let mut a = Stats::default();
        for ms in 1..=1000u64 {
            a.record(Code::Http(204), Duration::from_millis(ms), 10, 100);
        }
        let mut b = Stats::default();
        b.record(Code::Timeout, Duration::from_secs(30), 10, 100);
        b.record(Code::Http(503), Duration::from_millis(2), 10, 100);
        a.merge(&b);
        assert_eq!(a.requests, 1002);
        assert_eq!(a.acked, 1000);
        assert_eq!(a.samples_acked, 10_000);
        assert_eq!(a.samples_sent, 10_020);
        assert_eq!(a.latency_us.len(), 1001, "the timeout has no latency");
        let p50 = a.latency_ms(0.5);
        assert!((499.0..=502.0).contains(&p50), "{p50}");
        let p999 = a.latency_ms(0.999);
        assert!((998.0..=1001.0).contains(&p999), "{p999}");
        let j = a.json(Duration::from_secs(10));
        assert_eq!(j["codes"]["204"], 1000);
        assert_eq!(j["codes"]["timeout"], 1);
        assert_eq!(j["samples_per_s"], 1000.0);
    }

    #[test]
    fn grpc_codes_count_by_status() {
        let mut s = Stats::default();
        s.record(Code::Grpc(0), Duration::from_millis(1), 5, 1);
        s.record(Code::Grpc(14), Duration::from_millis(1), 5, 1);
        s.record(Code::Grpc(14), Duration::from_millis(1), 5, 1);
        assert_eq!(s.acked, 1);
        let j = s.json(Duration::from_secs(1));
        assert_eq!(j["codes"]["grpc_14"], 2);
        assert_eq!(j["codes"]["grpc_0"], 1);
        assert!(s.summary(Duration::from_secs(1)).contains("grpc_14: 2"));
    }

    #[test]
    fn retry_after_reads_delta_seconds() {
        assert_eq!(RetryAfter::parse(b"0"), RetryAfter::Seconds(0));
        assert_eq!(RetryAfter::parse(b"120"), RetryAfter::Seconds(120));
        assert_eq!(RetryAfter::parse(b" 7 "), RetryAfter::Seconds(7));
    }

    #[test]
    fn retry_after_other_forms_have_no_delay() {
        for v in [
            &b""[..],
            b"  ",
            b"-1",
            b"+5",
            b"1.5",
            b"5s",
            b"99999999999999999999999",
            b"Wed, 21 Oct 2015 07:28:00 GMT",
            b"\xff",
        ] {
            assert_eq!(RetryAfter::parse(v), RetryAfter::Other, "{v:?}");
        }
    }

    #[test]
    fn merge_adds_retry_after_answers_and_keeps_the_longest_delay() {
        let mut a = Stats::default();
        a.record_retry_after(RetryAfter::Seconds(3));
        a.record_retry_after(RetryAfter::Other);
        let mut b = Stats::default();
        b.record_retry_after(RetryAfter::Seconds(9));
        let mut c = Stats::default();
        c.record_retry_after(RetryAfter::Other);
        a.merge(&b);
        a.merge(&c);
        a.merge(&Stats::default());
        assert_eq!(a.retry_after_answers, 4);
        assert_eq!(a.retry_after_max_s, Some(9));
        let j = a.json(Duration::from_secs(1));
        assert_eq!(j["retry_after_answers"], 4);
        assert_eq!(j["retry_after_max_s"], 9);
        assert!(a
            .summary(Duration::from_secs(1))
            .contains("Retry-After on 4 answers, max 9s"));
    }

    #[test]
    fn without_retry_after_the_max_is_null_and_the_line_is_silent() {
        let mut s = Stats::default();
        s.record(Code::Http(204), Duration::from_millis(1), 5, 1);
        let mut other = Stats::default();
        other.record_retry_after(RetryAfter::Other);
        let j = s.json(Duration::from_secs(1));
        assert_eq!(j["retry_after_answers"], 0);
        assert!(j["retry_after_max_s"].is_null());
        assert!(!s.summary(Duration::from_secs(1)).contains("Retry-After"));
        s.merge(&other);
        assert!(s.json(Duration::from_secs(1))["retry_after_max_s"].is_null());
        assert_eq!(s.retry_after_answers, 1);
    }
}
