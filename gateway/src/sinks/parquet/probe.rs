//! The Parquet sink's probe of its object store (the sink's root or bucket prefix): a put and
//! a delete of a small object `_traceo_probe/<node>`, both within the timeout (a hung mount or
//! an unanswering bucket fails the probe instead of hanging it).

use std::time::{Duration, Instant};

use super::store::StoreLocation;

use crate::cluster::probe::{ProbeFn, ProbeSetup};
use crate::cluster::Probe;

/// The probe of the object store at `location`.
pub fn setup(location: StoreLocation) -> ProbeSetup {
    Box::new(move |node_id: &str, timeout: Duration| {
        use object_store::{ObjectStoreExt, PutPayload};
        let node_id = node_id.to_string();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the probe runtime: {e}"))?;
        let store: std::sync::Arc<dyn object_store::ObjectStore> = match &location {
            // The probe never creates the directory: a missing one (an unmounted volume) fails.
            StoreLocation::Local(dir) => {
                let root = std::fs::canonicalize(dir)
                    .map_err(|e| format!("object store at {}: {e}", dir.display()))?;
                std::sync::Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(&root)
                        .map_err(|e| format!("object store at {}: {e}", root.display()))?,
                )
            }
            StoreLocation::Cloud { .. } => {
                let _in_runtime = runtime.enter();
                location
                    .open()
                    .map_err(|e| format!("object store at {}: {e}", location.describe()))?
                    .0
            }
        };
        let path = object_store::path::Path::from(format!("_traceo_probe/{node_id}"));
        Ok(Box::new(move |n: u64| {
            let started = Instant::now();
            let io = async {
                store
                    .put(&path, PutPayload::from(format!("{node_id} {n}")))
                    .await
                    .map_err(|e| format!("put {path}: {e}"))?;
                store
                    .delete(&path)
                    .await
                    .map_err(|e| format!("delete {path}: {e}"))
            };
            match runtime.block_on(async { tokio::time::timeout(timeout, io).await }) {
                Ok(Ok(())) => (Probe::Ok(started.elapsed()), None),
                Ok(Err(e)) => (Probe::Failed, Some(e)),
                Err(_) => (
                    Probe::Failed,
                    Some(format!("put and delete not done within {timeout:?}")),
                ),
            }
        }) as ProbeFn)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use crate::cluster::probe::{ProbeLoop, ProbeResult};

    fn first_result(root: std::path::PathBuf) -> ProbeResult {
        let root = StoreLocation::Local(root);
        let (tx, mut rx) = mpsc::channel(4);
        let stop = Arc::new(AtomicBool::new(false));
        let t = ProbeLoop {
            node_id: "node-1".into(),
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
            results: tx,
            stop: stop.clone(),
        }
        .spawn(7, "parquet-test", setup(root))
        .unwrap();
        let r = rx.blocking_recv().unwrap();
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        t.join().unwrap();
        r
    }

    #[test]
    fn an_object_store_probe_puts_and_deletes_and_fails_on_a_missing_root() {
        let dir = tempfile::tempdir().unwrap();
        let ok = first_result(dir.path().to_path_buf());
        assert_eq!(ok.upstream, 7);
        assert!(matches!(ok.probe, Probe::Ok(_)), "{ok:?}");
        assert_eq!(ok.detail, None);
        // The probe object is gone again.
        let left = std::fs::read_dir(dir.path().join("_traceo_probe"))
            .unwrap()
            .count();
        assert_eq!(left, 0);

        let bad = first_result(dir.path().join("missing"));
        assert_eq!(bad.probe, Probe::Failed);
        let detail = bad.detail.unwrap();
        assert!(detail.contains("missing"), "{detail}");
    }
}
