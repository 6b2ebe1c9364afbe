//! Starts the sinks and the listeners from a validated [`Config`] and shuts them down in the
//! order that loses nothing: stop answering ready, stop accepting, let in-flight requests
//! finish (their sinks still run), then flush and stop the sinks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::listen::{serve, AppState};
use crate::pipeline::Pipeline;
use crate::sinks;

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
    Sink(#[from] sinks::parquet::StartError),
    /// A Kafka sink could not start.
    #[error(transparent)]
    Kafka(#[from] sinks::kafka::StartError),
    /// A null sink could not start.
    #[error(transparent)]
    Null(#[from] sinks::null::StartError),
}

/// Runs the gateway until `shutdown` fires, then drains and returns.
pub async fn run(
    config: Config,
    metrics: Option<PrometheusHandle>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let config = Arc::new(config);
    let sink_stop = CancellationToken::new();
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    for region in &config.regions {
        if let Some(p) = &region.parquet {
            let (h, t) = sinks::parquet::spawn(region.id.clone(), p.clone(), sink_stop.clone())?;
            handles.push(h);
            tasks.push(t);
        }
    }
    let mut sink_threads = Vec::new();
    for region in &config.regions {
        if let Some(k) = &region.kafka {
            let (h, t) = sinks::kafka::spawn(
                region.id.clone(),
                k.clone(),
                config.shards,
                sink_stop.clone(),
            )?;
            handles.push(h);
            sink_threads.extend(t);
        }
    }
    for region in &config.regions {
        if let Some(n) = &region.null {
            let (h, t) = sinks::null::spawn(
                region.id.clone(),
                n.clone(),
                config.shards,
                sink_stop.clone(),
            )?;
            handles.push(h);
            sink_threads.extend(t);
        }
    }
    let pipeline = Pipeline::new(handles, &config.tenant_label, &config.region_label);

    // Every port serves every endpoint; the OTLP ones exist because clients default to them.
    let mut listeners = Vec::new();
    for (what, addr) in [
        ("http", Some(config.http_addr)),
        ("otlp_grpc", config.otlp.grpc_addr),
        ("otlp_http", config.otlp.http_addr),
    ] {
        let Some(addr) = addr else { continue };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        info!(listener = what, %addr, "listening");
        listeners.push(listener);
    }
    info!(
        regions = config.regions.len(),
        tenants = config.tenants.len(),
        "traceo-gateway ready"
    );

    let state = Arc::new(AppState {
        config: config.clone(),
        pipeline,
        metrics: metrics.clone(),
        draining: AtomicBool::new(false),
        policy: arc_swap::ArcSwap::new(config.policy()),
        unknown_tenant_status: config
            .residency
            .as_ref()
            .and_then(|r| http::StatusCode::from_u16(r.unknown_tenant_status).ok())
            .unwrap_or(http::StatusCode::FORBIDDEN),
    });
    if let Some(settings) = config.residency.clone() {
        tokio::spawn(crate::reload::watch_policy(
            config.clone(),
            settings,
            state.clone(),
            shutdown.clone(),
        ));
    }
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
        .map(|l| tokio::spawn(serve(l, state.clone(), stop_accepting.clone())))
        .collect();

    shutdown.cancelled().await;
    state.draining.store(true, Ordering::Relaxed);
    info!(delay = ?config.drain_delay, "draining: readiness now fails");
    tokio::time::sleep(config.drain_delay).await;
    stop_accepting.cancel();
    for server in servers {
        let _ = server.await;
    }
    info!("listeners closed; flushing sinks");
    sink_stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    for t in sink_threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    info!("shutdown complete");
    Ok(())
}
