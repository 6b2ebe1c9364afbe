//! The slice of gRPC (<https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md>) a
//! unary OTLP export needs, on the same hyper HTTP/2 connections as everything else: one
//! length-prefixed message in, one out, status in trailers.
//!
//! A full gRPC framework would bring a second server stack and its build cost for one unary
//! method; the wire contract is small and the OpenTelemetry SDK's gRPC exporter is the test.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use hyper::body::Frame;
use prost::Message;
use protocols::otlp::proto::{ProtoAny, ProtoDuration, RetryInfo, Status};

/// gRPC status codes the export answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// Bad input; not retried.
    InvalidArgument = 3,
    /// Refused by policy; not retried.
    PermissionDenied = 7,
    /// Too large (without `RetryInfo`, not retried).
    ResourceExhausted = 8,
    /// Unknown method or encoding.
    Unimplemented = 12,
    /// Protocol violation by the client (compressed flag without an encoding).
    Internal = 13,
    /// Retry later.
    Unavailable = 14,
    /// Missing or bad credentials.
    Unauthenticated = 16,
}

/// A unary response body: at most one data frame, then the trailers.
#[derive(Debug, Default)]
pub struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl hyper::body::Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

/// Why a request's message could not be taken out of its frame.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameError {
    /// The status to answer.
    pub code: Code,
    /// What to tell the client.
    pub message: String,
}

/// The single message of a unary request body; whether it is compressed.
pub fn unframe(body: &Bytes) -> Result<(bool, Bytes), FrameError> {
    let bad = |message: String| FrameError {
        code: Code::InvalidArgument,
        message,
    };
    if body.len() < 5 {
        return Err(bad(format!(
            "request body of {} bytes holds no length-prefixed message",
            body.len()
        )));
    }
    let compressed = match body[0] {
        0 => false,
        1 => true,
        f => return Err(bad(format!("invalid compressed flag {f}"))),
    };
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let rest = body.len() - 5;
    if rest < len {
        return Err(bad(format!("message is truncated: {rest} of {len} bytes")));
    }
    if rest > len {
        return Err(FrameError {
            code: Code::Unimplemented,
            message: "a unary call carries exactly one message".to_string(),
        });
    }
    Ok((compressed, body.slice(5..)))
}

fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(message.len() as u32);
    b.put_slice(message);
    b.freeze()
}

/// `grpc-message`: printable ASCII except `%` as is, everything else percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `google.rpc.Status`, with a `RetryInfo` detail when the client should retry after
/// `retry_after_secs` (which makes even `RESOURCE_EXHAUSTED` retryable for OTLP clients).
pub fn status(code: Code, message: &str, retry_after_secs: Option<u32>) -> Status {
    let details = retry_after_secs
        .map(|secs| ProtoAny {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".to_string(),
            value: RetryInfo {
                retry_delay: Some(ProtoDuration {
                    seconds: secs.into(),
                    nanos: 0,
                }),
            }
            .encode_to_vec(),
        })
        .into_iter()
        .collect();
    Status {
        code: code as i32,
        message: message.to_string(),
        details,
    }
}

fn status_headers(status: &Status, into: &mut HeaderMap) {
    into.insert("grpc-status", HeaderValue::from(status.code));
    if !status.message.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&status.message)) {
            into.insert("grpc-message", v);
        }
    }
    if !status.details.is_empty() {
        let encoded =
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.encode_to_vec());
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            into.insert("grpc-status-details-bin", v);
        }
    }
}

fn builder() -> http::response::Builder {
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("grpc-accept-encoding", "gzip")
}

/// A successful answer carrying `message`.
pub fn ok(message: &impl Message) -> Response<GrpcBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(0));
    builder()
        .body(GrpcBody {
            data: Some(frame(&message.encode_to_vec())),
            trailers: Some(trailers),
        })
        .expect("static headers are valid")
}

/// A failed answer in Trailers-Only form: status in the one HEADERS frame, no body.
pub fn error(status: &Status) -> Response<GrpcBody> {
    let mut r = builder()
        .body(GrpcBody::default())
        .expect("static headers are valid");
    status_headers(status, r.headers_mut());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_are_named() {
        let framed = frame(b"abc");
        assert_eq!(unframe(&framed), Ok((false, Bytes::from_static(b"abc"))));
        assert_eq!(
            unframe(&Bytes::from_static(b"\0\0")).unwrap_err().code,
            Code::InvalidArgument
        );
        let truncated = Bytes::from_static(b"\0\0\0\0\x09abc");
        assert_eq!(
            unframe(&truncated).unwrap_err().message,
            "message is truncated: 3 of 9 bytes"
        );
        let two = Bytes::from_static(b"\0\0\0\0\x01a\0\0\0\0\x01b");
        assert_eq!(unframe(&two).unwrap_err().code, Code::Unimplemented);
        let compressed = Bytes::from_static(b"\x01\0\0\0\x01z");
        assert_eq!(unframe(&compressed), Ok((true, Bytes::from_static(b"z"))));
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("50% off: ü"), "50%25 off: %C3%BC");
    }

    #[test]
    fn errors_are_trailers_only_with_retry_info_when_retryable() {
        let s = status(Code::Unavailable, "sink busy", Some(2));
        let r = error(&s);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "sink busy");
        let bin = r.headers()["grpc-status-details-bin"].to_str().unwrap();
        let decoded = Status::decode(
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(bin)
                .unwrap()
                .as_slice(),
        )
        .unwrap();
        assert_eq!(decoded.code, 14);
        let info = RetryInfo::decode(decoded.details[0].value.as_slice()).unwrap();
        assert_eq!(info.retry_delay.unwrap().seconds, 2);
        assert!(hyper::body::Body::is_end_stream(r.body()));
    }
}
