//! Every malformed or refused remote-write request gets its documented status with a message
//! that says what was wrong, and the gateway keeps serving afterwards.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;
use protocols::remote_write::v1::reference as pb;
use protocols::snappy;
use traceo_e2e::{get, post_with, Answer, Gateway, REMOTE_WRITE_V2_HEADERS};

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

fn post(gw: &Gateway, body: &[u8], headers: &[(&str, &str)]) -> Answer {
    post_with(&gw.url("/api/v1/write"), body, headers)
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

    let v3 = [
        (
            "content-type",
            "application/x-protobuf;proto=io.prometheus.write.v3.Request",
        ),
        ("content-encoding", "snappy"),
        ("authorization", AUTH),
    ];
    expect(
        post(&gw, &body, &v3),
        415,
        "io.prometheus.write.v3.Request",
        "unsupported proto",
    );

    // Remote-write 2.0: a label reference past the symbols table is a 400 naming it.
    let v2 = [
        (
            "content-type",
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        ),
        ("content-encoding", "snappy"),
        ("authorization", AUTH),
    ];
    let bad_ref = {
        use prost::Message;
        use protocols::remote_write::v2::reference as pb;
        pb::Request {
            symbols: vec![String::new(), "__name__".into(), "up".into()],
            timeseries: vec![pb::TimeSeries {
                labels_refs: vec![1, 9],
                samples: vec![pb::Sample {
                    value: 1.0,
                    timestamp: 1,
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    };
    expect(
        post(&gw, &snappy::compress(&bad_ref), &v2),
        400,
        "labels_refs reference 9 is out of range (the symbols table has 3 entries)",
        "2.0 reference out of range",
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

/// A remote-write 2.0 request with a float series (with exemplar and metadata), an integer
/// native histogram series and a float histogram with custom buckets, interned symbols.
fn v2_request() -> Vec<u8> {
    use protocols::remote_write::v2::reference as v2;
    let symbols: Vec<String> = [
        "",
        "__name__",
        "rpc_total",
        "job",
        "e2e",
        "trace_id",
        "abc",
        "help text",
        "requests",
        "rpc_seconds",
        "rpc_custom",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let ts = 1_700_000_000_000;
    let histogram = |count: pb::histogram::Count, custom: bool| pb::Histogram {
        count: Some(count),
        sum: 4.5,
        schema: if custom { -53 } else { 1 },
        positive_spans: vec![pb::BucketSpan {
            offset: 0,
            length: 2,
        }],
        positive_deltas: if custom { vec![] } else { vec![1, 1] },
        positive_counts: if custom { vec![1.0, 2.0] } else { vec![] },
        custom_values: if custom { vec![0.5, 1.0] } else { vec![] },
        timestamp: ts,
        ..Default::default()
    };
    v2::Request {
        symbols,
        timeseries: vec![
            v2::TimeSeries {
                labels_refs: vec![1, 2, 3, 4],
                samples: vec![v2::Sample {
                    value: 7.0,
                    timestamp: ts,
                }],
                exemplars: vec![v2::Exemplar {
                    labels_refs: vec![5, 6],
                    value: 1.0,
                    timestamp: ts,
                }],
                metadata: Some(v2::Metadata {
                    r#type: 1,
                    help_ref: 7,
                    unit_ref: 8,
                }),
                created_timestamp: ts - 60_000,
                ..Default::default()
            },
            v2::TimeSeries {
                labels_refs: vec![1, 9, 3, 4],
                histograms: vec![histogram(pb::histogram::Count::CountInt(3), false)],
                ..Default::default()
            },
            v2::TimeSeries {
                labels_refs: vec![3, 4, 1, 10],
                histograms: vec![histogram(pb::histogram::Count::CountFloat(3.0), true)],
                ..Default::default()
            },
        ],
    }
    .encode_to_vec()
}

#[test]
fn remote_write_v2_is_stored_and_answered_with_written_counts() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let gw = Gateway::start(GATEWAY, tmp.path(), CONFIG);
    let a = post(
        &gw,
        &snappy::compress(&v2_request()),
        &[&REMOTE_WRITE_V2_HEADERS[..], &[("authorization", AUTH)]].concat(),
    );
    assert_eq!(a.status, 204, "{}", a.body);
    let header = |name: &str| a.header(name);
    assert_eq!(
        header("x-prometheus-remote-write-samples-written"),
        Some("1")
    );
    assert_eq!(
        header("x-prometheus-remote-write-histograms-written"),
        Some("2")
    );
    assert_eq!(
        header("x-prometheus-remote-write-exemplars-written"),
        Some("1")
    );
    let rows = traceo_e2e::wait_for("2.0 rows in Parquet", Duration::from_secs(20), || {
        let rows = traceo_e2e::read_rows(&tmp.path().join("data"));
        (rows.len() >= 3).then_some(rows)
    });
    let mut metrics: Vec<&str> = rows.iter().map(|r| r.metric.as_str()).collect();
    metrics.sort_unstable();
    assert_eq!(metrics, ["rpc_custom", "rpc_seconds", "rpc_total"]);
    for r in &rows {
        assert_eq!(r.tenant, "acme");
        assert_eq!(r.labels.get("job").map(String::as_str), Some("e2e"));
        assert_eq!(r.labels.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(r.labels.get("region").map(String::as_str), Some("local"));
        match r.metric.as_str() {
            "rpc_total" => assert_eq!(r.value, Some(7.0)),
            _ => {
                assert_eq!(r.histogram_count, Some(3.0), "{r:?}");
                assert_eq!(r.histogram_sum, Some(4.5), "{r:?}");
            }
        }
    }
}
