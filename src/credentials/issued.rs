//! What the two issued types (`ControlPlaneToken`, `RegistryCredentials`) share: when to ask
//! the control plane for a new value, and the plan for what it issued.
//!
//! The decision depends only on the Secret's journal, the Credential and the clock; a value is
//! replaced at 2/3 of its lifetime (or at a due `spec.rotation`, or on request), never after.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;

use crate::api::credential::Credential;
use crate::resources::journal::{Journal, unkeyed_key_id};
use crate::resources::plan::{
    Change, CredentialKind, Issued, Observed, Ownership, Plan, Refusal, Request, Step,
};

/// The earliest an issued value is replaced after it was written, whatever its lifetime: a
/// control plane (or a clock) that hands out nearly expired values must not cause a hot loop.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);

/// When an issued value should be replaced: at 2/3 of its lifetime.
pub fn refresh_at(issued_at: Timestamp, expires_at: Timestamp) -> Timestamp {
    let life = expires_at.as_millisecond() - issued_at.as_millisecond();
    Timestamp::from_millisecond(issued_at.as_millisecond() + life * 2 / 3).unwrap_or(expires_at)
}

/// What distinguishes one issued type from the other.
pub trait IssuedKind: CredentialKind {
    /// The data key whose value identifies the issued credential.
    fn value_key(&self) -> &'static str;

    /// The request a Credential makes, and the generator string that identifies it.
    fn request(&self, credential: &Credential) -> Result<(Request, String), Refusal>;

    /// Fold what the Secret already holds into the issued data (adoption keeps other keys).
    fn merge(&self, _issued: &mut BTreeMap<String, String>, _secret: Option<&Secret>) {}
}

/// Decide whether the control plane must issue a new value now.
pub fn decide(kind: &impl IssuedKind, o: &Observed<'_>) -> Result<Step, Refusal> {
    let (request, generator) = kind.request(o.credential)?;
    let issue = |change| {
        Ok(Step::Issue {
            request: request.clone(),
            change,
        })
    };
    if let Some(change) = o.first_change() {
        return issue(change);
    }
    let journal = &o.journal;
    let value = o.data.get(kind.value_key());
    let (Some(value), Some(rotated_at), Some(expires_at)) =
        (value, journal.rotated_at, journal.expires_at)
    else {
        return issue(Change::Repaired);
    };
    if journal.key_id.as_deref() != Some(unkeyed_key_id(value).as_str()) {
        return issue(Change::Repaired);
    }
    if journal.generator.as_deref() != Some(generator.as_str()) {
        return issue(Change::SpecChanged);
    }
    if o.requested() {
        return issue(Change::Requested);
    }
    let refresh = refresh_at(rotated_at, expires_at);
    let next = o.next_after(rotated_at).map_or(refresh, |s| s.min(refresh));
    if o.now >= next {
        return issue(Change::Scheduled);
    }
    let kept: BTreeMap<String, String> = o
        .data
        .iter()
        .filter(|(k, v)| kind.manages_key(k) && !v.is_empty())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(Step::Write(Box::new(Plan {
        data: kept,
        journal: journal.clone(),
        change: None,
        next_rotation: Some(next),
    })))
}

/// The plan for a freshly issued value.
pub fn plan(
    kind: &impl IssuedKind,
    o: &Observed<'_>,
    change: Change,
    issued: Issued,
) -> Result<Plan, Refusal> {
    let (_, generator) = kind.request(o.credential)?;
    let now = o.now;
    let key = issued
        .data
        .get(kind.value_key())
        .map(|v| unkeyed_key_id(v))
        .unwrap_or_default();
    let floor = now.checked_add(MIN_REFRESH).unwrap_or(now);
    let refresh = refresh_at(now, issued.expires_at).max(floor);
    let next = o.next_after(now).map_or(refresh, |s| s.min(refresh));
    let mut data = issued.data;
    kind.merge(&mut data, o.secret);
    let previous = match o.ownership {
        Ownership::Managed => o.journal.handled_request.clone(),
        _ => None,
    };
    Ok(Plan {
        data,
        journal: Journal {
            rotated_at: Some(now),
            restarted_for: o.restarted_for(Some(change), &key),
            key_id: Some(key),
            generator: Some(generator),
            handled_request: o.request.clone().or(previous),
            expires_at: Some(issued.expires_at),
            // Issued values are random tokens from the control plane: an unkeyed id reveals
            // nothing a guess could confirm.
            key_id_salt: None,
            adopted_at: o.adopted_at(Some(change)),
        },
        change: Some(change),
        next_rotation: Some(next),
    })
}
