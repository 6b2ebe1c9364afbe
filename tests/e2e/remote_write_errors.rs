//! Every malformed or refused remote-write request gets its documented status with a message
//! that says what was wrong, and the gateway keeps serving afterwards.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;
use protocols::remote_write::v1::reference as pb;
use protocols::snappy;
use traceo_e2e::{get, http, Gateway};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

const CONFIG: &str = r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: null, http_listen: null }
limits: { max_body_bytes: 65536 }
regions:
  - id: local
    sinks:
      parquet: { path: "{dir}/data", max_file_age: 200ms }
tenants:
  - id: acme
    region: local
    passwords: ["pw"]
    bearer_tokens: ["tok-acme"]
"#;

/// Basic auth for tenant `acme`.
const AUTH: &str = "Basic YWNtZTpwdw==";

fn valid_request() -> Vec<u8> {
    pb::WriteRequest {
        timeseries: vec![pb::TimeSeries {
            labels: vec![
                pb::Label {
                    name: "__name__".into(),
                    value: "up".into(),
                },
                pb::Label {
                    name: "job".into(),
                    value: "e2e".into(),
                },
            ],
            samples: vec![pb::Sample {
                value: 1.0,
                timestamp: 1_700_000_000_000,
            }],
            ..Default::default()
        }],
        metadata: vec![],
    }
    .encode_to_vec()
}

/// Hand-encoded protobuf for cases prost cannot express (invalid UTF-8, duplicate names).
fn raw_series(labels: &[(&[u8], &[u8])]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
        out.push(tag);
        assert!(body.len() < 128, "test helper writes one-byte lengths");
        out.push(body.len() as u8);
        out.extend_from_slice(body);
    }
    let mut series = Vec::new();
    for (n, v) in labels {
        let mut label = Vec::new();
        field(&mut label, 0x0a, n);
        field(&mut label, 0x12, v);
        field(&mut series, 0x0a, &label);
    }
    let mut req = Vec::new();
    field(&mut req, 0x0a, &series);
    req
}

struct Answer {
    status: u16,
    body: String,
    headers: Vec<(String, String)>,
}

fn post(gw: &Gateway, body: &[u8], headers: &[(&str, &str)]) -> Answer {
    let mut req = http().post(&gw.url("/api/v1/write"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body).expect("gateway answers");
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    Answer {
        status,
        body,
        headers,
    }
}

const PROTO: [(&str, &str); 3] = [
    ("content-type", "application/x-protobuf"),
    ("content-encoding", "snappy"),
    ("authorization", AUTH),
];

fn expect(a: Answer, status: u16, needle: &str, case: &str) {
    assert_eq!(a.status, status, "{case}: body {:?}", a.body);
    assert!(
        a.body.contains(needle),
        "{case}: message {:?} should mention {needle:?}",
        a.body
    );
}

#[test]
fn each_bad_request_gets_its_status_and_message() {
    let tmp = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(GATEWAY, tmp.path(), CONFIG);

    let mut truncated = valid_request();
    truncated.truncate(truncated.len() - 3);
    expect(
        post(&gw, &snappy::compress(&truncated), &PROTO),
        400,
        "truncated protobuf",
        "truncated protobuf",
    );

    expect(
        post(&gw, b"\x10this is not snappy at all", &PROTO),
        400,
        "invalid snappy",
        "invalid snappy",
    );

    let claims_4gib = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x00, 0x00];
    expect(
        post(&gw, &claims_4gib, &PROTO),
        413,
        "claims 4294967295 decompressed bytes",
        "4 GiB header",
    );

    let bad_utf8 = raw_series(&[(b"__name__", b"up"), (b"job", b"\xff\xfe")]);
    expect(
        post(&gw, &snappy::compress(&bad_utf8), &PROTO),
        400,
        "not valid UTF-8",
        "invalid UTF-8",
    );

    let dup = raw_series(&[(b"__name__", b"up"), (b"job", b"a"), (b"job", b"b")]);
    expect(
        post(&gw, &snappy::compress(&dup), &PROTO),
        400,
        "duplicate label name \"job\"",
        "duplicate names",
    );

    expect(post(&gw, b"", &PROTO), 400, "empty", "empty body");

    let body = snappy::compress(&valid_request());
    let json = [
        ("content-type", "application/json"),
        ("authorization", AUTH),
    ];
    expect(
        post(&gw, &body, &json),
        415,
        "application/x-protobuf",
        "wrong content type",
    );

    let v2 = [
        (
            "content-type",
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        ),
        ("content-encoding", "snappy"),
        ("authorization", AUTH),
    ];
    expect(
        post(&gw, &body, &v2),
        415,
        "io.prometheus.write.v2.Request",
        "unsupported proto",
    );

    let gzip = [
        ("content-type", "application/x-protobuf"),
        ("content-encoding", "gzip"),
        ("authorization", AUTH),
    ];
    expect(
        post(&gw, &body, &gzip),
        415,
        "Content-Encoding",
        "wrong encoding",
    );

    let big = vec![0u8; 65537];
    expect(
        post(&gw, &big, &PROTO),
        413,
        "over the limit of 65536 bytes",
        "body over limit",
    );

    let no_auth = [
        ("content-type", "application/x-protobuf"),
        ("content-encoding", "snappy"),
    ];
    let a = post(&gw, &body, &no_auth);
    assert!(
        a.headers.iter().any(|(k, _)| k == "www-authenticate"),
        "401 asks for credentials"
    );
    expect(a, 401, "no credentials", "missing credentials");

    let wrong_pw = [
        ("content-encoding", "snappy"),
        ("authorization", "Basic YWNtZTpub3Bl"),
    ];
    expect(
        post(&gw, &body, &wrong_pw),
        401,
        "invalid credentials",
        "wrong password",
    );

    // Still alive and still accepting good data, by basic auth and by bearer token.
    gw.proc.assert_running();
    expect(
        post(&gw, &body, &PROTO),
        204,
        "",
        "valid request after the bad ones",
    );
    let bearer = [
        ("content-encoding", "snappy"),
        ("authorization", "Bearer tok-acme"),
    ];
    expect(
        post(&gw, &body, &bearer),
        204,
        "",
        "valid request with a bearer token",
    );
    assert_eq!(get(&gw.url("/-/healthy")).map(|(s, _)| s), Some(200));

    // Rejections are counted by reason.
    let (_, metrics) = get(&gw.url("/metrics")).unwrap();
    for reason in [
        "invalid_snappy",
        "decompressed_too_large",
        "duplicate_label_name",
        "unsupported_media_type",
        "body_too_large",
        "unauthorized",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "rejection reason {reason} not in /metrics:\n{metrics}"
        );
    }
}

/// HTTP/2 with prior knowledge (h2c), as gRPC-era clients and some agents use.
#[test]
fn accepts_remote_write_over_h2c() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(GATEWAY, tmp.path(), CONFIG);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http::<Full<Bytes>>();
        let req = http::Request::post(gw.url("/api/v1/write"))
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .header("authorization", AUTH)
            .body(Full::new(Bytes::from(snappy::compress(&valid_request()))))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
            .await
            .expect("answer within 30s")
            .expect("h2c request succeeds");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        status
    });
    assert_eq!(status, 204);
}

/// A refusal sent before the body is read ends the HTTP/1.1 connection, and says so: a client
/// that reused the connection would otherwise see its next request fail (a broken pipe).
#[test]
fn refusal_before_reading_the_body_says_connection_close() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(GATEWAY, tmp.path(), CONFIG);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = vec![0u8; 60_000];
    let head = format!(
        "POST /api/v1/write HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         authorization: {AUTH}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer and close before taking the whole body.
    let _ = s.write_all(&body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 415"), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
}
