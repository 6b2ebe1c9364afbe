//! The per-tenant limit check (`gateway::limits`, issue 20) per request and per series, so its
//! cost can be set against the decode it follows on every request.
//!
//! Payloads: `loadtest::gen` requests decoded as the server decodes them, 10 realistic labels
//! a series, seed 42: one series (the per-request cost, where the tenant lookup and the rate
//! buckets dominate) and the default 2000 series (the per-series cost of the active-series
//! table). Rates are set so high that the pass path is what is measured, except in the one
//! bench that measures a refusal. Every bench warms its tenant first: the state is made on a
//! tenant's first request, and its cost is not what a steady request pays.

use std::hint::black_box;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gateway::limits::rate::{Bucket, Rate};
use gateway::limits::series::{Seen, SeriesTable};
use gateway::limits::{Limits, LimitsSettings, TenantLimits};
use loadtest::gen::{Generator, PayloadSpec};
use protocols::{remote_write::v1, Batch, DecodeLimits};
use residency_rules::TenantId;

/// Tokens per second of a limit that never refuses here: a token is a nanosecond, so each
/// request's charge really moves the bucket (at 1e12/s a 1-sample charge rounds to 0 ns),
/// while the clock refills it far faster than one core can take.
const NEVER_REFUSING_RATE: f64 = 1e9;
/// Burst of that limit: 1000 s of the rate, so no debt a bench can build is ever refused.
const NEVER_REFUSING_BURST: u64 = 1_000_000_000_000;
/// A rate that refills one token every 11.6 days: once emptied, its bucket refuses every
/// request of a bench run.
const EMPTY_RATE: f64 = 1e-6;
/// `max_active_series` of the steady-state bench: a large tenant's limit, so the table
/// (2^21 slots, 25 MB) is as sparse and as far out of cache as a production one.
const STEADY_SERIES_LIMIT: u64 = 1_000_000;
/// `max_active_series` of the new-series bench: above the batch so every series is added,
/// and small enough (32 768 slots, 384 KB) that a fresh table per iteration is cheap to make.
const NEW_SERIES_LIMIT: u64 = 10_000;

/// A generator request decoded as the server decodes it, so series are spliceable and hash
/// over their wire bytes as in production.
fn decoded(series_per_request: usize) -> Batch {
    let spec = PayloadSpec {
        series_per_request,
        ..PayloadSpec::default()
    };
    let body = Generator::new(spec).next_body(1_700_000_000_000);
    v1::decode(&body, &DecodeLimits::default()).expect("the generator's body decodes")
}

/// Limits giving every tenant `tenant`, on a node alone (one live member: no division).
fn limits(tenant: TenantLimits) -> Limits {
    let settings = LimitsSettings {
        defaults: Arc::new(tenant),
        ..LimitsSettings::default()
    };
    Limits::new(&settings, Arc::new(AtomicUsize::new(1)))
}

/// Both rates on, never refusing, and no series limit: the per-request cost of the buckets.
fn rates_only() -> TenantLimits {
    TenantLimits {
        ingestion_rate: NEVER_REFUSING_RATE,
        ingestion_burst: NEVER_REFUSING_BURST,
        request_rate: NEVER_REFUSING_RATE,
        request_burst: NEVER_REFUSING_BURST,
        ..TenantLimits::default()
    }
}

/// Checks and keeps, as the server does for a request it writes; panics on a refusal, so a
/// bench meant for the pass path cannot silently measure the refuse path.
fn admit(l: &Limits, tenant: &TenantId, batch: &Batch) {
    match l.check(tenant, batch, None) {
        Ok(a) => {
            assert!(a.refused.is_empty(), "a pass-path bench refused series");
            a.keep();
        }
        Err(e) => panic!("a pass-path bench was refused: {e}"),
    }
}

fn per_request(c: &mut Criterion) {
    let tenant = TenantId::parse("bench").expect("a valid tenant id");
    let one = decoded(1);
    let mut group = c.benchmark_group("tenant_limits_request");

    let unlimited = limits(TenantLimits::default());
    admit(&unlimited, &tenant, &one);
    group.bench_function("unlimited_1_series", |b| {
        b.iter(|| admit(&unlimited, black_box(&tenant), black_box(&one)))
    });

    let rated = limits(rates_only());
    admit(&rated, &tenant, &one);
    group.bench_function("ingestion_and_request_rate_1_series", |b| {
        b.iter(|| admit(&rated, black_box(&tenant), black_box(&one)))
    });

    // The refusal builds its error (the tenant's name, a String) and counts the discarded
    // samples; with no metrics recorder installed the counter itself is a no-op here.
    let refusing = limits(TenantLimits {
        ingestion_rate: EMPTY_RATE,
        ..TenantLimits::default()
    });
    admit(&refusing, &tenant, &one);
    assert!(
        refusing.check(&tenant, &one, None).is_err(),
        "the bucket is empty"
    );
    group.bench_function("refused_ingestion_rate_1_series", |b| {
        b.iter(|| {
            let r = refusing.check(black_box(&tenant), black_box(&one), None);
            assert!(r.is_err(), "the empty bucket let a request through");
            black_box(r.is_err())
        })
    });
    group.finish();
}

fn per_series(c: &mut Criterion) {
    let tenant = TenantId::parse("bench").expect("a valid tenant id");
    let batch = decoded(PayloadSpec::default().series_per_request);
    let n = batch.series().len() as u64;
    let mut group = c.benchmark_group("tenant_limits_series");
    group.throughput(Throughput::Elements(n));

    // Floor: the series hash every tracked series pays before its table lookup.
    let mut scratch = Vec::new();
    group.bench_function("labels_hash_only_2000_series", |b| {
        b.iter(|| {
            let mut x = 0u64;
            for s in black_box(&batch).series() {
                x ^= s.labels_hash(&mut scratch);
            }
            black_box(x)
        })
    });

    let unlimited = limits(TenantLimits::default());
    admit(&unlimited, &tenant, &batch);
    group.bench_function("unlimited_2000_series", |b| {
        b.iter(|| admit(&unlimited, black_box(&tenant), black_box(&batch)))
    });

    let known = limits(TenantLimits {
        max_active_series: STEADY_SERIES_LIMIT,
        ..TenantLimits::default()
    });
    admit(&known, &tenant, &batch);
    group.bench_function("series_limit_2000_known", |b| {
        b.iter(|| admit(&known, black_box(&tenant), black_box(&batch)))
    });

    let all = limits(TenantLimits {
        max_active_series: STEADY_SERIES_LIMIT,
        ..rates_only()
    });
    admit(&all, &tenant, &batch);
    group.bench_function("all_limits_2000_known", |b| {
        b.iter(|| admit(&all, black_box(&tenant), black_box(&batch)))
    });

    // Every series new: a fresh tenant per iteration, its state and empty table made in the
    // untimed setup (a check of an empty batch), and the limits dropped untimed too.
    let empty = Batch::default();
    group.bench_function("series_limit_2000_new", |b| {
        b.iter_batched(
            || {
                let l = limits(TenantLimits {
                    max_active_series: NEW_SERIES_LIMIT,
                    ..TenantLimits::default()
                });
                admit(&l, &tenant, &empty);
                l
            },
            |l| {
                admit(&l, black_box(&tenant), black_box(&batch));
                l
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// A bucket alone on its cache lines, so the two-bucket bench shares nothing between cores.
#[repr(align(128))]
#[derive(Default)]
struct Padded(Bucket);

/// `iters` takes on each of two threads that start together; the slower thread's time, so
/// the figure is the time per take each core sees.
fn two_threads(iters: u64, a: &Bucket, b: &Bucket, rate: Rate) -> Duration {
    let start = Barrier::new(2);
    let run = |bucket: &Bucket| {
        start.wait();
        let t0 = Instant::now();
        let mut now_ns = 1_000_000_000u64;
        for _ in 0..iters {
            now_ns += 50;
            assert!(bucket.take(1, rate, now_ns).is_ok(), "refused");
        }
        t0.elapsed()
    };
    std::thread::scope(|s| {
        let ta = s.spawn(|| run(a));
        let tb = s.spawn(|| run(b));
        let ta = ta.join().expect("bench thread");
        let tb = tb.join().expect("bench thread");
        ta.max(tb)
    })
}

fn primitives(c: &mut Criterion) {
    let batch = decoded(PayloadSpec::default().series_per_request);
    let mut scratch = Vec::new();
    let hashes: Vec<u64> = batch
        .series()
        .map(|s| s.labels_hash(&mut scratch))
        .collect();
    let mut group = c.benchmark_group("tenant_limits_primitives");

    group.throughput(Throughput::Elements(hashes.len() as u64));
    let table = SeriesTable::new(STEADY_SERIES_LIMIT);
    for &h in &hashes {
        assert_eq!(table.observe(h, 1), Seen::Added);
    }
    group.bench_function("series_table_observe_2000_known", |b| {
        b.iter(|| {
            for &h in black_box(&hashes) {
                if table.observe(h, 2) != Seen::Known {
                    panic!("a known series was not known");
                }
            }
        })
    });

    group.throughput(Throughput::Elements(1));
    let rate = Rate {
        per_second: NEVER_REFUSING_RATE,
        burst: NEVER_REFUSING_BURST as f64,
    };
    let bucket = Bucket::default();
    let mut now_ns = 1_000_000_000u64;
    group.bench_function("bucket_take", |b| {
        b.iter(|| {
            now_ns += 50;
            black_box(bucket.take(black_box(1), rate, now_ns).is_ok())
        })
    });

    // One tenant's requests on two cores: both compare-and-swap the same word.
    let shared = Padded::default();
    group.bench_function("bucket_take_2_threads_one_bucket", |b| {
        b.iter_custom(|iters| two_threads(iters, &shared.0, &shared.0, rate))
    });
    // Two tenants on two cores: the same loop without the shared cache line.
    let (a, other) = (Padded::default(), Padded::default());
    group.bench_function("bucket_take_2_threads_two_buckets", |b| {
        b.iter_custom(|iters| two_threads(iters, &a.0, &other.0, rate))
    });
    group.finish();
}

criterion_group!(benches, per_request, per_series, primitives);
criterion_main!(benches);
