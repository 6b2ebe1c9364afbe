//! HA-pair deduplication against real processes: two Debian Prometheus servers scrape the
//! same target with `external_labels` `cluster: c1` and `__replica__: a|b`, each
//! remote-writing to a different node of a three-node gateway fleet that gossips. Downstream
//! (each node's Parquet files, and a Prometheus backend fed by the remote-write sink) holds
//! each series once and no `__replica__`; the non-elected replica's requests get 202.
//! Restarting the node that made the election does not change it; killing the elected
//! Prometheus hands the pair to the other within `failover_timeout` plus a gossip round.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use traceo_e2e::{
    free_port, get, now_ms, prometheus_client, read_rows, wait_for, Gateway, Proc,
    PrometheusBackend, Row,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

/// The failover timeout the fleet runs with: short, so the test is quick.
const FAILOVER: Duration = Duration::from_secs(6);
/// Scrape interval of both replicas.
const SCRAPE: Duration = Duration::from_secs(1);

fn node_config(name: &str, gossip: u16, seeds: &[u16], backend: &str) -> String {
    let seeds: Vec<String> = seeds.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        r#"
listen: {{ http: "127.0.0.1:{{port}}" }}
otlp: {{ grpc_listen: null, http_listen: null }}
durability: {{ dir: "{{dir}}/wal" }}
cluster:
  node_id: {name}
  gossip_listen: "127.0.0.1:{gossip}"
  seeds: [{}]
  gossip_keys_file: "{{dir}}/gossip.keys"
  gossip_interval: 200ms
  dead_after: 3s
ha_dedup:
  tenants: all
  failover_timeout: {}s
regions:
  - id: local
    sinks:
      parquet: {{ path: "{{dir}}/data", max_file_age: 1s }}
      remote_write:
        - {{ name: backend, url: "{backend}", min_backoff: 100ms, max_backoff: 1s }}
tenants:
  - {{ id: team-ha, region: local, passwords: ["s3cret"] }}
"#,
        seeds.join(", "),
        FAILOVER.as_secs()
    )
}

fn start_node(root: &Path, name: &str, gossip: u16, seeds: &[u16], backend: &str) -> Gateway {
    let dir = traceo_e2e::node_dir(
        root,
        name,
        "5555555555555555555555555555555555555555555555555555555555555555",
    );
    Gateway::start(GATEWAY, &dir, &node_config(name, gossip, seeds, backend))
}

/// A replica: scrapes `target` every second with the pair's external labels and
/// remote-writes to `gw` as team-ha.
fn replica(root: &Path, name: &str, target: &str, gw: &Gateway) -> Proc {
    let rw = format!(
        "  - url: \"http://127.0.0.1:{}/api/v1/write\"\n    basic_auth: {{ username: team-ha, \
         password: s3cret }}\n    queue_config: {{ batch_send_deadline: 500ms, min_backoff: 100ms, \
         max_backoff: 500ms }}\n",
        gw.port
    );
    let global = format!(
        "  scrape_interval: {}s\n  external_labels: {{ cluster: c1, __replica__: {name} }}\n",
        SCRAPE.as_secs()
    );
    prometheus_client(
        root,
        &format!("replica-{name}"),
        &global,
        ("shared", &[target]),
        &rw,
    )
    .0
}

fn status(gw: &Gateway) -> Option<Value> {
    let (code, body) = get(&gw.url("/api/v1/status"))?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// `(replica, elected_at_ms)` of team-ha/c1 on `gw`.
fn elected(gw: &Gateway) -> Option<(String, u64)> {
    let s = status(gw)?;
    let pair = s["ha"]["pairs"]
        .as_array()?
        .iter()
        .find(|p| p["tenant"] == "team-ha" && p["cluster"] == "c1")?
        .clone();
    let e = &pair["elected"];
    Some((
        e["replica"].as_str()?.to_string(),
        e["elected_at_ms"].as_u64()?,
    ))
}

fn counter(gw: &Gateway, prefix: &str) -> f64 {
    gw.metric(prefix).unwrap_or(0.0)
}

/// Every node's Parquet rows of `up` for the shared target.
fn up_rows(nodes: &[&Gateway]) -> Vec<Row> {
    let mut rows: Vec<Row> = nodes
        .iter()
        .flat_map(|g| read_rows(&g.dir.join("data")))
        .filter(|r| r.metric == "up" && r.labels.get("job").map(String::as_str) == Some("shared"))
        .collect();
    rows.sort_by_key(|r| r.timestamp_ms);
    rows
}

#[test]
fn an_ha_pair_is_stored_once_survives_a_node_restart_and_fails_over_when_the_elected_dies() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let backend = PrometheusBackend::start(root, "backend");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let names = ["gw-a", "gw-b", "gw-c"];
    let mut nodes: Vec<Gateway> = (0..3)
        .map(|i| {
            let seeds: Vec<u16> = (0..3).filter(|&j| j != i).map(|j| ports[j]).collect();
            start_node(root, names[i], ports[i], &seeds, &backend.write_url())
        })
        .collect();
    wait_for("three members", Duration::from_secs(30), || {
        nodes
            .iter()
            .all(|g| status(g).is_some_and(|s| s["members"].as_array().map(Vec::len) == Some(3)))
            .then_some(())
    });
    // Both replicas scrape the backend's own metrics (a real target), each writing to its
    // own node; gw-c only gossips.
    let target = backend.write_url();
    let target = target
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("backend address")
        .to_string();
    let mut replicas: BTreeMap<String, (Proc, usize)> = BTreeMap::new();
    replicas.insert("a".into(), (replica(root, "a", &target, &nodes[0]), 0));
    replicas.insert("b".into(), (replica(root, "b", &target, &nodes[1]), 1));

    // One replica is elected, the same on every node.
    let (winner, elected_at) = wait_for(
        "one election on every node",
        Duration::from_secs(60),
        || {
            let views: Vec<Option<(String, u64)>> = nodes.iter().map(elected).collect();
            let first = views[0].clone()?;
            views
                .iter()
                .all(|v| v.as_ref() == Some(&first))
                .then_some(first)
        },
    );
    let loser = if winner == "a" { "b" } else { "a" };
    let (winner_node, loser_node) = (replicas[&winner].1, replicas[loser].1);
    println!(
        "elected replica {winner} (via {}) at {elected_at}",
        names[winner_node]
    );
    let steady_from = now_ms() + 3000;
    std::thread::sleep(Duration::from_secs(12));
    let steady_to = now_ms() - 3000;

    // The loser's requests got 202 and were counted; nothing of them reached a sink.
    let accepted_202 = counter(
        &nodes[loser_node],
        "traceo_requests_total{protocol=\"remote_write_v1\",tenant=\"team-ha\",code=\"202\"}",
    );
    let deduplicated = counter(&nodes[loser_node], "traceo_ha_deduplicated_samples_total");
    println!(
        "{}: {accepted_202} requests answered 202, {deduplicated} samples deduplicated",
        names[loser_node]
    );
    assert!(
        accepted_202 > 0.0,
        "the non-elected replica's requests are answered 202"
    );
    assert!(deduplicated > 0.0);

    // Downstream each series once: in a steady stretch, one `up` sample a scrape interval
    // (two replicas kept would give two), and no `__replica__` anywhere.
    let live: Vec<&Gateway> = nodes.iter().collect();
    let rows = wait_for(
        "Parquet rows of the steady stretch",
        Duration::from_secs(20),
        || {
            let rows = up_rows(&live);
            rows.iter()
                .any(|r| r.timestamp_ms >= steady_to)
                .then_some(rows)
        },
    );
    let all_rows: Vec<Row> = live
        .iter()
        .flat_map(|g| read_rows(&g.dir.join("data")))
        .collect();
    assert!(!all_rows.is_empty());
    assert!(
        all_rows
            .iter()
            .all(|r| !r.labels.contains_key("__replica__")),
        "a stored series carries __replica__"
    );
    assert!(all_rows
        .iter()
        .all(|r| r.labels.get("cluster").map(String::as_str) == Some("c1")));
    let steady: Vec<i64> = rows
        .iter()
        .map(|r| r.timestamp_ms)
        .filter(|&t| (steady_from..steady_to).contains(&t))
        .collect();
    let expected = (steady_to - steady_from) as f64 / SCRAPE.as_millis() as f64;
    println!(
        "steady stretch: {} `up` samples in Parquet, {expected:.1} expected from one replica",
        steady.len()
    );
    assert!(
        (steady.len() as f64) <= expected * 1.25 + 1.0,
        "{} samples: more than one replica's",
        steady.len()
    );
    let mut ts = steady.clone();
    ts.dedup();
    assert_eq!(
        ts.len(),
        steady.len(),
        "a duplicate timestamp in the steady stretch"
    );
    let replicas_in_backend = backend.query("count({__replica__!=\"\"})");
    assert!(replicas_in_backend.is_empty(), "{replicas_in_backend:?}");
    let up_in_backend = backend.query("count_over_time(up{job=\"shared\",cluster=\"c1\"}[8s])");
    println!("backend: count_over_time(up[8s]) = {up_in_backend:?}");
    for v in &up_in_backend {
        let n: f64 = v["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        assert!(n <= 8.0 * 1.25 + 1.0, "backend holds both replicas: {v}");
    }

    // Restarting the node that made the election leaves it unchanged.
    let restarted = winner_node;
    nodes[restarted].kill9_and_restart(GATEWAY, "gateway-restarted.log");
    wait_for(
        "the restarted node back in the fleet",
        Duration::from_secs(30),
        || elected(&nodes[restarted]).filter(|e| e.0 == winner),
    );
    std::thread::sleep(Duration::from_secs(4));
    for (i, g) in nodes.iter().enumerate() {
        assert_eq!(
            elected(g),
            Some((winner.clone(), elected_at)),
            "{} after {} restarted",
            names[i],
            names[restarted]
        );
    }
    println!(
        "{} restarted: the election stayed {winner} at {elected_at}",
        names[restarted]
    );

    // Kill the elected Prometheus: the other replica's samples are accepted within the
    // failover timeout plus a gossip round (and a batch deadline of its own).
    let (mut dead, _) = replicas.remove(&winner).expect("winner");
    let killed = Instant::now();
    let killed_ms = now_ms();
    dead.kill9();
    let took = wait_for("the failover", FAILOVER * 4, || {
        nodes
            .iter()
            .all(|g| elected(g).is_some_and(|e| e.0 == loser))
            .then(|| killed.elapsed())
    });
    println!(
        "failover to {loser} {:.1}s after the elected Prometheus was killed",
        took.as_secs_f64()
    );
    assert!(
        took <= FAILOVER + Duration::from_secs(3),
        "failover took {took:?}, more than {FAILOVER:?} plus a gossip round and a batch deadline"
    );
    let rows = wait_for(
        "the new replica's samples downstream",
        Duration::from_secs(20),
        || {
            let rows = up_rows(&live_nodes(&nodes));
            rows.iter()
                .any(|r| r.timestamp_ms > killed_ms + FAILOVER.as_millis() as i64 + 2000)
                .then_some(rows)
        },
    );
    let around: Vec<i64> = rows
        .iter()
        .map(|r| r.timestamp_ms)
        .filter(|&t| t > killed_ms - 10_000)
        .collect();
    let gap = around.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    println!("largest gap in `up` downstream around the failover: {gap} ms");
    assert!(
        gap <= (FAILOVER + Duration::from_secs(4)).as_millis() as i64,
        "gap {gap} ms"
    );
    for (_, (mut p, _)) in replicas {
        p.kill9();
    }
}

fn live_nodes(nodes: &[Gateway]) -> Vec<&Gateway> {
    nodes.iter().collect()
}
