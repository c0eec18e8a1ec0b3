//! fluxmedic: diagnose and safely remediate FluxCD failures.
//!
//! The pipeline is visible in the modules: [`flux`] (typed views) and [`helm`]
//! (release storage) are read by [`diagnose`] (pure), whose output [`policy`]
//! plans (pure); [`incident`] is the lifecycle of each incident's record (pure); [`remedy`] acts,
//! [`executor`] performs an incident's effects through a small API port, and [`controller`]
//! drives it all, recorded
//! through [`telemetry`]. [`api`] holds fluxmedic's own CRDs.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod controller;
pub mod diagnose;
pub mod error;
pub mod executor;
pub mod flux;
pub mod gitfix;
pub mod helm;
pub mod incident;
pub mod input;
pub mod limiter;
pub mod policy;
pub mod remedy;
pub mod telemetry;
