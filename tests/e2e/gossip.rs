//! Gossip between gateways is sealed with the fleet's key, against real processes: three
//! `traceo-gateway` nodes probing one real `tansu` broker, a fourth node holding the wrong key,
//! and this test as a hostile sender on the network.
//!
//! - the node with the wrong key, which sees the upstream down, never becomes a member and
//!   never changes the fleet's view of the upstream;
//! - datagrams captured from the fleet (the test is one of the nodes' seeds, so they send it
//!   their sealed SYNs) replayed, replayed after the window, altered; clear chitchat messages
//!   naming fake members that say the upstream is down; and, sealed with the real key, the
//!   delta shape that trips an assertion in chitchat and a digest naming hundreds of nodes:
//!   every one is dropped and counted by reason, no node's membership or upstream health
//!   moves, and no gossip task restarts;
//! - rotating the fleet from key 1 to key 2 node by node (add key 2 second, make it first,
//!   drop key 1; one restart per node per step) never splits the fleet: every node sees every
//!   other after each restart, and no datagram is refused for an unknown key.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protocols::gossip::seal::KeyRing;
use serde_json::Value;
use traceo_e2e::{free_port, get, metric_in, wait_for, Broker, Gateway};

const GATEWAY: &str = env!("CARGO_BIN_EXE_traceo-gateway");

/// The fleet.
const NODES: [&str; 3] = ["gw-a", "gw-b", "gw-c"];
/// The upstream every node probes.
const UPSTREAM: &str = "eu-primary";

const KEY_1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY_2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const WRONG: &str = "9999999999999999999999999999999999999999999999999999999999999999";

/// A node's config; `NODE`, `GOSSIP`, `SEEDS` and `BROKERS` are filled in here, `{port}` and
/// `{dir}` by the harness. The replay window is short so a stale replay is quick to show.
const CONFIG: &str = r#"
listen: { http: "127.0.0.1:{port}" }
otlp: { grpc_listen: null, http_listen: null }
durability: { mode: wal, dir: "{dir}/wal" }
cluster:
  node_id: NODE
  gossip_listen: "127.0.0.1:GOSSIP"
  seeds: [SEEDS]
  gossip_keys_file: "{dir}/gossip.keys"
  gossip_replay_window: 3s
  gossip_interval: 200ms
  probe_interval: 500ms
  probe_timeout: 500ms
  dead_after: 3s
regions:
  - id: eu
    sinks:
      kafka:
        topic: "metrics.eu"
        upstreams:
          - { name: eu-primary, brokers: "BROKERS" }
tenants:
  - { id: team-eu, region: eu, passwords: ["s3cret"] }
"#;

/// The two tests time gossip in hundreds of milliseconds with seven gateways and two
/// brokers between them; side by side on a small CI machine a starved node could miss its
/// heartbeats and look like a split, so they take turns.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Node {
    name: String,
    gossip: u16,
    gw: Gateway,
}

/// The broker every node probes, with the topics the nodes need.
fn broker(root: &Path) -> Broker {
    let broker = Broker::start(root, "tansu");
    broker.create_topic("traceo-health", 1);
    broker.create_topic("metrics.eu", 1);
    broker
}

fn keys_path(dir: &Path) -> PathBuf {
    dir.join("gossip.keys")
}

/// Starts node `name` in `root/name` gossiping on `gossip`, seeded with `seeds`, holding
/// `keys` (one per line, first seals), probing `brokers`.
fn start_node(
    root: &Path,
    name: &str,
    gossip: u16,
    seeds: &[u16],
    keys: &[&str],
    brokers: &str,
) -> Node {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("node dir");
    std::fs::write(keys_path(&dir), keys.join("\n")).expect("key file");
    let seeds: Vec<String> = seeds.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    let config = CONFIG
        .replace("NODE", name)
        .replace("GOSSIP", &gossip.to_string())
        .replace("SEEDS", &seeds.join(", "))
        .replace("BROKERS", brokers);
    Node {
        name: name.to_string(),
        gossip,
        gw: Gateway::start(GATEWAY, &dir, &config),
    }
}

/// The fleet of [`NODES`], each seeded with the others and with `extra_seed`, all holding
/// `keys`.
fn start_fleet(root: &Path, broker: &Broker, keys: &[&str], extra_seed: Option<u16>) -> Vec<Node> {
    let ports: Vec<u16> = NODES.iter().map(|_| free_port()).collect();
    NODES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut seeds: Vec<u16> = (0..NODES.len())
                .filter(|&j| j != i)
                .map(|j| ports[j])
                .collect();
            seeds.extend(extra_seed);
            start_node(root, name, ports[i], &seeds, keys, &broker.addr())
        })
        .collect()
}

fn status(n: &Node) -> Option<Value> {
    let (code, body) = get(&n.gw.url("/api/v1/status"))?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

fn members(s: &Value) -> BTreeSet<String> {
    s["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["node"].as_str())
        .map(str::to_string)
        .collect()
}

/// The status entry of the upstream.
fn upstream(s: &Value) -> Value {
    s["upstreams"]
        .as_array()
        .and_then(|u| u.iter().find(|u| u["id"] == UPSTREAM))
        .cloned()
        .unwrap_or(Value::Null)
}

fn fleet() -> BTreeSet<String> {
    NODES.iter().map(|n| n.to_string()).collect()
}

/// Waits until every node sees exactly `want` as members and the upstream `up` by the fleet.
fn wait_converged(nodes: &[Node], want: &BTreeSet<String>, what: &str) {
    for n in nodes {
        wait_for(
            &format!("{} to see {want:?} ({what})", n.name),
            Duration::from_secs(30),
            || {
                let s = status(n)?;
                (members(&s) == *want && upstream(&s)["fleet"] == "up").then_some(())
            },
        );
    }
}

/// A counter of `/metrics` by its full series prefix, 0 when absent.
fn counter(n: &Node, series: &str) -> f64 {
    let page = get(&n.gw.url("/metrics"))
        .map(|(_, p)| p)
        .unwrap_or_default();
    metric_in(&page, series).unwrap_or(0.0)
}

fn rejected(n: &Node, reason: &str) -> f64 {
    counter(
        n,
        &format!("traceo_gossip_rejected_packets_total{{reason=\"{reason}\"}}"),
    )
}

// ----- chitchat 0.10 messages as a hostile peer writes them ---------------------------------

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u16).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_node(b: &mut Vec<u8>, id: &str, port: u16) {
    put_str(b, id);
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&[4, 127, 0, 0, 1]);
    b.extend_from_slice(&port.to_le_bytes());
}

fn header(ty: u8) -> Vec<u8> {
    let mut b = 45_139u16.to_le_bytes().to_vec();
    b.extend_from_slice(&[0, ty]);
    b
}

/// A SYN whose digest names `fakes` nodes.
fn syn_naming(fakes: usize) -> Vec<u8> {
    let mut b = header(0);
    b.extend_from_slice(&(fakes as u16).to_le_bytes());
    for i in 0..fakes {
        put_node(&mut b, &format!("fake-{i}"), 40_000 + i as u16);
        b.extend_from_slice(&[1; 8]);
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&[0; 8]);
    }
    put_str(&mut b, "traceo");
    b
}

/// An ACK whose delta has five fake nodes each saying the upstream is down; with
/// `assert_trip`, the first one's max version is then set below its key's version, the shape
/// that trips chitchat's `assert!` in `NodeState::apply_delta`.
fn ack_with_fake_members(assert_trip: bool) -> Vec<u8> {
    let mut ops = Vec::new();
    for i in 0..5 {
        ops.push(0);
        put_node(&mut ops, &format!("fake-{i}"), 41_000 + i);
        ops.extend_from_slice(&0u64.to_le_bytes());
        ops.extend_from_slice(&0u64.to_le_bytes());
        ops.push(1);
        put_str(&mut ops, &format!("upstream.{UPSTREAM}.health"));
        put_str(&mut ops, "down 1000000");
        ops.extend_from_slice(&10u64.to_le_bytes());
        ops.push(0);
        if assert_trip && i == 0 {
            ops.push(2);
            ops.extend_from_slice(&1u64.to_le_bytes());
        }
    }
    let mut b = header(2);
    b.push(2);
    b.extend_from_slice(&(ops.len() as u16).to_le_bytes());
    b.extend_from_slice(&ops);
    b.push(0);
    b
}

/// `payload` sealed now with `keys`, under a nonce never used before in this process (a real
/// sender draws them at random; reusing one under a key is never done, even in a test).
fn seal_now(keys: &KeyRing, payload: &[u8]) -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&(now.as_nanos() as u64).to_le_bytes());
    nonce[8..].copy_from_slice(&(COUNTER.fetch_add(1, Ordering::Relaxed) as u32).to_le_bytes());
    let mut out = Vec::new();
    keys.seal(b"traceo", now.as_millis() as u64, nonce, payload, &mut out);
    out
}

/// A SYN whose digest names node `id` (generation 1) with a heartbeat.
fn syn_naming_node(id: &str) -> Vec<u8> {
    let mut b = header(0);
    b.extend_from_slice(&1u16.to_le_bytes());
    put_node(&mut b, id, 41_000);
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(&[0; 16]);
    put_str(&mut b, "traceo");
    b
}

/// An ACK setting the max version of node (`id`, `generation`, `port`), no key-values.
fn ack_setting_max_version(id: &str, generation: u64, port: u16, max: u64) -> Vec<u8> {
    let mut ops = vec![0u8];
    put_str(&mut ops, id);
    ops.extend_from_slice(&generation.to_le_bytes());
    ops.extend_from_slice(&[4, 127, 0, 0, 1]);
    ops.extend_from_slice(&port.to_le_bytes());
    ops.extend_from_slice(&[0; 16]);
    ops.push(2);
    ops.extend_from_slice(&max.to_le_bytes());
    let mut b = header(2);
    b.push(2);
    b.extend_from_slice(&(ops.len() as u16).to_le_bytes());
    b.extend_from_slice(&ops);
    b.push(0);
    b
}

/// The (node id, generation) a SYN's digest gives for the node gossiping on `port`.
fn digest_entry(syn: &[u8], port: u16) -> Option<(String, u64)> {
    let mut at = 4;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let b = syn.get(*at..*at + n)?;
        *at += n;
        Some(b)
    };
    let count = u16::from_le_bytes(take(&mut at, 2)?.try_into().ok()?);
    for _ in 0..count {
        let len = u16::from_le_bytes(take(&mut at, 2)?.try_into().ok()?) as usize;
        let id = String::from_utf8(take(&mut at, len)?.to_vec()).ok()?;
        let generation = u64::from_le_bytes(take(&mut at, 8)?.try_into().ok()?);
        let ip_len = if take(&mut at, 1)?[0] == 4 { 4 } else { 16 };
        take(&mut at, ip_len)?;
        let p = u16::from_le_bytes(take(&mut at, 2)?.try_into().ok()?);
        take(&mut at, 24)?;
        if p == port {
            return Some((id, generation));
        }
    }
    None
}

#[test]
fn a_node_without_the_key_and_a_hostile_sender_neither_join_nor_move_upstream_health() {
    let _turn = serial();
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let broker = broker(root);
    // The test is a seed of every node: it receives their sealed SYNs, to replay them.
    let trap_port = free_port();
    let trap = UdpSocket::bind(("127.0.0.1", trap_port)).expect("bind trap");
    trap.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let nodes = start_fleet(root, &broker, &[KEY_1], Some(trap_port));
    wait_converged(&nodes, &fleet(), "before any attack");

    // A node with the wrong key, which cannot reach the broker, so it sees the upstream down.
    let dead_broker = format!("127.0.0.1:{}", free_port());
    let seeds: Vec<u16> = nodes.iter().map(|n| n.gossip).collect();
    let intruder = start_node(
        root,
        "intruder",
        free_port(),
        &seeds,
        &[WRONG],
        &dead_broker,
    );
    wait_for(
        "the intruder to see the upstream down",
        Duration::from_secs(30),
        || (upstream(&status(&intruder)?)["local"] == "down").then_some(()),
    );

    // Capture a genuine sealed SYN of the fleet, a fresh one: what queued up on the trap
    // while the fleet converged may already be older than the replay window.
    let mut buf = vec![0u8; 65_536];
    trap.set_nonblocking(true).expect("nonblocking");
    while trap.recv_from(&mut buf).is_ok() {}
    trap.set_nonblocking(false).expect("blocking");
    let (len, from) = trap
        .recv_from(&mut buf)
        .expect("a SYN from a node of the fleet");
    let captured = buf[..len].to_vec();
    println!("captured a {len}-byte sealed datagram from {from}");
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let to = |n: &Node| format!("127.0.0.1:{}", n.gossip);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // Replayed twice to b: the second is a replay.
    for _ in 0..2 {
        sender.send_to(&captured, to(b)).expect("send");
    }
    // Altered: one flipped bit in the ciphertext.
    let mut altered = captured.clone();
    let last = altered.len() - 1;
    altered[last - 20] ^= 1;
    sender.send_to(&altered, to(a)).expect("send");
    // In clear: fake members saying the upstream is down, a digest of 300 fake nodes.
    let keys = KeyRing::parse(KEY_1).expect("key 1");
    for n in &nodes {
        sender
            .send_to(&ack_with_fake_members(false), to(n))
            .expect("send");
        sender.send_to(&syn_naming(300), to(n)).expect("send");
        // Sealed with the real key, as a compromised key holder would: still refused.
        sender
            .send_to(&seal_now(&keys, &ack_with_fake_members(true)), to(n))
            .expect("send");
        sender
            .send_to(&seal_now(&keys, &syn_naming(300)), to(n))
            .expect("send");
    }
    // After the 3 s window, the captured datagram is stale wherever it goes.
    std::thread::sleep(Duration::from_millis(3_500));
    sender.send_to(&captured, to(c)).expect("send");

    // For a while, every node keeps exactly the fleet as members and the upstream up, and
    // no peer observation comes from anyone outside the fleet.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        for n in &nodes {
            // One slow answer on a busy machine is not a split; the next round asks again.
            let Some(s) = status(n) else { continue };
            assert_eq!(members(&s), fleet(), "{}: {s}", n.name);
            let u = upstream(&s);
            assert_eq!(u["fleet"], "up", "{}: {u}", n.name);
            for peer in u["peers"].as_object().into_iter().flatten().map(|(k, _)| k) {
                assert!(
                    fleet().contains(peer),
                    "{}: observation from {peer}: {u}",
                    n.name
                );
            }
        }
        let s = status(&intruder).expect("intruder status");
        assert_eq!(members(&s), BTreeSet::from(["intruder".to_string()]), "{s}");
        std::thread::sleep(Duration::from_millis(250));
    }

    for (n, reason) in [
        (b, "replayed"),
        (a, "forged"),
        (c, "stale"),
        (a, "malformed"),
        (b, "malformed"),
        (c, "malformed"),
        (a, "invalid"),
        (b, "invalid"),
        (c, "invalid"),
    ] {
        let count = rejected(n, reason);
        println!("{}: rejected {reason} = {count}", n.name);
        assert!(count >= 1.0, "{}: no {reason} datagram counted", n.name);
    }
    let unknown: f64 = nodes.iter().map(|n| rejected(n, "unknown_key")).sum();
    println!("fleet: rejected unknown_key = {unknown} (the intruder's datagrams)");
    assert!(unknown >= 1.0, "the intruder's datagrams are counted");
    for n in &nodes {
        assert_eq!(
            counter(n, "traceo_gossip_restarts_total"),
            0.0,
            "{}",
            n.name
        );
    }

    // A compromised key holder, with state chitchat would act on: first make node b track
    // a fake node (an authentic SYN naming it), then send the delta that trips chitchat's
    // assertion for that node; and send node a a delta about itself (chitchat would apply
    // it to a's own state and wrap its next version). Both are refused; neither node's
    // gossip ends.
    let invalid_before = (rejected(a, "invalid"), rejected(b, "invalid"));
    sender
        .send_to(&seal_now(&keys, &syn_naming_node("fake-0")), to(b))
        .expect("send");
    std::thread::sleep(Duration::from_millis(300));
    sender
        .send_to(&seal_now(&keys, &ack_with_fake_members(true)), to(b))
        .expect("send");
    let mut opened = captured.clone();
    let syn = keys
        .open(b"traceo", &mut opened)
        .expect("the captured SYN opens with the fleet's key")
        .payload
        .to_vec();
    let (a_id, a_generation) = digest_entry(&syn, a.gossip).expect("a in the captured digest");
    assert_eq!(a_id, a.name);
    sender
        .send_to(
            &seal_now(
                &keys,
                &ack_setting_max_version(&a_id, a_generation, a.gossip, 1 << 40),
            ),
            to(a),
        )
        .expect("send");
    wait_for("both refusals counted", Duration::from_secs(10), || {
        (rejected(a, "invalid") > invalid_before.0 && rejected(b, "invalid") > invalid_before.1)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    for n in [a, b] {
        assert_eq!(
            counter(n, "traceo_gossip_restarts_total"),
            0.0,
            "{}: gossip restarted",
            n.name
        );
        let s = status(n).expect("status");
        assert!(members(&s).is_superset(&fleet()), "{}: {s}", n.name);
        assert!(!n.gw.proc.log().contains("panicked"), "{}", n.gw.proc.log());
    }
}

#[test]
fn rotating_the_fleet_key_node_by_node_never_splits_it() {
    let _turn = serial();
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path();
    let broker = broker(root);
    let mut nodes = start_fleet(root, &broker, &[KEY_1], None);
    wait_converged(&nodes, &fleet(), "on key 1");

    let steps: [(&str, &[&str]); 3] = [
        ("add key 2 second", &[KEY_1, KEY_2]),
        ("make key 2 first", &[KEY_2, KEY_1]),
        ("drop key 1", &[KEY_2]),
    ];
    let mut restarts = 0;
    for (step, keys) in steps {
        for i in 0..nodes.len() {
            std::fs::write(keys_path(&nodes[i].gw.dir), keys.join("\n")).expect("key file");
            restarts += 1;
            let log = format!("gateway-{restarts}.log");
            nodes[i].gw.kill9_and_restart(GATEWAY, &log);
            // The two that stayed up never lose each other, and the restarted node joins both.
            let others: Vec<usize> = (0..nodes.len()).filter(|&j| j != i).collect();
            for &j in &others {
                let s = status(&nodes[j]).expect("status");
                for &k in &others {
                    assert!(
                        members(&s).contains(&nodes[k].name.clone()),
                        "{step}: {} lost {} while {} restarted: {s}",
                        nodes[j].name,
                        nodes[k].name,
                        nodes[i].name
                    );
                }
            }
            wait_converged(&nodes, &fleet(), step);
            let unknown: f64 = nodes.iter().map(|n| rejected(n, "unknown_key")).sum();
            assert_eq!(unknown, 0.0, "{step}: a datagram refused for its key");
            println!("{step}: {} restarted, fleet whole", nodes[i].name);
        }
    }
    // At the end nobody holds key 1: a node that only has it stays out.
    let seeds: Vec<u16> = nodes.iter().map(|n| n.gossip).collect();
    let old = start_node(
        root,
        "old-key",
        free_port(),
        &seeds,
        &[KEY_1],
        &broker.addr(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let s = status(&old).expect("status");
    assert_eq!(members(&s), BTreeSet::from(["old-key".to_string()]), "{s}");
    wait_converged(&nodes, &fleet(), "after a key-1 node tried to join");
    let unknown: f64 = nodes.iter().map(|n| rejected(n, "unknown_key")).sum();
    assert!(
        unknown >= 1.0,
        "the key-1 node's datagrams are refused and counted"
    );
}
