//! Remote-write 1.0 and 2.0 decode against the snappy-decompress-only floor of the same bytes.
//!
//! Payload: `loadtest::gen` default shape (2000 series x 10 realistic labels x 1 sample, seed
//! 42), the shape the issue targets and `BENCHMARKS.md` records.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use loadtest::gen::{Generator, PayloadSpec};
use protocols::{remote_write::v1, snappy, Batch, DecodeLimits};

fn bench(c: &mut Criterion) {
    let spec = PayloadSpec::default();
    let body = Generator::new(spec).next_body(1_700_000_000_000);
    let limits = DecodeLimits::default();
    let raw_len = snappy::decompress(&body, &limits).map_or(0, |r| r.len());
    eprintln!(
        "payload: {} series x {} labels, {} bytes snappy, {} bytes decompressed",
        spec.series_per_request,
        spec.labels_per_series,
        body.len(),
        raw_len
    );
    let mut group = c.benchmark_group("remote_write_v1");
    group.throughput(Throughput::Elements(spec.series_per_request as u64));

    let mut scratch = Vec::new();
    group.bench_function("snappy_decompress_only", |b| {
        b.iter(|| {
            snappy::decompress_into(black_box(&body), &limits, &mut scratch).unwrap();
            black_box(scratch.len())
        })
    });

    group.bench_function("decode", |b| {
        b.iter(|| {
            let batch = v1::decode(black_box(&body), &limits).unwrap();
            black_box(batch.sample_count())
        })
    });

    // The server's steady state: column capacity reused between requests.
    let mut batch = Batch::default();
    group.bench_function("decode_reusing_columns", |b| {
        b.iter(|| {
            let raw = snappy::decompress(black_box(&body), &limits).unwrap();
            v1::decode_message_into(Bytes::from(raw), &limits, &mut batch).unwrap();
            black_box(batch.sample_count())
        })
    });

    // Parsing alone, from an already decompressed buffer: what the decoder itself costs.
    let raw = Bytes::from(snappy::decompress(&body, &limits).unwrap());
    group.bench_function("parse_only", |b| {
        b.iter(|| {
            v1::decode_message_into(black_box(raw.clone()), &limits, &mut batch).unwrap();
            black_box(batch.sample_count())
        })
    });

    let decoded = v1::decode(&body, &limits).unwrap();
    let mut out = Vec::new();
    group.bench_function("encode_splice", |b| {
        b.iter(|| {
            out.clear();
            v1::encode(black_box(&decoded), &mut out);
            black_box(out.len())
        })
    });
    group.finish();

    // The same payload as remote-write 2.0 (symbols interned per request).
    let mut v2_body = Vec::new();
    let mut w = protocols::remote_write::v2::V2Writer::new();
    for s in decoded.series() {
        w.add_series(&decoded, &s, s.labels().iter());
    }
    w.finish(&mut v2_body);
    let v2_raw = Bytes::from(v2_body);
    let v2_compressed = snappy::compress(&v2_raw);
    eprintln!(
        "remote-write 2.0: {} bytes snappy, {} bytes decompressed",
        v2_compressed.len(),
        v2_raw.len()
    );
    let mut group = c.benchmark_group("remote_write_v2");
    group.throughput(Throughput::Elements(spec.series_per_request as u64));
    group.bench_function("snappy_decompress_only", |b| {
        b.iter(|| {
            snappy::decompress_into(black_box(&v2_compressed), &limits, &mut scratch).unwrap();
            black_box(scratch.len())
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| {
            let batch =
                protocols::remote_write::v2::decode(black_box(&v2_compressed), &limits).unwrap();
            black_box(batch.sample_count())
        })
    });
    group.bench_function("parse_only", |b| {
        b.iter(|| {
            let batch =
                protocols::remote_write::v2::decode_message(black_box(v2_raw.clone()), &limits)
                    .unwrap();
            black_box(batch.sample_count())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
