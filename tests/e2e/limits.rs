//! Per-tenant limits against real processes:
//! - two tenants at once from `traceo-loadgen`: the one over its rate gets 429 with
//!   `Retry-After` for the excess and keeps no more than rate x time + burst; the other only
//!   2xx;
//! - three gateway nodes with gossip: the fleet-wide kept rate of a limited tenant stays near
//!   its global limit, and again after one node stops (the shares follow the members);
//! - active series: 1,200 distinct series against a limit of 1,000 give 1,000 kept and 200
//!   refused (a 400 naming the limit), the kept ones keep passing, and they expire;
//! - editing the overrides file changes a limit without a restart; a broken file is refused
//!   and the old limits stay;
//! - Debian Prometheus as the client: its own counters of failed and retried samples agree
//!   with the gateway's `traceo_discarded_samples_total`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use traceo_e2e::{
    free_port, get, metric_in, post_with, prometheus_scraping_itself, remote_write_body, wait_for,
    Gateway, REMOTE_WRITE_V1_HEADERS,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

/// A single node with a null sink, any tenant id accepted, limits from `{dir}/overrides.yaml`
/// (polled every 200 ms).
const SINGLE: &str = r#"
listen: { http: "127.0.0.1:{port}" }
auth: { mode: off, default_region: local }
otlp: { grpc_listen: null, http_listen: null }
durability: { dir: "{dir}/wal" }
limits:
  overrides_file: "{dir}/overrides.yaml"
  overrides_poll_interval: 200ms
regions:
  - id: local
    sinks: { null: {} }
"#;

fn start_single(dir: &Path, overrides: &str) -> Gateway {
    std::fs::write(dir.join("overrides.yaml"), overrides).expect("overrides");
    Gateway::start(GATEWAY, dir, SINGLE)
}

/// Everything a tenant had kept on `page`: float samples, histogram samples and exemplars
/// (what the ingestion rate counts).
fn kept_in(page: &str, tenant: &str) -> f64 {
    [
        "traceo_samples_total",
        "traceo_histograms_total",
        "traceo_exemplars_total",
    ]
    .iter()
    .map(|m| {
        page.lines()
            .filter(|l| l.starts_with(m) && l.contains(&format!("tenant=\"{tenant}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    })
    .sum()
}

fn kept(gw: &Gateway, tenant: &str) -> f64 {
    get(&gw.url("/metrics")).map_or(0.0, |(_, page)| kept_in(&page, tenant))
}

/// The sum of `metric`'s series on `gw` that carry every one of `labels` (in any order).
fn metric_with(gw: &Gateway, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let Some((_, page)) = get(&gw.url("/metrics")) else {
        return 0.0;
    };
    page.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn discarded(gw: &Gateway, tenant: &str, reason: &str) -> f64 {
    metric_with(
        gw,
        "traceo_discarded_samples_total",
        &[("tenant", tenant), ("reason", reason)],
    )
}

fn status(gw: &Gateway) -> Option<Value> {
    let (code, body) = get(&gw.url("/api/v1/status"))?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// The status page's view of `tenant`'s limits.
fn tenant_status(gw: &Gateway, tenant: &str) -> Option<Value> {
    status(gw)?["limits"]["tenants"]
        .as_array()?
        .iter()
        .find(|t| t["tenant"] == tenant)
        .cloned()
}

/// `traceo-loadgen` sending remote-write 1.0 to `url` for `secs` seconds, one open-loop load
/// per `(tenant, samples/s)`; 500 series (one sample each) per request.
fn loadgen(url: &str, tenants: &[(&str, u32)], secs: u32) -> Command {
    loadgen_of("rw1", url, tenants, secs)
}

/// [`loadgen`] with `protocol` (a `--protocol` value).
fn loadgen_of(protocol: &str, url: &str, tenants: &[(&str, u32)], secs: u32) -> Command {
    let mut cmd = Command::new(traceo_e2e::loadgen_bin(GATEWAY));
    cmd.args(["--protocol", protocol, "--url", url])
        .args([
            "--series",
            "4000",
            "--series-per-request",
            "500",
            "--labels",
            "6",
        ])
        .args(["--connections", "2", "--duration", &secs.to_string()])
        .args(["--timeout", "10", "--json"]);
    for (t, rate) in tenants {
        cmd.arg("--tenant-rate").arg(format!("{t}={rate}"));
    }
    cmd
}

fn report_of(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "loadgen report: {e}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn a_tenant_over_its_rate_gets_429_with_retry_after_and_keeps_no_more_than_rate_times_time_plus_burst(
) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let (rate, burst) = (20_000.0, 10_000.0);
    let gw = start_single(
        dir,
        &format!(
            "overrides:\n  team-a: {{ ingestion_rate: {rate}, ingestion_burst: {burst} }}\n  \
             team-b: {{ ingestion_rate: 50000 }}\n"
        ),
    );
    let url = gw.url("/api/v1/write");
    let out = loadgen(&url, &[("team-a", 60_000), ("team-b", 10_000)], 8)
        .output()
        .expect("run loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = report_of(&out);
    let a = &report["per_tenant"]["team-a"];
    let b = &report["per_tenant"]["team-b"];
    let codes_a = a["codes"].as_object().cloned().unwrap_or_default();
    let codes_b = b["codes"].as_object().cloned().unwrap_or_default();
    let limited = codes_a.get("429").and_then(Value::as_u64).unwrap_or(0);
    let kept_a = kept(&gw, "team-a");
    let elapsed = a["elapsed_s"].as_f64().expect("elapsed_s");
    // The bucket starts full and refills at the rate; the gateway's clock for the run starts
    // a little before loadgen's (connections open first): half a second of rate is the
    // tolerance on the time.
    let bound = rate * (elapsed + 0.5) + burst;
    println!(
        "team-a: offered 60000/s for {elapsed:.2}s, kept {kept_a} samples ({:.0}/s; bound \
         rate x time + burst = {bound:.0}), codes {codes_a:?}, Retry-After on {} answers (max {}s); \
         team-b: codes {codes_b:?}, kept {}",
        kept_a / elapsed,
        a["retry_after_answers"],
        a["retry_after_max_s"],
        kept(&gw, "team-b"),
    );
    assert!(limited > 0, "team-a was never limited: {codes_a:?}");
    assert!(
        a["retry_after_answers"].as_u64().unwrap_or(0) >= limited,
        "every 429 carries Retry-After: {a}"
    );
    assert!(kept_a <= bound, "team-a kept {kept_a} > {bound}");
    assert!(
        kept_a >= 0.8 * rate * elapsed,
        "team-a kept {kept_a}: the limit must let its rate through ({rate} x {elapsed:.1}s)"
    );
    assert_eq!(
        kept_a,
        a["samples_acknowledged"].as_f64().unwrap_or(-1.0),
        "what loadgen saw acknowledged is what the gateway kept"
    );
    assert_eq!(
        codes_b.keys().collect::<Vec<_>>(),
        vec!["204"],
        "team-b, under its limit, gets only 204: {codes_b:?}"
    );
    let refused = discarded(&gw, "team-a", "rate_limited");
    assert_eq!(
        refused,
        a["samples_sent"].as_f64().unwrap_or(0.0) - kept_a,
        "every refused sample is counted as discarded"
    );
    assert_eq!(discarded(&gw, "team-b", "rate_limited"), 0.0);
    // The status page says why.
    let s = tenant_status(&gw, "team-a").expect("team-a on the status page");
    assert_eq!(s["limits"]["ingestion_rate"], rate);
    assert_eq!(s["ingestion_rate_node_share"], rate);
    assert!(s["overridden"].as_bool().unwrap_or(false));
    assert_eq!(
        metric_with(
            &gw,
            "traceo_tenant_limit",
            &[("tenant", "team-a"), ("limit", "ingestion_rate")]
        ),
        rate
    );
}

/// A node of the three-node fleet: gossip on `gossip`, seeded with `seeds`.
fn start_node(root: &Path, name: &str, gossip: u16, seeds: &[u16]) -> Gateway {
    let dir = traceo_e2e::node_dir(
        root,
        name,
        "4444444444444444444444444444444444444444444444444444444444444444",
    );
    std::fs::write(
        dir.join("overrides.yaml"),
        "overrides:\n  team-a: { ingestion_rate: 30000, ingestion_burst: 3000 }\n",
    )
    .expect("overrides");
    let seeds: Vec<String> = seeds.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let config = format!(
        r#"{SINGLE}
cluster:
  node_id: {name}
  gossip_listen: "127.0.0.1:{gossip}"
  seeds: [{}]
  gossip_keys_file: "{{dir}}/gossip.keys"
  gossip_interval: 200ms
  dead_after: 2s
"#,
        seeds.join(", ")
    );
    Gateway::start(GATEWAY, &dir, &config)
}

fn members_used(gw: &Gateway) -> Option<u64> {
    status(gw)?["limits"]["members"].as_u64()
}

/// Samples the live `nodes` kept for team-a over `secs` seconds, per second.
fn fleet_rate(nodes: &[&Gateway], secs: u64) -> f64 {
    let before: f64 = nodes.iter().map(|g| kept(g, "team-a")).sum();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let after: f64 = nodes.iter().map(|g| kept(g, "team-a")).sum();
    (after - before) / start.elapsed().as_secs_f64()
}

#[test]
fn a_fleet_of_three_keeps_a_tenant_at_its_global_limit_and_again_after_one_node_stops() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let names = ["gw-a", "gw-b", "gw-c"];
    let mut nodes: Vec<Gateway> = (0..3)
        .map(|i| {
            let seeds: Vec<u16> = (0..3).filter(|&j| j != i).map(|j| ports[j]).collect();
            start_node(root, names[i], ports[i], &seeds)
        })
        .collect();
    wait_for(
        "three members on every node",
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .all(|g| members_used(g) == Some(3))
                .then_some(())
        },
    );
    // Each node is offered 20000/s of team-a (the load spread round robin over the fleet:
    // one loadgen a node), 60000/s in all against a global limit of 30000/s.
    let global = 30_000.0;
    let mut loads: Vec<Child> = nodes
        .iter()
        .map(|g| {
            loadgen(&g.url("/api/v1/write"), &[("team-a", 20_000)], 40)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start loadgen")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let live: Vec<&Gateway> = nodes.iter().collect();
    let three = fleet_rate(&live, 8);
    let share = tenant_status(&nodes[0], "team-a").expect("team-a on gw-a")
        ["ingestion_rate_node_share"]
        .as_f64()
        .unwrap_or(0.0);
    // The burst refills nothing: over a window the fleet keeps the global rate, give or take
    // the scrape timing (10 %).
    let tolerance = 0.10;
    println!(
        "3 nodes: fleet kept {three:.0} samples/s of team-a (global limit {global}, share {share:.0}/node)"
    );
    assert_eq!(share, global / 3.0);
    assert!(
        (three - global).abs() <= tolerance * global,
        "three nodes kept {three:.0}/s, not within {tolerance} of {global}"
    );

    // gw-c stops (its loadgen with it): the others see two members and take half each.
    let mut c = nodes.pop().expect("gw-c");
    let mut load_c = loads.pop().expect("load c");
    let _ = load_c.kill();
    let _ = load_c.wait();
    c.proc.terminate(Duration::from_secs(10));
    let since = Instant::now();
    wait_for(
        "gw-a and gw-b to count two members",
        Duration::from_secs(20),
        || {
            nodes
                .iter()
                .all(|g| members_used(g) == Some(2))
                .then_some(())
        },
    );
    println!(
        "shares moved {:.1}s after gw-c stopped",
        since.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(1));
    let live: Vec<&Gateway> = nodes.iter().collect();
    let two = fleet_rate(&live, 8);
    let share = tenant_status(&nodes[0], "team-a").expect("team-a on gw-a")
        ["ingestion_rate_node_share"]
        .as_f64()
        .unwrap_or(0.0);
    println!("2 nodes: fleet kept {two:.0} samples/s of team-a (share {share:.0}/node)");
    assert_eq!(share, global / 2.0);
    assert!(
        (two - global).abs() <= tolerance * global,
        "two nodes kept {two:.0}/s, not within {tolerance} of {global}"
    );
    for mut l in loads {
        let _ = l.kill();
        let _ = l.wait();
    }
}

/// `n` distinct series `limit_test{i="<first..first+n>"}` in one request.
fn series_body(first: usize, n: usize) -> Vec<u8> {
    let ids: Vec<String> = (first..first + n).map(|i| i.to_string()).collect();
    let series: Vec<[(&str, &str); 2]> = ids
        .iter()
        .map(|i| [("__name__", "limit_test"), ("i", i.as_str())])
        .collect();
    let refs: Vec<&[(&str, &str)]> = series.iter().map(|s| &s[..]).collect();
    remote_write_body(&refs, traceo_e2e::now_ms())
}

fn send(gw: &Gateway, tenant: &str, body: &[u8]) -> traceo_e2e::Answer {
    let headers = [&REMOTE_WRITE_V1_HEADERS[..], &[("x-scope-orgid", tenant)]].concat();
    post_with(&gw.url("/api/v1/write"), body, &headers)
}

#[test]
fn new_series_past_the_active_series_limit_are_refused_known_ones_kept_and_they_expire() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let gw = start_single(
        tmp.path(),
        "overrides:\n  team-s: { max_active_series: 1000, active_series_window: 3s }\n",
    );
    let first = send(&gw, "team-s", &series_body(0, 1200));
    println!("1200 series: {} {}", first.status, first.body.trim());
    assert_eq!(first.status, 400, "a partial write is never 2xx");
    assert!(
        first.body.contains("limit of 1000 active series")
            && first.body.contains("200 new series refused"),
        "{}",
        first.body
    );
    assert_eq!(
        first.header("x-prometheus-remote-write-samples-written"),
        Some("1000")
    );
    assert!(
        first.header("retry-after").is_none(),
        "persistent: no retry"
    );
    assert_eq!(kept(&gw, "team-s"), 1000.0);
    assert_eq!(discarded(&gw, "team-s", "series_limit"), 200.0);
    // The kept ones keep being accepted; the refused ones are still refused.
    assert_eq!(send(&gw, "team-s", &series_body(0, 1000)).status, 204);
    assert_eq!(send(&gw, "team-s", &series_body(1000, 200)).status, 400);
    let start = Instant::now();
    assert_eq!(kept(&gw, "team-s"), 2000.0);
    let s = tenant_status(&gw, "team-s").expect("on the status page");
    assert_eq!(s["active_series"], 1000);
    // The gauge follows within a second (the upkeep sets it).
    wait_for("the active-series gauge", Duration::from_secs(3), || {
        (gw.metric("traceo_tenant_active_series{tenant=\"team-s\"}") == Some(1000.0)).then_some(())
    });
    // After the window (3s, swept every second) they expire and new series fit.
    wait_for("the series to expire", Duration::from_secs(15), || {
        (tenant_status(&gw, "team-s")?["active_series"] == 0).then_some(())
    });
    println!(
        "expired {:.1}s after the last write",
        start.elapsed().as_secs_f64()
    );
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "not before the window"
    );
    assert_eq!(send(&gw, "team-s", &series_body(1000, 200)).status, 204);
    // Another tenant is not limited by team-s's set.
    assert_eq!(send(&gw, "team-x", &series_body(0, 1200)).status, 204);
}

#[test]
fn editing_the_overrides_file_changes_a_limit_without_restart_and_a_broken_one_is_refused() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let gw = start_single(dir, "overrides:\n  team-r: { max_active_series: 10 }\n");
    let body = series_body(0, 20);
    assert_eq!(send(&gw, "team-r", &body).status, 400);

    std::fs::write(
        dir.join("overrides.yaml"),
        "overrides:\n  team-r: { max_active_series: 100 }\n",
    )
    .expect("edit overrides");
    wait_for("the new limit", Duration::from_secs(10), || {
        let s = tenant_status(&gw, "team-r")?;
        (s["limits"]["max_active_series"] == 100).then_some(())
    });
    // The upkeep resizes the set within a second.
    wait_for("20 series accepted", Duration::from_secs(5), || {
        (send(&gw, "team-r", &body).status == 204).then_some(())
    });

    std::fs::write(
        dir.join("overrides.yaml"),
        "overrides:\n  team-r: { max_active_series: -5 }\n",
    )
    .expect("break overrides");
    wait_for("the refused reload", Duration::from_secs(10), || {
        gw.metric("traceo_limits_overrides_reloads_total{result=\"failure\"}")
            .filter(|&n| n >= 1.0)
    });
    let log = gw.proc.log();
    let line = log
        .lines()
        .find(|l| l.contains("tenant limit overrides reload refused"))
        .expect("the refusal is logged");
    println!("{line}");
    assert!(line.contains("overrides.yaml"), "names the file: {line}");
    assert!(line.contains("team-r"), "names the tenant: {line}");
    assert_eq!(
        gw.metric("traceo_limits_overrides_last_reload_success"),
        Some(0.0)
    );
    let s = tenant_status(&gw, "team-r").expect("team-r");
    assert_eq!(s["limits"]["max_active_series"], 100, "the old limits stay");
    assert_eq!(send(&gw, "team-r", &body).status, 204);
}

/// A Prometheus remote-write counter of queue `name` on `page`.
fn prom_counter(page: &str, metric: &str, name: &str) -> f64 {
    metric_in(page, &format!("{metric}{{remote_name=\"{name}\"")).unwrap_or(0.0)
}

#[test]
fn prometheus_counts_of_failed_and_retried_samples_agree_with_the_gateway_discards() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let tight = "overrides:\n  \
                 prom-drop: { ingestion_rate: 300, ingestion_burst: 600 }\n  \
                 prom-retry: { ingestion_rate: 300, ingestion_burst: 600, rate_limited_status: 503 }\n";
    std::fs::write(dir.join("overrides.yaml"), tight).expect("overrides");
    // Prometheus names its tenant by basic auth (this Prometheus sends no custom headers).
    let config = SINGLE.replace(
        "auth: { mode: off, default_region: local }",
        "tenants:\n  - { id: prom-drop, region: local, passwords: [\"p1\"] }\n  \
         - { id: prom-retry, region: local, passwords: [\"p2\"] }",
    );
    let gw = Gateway::start(GATEWAY, dir, &config);
    // Two queues: one left at Prometheus' defaults (a 429 is not retried: the samples count
    // as failed), one for a tenant answered 503 (retried: counted as retried). Scraping
    // itself every 100 ms, Prometheus sends far more than the limits let through.
    let queue = |name: &str, user: &str, password: &str| {
        format!(
            "  - name: {name}\n    url: \"http://127.0.0.1:{}/api/v1/write\"\n    \
             basic_auth: {{ username: {user}, password: {password} }}\n    \
             queue_config: {{ batch_send_deadline: 500ms, max_samples_per_send: 500, \
             min_backoff: 100ms, max_backoff: 1s }}\n",
            gw.port
        )
    };
    let (mut prom, prom_port) = prometheus_scraping_itself(
        dir,
        "100ms",
        &(queue("drop", "prom-drop", "p1") + &queue("retry", "prom-retry", "p2")),
    );
    let prom_metrics = format!("http://127.0.0.1:{prom_port}/metrics");

    wait_for(
        "both tenants limited and Prometheus counting it",
        Duration::from_secs(90),
        || {
            prom.assert_running();
            let page = get(&prom_metrics)?.1;
            let failed = prom_counter(
                &page,
                "prometheus_remote_storage_samples_failed_total",
                "drop",
            );
            let retried = prom_counter(
                &page,
                "prometheus_remote_storage_samples_retried_total",
                "retry",
            );
            (failed > 0.0
                && retried > 0.0
                && discarded(&gw, "prom-drop", "rate_limited") > 0.0
                && discarded(&gw, "prom-retry", "rate_limited") > 0.0)
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    // Lift the limits (an overrides reload): once both sides stop counting, every sample the
    // gateway discarded is one Prometheus counted as failed or retried, and the reverse.
    std::fs::write(dir.join("overrides.yaml"), "overrides: {}\n").expect("lift limits");
    let settled = wait_for("both sides to settle", Duration::from_secs(60), || {
        let read = || {
            let page = get(&prom_metrics)?.1;
            let p = |m: &str, q: &str| prom_counter(&page, m, q);
            Some([
                p("prometheus_remote_storage_samples_failed_total", "drop")
                    + p("prometheus_remote_storage_samples_retried_total", "drop"),
                discarded(&gw, "prom-drop", "rate_limited"),
                p("prometheus_remote_storage_samples_failed_total", "retry")
                    + p("prometheus_remote_storage_samples_retried_total", "retry"),
                discarded(&gw, "prom-retry", "rate_limited"),
                p("prometheus_remote_storage_samples_pending", "retry"),
            ])
        };
        let a = read()?;
        std::thread::sleep(Duration::from_secs(2));
        let b = read()?;
        (a[..4] == b[..4] && b[0] == b[1] && b[2] == b[3]).then_some(b)
    });
    let page = get(&prom_metrics).expect("prometheus metrics").1;
    println!(
        "Prometheus queue drop (429, not retried): failed {} retried {}; gateway discarded {}\n\
         Prometheus queue retry (503, retried): failed {} retried {}; gateway discarded {}; \
         Prometheus sent {} + {} samples",
        prom_counter(
            &page,
            "prometheus_remote_storage_samples_failed_total",
            "drop"
        ),
        prom_counter(
            &page,
            "prometheus_remote_storage_samples_retried_total",
            "drop"
        ),
        settled[1],
        prom_counter(
            &page,
            "prometheus_remote_storage_samples_failed_total",
            "retry"
        ),
        prom_counter(
            &page,
            "prometheus_remote_storage_samples_retried_total",
            "retry"
        ),
        settled[3],
        prom_counter(&page, "prometheus_remote_storage_samples_total", "drop"),
        prom_counter(&page, "prometheus_remote_storage_samples_total", "retry"),
    );
    assert!(settled[1] > 0.0 && settled[3] > 0.0);
    assert_eq!(
        prom_counter(
            &page,
            "prometheus_remote_storage_samples_retried_total",
            "drop"
        ),
        0.0,
        "Prometheus does not retry a 429 by default"
    );
    assert_eq!(
        prom_counter(
            &page,
            "prometheus_remote_storage_samples_failed_total",
            "retry"
        ),
        0.0,
        "a 503 is retried, never dropped"
    );
}

#[test]
fn otlp_senders_get_429_or_resource_exhausted_for_a_rate_and_partial_success_for_refused_series() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let gw = start_single(
        tmp.path(),
        "overrides:\n  otlp-rate: { ingestion_rate: 5000, ingestion_burst: 5000 }\n  \
         otlp-series: { max_active_series: 1000 }\n",
    );
    let codes = |r: &Value, t: &str| {
        r["per_tenant"][t]["codes"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    };
    // OTLP/HTTP over its rate: 429 with Retry-After.
    let http = report_of(
        &loadgen_of(
            "otlp-http",
            &gw.url("/v1/metrics"),
            &[("otlp-rate", 30_000)],
            3,
        )
        .output()
        .expect("loadgen otlp-http"),
    );
    let c = codes(&http, "otlp-rate");
    let limited = c.get("429").and_then(Value::as_u64).unwrap_or(0);
    println!(
        "OTLP/HTTP over the rate: codes {c:?}, Retry-After on {}",
        http["retry_after_answers"]
    );
    assert!(limited > 0 && c.contains_key("200"), "{c:?}");
    assert!(http["retry_after_answers"].as_u64().unwrap_or(0) >= limited);
    // OTLP/gRPC over its rate: RESOURCE_EXHAUSTED (8), which carries RetryInfo.
    let grpc = report_of(
        &loadgen_of("otlp-grpc", &gw.url(""), &[("otlp-rate", 30_000)], 3)
            .output()
            .expect("loadgen otlp-grpc"),
    );
    let c = codes(&grpc, "otlp-rate");
    println!("OTLP/gRPC over the rate: codes {c:?}");
    assert!(
        c.get("grpc_8").and_then(Value::as_u64).unwrap_or(0) > 0,
        "{c:?}"
    );
    assert!(c.contains_key("grpc_0"), "{c:?}");
    // Series past the limit: a 200 with partial_success naming the refused points (the
    // client must not send the kept ones again).
    let series = report_of(
        &loadgen_of(
            "otlp-http",
            &gw.url("/v1/metrics"),
            &[("otlp-series", 4_000)],
            3,
        )
        .output()
        .expect("loadgen otlp-http series"),
    );
    let s = &series["per_tenant"]["otlp-series"];
    let c = codes(&series, "otlp-series");
    println!(
        "OTLP/HTTP past the series limit: codes {c:?}, rejected points {}",
        s["otlp_rejected_points"]
    );
    assert_eq!(c.keys().collect::<Vec<_>>(), vec!["200"], "{c:?}");
    let rejected = s["otlp_rejected_points"].as_f64().unwrap_or(0.0);
    assert!(rejected > 0.0, "{s}");
    assert_eq!(discarded(&gw, "otlp-series", "series_limit"), rejected);
    assert_eq!(
        gw.metric("traceo_tenant_active_series{tenant=\"otlp-series\"}"),
        Some(1000.0)
    );
}
