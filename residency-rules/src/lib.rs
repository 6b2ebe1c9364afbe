//! The residency policy engine of Traceo Gateway.
//!
//! Owns the vocabulary of residency (tenants, regions) and, as it grows, the policy that says
//! which regions a tenant's data may reach. It is pure: no I/O, no async, no clock, so every
//! decision is a function of the policy and the input and can be tested exhaustively.
//!
//! The flow: [`Policy`] (the YAML file) -> [`compile`] -> [`CompiledPolicy`] (shared, swapped
//! whole on reload) -> [`CompiledPolicy::tenant`] once per request -> [`TenantView::decide`] per
//! series, only when the tenant has label rules. Region sets are bit masks that only the
//! engine can create, and [`TenantView::route`] is the only way from one to region ids.
//!
//! Identifiers are parsed once at the edge into [`TenantId`] and [`RegionId`]; code past that
//! point never re-checks them. Both end up in object-store paths and Kafka headers, so the
//! charset is deliberately narrow.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod compile;
mod decide;
mod ids;
pub mod policy;

pub use compile::{compile, CompiledPolicy, PolicyError, MAX_REGIONS};
pub use decide::{
    Decision, Denial, DenyScope, EditOp, LabelEdit, RegionSet, SeriesDecision, TenantView, Trace,
    UnknownTenant,
};
pub use ids::{IdError, RegionId, TenantId};
pub use policy::Policy;

/// Parses and compiles a YAML policy; errors are one message per problem.
pub fn load(yaml: &str) -> Result<CompiledPolicy, PolicyError> {
    let policy = Policy::from_yaml(yaml).map_err(|e| PolicyError {
        problems: vec![e.to_string()],
    })?;
    compile(&policy)
}
