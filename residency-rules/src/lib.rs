//! The residency policy engine of Traceo Gateway.
//!
//! Owns the vocabulary of residency (tenants, regions) and, as it grows, the policy that says
//! which regions a tenant's data may reach. It is pure: no I/O, no async, no clock, so every
//! decision is a function of the policy and the input and can be tested exhaustively.
//!
//! Identifiers are parsed once at the edge into [`TenantId`] and [`RegionId`]; code past that
//! point never re-checks them. Both end up in object-store paths and Kafka headers, so the
//! charset is deliberately narrow.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod ids;

pub use ids::{IdError, RegionId, TenantId};
