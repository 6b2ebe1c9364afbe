//! Ingest: the one path every protocol's request takes between its handler and the pipeline.
//!
//! A protocol handler (remote-write, OTLP over HTTP, OTLP over gRPC) only reads and decodes its
//! protocol and spells the outcome in its protocol's terms. Everything in between is here,
//! written once: admission (draining, tenant and credentials, a tenant the policy knows),
//! the tenant of each group of data, the residency plan, the pipeline's checks and the
//! durable submit, and the per-request and per-tenant counters. A per-request feature
//! (tenant limits, HA deduplication) lands here once and holds for every protocol.
//!
//! May call: `tenant`, `limits`, `pipeline`, `telemetry`, `config`; never a listener or a
//! sink.

mod error;
mod plan;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue, StatusCode};
use protocols::Batch;
use residency_rules::{CompiledPolicy, TenantId, TenantView};
use tracing::debug;

pub use error::IngestError;
pub use plan::plan;

use crate::config::Config;
use crate::ha::{HaOutcome, HaTracker};
use crate::limits::{Limits, SeriesLimited};
use crate::pipeline::Pipeline;
use crate::tenant::{self, ORG_ID_HEADER};

/// The protocol a request came in with, for its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Remote-write 1.0 (`prometheus.WriteRequest`).
    RemoteWriteV1,
    /// Remote-write 2.0 (`io.prometheus.write.v2.Request`).
    RemoteWriteV2,
    /// OTLP metrics over HTTP.
    OtlpHttp,
    /// OTLP metrics over gRPC.
    OtlpGrpc,
}

impl Protocol {
    /// The `protocol` label of per-request metrics.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::RemoteWriteV1 => "remote_write_v1",
            Protocol::RemoteWriteV2 => "remote_write_v2",
            Protocol::OtlpHttp => "otlp_http",
            Protocol::OtlpGrpc => "otlp_grpc",
        }
    }

    /// The `protocol` label of the data counters (samples, histograms, exemplars): OTLP's
    /// two transports carry the same data and count as one.
    fn data_label(self) -> &'static str {
        match self {
            Protocol::OtlpHttp | Protocol::OtlpGrpc => "otlp",
            p => p.label(),
        }
    }

    fn is_otlp(self) -> bool {
        matches!(self, Protocol::OtlpHttp | Protocol::OtlpGrpc)
    }
}

/// What a request stored, for the `X-Prometheus-Remote-Write-*-Written` headers: exactly what
/// was made durable, so series the policy dropped are not counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Float samples.
    pub samples: u64,
    /// Native histogram samples.
    pub histograms: u64,
    /// Exemplars.
    pub exemplars: u64,
}

impl Written {
    fn of(batch: &Batch) -> Written {
        Written {
            samples: batch.sample_count() as u64,
            histograms: batch.histogram_count() as u64,
            exemplars: batch.exemplar_count() as u64,
        }
    }

    fn plus(self, other: Written) -> Written {
        Written {
            samples: self.samples + other.samples,
            histograms: self.histograms + other.histograms,
            exemplars: self.exemplars + other.exemplars,
        }
    }

    fn minus(self, other: Written) -> Written {
        Written {
            samples: self.samples.saturating_sub(other.samples),
            histograms: self.histograms.saturating_sub(other.histograms),
            exemplars: self.exemplars.saturating_sub(other.exemplars),
        }
    }
}

/// One tenant's part of a request: the whole of a remote-write request, or one OTLP
/// resource group.
pub struct Group {
    /// The tenant the data names for itself (OTLP's `otlp.translate.tenant_attribute`),
    /// checked against the credentials like `X-Scope-OrgID`; `None`: the request's tenant.
    pub tenant_attribute: Option<String>,
    /// The decoded data.
    pub batch: Batch,
    /// OTLP data points it came from (counted in `traceo_otlp_points_total`); `None` for
    /// other protocols.
    pub points: Option<u64>,
}

/// A request's metrics: what every protocol counts about every request, in one place. The
/// `tenant` label is computed once per request (it takes a lock and an allocation), and only
/// for a tenant that authenticated and that the policy knows: ids a client makes up must not
/// become series on `/metrics`.
pub struct RequestMetrics {
    protocol: Protocol,
    started: Instant,
    tenant: Option<TenantId>,
    label: Option<String>,
}

impl RequestMetrics {
    /// Starts timing a request.
    pub fn start(protocol: Protocol) -> Self {
        Self {
            protocol,
            started: Instant::now(),
            tenant: None,
            label: None,
        }
    }

    /// The request's protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Names the request's tenant once it is authenticated and known to the policy (the
    /// first one, for a request with several).
    pub fn authenticated(&mut self, tenant: &TenantId) {
        if self.tenant.is_none() {
            self.tenant = Some(tenant.clone());
            self.label = None;
        }
    }

    /// The request's `tenant` label: `unknown` until it authenticated.
    pub fn tenant_label(&mut self) -> &str {
        let tenant = &self.tenant;
        self.label
            .get_or_insert_with(|| crate::telemetry::tenant_label(tenant.as_ref()))
    }

    /// The label of `tenant`, reusing the request's own when it is the same tenant.
    fn label_of(&mut self, tenant: &TenantId) -> String {
        if self.tenant.as_ref() == Some(tenant) {
            self.tenant_label().to_string()
        } else {
            crate::telemetry::tenant_label(Some(tenant))
        }
    }

    /// Counts the body bytes a request brought (before any decompression).
    pub fn received(&mut self, bytes: usize) {
        let labels = [
            ("protocol", self.protocol.label().to_string()),
            ("tenant", self.tenant_label().to_string()),
        ];
        metrics::counter!("traceo_received_bytes_total", &labels).increment(bytes as u64);
    }

    /// Counts a refusal, by its low-cardinality `reason`, and logs it at debug level.
    pub fn rejected(
        &mut self,
        reason: &'static str,
        status: StatusCode,
        error: &dyn std::fmt::Display,
    ) {
        let protocol = self.protocol.label();
        let tenant = self.tenant_label().to_string();
        debug!(protocol, tenant = %tenant, %status, %error, "request rejected");
        metrics::counter!("traceo_rejections_total",
            "protocol" => protocol, "tenant" => tenant, "reason" => reason)
        .increment(1);
    }

    /// Counts the answered request by its `code` (an HTTP status, or `grpc_<n>`) and records
    /// its duration.
    pub fn finish(mut self, code: String) {
        let protocol = self.protocol.label();
        let tenant = self.tenant_label().to_string();
        metrics::counter!("traceo_requests_total",
            "protocol" => protocol, "tenant" => tenant.clone(), "code" => code)
        .increment(1);
        metrics::histogram!("traceo_request_duration_seconds",
            "protocol" => protocol, "tenant" => tenant)
        .record(self.started.elapsed().as_secs_f64());
    }
}

/// What ingest needs of the running gateway: the configuration, the pipeline, the policy in
/// force (reloads swap it whole) and whether the node is draining.
pub struct Ingest {
    config: Arc<Config>,
    pipeline: Pipeline,
    limits: Arc<Limits>,
    ha: Option<Arc<HaTracker>>,
    policy: ArcSwap<CompiledPolicy>,
    /// Status for a tenant the policy does not know (401 or 403).
    unknown_tenant_status: StatusCode,
    /// Set on SIGTERM: requests are refused (503) while load balancers drain the node.
    draining: AtomicBool,
}

impl Ingest {
    /// Ingest for `config`, submitting to `pipeline` under the tenant `limits`, with the
    /// configured policy in force.
    pub fn new(config: Arc<Config>, pipeline: Pipeline, limits: Arc<Limits>) -> Self {
        let unknown_tenant_status = config
            .residency
            .as_ref()
            .and_then(|r| StatusCode::from_u16(r.unknown_tenant_status).ok())
            .unwrap_or(StatusCode::FORBIDDEN);
        Self {
            policy: ArcSwap::new(config.policy()),
            config,
            pipeline,
            limits,
            ha: None,
            unknown_tenant_status,
            draining: AtomicBool::new(false),
        }
    }

    /// The pipeline (readiness asks it).
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Deduplicates HA pairs with `ha` (before the limits count the data).
    pub fn with_ha(mut self, ha: Arc<HaTracker>) -> Self {
        self.ha = Some(ha);
        self
    }

    /// The HA tracker, when HA deduplication is on (the status page shows it).
    pub fn ha(&self) -> Option<&Arc<HaTracker>> {
        self.ha.as_ref()
    }

    /// The tenant limits (the overrides reload and the status page use them).
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    /// Puts `policy` in force for requests that start from now on.
    pub fn replace_policy(&self, policy: Arc<CompiledPolicy>) {
        self.policy.store(policy);
    }

    /// From now on every request is refused with 503 (shutting down).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// True once [`Ingest::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// `tenant`'s view of `policy`, or the configured 401/403 for a tenant it does not know.
    fn tenant_view<'p>(
        &self,
        policy: &'p CompiledPolicy,
        tenant: &TenantId,
    ) -> Result<TenantView<'p>, IngestError> {
        policy
            .tenant(tenant)
            .map_err(|e| IngestError::UnknownTenant {
                status: self.unknown_tenant_status,
                message: e.to_string(),
            })
    }

    /// Admission, from the headers alone and before the body is read: refuses while
    /// draining, and a request whose credentials fail or whose tenant the policy does not
    /// know. `cert` is the tenant the client certificate names, over TLS with
    /// `tls.tenant_from`. Returns the request's tenant, or `None` when `tenant_in_data` (each
    /// group names its own, known only once decoded; what the headers can prove is checked
    /// now).
    pub fn admit(
        &self,
        headers: &HeaderMap,
        cert: Option<&str>,
        tenant_in_data: bool,
        metrics: &mut RequestMetrics,
    ) -> Result<Option<TenantId>, IngestError> {
        if self.is_draining() {
            return Err(IngestError::Draining);
        }
        if tenant_in_data {
            tenant::precheck(headers, &self.config, cert).map_err(IngestError::Unauthorized)?;
            return Ok(None);
        }
        let tenant = tenant::identify_with_cert(headers, &self.config, cert)
            .map_err(IngestError::Unauthorized)?;
        self.tenant_view(&self.policy.load(), &tenant)?;
        metrics.authenticated(&tenant);
        Ok(Some(tenant))
    }

    /// The tenant of one group: its attribute value counts as that group's `X-Scope-OrgID`,
    /// checked against the credentials exactly like the header.
    fn group_tenant(
        &self,
        headers: &HeaderMap,
        cert: Option<&str>,
        attribute: Option<&str>,
    ) -> Result<TenantId, IngestError> {
        let Some(value) = attribute else {
            return tenant::identify_with_cert(headers, &self.config, cert)
                .map_err(IngestError::Unauthorized);
        };
        let header = headers.get(ORG_ID_HEADER).and_then(|v| v.to_str().ok());
        if let Some(h) = header.filter(|h| h.trim() != value) {
            return Err(IngestError::TenantConflict(format!(
                "X-Scope-OrgID names tenant {h:?} but a resource's {:?} attribute names {value:?}",
                self.config
                    .otlp
                    .translate
                    .tenant_attribute
                    .as_deref()
                    .unwrap_or_default()
            )));
        }
        let mut with_tenant = headers.clone();
        let v = HeaderValue::from_str(value).map_err(|_| {
            IngestError::Unauthorized(tenant::AuthError::Malformed(
                "the tenant attribute is not a valid header value",
            ))
        })?;
        with_tenant.insert(ORG_ID_HEADER, v);
        tenant::identify_with_cert(&with_tenant, &self.config, cert)
            .map_err(IngestError::Unauthorized)
    }

    /// Stores a decoded request: each group's tenant, its limits, its residency plan, the
    /// pipeline's checks, then the durable submit; answers once every region made it
    /// durable. `fixed` is what [`Ingest::admit`] returned. Every group is authenticated,
    /// limited, planned and checked before any is submitted, so a request refused for one
    /// tenant or one series leaves nothing behind for another (and a refused or failed
    /// request gives its charge against the rate limits back). Series over a tenant's
    /// active-series limit are left out and said in [`Ingested::series_limited`]; the rest is
    /// stored. One policy serves the whole request, even if a reload swaps it meanwhile.
    pub async fn ingest(
        &self,
        metrics: &mut RequestMetrics,
        headers: &HeaderMap,
        cert: Option<&str>,
        fixed: Option<TenantId>,
        groups: Vec<Group>,
    ) -> Result<Ingested, IngestError> {
        let policy = self.policy.load_full();
        let mut planned = Vec::with_capacity(groups.len());
        let mut series_limited: Option<SeriesLimited> = None;
        let mut deduplicated = Written::default();
        for group in groups {
            let tenant = match &fixed {
                Some(t) => t.clone(),
                None => self.group_tenant(headers, cert, group.tenant_attribute.as_deref())?,
            };
            let view = self.tenant_view(&policy, &tenant)?;
            metrics.authenticated(&tenant);
            // HA deduplication first: a non-elected replica's samples never count against
            // the tenant's limits.
            let replica_label = match &self.ha {
                None => None,
                Some(ha) => match ha.check(&tenant, &group.batch).map_err(IngestError::Ha)? {
                    HaOutcome::Untouched => None,
                    HaOutcome::Keep { replica_label } => Some(replica_label),
                    HaOutcome::Deduplicated {
                        samples,
                        histograms,
                        exemplars,
                    } => {
                        deduplicated = deduplicated.plus(Written {
                            samples,
                            histograms,
                            exemplars,
                        });
                        continue;
                    }
                },
            };
            let admitted = self
                .limits
                .check(&tenant, &group.batch, replica_label.as_deref())
                .map_err(IngestError::Limited)?;
            let (mut plan, dropped) = plan(&view, &tenant, &group.batch, &admitted.refused)?;
            if let Some(label) = &replica_label {
                plan.drop_label(&group.batch, label);
            }
            let refused = admitted
                .refused
                .iter()
                .filter_map(|&i| group.batch.series_at(i as usize))
                .fold(Written::default(), |w, s| w.plus(plan::counts_of(&s)));
            if let Some(s) = &admitted.series_limited {
                match &mut series_limited {
                    Some(all) => all.merge(s),
                    None => series_limited = Some(s.clone()),
                }
            }
            let written = Written::of(&group.batch).minus(dropped).minus(refused);
            planned.push((
                tenant,
                view,
                plan,
                group.batch,
                group.points,
                written,
                admitted,
            ));
        }
        let mut prepared = Vec::with_capacity(planned.len());
        for (tenant, view, plan, batch, points, written, admitted) in planned {
            let ready = if plan.is_empty() {
                None
            } else {
                Some(
                    self.pipeline
                        .prepare(&view, &tenant, batch, plan)
                        .map_err(IngestError::Unavailable)?,
                )
            };
            prepared.push((tenant, ready, points, written, admitted));
        }
        let mut total = Written::default();
        for (tenant, ready, points, written, admitted) in prepared {
            // The charge is final from here: once the commit starts, the data may be durable
            // even if this request is cancelled (client gone, deadline) or the commit fails,
            // and a refund would let that data past the rate.
            admitted.keep();
            if let Some(ready) = ready {
                self.pipeline
                    .commit(ready)
                    .await
                    .map_err(IngestError::Unavailable)?;
            }
            let labels = [
                ("protocol", metrics.protocol().data_label().to_string()),
                ("tenant", metrics.label_of(&tenant)),
            ];
            if metrics.protocol().is_otlp() {
                metrics::counter!("traceo_otlp_points_total", &labels)
                    .increment(points.unwrap_or(0));
            }
            metrics::counter!("traceo_samples_total", &labels).increment(written.samples);
            metrics::counter!("traceo_histograms_total", &labels).increment(written.histograms);
            metrics::counter!("traceo_exemplars_total", &labels).increment(written.exemplars);
            total = total.plus(written);
        }
        Ok(Ingested {
            written: total,
            series_limited,
            deduplicated,
        })
    }
}

/// What a request stored, and what of it a tenant's active-series limit refused.
#[derive(Debug, Default)]
pub struct Ingested {
    /// What was made durable.
    pub written: Written,
    /// New series refused for the active-series limit: the answer must not be a plain 2xx
    /// (remote-write: 400; OTLP: `partial_success`).
    pub series_limited: Option<SeriesLimited>,
    /// What was dropped as a non-elected HA replica's (remote-write answers 202 when that was
    /// all of the request, with these counts as written: the elected replica's copy is).
    pub deduplicated: Written,
}
