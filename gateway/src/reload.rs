//! Residency policy reload: on SIGHUP and when the policy file's content changes. A new
//! policy replaces the old one whole (`arc-swap`), so a request sees one policy from start to
//! end; an invalid one (syntax, references, or sinks it would leave without data) keeps the old
//! one, is logged with every problem, and is counted.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, ResidencySettings};
use crate::ingest::Ingest;

/// Watches the policy file until `stop` fires.
pub async fn watch_policy(
    config: Arc<Config>,
    settings: ResidencySettings,
    ingest: Arc<Ingest>,
    stop: CancellationToken,
) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; the policy reloads on file change only");
            None
        }
    };
    // Read on the blocking pool: a slow or hung filesystem must not stall a runtime worker.
    let read = || tokio::fs::read_to_string(&settings.policy_file);
    let mut last = read().await.ok();
    let mut tick = tokio::time::interval(settings.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    metrics::gauge!("traceo_policy_last_reload_success").set(1.0);
    loop {
        // One read per trigger: the text compared for changes is the text compiled.
        let (trigger, text) = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => ("SIGHUP", read().await),
            _ = tick.tick() => {
                let now = read().await;
                if now.as_ref().ok() == last.as_ref() {
                    continue;
                }
                ("file changed", now)
            }
        };
        last = text.as_ref().ok().cloned();
        let file = settings.policy_file.display().to_string();
        let result = match text {
            Ok(text) => config.compile_policy(&settings, &text),
            Err(e) => Err(vec![format!("residency.policy: cannot read {file}: {e}")]),
        };
        match result {
            Ok(policy) => {
                ingest.replace_policy(Arc::new(policy));
                metrics::counter!("traceo_policy_reloads_total", "result" => "success")
                    .increment(1);
                metrics::gauge!("traceo_policy_last_reload_success").set(1.0);
                info!(%file, trigger, "residency policy reloaded");
            }
            Err(problems) => {
                metrics::counter!("traceo_policy_reloads_total", "result" => "failure")
                    .increment(1);
                metrics::gauge!("traceo_policy_last_reload_success").set(0.0);
                error!(%file, trigger, problems = %problems.join("; "),
                    "residency policy reload refused; the previous policy stays in force");
            }
        }
    }
}
