//! Reloads on SIGHUP and when a watched file's content changes: the residency policy and
//! the tenant limit overrides. A new version replaces the old one whole (`arc-swap`), so a
//! request sees one version from start to end; an invalid one keeps the old one, is logged
//! with every problem, and is counted.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{Config, ResidencySettings};
use crate::ingest::Ingest;
use crate::limits::{parse_overrides, LimitsSettings};

/// Watches `path` until `stop` fires: on SIGHUP, and when a poll every `poll` finds its
/// content changed, hands `apply` the trigger and the text read (one read per trigger: the
/// text compared for changes is the text applied), and records the result in
/// `traceo_<what>_reloads_total{result}` and `traceo_<what>_last_reload_success`; `title`
/// names it in logs.
async fn watch_file(
    what: &'static str,
    title: &'static str,
    path: PathBuf,
    poll: Duration,
    stop: CancellationToken,
    mut apply: impl FnMut(Result<String, std::io::Error>) -> Result<(), Vec<String>>,
) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, what, "cannot listen for SIGHUP; reloads on file change only");
            None
        }
    };
    // Read on the blocking pool: a slow or hung filesystem must not stall a runtime worker.
    let read = || tokio::fs::read_to_string(&path);
    let mut last = read().await.ok();
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reloads = format!("traceo_{what}_reloads_total");
    let last_success = format!("traceo_{what}_last_reload_success");
    metrics::gauge!(last_success.clone()).set(1.0);
    let file = path.display().to_string();
    loop {
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
        match apply(text) {
            Ok(()) => {
                metrics::counter!(reloads.clone(), "result" => "success").increment(1);
                metrics::gauge!(last_success.clone()).set(1.0);
                info!(%file, trigger, "{title} reloaded");
            }
            Err(problems) => {
                metrics::counter!(reloads.clone(), "result" => "failure").increment(1);
                metrics::gauge!(last_success.clone()).set(0.0);
                error!(%file, trigger, problems = %problems.join("; "),
                    "{title} reload refused; the previous version stays in force");
            }
        }
    }
}

/// Watches the policy file until `stop` fires.
pub async fn watch_policy(
    config: Arc<Config>,
    settings: ResidencySettings,
    ingest: Arc<Ingest>,
    stop: CancellationToken,
) {
    let file = settings.policy_file.display().to_string();
    watch_file(
        "policy",
        "residency policy",
        settings.policy_file.clone(),
        settings.poll_interval,
        stop,
        |text| {
            let text =
                text.map_err(|e| vec![format!("residency.policy: cannot read {file}: {e}")])?;
            let policy = config.compile_policy(&settings, &text)?;
            ingest.replace_policy(Arc::new(policy));
            Ok(())
        },
    )
    .await
}

/// Watches the tenant limit overrides file (if one is configured) until `stop` fires.
pub async fn watch_limit_overrides(
    settings: LimitsSettings,
    ingest: Arc<Ingest>,
    stop: CancellationToken,
) {
    let Some(path) = settings.overrides_file.clone() else {
        return;
    };
    watch_file(
        "limits_overrides",
        "tenant limit overrides",
        path.clone(),
        settings.poll_interval,
        stop,
        |text| {
            let text = text.map_err(|e| {
                vec![format!(
                    "limits.overrides_file: cannot read {}: {e}",
                    path.display()
                )]
            })?;
            let overrides = parse_overrides(&text, &path, &settings.defaults)?;
            ingest.limits().replace_overrides(overrides);
            Ok(())
        },
    )
    .await
}
