//! Bulkhead: a namespace-confined Kubernetes operator that generates, rotates and hands out
//! credentials without being able to enumerate the namespace's other Secrets.

pub mod api;
pub mod backoff;
pub mod cli;
pub mod controller;
pub mod controlplane;
pub mod credentials;
pub mod day2;
pub mod error;
pub mod fence;
pub mod kubeclient;
pub mod leader;
pub mod operator;
pub mod preflight;
pub mod rbac;
pub mod resources;
pub mod telemetry;

pub use error::{Error, Result};
