//! Starts the sinks and the listeners from a validated [`Config`] and shuts them down in the
//! order that loses nothing: stop answering ready, stop accepting, let in-flight requests
//! finish (their sinks still run), then flush and stop the sinks.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::ingest::Ingest;
use crate::listen::{serve, AppState, ListenerTls, Role};
use std::collections::HashMap;

use crate::config::DurabilityMode;
use crate::delivery::SinkSlot;
use crate::pipeline::{Durability, Pipeline};
use crate::sinks;
use crate::wal::SharedBudget;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A sink could not start.
    #[error(transparent)]
    Sink(#[from] sinks::StartError),
    /// A region's write-ahead log could not open.
    #[error("write-ahead log: {0}")]
    Wal(#[from] crate::delivery::StartError),
    /// Gossip could not start.
    #[error(transparent)]
    Gossip(#[from] crate::cluster::gossip::GossipError),
    /// The TLS files could not be loaded (they changed since the configuration was checked).
    #[error(transparent)]
    Tls(#[from] crate::tls::LoadError),
}

/// Runs the gateway until `shutdown` fires, then drains and returns.
pub async fn run(
    config: Config,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let config = Arc::new(config);
    let watched = config
        .regions
        .iter()
        .flat_map(|r| r.sinks.iter().filter_map(|s| s.upstreams(&r.id)))
        .collect();
    let cluster = Cluster::new(&config.cluster, watched);
    let sink_stop = CancellationToken::new();
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    // Each sink's handle, with the record bytes its feeder may have in flight.
    let mut slots: Vec<SinkSlot> = Vec::new();
    let mut sink_threads = Vec::new();
    for region in &config.regions {
        for sink in &region.sinks {
            let started = sink.spawn(&region.id, config.shards, &sink_stop, &cluster)?;
            handles.push(started.handle.clone());
            slots.push(SinkSlot {
                sink: started.handle,
                window_bytes: sink.window_bytes(),
                cursor: sink.cursor_name(),
            });
            tasks.extend(started.tasks);
            sink_threads.extend(started.threads);
        }
    }
    let delivery_stop = CancellationToken::new();
    let mut delivery_tasks = Vec::new();
    let durability = match config.durability.mode {
        DurabilityMode::Wal => {
            let budget = SharedBudget::new(config.durability.max_bytes);
            let mut logs = HashMap::new();
            for region in &config.regions {
                let (mine, rest) = std::mem::take(&mut slots)
                    .into_iter()
                    .partition(|s| s.sink.region() == &region.id);
                slots = rest;
                let slots: Vec<SinkSlot> = mine;
                if slots.is_empty() {
                    continue;
                }
                let started = crate::delivery::start_region(
                    &region.id,
                    &config.durability.dir,
                    config.durability.limits,
                    config.durability.quarantine_max_bytes,
                    &budget,
                    slots,
                    &delivery_stop,
                )?;
                logs.insert(region.id.clone(), started.wal);
                delivery_tasks.extend(started.tasks);
            }
            Durability::Wal(Arc::new(logs))
        }
        DurabilityMode::Upstream => Durability::Upstream,
        DurabilityMode::None => Durability::None,
    };
    // HA elections live in gossip: the tracker joins the control loop before it starts. A
    // node that gossips waits a few rounds before electing, to learn the fleet's elections
    // first (after a restart above all).
    let ha = config.ha_dedup.clone().map(|settings| {
        let grace = config
            .cluster
            .gossip
            .as_ref()
            .map_or(std::time::Duration::ZERO, |g| {
                (g.interval * 10).max(std::time::Duration::from_secs(2))
            });
        let tracker = Arc::new(crate::ha::HaTracker::new(settings, grace));
        cluster.keep_in_gossip(tracker.clone());
        tracker
    });
    let cluster_stop = CancellationToken::new();
    let probing = cluster.start(cluster_stop.clone()).await?;
    let pipeline = Pipeline::new(
        handles,
        durability,
        &config.tenant_label,
        &config.region_label,
    )
    .with_region_health(cluster.routes())
    .with_series_limits(
        config
            .regions
            .iter()
            .map(|r| (r.id.clone(), crate::pipeline::max_series_bytes(r))),
    );

    // Every port serves every endpoint; the OTLP ones exist because clients default to them.
    let mut listeners = Vec::new();
    for (what, addr, role) in [
        ("http", Some(config.http_addr), Role::Data),
        ("otlp_grpc", config.otlp.grpc_addr, Role::Data),
        ("otlp_http", config.otlp.http_addr, Role::Data),
        ("telemetry", config.listen.telemetry, Role::Telemetry),
    ] {
        let Some(addr) = addr else { continue };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let tls = role == Role::Data && config.tls.is_some();
        info!(listener = what, %addr, tls, "listening");
        listeners.push((listener, role));
    }
    info!(
        regions = config.regions.len(),
        tenants = config.tenants.len(),
        "traceo-gateway ready"
    );

    // Rates are fleet-wide: each node takes the share gossip's member count gives it.
    let limits = Arc::new(crate::limits::Limits::new(
        &config.tenant_limits,
        cluster.members(),
    ));
    tokio::spawn(limits.clone().run_upkeep(shutdown.clone()));
    let mut ingest = Ingest::new(config.clone(), pipeline, limits);
    if let Some(ha) = ha {
        ingest = ingest.with_ha(ha);
    }
    let ingest = Arc::new(ingest);
    let state = Arc::new(AppState {
        config: config.clone(),
        ingest: ingest.clone(),
        cluster,
        metrics: metrics.clone(),
        budget: crate::listen::budget::MemoryBudget::new(config.listen.max_inflight_bytes),
        tls: match &config.tls {
            Some(settings) => Some(Arc::new(ListenerTls {
                config: arc_swap::ArcSwap::new(crate::tls::server_config(settings)?),
                settings: settings.clone(),
            })),
            None => None,
        },
    });
    if let Some(tls) = state.tls.clone() {
        tokio::spawn(reload_tls(tls, shutdown.clone()));
    }
    if let Some(settings) = config.residency.clone() {
        tokio::spawn(crate::reload::watch_policy(
            config.clone(),
            settings,
            ingest.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(crate::reload::watch_limit_overrides(
        config.tenant_limits.clone(),
        ingest.clone(),
        shutdown.clone(),
    ));
    if let Some(h) = metrics {
        // Histograms are summarised lazily; upkeep keeps memory flat between scrapes.
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            while tokio::select! { _ = tick.tick() => true, _ = stop.cancelled() => false } {
                h.run_upkeep();
            }
        });
    }

    let stop_accepting = CancellationToken::new();
    let servers: Vec<_> = listeners
        .into_iter()
        .map(|(l, role)| tokio::spawn(serve(l, state.clone(), role, stop_accepting.clone())))
        .collect();

    shutdown.cancelled().await;
    ingest.drain();
    info!(delay = ?config.drain_delay, "draining: readiness now fails");
    tokio::time::sleep(config.drain_delay).await;
    stop_accepting.cancel();
    for server in servers {
        let _ = server.await;
    }
    info!("listeners closed; flushing sinks");
    // Feeders stop reading the logs, then sinks flush what they hold; feeders record the
    // confirmations that arrive and persist their cursors (the rest is replayed at start).
    delivery_stop.cancel();
    sink_stop.cancel();
    drop(state);
    drop(ingest);
    for t in delivery_tasks {
        let _ = t.await;
    }
    for t in tasks {
        let _ = t.await;
    }
    for t in sink_threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    // Last: the node stays in the fleet's gossip until its sinks are done.
    cluster_stop.cancel();
    probing.join().await;
    info!("shutdown complete");
    Ok(())
}

/// How often the TLS files are checked for a change (cert-manager rewrites them in place).
const TLS_RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Reloads the listeners' certificate, key and client CA when any of the files changes; new
/// connections get the new certificate, open ones keep theirs. A file that does not load keeps
/// the old configuration (logged and counted). Also keeps the certificate's expiry gauge.
async fn reload_tls(tls: Arc<ListenerTls>, stop: CancellationToken) {
    let s = &tls.settings;
    let files: Vec<std::path::PathBuf> = [
        Some(&s.cert_file),
        Some(&s.key_file),
        s.client_ca_file.as_ref(),
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    let stamp = |files: Vec<std::path::PathBuf>| async move {
        tokio::task::spawn_blocking(move || {
            files
                .iter()
                .map(|f| crate::tls::stamp_of(f))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default()
    };
    let expiry = metrics::gauge!("traceo_tls_certificate_expiry_timestamp_seconds",
        "file" => s.cert_file.display().to_string());
    let set_expiry = |path: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || crate::tls::expiry_of(&path))
            .await
            .ok()
            .flatten()
    };
    if let Some(t) = set_expiry(s.cert_file.clone()).await {
        expiry.set(t as f64);
    }
    let mut seen = stamp(files.clone()).await;
    let mut tick = tokio::time::interval(TLS_RELOAD_EVERY);
    while tokio::select! { _ = tick.tick() => true, _ = stop.cancelled() => false } {
        let now = stamp(files.clone()).await;
        if now == seen {
            continue;
        }
        let settings = s.clone();
        let loaded =
            tokio::task::spawn_blocking(move || crate::tls::server_config(&settings)).await;
        match loaded {
            Ok(Ok(config)) => {
                tls.config.store(config);
                seen = now;
                if let Some(t) = set_expiry(s.cert_file.clone()).await {
                    expiry.set(t as f64);
                }
                metrics::counter!("traceo_tls_reloads_total", "result" => "success").increment(1);
                info!(cert = %s.cert_file.display(), "TLS certificate reloaded");
            }
            Ok(Err(e)) => {
                // Files mid-rewrite load on the next tick; a broken one is logged each time.
                metrics::counter!("traceo_tls_reloads_total", "result" => "failure").increment(1);
                tracing::error!(error = %e, "TLS files changed but do not load; the previous certificate stays in use");
            }
            Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
        }
    }
}
