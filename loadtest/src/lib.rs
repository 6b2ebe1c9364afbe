//! The load generator's library: a deterministic generator of realistic remote-write traffic,
//! shared by `traceo-loadgen`, the criterion benches and the end-to-end tests so they all
//! measure the same payload shape.
#![forbid(unsafe_code)]

pub mod gen;
