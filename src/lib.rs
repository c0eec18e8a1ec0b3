//! fluxmedic: diagnose and safely remediate FluxCD failures.
//!
//! The pipeline is visible in the modules: [`flux`] (typed views) and [`helm`]
//! (release storage) are read by [`diagnose`] (pure), whose output [`policy`]
//! plans (pure); [`remedy`] acts and [`controller`] drives it all, recorded
//! through [`telemetry`].
#![forbid(unsafe_code)]

pub mod api;
pub mod diagnose;
pub mod flux;
pub mod helm;
pub mod policy;
