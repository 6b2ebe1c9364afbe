//! Failover between a region's Kafka upstreams, across a fleet of three gateways that probe
//! every upstream and gossip what they see, against real processes: `tansu` brokers (a primary
//! and a secondary per region), three `traceo-gateway` nodes, and an rdkafka consumer
//! (`traceo-gateway tail --json`) reading back what landed on which broker.
//!
//! - the EU primary stops answering (SIGSTOP) while every node takes EU and US writes: every
//!   node moves EU traffic to the EU secondary and keeps US traffic on the US primary; once the
//!   primary answers again (SIGCONT), every node moves EU traffic back after its hold-down.
//!   Every acknowledged sample is on one of its own region's brokers (duplicates counted and
//!   printed, never a loss), the secondary took traffic from every node, the primary took
//!   traffic again from every node after the failback, and no sample is ever on a broker of
//!   the other region;
//! - one node alone cannot reach the EU primary: it fails over alone, while its peers, which
//!   learn its observation through gossip but are a majority that still reaches the primary,
//!   stay there (the quorum rule of `cluster::fleet_health`); a SIGKILLed node then leaves the
//!   survivors' membership and its stale observations stop counting.
//!
//! Durations (detection and switch, failback, membership) are measured and printed, never
//! asserted against a limit: the assertions are about where traffic goes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use traceo_e2e::{
    free_port, get, http, now_ms, remote_write_body, tail_json, try_post_with, wait_for, Broker,
    Gateway, REMOTE_WRITE_V1_HEADERS,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

/// The Kafka sink's topic per region (`metrics.{region}`).
const EU_TOPIC: &str = "metrics.eu";
const US_TOPIC: &str = "metrics.us";
/// The topic the probes produce to (the default `health_topic`); it must exist on every broker.
const HEALTH_TOPIC: &str = "traceo-health";

/// The fleet, in start order.
const NODES: [&str; 3] = ["gw-a", "gw-b", "gw-c"];

/// `__name__` of every sample the tests send; each request carries one series per `SERIES`
/// entry, labelled with the sending node and a per-node sequence number.
const PROBE: &str = "failover_probe";
const SERIES: [&str; 3] = ["0", "1", "2"];

/// Pause between two rounds of a load thread (one EU and one US request per round): about
/// 50 rounds a second per node, enough to see every phase, light enough for a small CI box.
const PACE: Duration = Duration::from_millis(20);

/// A tenant of the test config, with its basic-auth header.
struct Tenant {
    id: &'static str,
    region: &'static str,
    /// `Basic base64(id:s3cret)`.
    authorization: &'static str,
}

static TEAM_EU: Tenant = Tenant {
    id: "team-eu",
    region: "eu",
    authorization: "Basic dGVhbS1ldTpzM2NyZXQ=",
};
static TEAM_US: Tenant = Tenant {
    id: "team-us",
    region: "us",
    authorization: "Basic dGVhbS11czpzM2NyZXQ=",
};

/// The tenant whose home is `region`.
fn tenant_of(region: &str) -> &'static Tenant {
    [&TEAM_EU, &TEAM_US]
        .into_iter()
        .find(|t| t.region == region)
        .unwrap_or_else(|| panic!("no tenant for region {region}"))
}

/// Both tests time probes in hundreds of milliseconds; side by side they would double the
/// brokers and gateways competing for a small CI machine's cores (and a starved probe looks
/// like an outage), so they take turns.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ----- the fleet -------------------------------------------------------------------------

/// One upstream of a region as a node's config names it: its name and bootstrap address.
type Upstream = (&'static str, String);

/// A gateway of the fleet.
struct Node {
    name: &'static str,
    gw: Gateway,
}

/// A node's config; `NODE`, `GOSSIP`, `SEEDS`, `KEYS` and `REGIONS` are filled in by
/// [`node_config`] (every node shares one key file: gossip is sealed),
/// `{port}` and `{dir}` by the harness. Probe and gossip timings are short so that the test
/// sees a failover in seconds; `hold_down` is long enough to be told apart from a flap.
const NODE_CONFIG: &str = r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: null, http_listen: null }
durability: { mode: wal, dir: "{dir}/wal" }
cluster:
  node_id: NODE
  gossip_listen: "127.0.0.1:GOSSIP"
  seeds: [SEEDS]
  gossip_keys_file: "KEYS"
  gossip_interval: 200ms
  probe_interval: 500ms
  probe_timeout: 500ms
  fresh: 5s
  fail_after: 3
  recover_after: 3
  hold_down: 10s
  dead_after: 5s
regions:
REGIONS
tenants:
  - { id: team-eu, region: eu, passwords: ["s3cret"] }
  - { id: team-us, region: us, passwords: ["s3cret"] }
"#;

/// The config of node `name` gossiping on `gossip`, seeded with `seeds`, with the EU and US
/// upstreams given in failover order (the health topic is left at its default).
fn node_config(
    name: &str,
    gossip: u16,
    seeds: &[u16],
    keys: &Path,
    eu: &[Upstream],
    us: &[Upstream],
) -> String {
    let seeds: Vec<String> = seeds.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let mut regions = String::new();
    for (id, upstreams) in [("eu", eu), ("us", us)] {
        regions += &format!(
            "  - id: {id}\n    sinks:\n      kafka:\n        topic: \"metrics.{{region}}\"\n        \
             linger: 2ms\n        delivery_timeout: 10s\n        upstreams:\n"
        );
        for (upstream, brokers) in upstreams {
            regions += &format!("          - {{ name: {upstream}, brokers: \"{brokers}\" }}\n");
        }
    }
    NODE_CONFIG
        .replace("NODE", name)
        .replace("GOSSIP", &gossip.to_string())
        .replace("SEEDS", &seeds.join(", "))
        .replace("KEYS", &keys.display().to_string())
        .replace("REGIONS", regions.trim_end())
}

/// Starts one gateway per name in `NODES`, each in its own dir under `root`, each seeded with
/// the others' gossip addresses; `upstreams(name)` gives that node's (EU, US) upstreams.
fn start_fleet(
    root: &Path,
    upstreams: impl Fn(&str) -> (Vec<Upstream>, Vec<Upstream>),
) -> Vec<Node> {
    let gossip: Vec<u16> = NODES.iter().map(|_| free_port()).collect();
    let keys = root.join("gossip.keys");
    std::fs::write(&keys, "# the fleet's gossip key\n4a1f0e5c9b7d2a6e8f3c1b0d9e7a5c3b1f2e4d6c8a0b9e7d5c3a1f0e2d4c6b8a\n")
        .expect("key file");
    NODES
        .iter()
        .enumerate()
        .map(|(i, &name)| {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).expect("node dir");
            let seeds: Vec<u16> = (0..NODES.len())
                .filter(|&j| j != i)
                .map(|j| gossip[j])
                .collect();
            let (eu, us) = upstreams(name);
            let gw = Gateway::start(
                GATEWAY,
                &dir,
                &node_config(name, gossip[i], &seeds, &keys, &eu, &us),
            );
            Node { name, gw }
        })
        .collect()
}

/// The node called `name`.
fn node<'a>(nodes: &'a [Node], name: &str) -> &'a Node {
    nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("no node {name}"))
}

/// A set of node names.
fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|n| n.to_string()).collect()
}

// ----- /api/v1/status and /metrics ---------------------------------------------------------

/// The node's `/api/v1/status` as JSON, `None` unless it answered 200 with JSON.
fn status(gw: &Gateway) -> Option<Value> {
    let (code, body) = get(&gw.url("/api/v1/status"))?;
    if code != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// The node's status now; panics if it does not answer.
fn status_now(n: &Node) -> Value {
    status(&n.gw).unwrap_or_else(|| panic!("{} answers /api/v1/status with JSON", n.name))
}

/// The upstream `region` is routed to.
fn route_of<'a>(s: &'a Value, region: &str) -> Option<&'a str> {
    s["routes"][region].as_str()
}

/// The live members' node names, self included.
fn members(s: &Value) -> BTreeSet<String> {
    s["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["node"].as_str())
        .map(str::to_string)
        .collect()
}

/// The status entry of upstream `id` (`Null` when absent, so fields read as `Null`).
fn upstream<'a>(s: &'a Value, id: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    s["upstreams"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["id"] == id))
        .unwrap_or(&NULL)
}

/// One entry of the status' `failovers`.
#[derive(Debug)]
struct Failover {
    at_ms: i64,
    region: String,
    from: String,
    to: String,
}

fn failovers(s: &Value) -> Vec<Failover> {
    s["failovers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| Failover {
            at_ms: f["at_ms"]
                .as_i64()
                .unwrap_or_else(|| panic!("failover without at_ms: {f}")),
            region: f["region"].as_str().unwrap_or_default().to_string(),
            from: f["from"].as_str().unwrap_or_default().to_string(),
            to: f["to"].as_str().unwrap_or_default().to_string(),
        })
        .collect()
}

/// Adds every `(region, upstream)` of the status' routes to `seen`.
fn note_routes(seen: &mut BTreeSet<(String, String)>, s: &Value) {
    for (region, up) in s["routes"].as_object().into_iter().flatten() {
        seen.insert((region.clone(), up.as_str().unwrap_or("?").to_string()));
    }
}

/// Checks what every status must say about the node itself.
fn assert_self(n: &Node, s: &Value) {
    assert_eq!(s["node"], n.name, "{}: {s}", n.name);
    let me: Vec<&Value> = s["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["self"] == true)
        .collect();
    assert_eq!(me.len(), 1, "{}: exactly one member is self: {s}", n.name);
    assert_eq!(me[0]["node"], n.name, "{}: {s}", n.name);
}

/// A metric line's name, labels and value.
type MetricLine<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// Name, labels and value of one Prometheus text line (label values here never hold quotes).
fn parse_metric_line(line: &str) -> Option<MetricLine<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (&line[..open], &line[open + 1..close], &line[close + 1..])
        }
        None => {
            let space = line.find(' ')?;
            (&line[..space], "", &line[space..])
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    let mut pairs = Vec::new();
    let mut s = labels;
    while let Some(eq) = s.find("=\"") {
        let key = s[..eq].trim_start_matches(',').trim();
        let after = &s[eq + 2..];
        let end = after.find('"')?;
        pairs.push((key, &after[..end]));
        s = &after[end + 1..];
    }
    Some((name, pairs, value))
}

/// The sum of the values of the `/metrics` lines of `page` named exactly `name` whose labels
/// include every pair of `labels`, in whatever order the exporter prints them; `None` when no
/// line matches.
fn metric_with(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let values: Vec<f64> = page
        .lines()
        .filter_map(parse_metric_line)
        .filter(|(n, have, _)| *n == name && labels.iter().all(|want| have.contains(want)))
        .map(|(_, _, v)| v)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The node's `/metrics` page now.
fn metrics_now(n: &Node) -> String {
    let (code, page) = get(&n.gw.url("/metrics")).expect("metrics answer");
    assert_eq!(code, 200, "{}: /metrics", n.name);
    page
}

/// Polls every node's status until `done(node, status)` has held for each at least once;
/// returns, per node, how long after `since` it first did. Every route seen on the way is
/// added to `seen`.
fn first_time_each(
    nodes: &[&Node],
    what: &str,
    since: Instant,
    timeout: Duration,
    seen: &mut BTreeSet<(String, String)>,
    done: impl Fn(&Node, &Value) -> bool,
) -> BTreeMap<&'static str, Duration> {
    let mut first: BTreeMap<&'static str, Duration> = BTreeMap::new();
    wait_for(what, timeout, || {
        for n in nodes {
            let Some(s) = status(&n.gw) else {
                continue;
            };
            note_routes(seen, &s);
            if !first.contains_key(n.name) && done(n, &s) {
                first.insert(n.name, since.elapsed());
            }
        }
        (first.len() == nodes.len()).then(|| first.clone())
    })
}

// ----- writes --------------------------------------------------------------------------------

/// One remote-write request a test sent.
struct Post {
    node: &'static str,
    tenant: &'static Tenant,
    seq: u64,
    /// When it was sent.
    sent: Instant,
    /// The answer's status; 0 when nothing answered.
    status: u16,
    /// The answer's body (or the transport error) when it was not a 2xx.
    refusal: Option<String>,
}

impl Post {
    fn acked(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The samples this request carried.
    fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        SERIES.iter().map(move |series| Key {
            node: self.node.to_string(),
            tenant: self.tenant.id.to_string(),
            seq: self.seq,
            series: series.to_string(),
        })
    }
}

/// Sends one request of `SERIES.len()` probe samples for `tenant`, labelled `node` and `seq`,
/// through `node`'s `/api/v1/write`; never panics on a refusal or a transport error.
fn post_probe(
    agent: &ureq::Agent,
    url: &str,
    tenant: &'static Tenant,
    node: &'static str,
    seq: u64,
) -> Post {
    let seq_text = seq.to_string();
    let s: &str = &seq_text;
    // Labels sorted by name, as remote-write 1.0 asks; the gateway adds `tenant` and `region`.
    let series: Vec<[(&str, &str); 4]> = SERIES
        .iter()
        .map(|x| {
            [
                ("__name__", PROBE),
                ("node", node),
                ("seq", s),
                ("series", *x),
            ]
        })
        .collect();
    let refs: Vec<&[(&str, &str)]> = series.iter().map(|x| x.as_slice()).collect();
    let body = remote_write_body(&refs, now_ms());
    let sent = Instant::now();
    let headers = [
        &REMOTE_WRITE_V1_HEADERS[..],
        &[("authorization", tenant.authorization)],
    ]
    .concat();
    let (status, text) = match try_post_with(agent, url, &body, &headers) {
        Ok(a) => (a.status, a.body),
        Err(e) => (0, e.to_string()),
    };
    Post {
        node,
        tenant,
        seq,
        sent,
        status,
        refusal: (!(200..300).contains(&status)).then(|| text.chars().take(200).collect()),
    }
}

/// Tells the load threads to stop, also when the test fails before it stops them itself.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Posts a team-eu and a team-us request to `n` every `PACE` until `stop`; returns every
/// request sent.
fn start_load(n: &Node, stop: &Arc<AtomicBool>) -> JoinHandle<Vec<Post>> {
    let url = n.gw.url("/api/v1/write");
    let name = n.name;
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let agent = http();
        let mut posts = Vec::new();
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            for tenant in [&TEAM_EU, &TEAM_US] {
                posts.push(post_probe(&agent, &url, tenant, name, seq));
            }
            std::thread::sleep(PACE);
        }
        posts
    })
}

/// Per node and tenant: requests sent, acknowledged, and the other statuses with one answer
/// each, for the printed summary.
fn summarize(posts: &[Post]) {
    /// Sent, acknowledged, and per other status its count and one answer.
    type Tally = (usize, usize, BTreeMap<u16, (usize, String)>);
    let mut by: BTreeMap<(&str, &str), Tally> = BTreeMap::new();
    for p in posts {
        let e = by.entry((p.node, p.tenant.id)).or_default();
        e.0 += 1;
        if p.acked() {
            e.1 += 1;
        } else {
            let r = e.2.entry(p.status).or_insert((0, String::new()));
            r.0 += 1;
            if r.1.is_empty() {
                r.1 = p.refusal.clone().unwrap_or_default();
            }
        }
    }
    for ((node, tenant), (sent, acked, refused)) in by {
        println!("{node} {tenant}: {sent} requests, {acked} acknowledged, refused: {refused:?}");
    }
}

// ----- reading back ------------------------------------------------------------------------

/// A probe sample: which node sent it for which tenant, in which request, which series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    node: String,
    tenant: String,
    seq: u64,
    series: String,
}

fn label<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v["labels"][name].as_str()
}

/// The probe sample a `tail --json` line holds (tenant from the message's `tenant` header).
fn key_of(l: &Value) -> Option<Key> {
    if label(l, "__name__") != Some(PROBE) {
        return None;
    }
    Some(Key {
        node: label(l, "node")?.to_string(),
        tenant: l["tenant"].as_str()?.to_string(),
        seq: label(l, "seq")?.parse().ok()?,
        series: label(l, "series")?.to_string(),
    })
}

/// A broker the test reads back: the upstream it plays and its region.
struct Site<'a> {
    upstream: &'static str,
    region: &'static str,
    broker: &'a Broker,
}

/// The site of `upstream`, named `<region>-<role>`.
fn site<'a>(upstream: &'static str, broker: &'a Broker) -> Site<'a> {
    let region = upstream.split('-').next().unwrap_or(upstream);
    Site {
        upstream,
        region,
        broker,
    }
}

/// What each site holds in each of `topics`, keyed by (upstream, topic), read in parallel
/// (each read ends after 3 s without a message).
fn read_back(
    sites: &[Site],
    topics: &[&'static str],
) -> BTreeMap<(&'static str, &'static str), Vec<Value>> {
    let addrs: Vec<(&'static str, String)> = sites
        .iter()
        .map(|s| (s.upstream, s.broker.addr()))
        .collect();
    std::thread::scope(|scope| {
        let mut reads = Vec::new();
        for (upstream, addr) in &addrs {
            for &topic in topics {
                let read = scope.spawn(move || tail_json(GATEWAY, addr, topic, 3));
                reads.push(((*upstream, topic), read));
            }
        }
        reads
            .into_iter()
            .map(|(k, h)| (k, h.join().expect("a tail read succeeds")))
            .collect()
    })
}

/// How often each probe sample is on the sites of its own tenant's region, in that region's
/// topic (`metrics.<region>`).
fn in_home_region(
    sites: &[Site],
    reads: &BTreeMap<(&'static str, &'static str), Vec<Value>>,
) -> HashMap<Key, u64> {
    let mut found = HashMap::new();
    for site in sites {
        let home = tenant_of(site.region).id;
        for l in reads
            .get(&(site.upstream, topic_of(site.region)))
            .into_iter()
            .flatten()
        {
            if let Some(k) = key_of(l).filter(|k| k.tenant == home) {
                *found.entry(k).or_insert(0) += 1;
            }
        }
    }
    found
}

/// The Kafka sink's topic for `region`.
fn topic_of(region: &str) -> &'static str {
    match region {
        "eu" => EU_TOPIC,
        "us" => US_TOPIC,
        other => panic!("no topic for region {other}"),
    }
}

/// Reads every site until every key of `want` is on its region's sites or `timeout` passed
/// (acknowledged data may still be draining from the nodes' write-ahead logs); returns the
/// last read.
fn read_until_delivered(
    sites: &[Site],
    topics: &[&'static str],
    want: &BTreeSet<Key>,
    timeout: Duration,
) -> BTreeMap<(&'static str, &'static str), Vec<Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let reads = read_back(sites, topics);
        let found = in_home_region(sites, &reads);
        let missing = want.iter().filter(|k| !found.contains_key(*k)).count();
        if missing == 0 || Instant::now() > deadline {
            return reads;
        }
        println!("{missing} acknowledged samples not on their region's brokers yet; reading again");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Residency at the broker level: a site's other-region topic is empty, and everything in
/// its own region's topic belongs to that region's tenant, by header and by label.
fn assert_each_region_holds_only_its_own(
    sites: &[Site],
    reads: &BTreeMap<(&'static str, &'static str), Vec<Value>>,
) {
    for ((upstream, topic), lines) in reads {
        let site = sites
            .iter()
            .find(|s| s.upstream == *upstream)
            .expect("site");
        let topic_region = topic.strip_prefix("metrics.").expect("a metrics topic");
        if topic_region != site.region {
            assert!(
                lines.is_empty(),
                "{} samples for region {topic_region} on {upstream}, a broker of region {}: {:?}",
                lines.len(),
                site.region,
                &lines[..lines.len().min(3)]
            );
            continue;
        }
        let home = tenant_of(site.region).id;
        for l in lines {
            assert_eq!(l["tenant"], home, "{upstream}/{topic}: {l}");
            assert_eq!(l["region"], site.region, "{upstream}/{topic}: {l}");
            assert_eq!(label(l, "tenant"), Some(home), "{upstream}/{topic}: {l}");
            assert_eq!(
                label(l, "region"),
                Some(site.region),
                "{upstream}/{topic}: {l}"
            );
        }
    }
}

/// The probe keys on one site's topic.
fn keys_on(
    reads: &BTreeMap<(&'static str, &'static str), Vec<Value>>,
    upstream: &'static str,
    topic: &'static str,
) -> BTreeSet<Key> {
    reads
        .get(&(upstream, topic))
        .into_iter()
        .flatten()
        .filter_map(key_of)
        .collect()
}

// ----- the tests -----------------------------------------------------------------------------

#[test]
fn eu_primary_outage_moves_eu_traffic_to_the_eu_secondary_on_every_node_and_back() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let eu_primary = Broker::start(dir, "eu-primary");
    let eu_secondary = Broker::start(dir, "eu-secondary");
    let us_primary = Broker::start(dir, "us-primary");
    let us_secondary = Broker::start(dir, "us-secondary");
    let sites = [
        site("eu-primary", &eu_primary),
        site("eu-secondary", &eu_secondary),
        site("us-primary", &us_primary),
        site("us-secondary", &us_secondary),
    ];
    for s in &sites {
        // Both regions' topics on every broker: a sample sent to the other region's broker
        // would be stored there and found below, not refused for a missing topic.
        s.broker.create_topic(EU_TOPIC, 3);
        s.broker.create_topic(US_TOPIC, 3);
        s.broker.create_topic(HEALTH_TOPIC, 1);
    }
    let nodes = start_fleet(dir, |_| {
        (
            vec![
                ("eu-primary", eu_primary.addr()),
                ("eu-secondary", eu_secondary.addr()),
            ],
            vec![
                ("us-primary", us_primary.addr()),
                ("us-secondary", us_secondary.addr()),
            ],
        )
    });
    let all: Vec<&Node> = nodes.iter().collect();
    let fleet = names(&NODES);

    let started = Instant::now();
    wait_for(
        "every node to list the three nodes and route eu to eu-primary, us to us-primary",
        Duration::from_secs(60),
        || {
            nodes
                .iter()
                .all(|n| {
                    status(&n.gw).is_some_and(|s| {
                        members(&s) == fleet
                            && route_of(&s, "eu") == Some("eu-primary")
                            && route_of(&s, "us") == Some("us-primary")
                    }) && get(&n.gw.url("/metrics"))
                        .and_then(|(_, page)| metric_with(&page, "traceo_gossip_members", &[]))
                        == Some(3.0)
                })
                .then_some(())
        },
    );
    println!(
        "fleet formed {:?} after the last node was ready",
        started.elapsed()
    );
    for n in &nodes {
        let s = status_now(n);
        assert_self(n, &s);
        assert!(
            failovers(&s).is_empty(),
            "{}: failovers before any outage: {s}",
            n.name
        );
        let page = metrics_now(n);
        assert_eq!(
            metric_with(&page, "traceo_gossip_members", &[]),
            Some(3.0),
            "{}",
            n.name
        );
        let up = |u, r| {
            metric_with(
                &page,
                "traceo_upstream_up",
                &[("upstream", u), ("region", r)],
            )
        };
        assert_eq!(up("eu-primary", "eu"), Some(1.0), "{}", n.name);
        assert_eq!(up("us-primary", "us"), Some(1.0), "{}", n.name);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
    let load: Vec<JoinHandle<Vec<Post>>> = nodes.iter().map(|n| start_load(n, &stop)).collect();
    std::thread::sleep(Duration::from_secs(3));

    // Outage: the EU primary stops answering, connections stay open (SIGSTOP), the worst
    // kind for a client: nothing is refused, everything times out.
    let mut routes_seen = BTreeSet::new();
    eu_primary.proc.signal("STOP");
    let stopped = Instant::now();
    let stopped_ms = now_ms();
    let switched = first_time_each(
        &all,
        "every node to route eu to eu-secondary",
        stopped,
        Duration::from_secs(60),
        &mut routes_seen,
        |_, s| route_of(s, "eu") == Some("eu-secondary"),
    );
    for (n, d) in &switched {
        println!("{n}: eu routed to eu-secondary {d:?} after the EU primary stopped");
    }
    for n in &nodes {
        let s = status_now(n);
        note_routes(&mut routes_seen, &s);
        assert_eq!(route_of(&s, "eu"), Some("eu-secondary"), "{}: {s}", n.name);
        assert_eq!(route_of(&s, "us"), Some("us-primary"), "{}: {s}", n.name);
        assert_eq!(
            upstream(&s, "eu-primary")["fleet"],
            "down",
            "{}: {s}",
            n.name
        );
    }
    // A node may have switched on its peers' majority before its own probes reached
    // `fail_after`; its own probes and both peers' observations agree soon after.
    wait_for(
        "every node's own probes and both peers' observations to say eu-primary is down",
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .all(|n| {
                    status(&n.gw).is_some_and(|s| {
                        let u = upstream(&s, "eu-primary");
                        u["local"] == "down"
                            && NODES
                                .iter()
                                .filter(|p| **p != n.name)
                                .all(|p| u["peers"][*p] == "down")
                    })
                })
                .then_some(())
        },
    );
    for n in &nodes {
        let s = status_now(n);
        let u = upstream(&s, "eu-primary");
        assert_eq!(u["region"], "eu", "{}: {u}", n.name);
        assert_eq!(u["kind"], "kafka", "{}: {u}", n.name);
        assert!(
            u["last_error"].as_str().is_some_and(|e| !e.is_empty()),
            "{}: a down upstream says why: {u}",
            n.name
        );
        assert_ne!(
            upstream(&s, "eu-secondary")["fleet"],
            "down",
            "{}: {s}",
            n.name
        );
        assert_ne!(
            upstream(&s, "us-primary")["fleet"],
            "down",
            "{}: {s}",
            n.name
        );
        let page = metrics_now(n);
        let up = |u, r| {
            metric_with(
                &page,
                "traceo_upstream_up",
                &[("upstream", u), ("region", r)],
            )
        };
        assert_eq!(up("eu-primary", "eu"), Some(0.0), "{}", n.name);
        assert_eq!(up("eu-secondary", "eu"), Some(1.0), "{}", n.name);
        assert_eq!(up("us-primary", "us"), Some(1.0), "{}", n.name);
        let (code, text) =
            get(&n.gw.url("/api/v1/status?format=text")).expect("text status answers");
        assert_eq!(code, 200, "{}: {text}", n.name);
        assert!(
            text.contains("eu-secondary") && text.contains("us-primary"),
            "{}: the text status names the routes: {text}",
            n.name
        );
    }
    std::thread::sleep(Duration::from_secs(5));

    // The primary answers again: every node goes back after `recover_after` good probes and
    // `hold_down` without a failure.
    eu_primary.proc.signal("CONT");
    let resumed = Instant::now();
    let resumed_ms = now_ms();
    let back = first_time_each(
        &all,
        "every node to route eu back to eu-primary",
        resumed,
        Duration::from_secs(90),
        &mut routes_seen,
        |_, s| route_of(s, "eu") == Some("eu-primary"),
    );
    let failed_back = Instant::now();
    for (n, d) in &back {
        println!("{n}: eu routed back to eu-primary {d:?} after the EU primary resumed");
    }
    for n in &nodes {
        let s = status_now(n);
        note_routes(&mut routes_seen, &s);
        assert_eq!(route_of(&s, "eu"), Some("eu-primary"), "{}: {s}", n.name);
        assert_eq!(route_of(&s, "us"), Some("us-primary"), "{}: {s}", n.name);
        assert_eq!(members(&s), fleet, "{}: {s}", n.name);
        let f = failovers(&s);
        let away = f
            .iter()
            .find(|f| f.region == "eu" && f.from == "eu-primary" && f.to == "eu-secondary")
            .unwrap_or_else(|| panic!("{}: no eu-primary -> eu-secondary failover: {f:?}", n.name));
        let home = f
            .iter()
            .find(|f| f.region == "eu" && f.from == "eu-secondary" && f.to == "eu-primary")
            .unwrap_or_else(|| panic!("{}: no eu-secondary -> eu-primary failover: {f:?}", n.name));
        assert!(
            away.at_ms >= stopped_ms,
            "{}: failover before the outage: {away:?}",
            n.name
        );
        assert!(
            home.at_ms >= resumed_ms,
            "{}: failback before the primary resumed: {home:?}",
            n.name
        );
        assert!(
            f.iter()
                .all(|f| f.region == "eu" && f.from.starts_with("eu-") && f.to.starts_with("eu-")),
            "{}: a failover outside the EU upstreams: {f:?}",
            n.name
        );
        let page = metrics_now(n);
        // Reported, not asserted: each switch to the first confirmed delivery on the new
        // cluster, and the probe time from the first failure to "down".
        let stat = |name: &str, labels: &[(&str, &str)]| metric_with(&page, name, labels);
        println!(
            "{}: route switch to first delivery: {} switches, {:.3} s in total; detection by own probes: {:.3} s",
            n.name,
            stat("traceo_failover_seconds_count", &[("region", "eu")]).unwrap_or(0.0),
            stat("traceo_failover_seconds_sum", &[("region", "eu")]).unwrap_or(0.0),
            stat("traceo_upstream_detection_seconds_sum", &[("upstream", "eu-primary")]).unwrap_or(0.0),
        );
        let events = |from, to| {
            metric_with(
                &page,
                "traceo_failover_events_total",
                &[("region", "eu"), ("from", from), ("to", to)],
            )
            .unwrap_or(0.0)
        };
        assert!(
            events("eu-primary", "eu-secondary") >= 1.0,
            "{}: {page}",
            n.name
        );
        assert!(
            events("eu-secondary", "eu-primary") >= 1.0,
            "{}: {page}",
            n.name
        );
        assert_eq!(
            metric_with(&page, "traceo_failover_events_total", &[("region", "us")]).unwrap_or(0.0),
            0.0,
            "{}: US never failed over",
            n.name
        );
        assert_eq!(
            metric_with(
                &page,
                "traceo_upstream_up",
                &[("upstream", "eu-primary"), ("region", "eu")]
            ),
            Some(1.0),
            "{}",
            n.name
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let posts: Vec<Post> = load
        .into_iter()
        .flat_map(|h| h.join().expect("a load thread ends"))
        .collect();
    summarize(&posts);

    // Routes only ever named an upstream of their own region, and US never moved.
    for (region, up) in &routes_seen {
        match region.as_str() {
            "eu" => assert!(
                up == "eu-primary" || up == "eu-secondary",
                "eu routed to {up}"
            ),
            "us" => assert_eq!(up, "us-primary", "us moved while its brokers were fine"),
            other => panic!("a route for unknown region {other} to {up}"),
        }
    }
    for n in &nodes {
        let page = metrics_now(n);
        let routed = |r, u| {
            metric_with(
                &page,
                "traffic_routing_requests_total",
                &[("region", r), ("upstream", u)],
            )
            .unwrap_or(0.0)
        };
        assert!(routed("eu", "eu-primary") >= 1.0, "{}: {page}", n.name);
        assert!(routed("eu", "eu-secondary") >= 1.0, "{}: {page}", n.name);
        assert!(routed("us", "us-primary") >= 1.0, "{}: {page}", n.name);
        assert_eq!(routed("us", "us-secondary"), 0.0, "{}: {page}", n.name);
    }

    // Every acknowledged sample is on its region's brokers once the logs have drained.
    let acked: BTreeSet<Key> = posts
        .iter()
        .filter(|p| p.acked())
        .flat_map(Post::keys)
        .collect();
    for n in NODES {
        for t in [&TEAM_EU, &TEAM_US] {
            assert!(
                posts
                    .iter()
                    .any(|p| p.node == n && p.tenant.id == t.id && p.acked()),
                "{n} acknowledged nothing for {}: the test proves nothing",
                t.id
            );
        }
    }
    let reads = read_until_delivered(
        &sites,
        &[EU_TOPIC, US_TOPIC],
        &acked,
        Duration::from_secs(90),
    );
    assert_each_region_holds_only_its_own(&sites, &reads);
    let found = in_home_region(&sites, &reads);
    let missing: Vec<&Key> = acked.iter().filter(|k| !found.contains_key(*k)).collect();
    let duplicates: u64 = acked
        .iter()
        .filter_map(|k| found.get(k))
        .map(|c| c - 1)
        .sum();
    let unacked_delivered = found.keys().filter(|k| !acked.contains(*k)).count();
    for s in &sites {
        let topic = topic_of(s.region);
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for k in keys_on(&reads, s.upstream, topic) {
            *per_node.entry(k.node).or_default() += 1;
        }
        println!("{} holds in {topic}: {per_node:?}", s.upstream);
    }
    println!(
        "{} samples acknowledged; duplicates: {duplicates}; delivered though not acknowledged: \
         {unacked_delivered}",
        acked.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but on neither broker of their region ({} of {}): {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(20)]
    );

    // Every node failed over: the EU secondary holds EU samples from each.
    let on_secondary = keys_on(&reads, "eu-secondary", EU_TOPIC);
    let senders: BTreeSet<String> = on_secondary.iter().map(|k| k.node.clone()).collect();
    assert_eq!(
        senders, fleet,
        "nodes whose EU samples reached the EU secondary"
    );
    // Every node came back: the EU primary holds EU samples each node acknowledged after
    // all nodes routed eu to it again.
    let on_primary = keys_on(&reads, "eu-primary", EU_TOPIC);
    for n in NODES {
        let after: BTreeSet<Key> = posts
            .iter()
            .filter(|p| {
                p.node == n && p.tenant.id == "team-eu" && p.acked() && p.sent >= failed_back
            })
            .flat_map(Post::keys)
            .collect();
        let there = after.iter().filter(|k| on_primary.contains(*k)).count();
        let elsewhere = after.iter().filter(|k| on_secondary.contains(*k)).count();
        println!(
            "{n}: {} EU samples acknowledged after the failback; on eu-primary {there}, on \
             eu-secondary {elsewhere}",
            after.len()
        );
        assert!(
            there > 0,
            "{n}: no EU sample acknowledged after the failback is on eu-primary"
        );
    }
}

#[test]
fn a_node_that_alone_cannot_reach_an_upstream_fails_over_alone_and_a_killed_node_leaves() {
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let eu_primary = Broker::start(dir, "eu-primary");
    let eu_secondary = Broker::start(dir, "eu-secondary");
    let us_primary = Broker::start(dir, "us-primary");
    for b in [&eu_primary, &eu_secondary] {
        b.create_topic(EU_TOPIC, 2);
        b.create_topic(HEALTH_TOPIC, 1);
    }
    us_primary.create_topic(US_TOPIC, 2);
    us_primary.create_topic(HEALTH_TOPIC, 1);
    let sites = [
        site("eu-primary", &eu_primary),
        site("eu-secondary", &eu_secondary),
    ];
    // gw-c's `eu-primary` is an address nobody listens on: gw-c alone cannot reach it,
    // while gw-a and gw-b reach the real broker under the same upstream name.
    let unreachable = format!("127.0.0.1:{}", free_port());
    let mut nodes = start_fleet(dir, |name| {
        let primary = if name == "gw-c" {
            unreachable.clone()
        } else {
            eu_primary.addr()
        };
        (
            vec![
                ("eu-primary", primary),
                ("eu-secondary", eu_secondary.addr()),
            ],
            vec![("us-primary", us_primary.addr())],
        )
    });
    let fleet = names(&NODES);
    let home_of = |name: &str| {
        if name == "gw-c" {
            "eu-secondary"
        } else {
            "eu-primary"
        }
    };

    let started = Instant::now();
    wait_for(
        "three members everywhere, gw-c alone routing eu to eu-secondary",
        Duration::from_secs(60),
        || {
            nodes
                .iter()
                .all(|n| {
                    status(&n.gw).is_some_and(|s| {
                        members(&s) == fleet
                            && route_of(&s, "eu") == Some(home_of(n.name))
                            && route_of(&s, "us") == Some("us-primary")
                    })
                })
                .then_some(())
        },
    );
    println!(
        "gw-c failed over alone {:?} after the last node was ready",
        started.elapsed()
    );
    // Gossip carries each node's observation to the others.
    wait_for(
        "every node to hold both peers' observations of eu-primary",
        Duration::from_secs(30),
        || {
            nodes
                .iter()
                .all(|n| {
                    status(&n.gw).is_some_and(|s| {
                        let peers = &upstream(&s, "eu-primary")["peers"];
                        NODES.iter().filter(|p| **p != n.name).all(|p| {
                            let want_down = *p == "gw-c";
                            peers[*p].is_string() && (peers[*p] == "down") == want_down
                        })
                    })
                })
                .then_some(())
        },
    );
    // The quorum rule holds over more than one freshness window: gw-c's own probes keep it
    // on the secondary; one "down" among three fresh observations moves no one else.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(6) {
        for n in &nodes {
            let s = status_now(n);
            assert_self(n, &s);
            assert_eq!(route_of(&s, "eu"), Some(home_of(n.name)), "{}: {s}", n.name);
            assert_eq!(route_of(&s, "us"), Some("us-primary"), "{}: {s}", n.name);
            let u = upstream(&s, "eu-primary");
            if n.name == "gw-c" {
                assert_eq!(u["local"], "down", "gw-c: {u}");
                assert_eq!(u["fleet"], "down", "gw-c: {u}");
                assert!(
                    u["last_error"].as_str().is_some_and(|e| !e.is_empty()),
                    "gw-c: a down upstream says why: {u}"
                );
            } else {
                assert!(
                    u["local"].is_string() && u["local"] != "down",
                    "{}: {u}",
                    n.name
                );
                assert!(
                    u["fleet"].is_string() && u["fleet"] != "down",
                    "{}: {u}",
                    n.name
                );
                assert_eq!(
                    u["peers"]["gw-c"], "down",
                    "{}: gw-c's observation: {u}",
                    n.name
                );
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for n in &nodes {
        let s = status_now(n);
        let f = failovers(&s);
        let page = metrics_now(n);
        let events = metric_with(
            &page,
            "traceo_failover_events_total",
            &[
                ("region", "eu"),
                ("from", "eu-primary"),
                ("to", "eu-secondary"),
            ],
        )
        .unwrap_or(0.0);
        let primary_up = metric_with(
            &page,
            "traceo_upstream_up",
            &[("upstream", "eu-primary"), ("region", "eu")],
        );
        if n.name == "gw-c" {
            assert!(
                f.iter()
                    .any(|f| f.region == "eu" && f.from == "eu-primary" && f.to == "eu-secondary"),
                "gw-c: {f:?}"
            );
            assert!(events >= 1.0, "gw-c: {page}");
            assert_eq!(primary_up, Some(0.0), "gw-c");
        } else {
            assert!(
                f.is_empty(),
                "{}: failed over with the fleet still on the primary: {f:?}",
                n.name
            );
            assert_eq!(events, 0.0, "{}: {page}", n.name);
            assert_eq!(primary_up, Some(1.0), "{}", n.name);
        }
    }

    // EU writes through gw-c land on the secondary, through gw-a on the primary.
    let agent = http();
    let mut posts = Vec::new();
    for seq in 1..=20 {
        for name in ["gw-a", "gw-c"] {
            let url = node(&nodes, name).gw.url("/api/v1/write");
            let p = post_probe(&agent, &url, &TEAM_EU, node(&nodes, name).name, seq);
            assert!(
                p.acked(),
                "{name} refused a write with a usable route: {} {:?}",
                p.status,
                p.refusal
            );
            posts.push(p);
        }
    }
    let sent: BTreeSet<Key> = posts.iter().flat_map(Post::keys).collect();
    let reads = read_until_delivered(&sites, &[EU_TOPIC], &sent, Duration::from_secs(60));
    assert_each_region_holds_only_its_own(&sites, &reads);
    let on_primary = keys_on(&reads, "eu-primary", EU_TOPIC);
    let on_secondary = keys_on(&reads, "eu-secondary", EU_TOPIC);
    for k in &sent {
        let (want, other) = if k.node == "gw-c" {
            (&on_secondary, "eu-secondary")
        } else {
            (&on_primary, "eu-primary")
        };
        assert!(want.contains(k), "{k:?} is not on {other}");
    }
    let gw_a_on_secondary: Vec<&Key> = on_secondary.iter().filter(|k| k.node == "gw-a").collect();
    assert!(
        gw_a_on_secondary.is_empty(),
        "gw-a never failed over, yet its samples are on eu-secondary: {gw_a_on_secondary:?}"
    );

    // SIGKILL: gw-c says goodbye to no one; the others find out from its silence.
    let c = nodes.iter().position(|n| n.name == "gw-c").expect("gw-c");
    nodes[c].gw.proc.kill9();
    let killed = Instant::now();
    let survivors: Vec<&Node> = nodes.iter().filter(|n| n.name != "gw-c").collect();
    let mut routes_seen = BTreeSet::new();
    let left = first_time_each(
        &survivors,
        "gw-a and gw-b to drop gw-c from their members and traceo_gossip_members",
        killed,
        Duration::from_secs(60),
        &mut routes_seen,
        |n, s| {
            !members(s).contains("gw-c")
                && get(&n.gw.url("/metrics"))
                    .and_then(|(_, page)| metric_with(&page, "traceo_gossip_members", &[]))
                    == Some(2.0)
        },
    );
    for (n, d) in &left {
        println!("{n}: gw-c left the members {d:?} after its SIGKILL");
    }
    for n in &survivors {
        let s = status_now(n);
        assert_eq!(members(&s), names(&["gw-a", "gw-b"]), "{}: {s}", n.name);
        assert_eq!(
            metric_with(&metrics_now(n), "traceo_gossip_members", &[]),
            Some(2.0),
            "{}",
            n.name
        );
        assert_eq!(route_of(&s, "eu"), Some("eu-primary"), "{}: {s}", n.name);
    }
    // Only fresh observations count: the dead node's last word stops being shown.
    let stale = first_time_each(
        &survivors,
        "gw-a and gw-b to stop showing gw-c's observation of eu-primary",
        killed,
        Duration::from_secs(60),
        &mut routes_seen,
        |_, s| upstream(s, "eu-primary")["peers"].get("gw-c").is_none(),
    );
    for (n, d) in &stale {
        println!("{n}: gw-c's observation dropped {d:?} after its SIGKILL");
    }
    for (region, up) in &routes_seen {
        let want = if region == "eu" {
            "eu-primary"
        } else {
            "us-primary"
        };
        assert_eq!(up, want, "a survivor moved {region} after gw-c died");
    }
}
