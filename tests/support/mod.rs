//! Shared test support: the in-process API double that controller tests point a
//! `kube::Client` at.

#![allow(dead_code)]

pub mod apidouble;

#[allow(unused_imports)]
pub use apidouble::{ApiDouble, Matcher, Recorded};
