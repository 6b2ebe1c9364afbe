//! Gossip messages that pass the gateway's checks, applied by a real chitchat node: whatever
//! the fuzzer sends (as a key holder would, so the seal is not in the way), chitchat's task
//! must not end. The checks are the ones the gateway's transport makes
//! (`protocols::gossip::chitchat::check_message`, no delta about the receiver, at most 256
//! node ids and 320 generations tracked); the node is one long-lived chitchat 0.10 instance
//! fed through an in-memory transport, so state built by earlier inputs is there for later
//! ones, as on a real node. After each input a SYN for another cluster is sent: its
//! `BadCluster` answer shows the input was processed before the node's liveness is checked.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chitchat::transport::{Socket, Transport};
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, ChitchatMessage, Deserializable,
    FailureDetectorConfig,
};
use libfuzzer_sys::fuzz_target;
use protocols::gossip::chitchat::{check_message, NodeRef};
use tokio::sync::mpsc;

const MAX_IDS: usize = 256;
const MAX_TRACKED: usize = 320;

type Inbox = mpsc::UnboundedReceiver<(SocketAddr, ChitchatMessage)>;

/// A transport whose one socket reads what the fuzz target feeds and hands back what the
/// node answers, without re-serializing anything.
struct Feed {
    inbox: Mutex<Option<Inbox>>,
    answers: mpsc::UnboundedSender<ChitchatMessage>,
}

struct FeedSocket {
    inbox: Inbox,
    answers: mpsc::UnboundedSender<ChitchatMessage>,
}

#[async_trait::async_trait]
impl Transport for Feed {
    async fn open(&self, _addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inbox = self
            .inbox
            .lock()
            .expect("not poisoned")
            .take()
            .ok_or_else(|| anyhow::anyhow!("opened twice"))?;
        Ok(Box::new(FeedSocket {
            inbox,
            answers: self.answers.clone(),
        }))
    }
}

#[async_trait::async_trait]
impl Socket for FeedSocket {
    async fn send(&mut self, _to: SocketAddr, msg: ChitchatMessage) -> anyhow::Result<()> {
        let _ = self.answers.send(msg);
        Ok(())
    }

    async fn recv(&mut self) -> anyhow::Result<(SocketAddr, ChitchatMessage)> {
        self.inbox
            .recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("feed closed"))
    }
}

struct Node {
    rt: tokio::runtime::Runtime,
    _handle: ChitchatHandle,
    ended: Arc<AtomicBool>,
    feed: mpsc::UnboundedSender<(SocketAddr, ChitchatMessage)>,
    answers: Mutex<mpsc::UnboundedReceiver<ChitchatMessage>>,
    tracked: Mutex<HashMap<NodeRef, ()>>,
}

const ME: &str = "target";
const GENERATION: u64 = 1;

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let (feed, inbox) = mpsc::unbounded_channel();
        let (answers_tx, answers) = mpsc::unbounded_channel();
        let addr: SocketAddr = "127.0.0.1:7946".parse().expect("addr");
        let config = ChitchatConfig {
            chitchat_id: ChitchatId::new(ME.into(), GENERATION, addr),
            cluster_id: "traceo".into(),
            gossip_interval: Duration::from_secs(3600),
            listen_addr: addr,
            seed_nodes: Vec::new(),
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let transport = Feed {
            inbox: Mutex::new(Some(inbox)),
            answers: answers_tx,
        };
        let ended = Arc::new(AtomicBool::new(false));
        let handle = rt.block_on(async {
            let h = spawn_chitchat(
                config,
                vec![("upstream.eu.health".into(), "up 1".into())],
                &transport,
            )
            .await
            .expect("chitchat starts");
            let watcher = h.termination_watcher();
            let flag = ended.clone();
            tokio::spawn(async move {
                let _ = watcher.await;
                flag.store(true, Ordering::SeqCst);
            });
            h
        });
        Node {
            rt,
            _handle: handle,
            ended,
            feed,
            answers: Mutex::new(answers),
            tracked: Mutex::new(HashMap::new()),
        }
    })
}

/// The gateway transport's checks after the seal; `None` when it would drop the message.
fn admitted(data: &[u8], tracked: &mut HashMap<NodeRef, ()>) -> Option<ChitchatMessage> {
    let named = check_message(data).ok()?;
    if named
        .delta
        .iter()
        .any(|n| n.node_id == ME && n.generation == GENERATION)
    {
        return None;
    }
    let all = named.all();
    let new: Vec<&NodeRef> = all.iter().filter(|n| !tracked.contains_key(n)).collect();
    let mut ids: HashSet<&str> = tracked.keys().map(|n| n.node_id.as_str()).collect();
    ids.extend(new.iter().map(|n| n.node_id.as_str()));
    if tracked.len() + new.len() > MAX_TRACKED || ids.len() > MAX_IDS {
        return None;
    }
    for n in all {
        tracked.insert(n, ());
    }
    let mut cursor = data;
    ChitchatMessage::deserialize(&mut cursor).ok()
}

fn probe() -> ChitchatMessage {
    // A SYN for another cluster: chitchat answers BadCluster, and nothing else does.
    let mut b = 45_139u16.to_le_bytes().to_vec();
    b.extend_from_slice(&[0, 0, 0, 0, 5, 0]);
    b.extend_from_slice(b"other");
    let mut c = &b[..];
    ChitchatMessage::deserialize(&mut c).expect("a valid SYN")
}

fuzz_target!(|data: &[u8]| {
    let n = node();
    let mut tracked = n.tracked.lock().expect("not poisoned");
    let Some(message) = admitted(data, &mut tracked) else {
        return;
    };
    let mut expected = 1;
    if let ChitchatMessage::Syn { cluster_id, .. } = &message {
        if cluster_id != "traceo" {
            expected += 1;
        }
    }
    let from: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    n.feed.send((from, message)).expect("node alive");
    n.feed.send((from, probe())).expect("node alive");
    let mut answers = n.answers.lock().expect("not poisoned");
    n.rt.block_on(async {
        let mut seen = 0;
        while seen < expected {
            match tokio::time::timeout(Duration::from_secs(5), answers.recv()).await {
                Ok(Some(ChitchatMessage::BadCluster)) => seen += 1,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    });
    assert!(
        !n.ended.load(Ordering::SeqCst),
        "chitchat's task ended on an admitted message"
    );
});
