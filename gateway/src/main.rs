//! `traceo-gateway`: the binary edge. Parses the command line, loads configuration, installs
//! telemetry and signal handling, and runs the server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::config::Config;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "traceo-gateway",
    version,
    about = "Metrics ingestion edge with data residency"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway. Without --config, runs the embedded default: one region `local`,
    /// Parquet under ./data, authentication off.
    Run {
        /// YAML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print every problem found.
    CheckConfig {
        /// YAML configuration file.
        file: PathBuf,
    },
    /// Print the samples in a topic the Kafka sink writes.
    Tail {
        /// Bootstrap brokers, host:port[,host:port].
        #[arg(long)]
        brokers: String,
        /// Topic (e.g. metrics.eu-west).
        #[arg(long)]
        topic: String,
        /// One JSON object per sample.
        #[arg(long)]
        json: bool,
        /// Start at the end of each partition (only new messages) instead of the beginning.
        #[arg(long)]
        new_only: bool,
        /// Exit after this many messages.
        #[arg(long)]
        max_messages: Option<u64>,
        /// Exit after this many seconds without a message.
        #[arg(long)]
        idle_exit_secs: Option<u64>,
        /// An extra librdkafka setting, KEY=VALUE (repeatable), e.g. to reach a cluster over
        /// TLS or SASL: `--property security.protocol=SASL_SSL`.
        #[arg(long = "property", value_name = "KEY=VALUE", value_parser = parse_property)]
        properties: Vec<(String, String)>,
    },
    /// Records an upstream refused for good (or the gateway could not read): list them, show
    /// one, or give them back to the running gateway once the cause is fixed.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineCommand,
    },
    /// Show the residency decision for one series of one tenant.
    Explain {
        /// Residency policy file.
        #[arg(long)]
        policy: PathBuf,
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// The series, e.g. '{__name__="x",email="a@b"}' or 'x{email="a@b"}'.
        #[arg(long)]
        labels: String,
        /// The gateway's YAML configuration, for its tag names (`tags.*`) and which regions
        /// have sinks (default: tags `tenant` and `region`, every region with sinks).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// One line per entry: id, time, region, sink, tenant, series count, bytes, reason.
    /// Read-only; safe while the gateway runs.
    List {
        /// The gateway's YAML configuration (for durability.dir and the regions).
        #[arg(long, short)]
        config: PathBuf,
        /// Only this region (default: every region of the configuration).
        #[arg(long)]
        region: Option<String>,
    },
    /// Decode one entry: tenant, region, each series' labels and sample count, and the
    /// upstream's answer. Read-only.
    Show {
        /// The gateway's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// The entry's region (needed when several regions hold this id).
        #[arg(long)]
        region: Option<String>,
        /// The entry id (from `list`).
        #[arg(long)]
        id: u64,
    },
    /// Ask the running gateway to append entries to their region's log again (delivered to
    /// every sink of the region: a sink that took the record before sees it twice) and wait
    /// for its answer. Entries replayed leave the quarantine.
    Replay {
        /// The gateway's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Only this region (default: every region with a quarantine).
        #[arg(long)]
        region: Option<String>,
        /// Only these entries (repeatable; needs --region when there are several regions).
        #[arg(long)]
        id: Vec<u64>,
        /// How long to wait for the gateway's answer, per region.
        #[arg(long, default_value_t = gateway::quarantine::replay::DEFAULT_WAIT.as_secs())]
        timeout_secs: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => run(config),
        Command::CheckConfig { file } => check_config(file),
        Command::Tail {
            brokers,
            topic,
            json,
            new_only,
            max_messages,
            idle_exit_secs,
            properties,
        } => gateway::tail::tail(
            &gateway::tail::TailOptions {
                brokers,
                topic,
                json,
                follow_only_new: new_only,
                max_messages,
                idle_exit: idle_exit_secs.map(std::time::Duration::from_secs),
                properties,
            },
            &mut std::io::stdout().lock(),
        )
        .map(|_| ()),
        Command::Explain {
            policy,
            tenant,
            labels,
            config,
            json,
        } => explain(&policy, &tenant, &labels, config.as_deref(), json),
        Command::Quarantine { action } => quarantine(action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `KEY=VALUE` of `tail --property`.
fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn check_config(file: PathBuf) -> anyhow::Result<()> {
    let c = Config::load(&file)?;
    let mut listening = c.http_addr.to_string();
    if let Some(a) = c.otlp.grpc_addr {
        listening.push_str(&format!(", OTLP/gRPC on {a}"));
    }
    if let Some(a) = c.otlp.http_addr {
        listening.push_str(&format!(", OTLP/HTTP on {a}"));
    }
    println!(
        "{}: ok ({} regions, {} tenants, listening on {listening})",
        file.display(),
        c.regions.len(),
        c.tenants.len(),
    );
    Ok(())
}

fn explain(
    policy: &Path,
    tenant: &str,
    labels: &str,
    config: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(policy).with_context(|| format!("reading {}", policy.display()))?;
    let compiled =
        residency_rules::load(&text).map_err(|e| anyhow::anyhow!("{}: {e}", policy.display()))?;
    let tenant = residency_rules::TenantId::parse(tenant).context("--tenant")?;
    let labels =
        gateway::explain::parse_labels(labels).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
    let write_path = match config {
        Some(file) => gateway::explain::WritePath::of(&Config::load(file)?),
        None => gateway::explain::WritePath::default(),
    };
    let e = gateway::explain::explain_for(&compiled, &tenant, &labels, &write_path);
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{}", gateway::explain::render_text(&e, &labels));
    }
    Ok(())
}

/// The regions a quarantine command looks at: `--region` (which must be configured), or all.
fn quarantine_regions(
    c: &Config,
    region: Option<&str>,
) -> anyhow::Result<Vec<residency_rules::RegionId>> {
    let all: Vec<residency_rules::RegionId> = c.regions.iter().map(|r| r.id.clone()).collect();
    match region {
        None => Ok(all),
        Some(r) => {
            let id = residency_rules::RegionId::parse(r).context("--region")?;
            anyhow::ensure!(
                all.contains(&id),
                "--region {r}: not a region of this configuration"
            );
            Ok(vec![id])
        }
    }
}

fn quarantine(action: QuarantineCommand) -> anyhow::Result<()> {
    use gateway::quarantine::{cli, dir_of, entry_ids, replay};
    let load = |path: &Path| Config::load(path).with_context(|| format!("{}", path.display()));
    match action {
        QuarantineCommand::List { config, region } => {
            let c = load(&config)?;
            let regions = quarantine_regions(&c, region.as_deref())?;
            let n = cli::list(&c.durability.dir, &regions, &mut std::io::stdout().lock())?;
            if n == 0 {
                eprintln!("quarantine is empty");
            }
            Ok(())
        }
        QuarantineCommand::Show { config, region, id } => {
            let c = load(&config)?;
            let regions = quarantine_regions(&c, region.as_deref())?;
            let holding: Vec<_> = regions
                .into_iter()
                .filter(|r| {
                    entry_ids(&dir_of(&c.durability.dir, r)).is_ok_and(|ids| ids.contains(&id))
                })
                .collect();
            match holding.as_slice() {
                [] => anyhow::bail!("no quarantine entry {id}"),
                [r] => Ok(cli::show(
                    &c.durability.dir,
                    r,
                    id,
                    &mut std::io::stdout().lock(),
                )?),
                _ => anyhow::bail!("several regions hold an entry {id}; say which with --region"),
            }
        }
        QuarantineCommand::Replay {
            config,
            region,
            id,
            timeout_secs,
        } => {
            let c = load(&config)?;
            let explicit = region.is_some();
            let regions = quarantine_regions(&c, region.as_deref())?;
            anyhow::ensure!(
                id.is_empty() || regions.len() == 1,
                "--id needs --region: entry ids are per region"
            );
            let ids = (!id.is_empty()).then_some(id);
            let wait = std::time::Duration::from_secs(timeout_secs);
            for r in &regions {
                let dir = dir_of(&c.durability.dir, r);
                let result = match replay::request(&dir, ids.clone(), wait) {
                    Err(replay::ReplayError::NoQuarantine(_)) if !explicit => continue,
                    other => other.with_context(|| format!("region {r}"))?,
                };
                if let Some(e) = &result.error {
                    anyhow::bail!("region {r}: the gateway could not read the request: {e}");
                }
                println!(
                    "region={r} replayed={} refused={} missing={}",
                    result.replayed.len(),
                    result.refused.len(),
                    result.missing.len()
                );
                for id in &result.replayed {
                    println!("id={id} replayed");
                }
                for f in &result.refused {
                    println!("id={} kept: {}", f.id, f.why);
                }
                for id in &result.missing {
                    println!("id={id} missing");
                }
            }
            Ok(())
        }
    }
}

fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    gateway::telemetry::init_logging();
    let config = match config {
        Some(path) => Config::load(&path)?,
        None => {
            tracing::info!("no --config given: running the embedded default (region local, Parquet under ./data, auth off)");
            Config::embedded_default()
        }
    };
    let metrics = gateway::telemetry::install_metrics().context("installing metrics recorder")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(signal_watch(shutdown.clone()));
        gateway::server::run(config, Some(metrics), shutdown).await
    })?;
    Ok(())
}

/// SIGTERM (orchestrators) and SIGINT (a person at a terminal) both start a graceful drain.
async fn signal_watch(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
