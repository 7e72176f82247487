//! Shared test support: the in-process API double that controller tests point a
//! `kube::Client` at, and the development control plane (mTLS) with its test PKI.

#![allow(dead_code)]

pub mod apidouble;
pub mod devcp;
pub mod gate;
pub mod operator;
pub mod pki;

#[allow(unused_imports)]
pub use apidouble::{ApiDouble, Matcher, Recorded};
