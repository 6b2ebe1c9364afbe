//! Residency policy reload: on SIGHUP and when the policy file's content changes. A new
//! policy replaces the old one whole (`arc-swap`), so a request sees one policy from start to
//! end; an invalid one (syntax, references, or sinks it would leave without data) keeps the old
//! one, is logged with every problem, and is counted.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, ResidencySettings};
use crate::listen::AppState;

/// Watches the policy file until `stop` fires.
pub async fn watch_policy(
    config: Arc<Config>,
    settings: ResidencySettings,
    state: Arc<AppState>,
    stop: CancellationToken,
) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGHUP; the policy reloads on file change only");
            None
        }
    };
    let mut last = std::fs::read(&settings.policy_file).ok();
    let mut tick = tokio::time::interval(settings.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    metrics::gauge!("traceo_policy_last_reload_success").set(1.0);
    loop {
        let trigger = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
            _ = tick.tick() => {
                let now = std::fs::read(&settings.policy_file).ok();
                if now == last {
                    continue;
                }
                "file changed"
            }
        };
        last = std::fs::read(&settings.policy_file).ok();
        let file = settings.policy_file.display().to_string();
        match config.load_policy(&settings) {
            Ok(policy) => {
                state.policy.store(Arc::new(policy));
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
