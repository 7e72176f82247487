//! Leader election on a namespaced Lease, turned into an "am I leader" signal and a write fence.
//!
//! The Lease name is fixed per namespace (default `bulkhead`), so a second release in the same
//! namespace stays standby. Exclusivity comes from optimistic concurrency, as in client-go:
//! every write of the Lease (take over, renew, release) is a merge patch that carries the
//! `resourceVersion` it was computed from, so of two processes racing from the same version
//! exactly one succeeds and the other gets 409 Conflict and re-reads. A renewal is that one
//! patch: the leader knows the version from its own last write, no read first.
//!
//! Timing (D = `--lease-duration`, G = `--lease-renew-grace`):
//! - the leader renews D − G after its last successful write was *sent*, and retries until
//!   D − G/2 after it; then it stops writing (the fence closes, the controllers are stopped)
//!   although the Lease may still name it. That is the renew deadline: G/2 before anyone else
//!   could take the Lease.
//! - another process takes over a held Lease only when it has seen no new version of it for D
//!   on its own clock (never by comparing the holder's `renewTime` with its own clock), and at
//!   once when the holder released it: it watches exactly that Lease (a `metadata.name` field
//!   selector, which RBAC authorizes against the Role's `resourceNames`).
//! - every non-read request of the controllers goes through [`fenced`], which refuses it once
//!   the renew deadline has passed, checked against the clock at the moment of sending. A
//!   process that was frozen (SIGSTOP, a paused VM) therefore writes nothing when it resumes,
//!   whatever its tasks run first.

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::backoff::Schedule;
use crate::error::{Doing as _, is_status};
use crate::fence::FenceState;
pub use crate::fence::{Fence, LeaderGauge, NotLeader, fenced};

/// Field manager the Lease is written with (exclusivity comes from the resourceVersion guard,
/// not from field ownership).
pub const LEASE_FIELD_MANAGER: &str = "bulkhead-leader";

/// How leadership is decided.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub enabled: bool,
    pub namespace: String,
    pub lease_name: String,
    /// Unique per process (pod name plus a random suffix).
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub lease_duration: Duration,
    /// How long before expiry the holder renews.
    pub renew_grace: Duration,
    /// The owner a Lease this process creates gets: the pod's ServiceAccount (see
    /// [`service_account_owner`]), so the Lease goes with the release. `None` out of cluster.
    pub owner: Option<OwnerReference>,
}

/// Where the kubelet mounts the pod's ServiceAccount token (in-cluster configuration).
pub const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The pod's ServiceAccount in `namespace` as an owner reference, from the claims of its own
/// token (`kubernetes.io.serviceaccount.{name,uid}`; the token is not verified: it is this
/// process's own credential, and a wrong claim could only misname the owner of a Lease the
/// API server then refuses or collects). `helm uninstall` deletes the ServiceAccount, and the
/// garbage collector the Lease with it: nothing of the release stays. No `blockOwnerDeletion`,
/// so no right on the ServiceAccount is needed.
pub fn service_account_owner(token: &str, namespace: &str) -> Option<OwnerReference> {
    use base64::Engine as _;
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let kubernetes = &claims["kubernetes.io"];
    if kubernetes["namespace"].as_str()? != namespace {
        return None;
    }
    let account = &kubernetes["serviceaccount"];
    Some(OwnerReference {
        api_version: "v1".to_owned(),
        kind: "ServiceAccount".to_owned(),
        name: account["name"].as_str()?.to_owned(),
        uid: account["uid"].as_str()?.to_owned(),
        ..OwnerReference::default()
    })
}

impl LeaderConfig {
    /// Renew this long after the last successful write was sent.
    fn renew_after(&self) -> Duration {
        self.lease_duration.saturating_sub(self.renew_grace)
    }

    /// Write only until this long after the last successful write was sent (the renew deadline).
    fn valid_for(&self) -> Duration {
        self.lease_duration.saturating_sub(self.renew_grace / 2)
    }

    /// Pause between attempts while a write is due: several attempts fit into G/2.
    fn retry_period(&self) -> Duration {
        (self.renew_grace / 10).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// Retries while not leading: twice the retry period doubling per failure, at most 32
    /// periods and at most the renew grace (or one period, if that is longer).
    fn standby_retries(&self) -> Schedule {
        let period = self.retry_period();
        Schedule::new(
            period.saturating_mul(2),
            self.renew_grace.max(period).min(period.saturating_mul(32)),
        )
    }

    /// The longest a single Lease request may take.
    fn request_timeout(&self) -> Duration {
        (self.renew_grace / 2).max(Duration::from_secs(1))
    }
}

/// The leadership signal and the task that maintains it.
pub struct Leadership {
    receiver: watch::Receiver<bool>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    // Keeps an always-leader channel open when election is disabled.
    _always: Option<watch::Sender<bool>>,
}

/// A read of the Lease made before [`Leadership::start`] (while the preflight runs, to save a
/// round trip of start-up), with the instant its answer arrived: the basis of its expiry.
pub struct LeaseRead {
    lease: Option<Lease>,
    at: Instant,
}

impl LeaseRead {
    /// Read the Lease now. `None` when election is disabled or the read failed
    /// ([`Leadership::start`] then reads again and reports the error).
    pub async fn read(client: Client, config: &LeaderConfig) -> Option<Self> {
        if !config.enabled {
            return None;
        }
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let lease = api.get_opt(&config.lease_name).await.ok()?;
        Some(Self {
            lease,
            at: Instant::now(),
        })
    }
}

impl Leadership {
    /// Start competing for the Lease (or lead unconditionally when election is disabled).
    /// `fence` is opened only while the Lease is provably held.
    pub async fn start(client: Client, config: &LeaderConfig, fence: Fence) -> Result<Self> {
        Self::start_from(client, config, fence, None).await
    }

    /// [`Leadership::start`] from a read of the Lease made earlier (`None`: read it now). An
    /// old read is safe: every write of the Lease is guarded by the resourceVersion read, so
    /// a Lease renewed since then is not taken (409, read again).
    pub async fn start_from(
        client: Client,
        config: &LeaderConfig,
        fence: Fence,
        read: Option<LeaseRead>,
    ) -> Result<Self> {
        if !config.enabled {
            fence.set(FenceState::Always);
            let (tx, rx) = watch::channel(true);
            return Ok(Self {
                receiver: rx,
                stop: CancellationToken::new(),
                task: None,
                _always: Some(tx),
            });
        }
        fence.set(FenceState::Closed);
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        // A Lease that cannot be read is an error of `start`, reported before anything is
        // reconciled.
        let first = match read {
            Some(read) => read,
            None => LeaseRead {
                lease: api.get_opt(&config.lease_name).await.doing(format!(
                    "get Lease {}/{}",
                    config.namespace, config.lease_name
                ))?,
                at: Instant::now(),
            },
        };
        let (tx, rx) = watch::channel(false);
        let stop = CancellationToken::new();
        let mut elector = Elector::new(api.clone(), config.clone(), fence, tx);
        elector.observe_read(first.lease, first.at);
        let events = lease_events(api, &config.lease_name);
        let task = tokio::spawn(elector.run(events, stop.clone()));
        Ok(Self {
            receiver: rx,
            stop,
            task: Some(task),
            _always: None,
        })
    }

    /// A receiver of the current leadership state.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.receiver.clone()
    }

    /// Release the Lease (if held) and stop competing, within `timeout`.
    pub async fn release(self, timeout: Duration) {
        self.stop.cancel();
        if let Some(task) = self.task {
            match tokio::time::timeout(timeout, task).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "leader-election task failed"),
                Err(_) => tracing::warn!(
                    "releasing the Lease timed out; a standby takes over when it expires"
                ),
            }
        }
    }
}

/// What the watch of the Lease reported.
enum Seen {
    Lease(Box<Lease>),
    Deleted,
}

/// The Lease as last known.
#[derive(Clone, Debug)]
enum Known {
    /// Must be read (after a conflict, or to confirm what the watch said).
    Unknown,
    Absent,
    Present {
        lease: Box<Lease>,
        /// When this process first learned of this version: the basis of expiry.
        since: Instant,
    },
}

/// What the elector does next.
#[derive(Debug, PartialEq)]
enum Step {
    Read,
    Create,
    /// A guarded write naming this process; `acquire` when it takes the Lease from another.
    Write {
        acquire: bool,
    },
    Wait(Instant),
}

struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    fence: Fence,
    signal: watch::Sender<bool>,
    known: Known,
    /// While leading: when the last successful write was sent.
    renewed: Option<Instant>,
    /// After a failed request: not again before this.
    retry_at: Option<Instant>,
    failures: u32,
}

impl Elector {
    fn new(
        api: Api<Lease>,
        config: LeaderConfig,
        fence: Fence,
        signal: watch::Sender<bool>,
    ) -> Self {
        Self {
            api,
            config,
            fence,
            signal,
            known: Known::Unknown,
            renewed: None,
            retry_at: None,
            failures: 0,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.renewed.map(|sent| sent + self.config.valid_for())
    }

    fn version(&self) -> Option<&str> {
        match &self.known {
            Known::Present { lease, .. } => lease.metadata.resource_version.as_deref(),
            _ => None,
        }
    }

    /// The next step at `now` (pure: no I/O).
    fn plan(&self, now: Instant) -> Step {
        if let Some(at) = self.retry_at.filter(|at| now < *at) {
            return Step::Wait(at);
        }
        let (lease, since) = match &self.known {
            Known::Unknown => return Step::Read,
            Known::Absent => return Step::Create,
            Known::Present { lease, since } => (lease, *since),
        };
        match holder(lease) {
            None => Step::Write { acquire: true },
            Some(holder) if holder == self.config.identity => match self.renewed {
                Some(sent) if now < sent + self.config.renew_after() => {
                    Step::Wait(sent + self.config.renew_after())
                }
                // Due, or on record as ours but not proven since (a write that timed out but
                // landed, a restart): a guarded write proves it.
                _ => Step::Write { acquire: false },
            },
            Some(_) => {
                let expires = since + duration_of(lease, self.config.lease_duration);
                if now < expires {
                    Step::Wait(expires)
                } else {
                    Step::Write { acquire: true }
                }
            }
        }
    }

    async fn run(mut self, events: impl Stream<Item = Seen> + Send, stop: CancellationToken) {
        let mut events = std::pin::pin!(events);
        loop {
            self.check_deadline(Instant::now());
            if stop.is_cancelled() {
                self.release().await;
                return;
            }
            let wait = match self.plan(Instant::now()) {
                Step::Wait(until) => until,
                step => {
                    self.execute(step).await;
                    continue;
                }
            };
            let wait = self.deadline().map_or(wait, |deadline| wait.min(deadline));
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = tokio::time::sleep_until(wait) => {}
                Some(seen) = events.next() => self.observe_watch(seen, Instant::now()),
            }
        }
    }

    /// Stop writing once the renew deadline has passed without a successful renewal.
    fn check_deadline(&mut self, now: Instant) {
        if self.deadline().is_some_and(|deadline| now >= deadline) {
            tracing::warn!(
                "could not renew the Lease before the renew deadline; stopping all writes"
            );
            self.step_down();
        }
    }

    fn step_down(&mut self) {
        self.renewed = None;
        self.fence.set(FenceState::Closed);
        self.signal.send_replace(false);
    }

    /// How long the next request may take: never past the renew deadline.
    fn request_limit(&self, now: Instant) -> Duration {
        let limit = self.config.request_timeout();
        self.deadline()
            .map_or(limit, |deadline| {
                limit.min(deadline.saturating_duration_since(now))
            })
            .max(Duration::from_millis(50))
    }

    async fn execute(&mut self, step: Step) {
        let sent = Instant::now();
        let limit = self.request_limit(sent);
        let name = self.config.lease_name.clone();
        let result = match step {
            Step::Wait(_) => return,
            Step::Read => match tokio::time::timeout(limit, self.api.get_opt(&name)).await {
                Ok(Ok(lease)) => {
                    self.observe_read(lease, Instant::now());
                    Ok(())
                }
                Ok(Err(err)) => Err(self.failed("get", err)),
                Err(_) => Err("timed out".to_owned()),
            },
            Step::Create => {
                let lease = self.new_lease();
                let params = PostParams {
                    field_manager: Some(LEASE_FIELD_MANAGER.to_owned()),
                    ..PostParams::default()
                };
                match tokio::time::timeout(limit, self.api.create(&params, &lease)).await {
                    Ok(Ok(lease)) => {
                        self.won(lease, sent);
                        Ok(())
                    }
                    Ok(Err(err)) if is_status(&err, 409) => {
                        self.known = Known::Unknown;
                        Ok(())
                    }
                    // Some clusters (OpenShift: OwnerReferencesPermissionEnforcement) let only
                    // a caller that may delete an object set its owner, and the Role has no
                    // delete on Leases: create it without one (helm uninstall then leaves it).
                    Ok(Err(err))
                        if self.config.owner.is_some()
                            && (is_status(&err, 403) || is_status(&err, 422)) =>
                    {
                        tracing::warn!(error = %self.failed("create", err), "creating the Lease without an owner: this cluster refuses the ServiceAccount as its owner; helm uninstall will leave the Lease (kubectl delete lease removes it)");
                        self.config.owner = None;
                        Ok(())
                    }
                    Ok(Err(err)) => Err(self.failed("create", err)),
                    Err(_) => Err("timed out".to_owned()),
                }
            }
            Step::Write { acquire } => {
                let patch = self.claim(acquire);
                match tokio::time::timeout(
                    limit,
                    self.api.patch(&name, &params(), &Patch::Merge(&patch)),
                )
                .await
                {
                    Ok(Ok(lease)) => {
                        self.won(lease, sent);
                        Ok(())
                    }
                    Ok(Err(err)) if is_status(&err, 409) => {
                        tracing::debug!("the Lease changed since it was read; reading it again");
                        self.known = Known::Unknown;
                        Ok(())
                    }
                    Ok(Err(err)) if is_status(&err, 404) => {
                        // Deleted (its owner garbage-collected, or by hand): whoever creates it
                        // next may lead, so stop writing now.
                        if self.renewed.is_some() {
                            tracing::warn!("the Lease was deleted; stopping all writes");
                            self.step_down();
                        }
                        self.gone(Instant::now());
                        Ok(())
                    }
                    Ok(Err(err)) => Err(self.failed("patch", err)),
                    Err(_) => Err("timed out".to_owned()),
                }
            }
        };
        match result {
            Ok(()) => {
                self.failures = 0;
                self.retry_at = None;
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                let delay = if self.renewed.is_some() {
                    self.config.retry_period()
                } else {
                    self.config.standby_retries().delay(self.failures)
                };
                tracing::warn!(
                    error,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "Lease request failed; retrying"
                );
                self.retry_at = Some(Instant::now() + delay);
            }
        }
    }

    /// The merge patch that names this process, guarded by the version it was computed from.
    fn claim(&self, acquire: bool) -> Value {
        let now = format!("{:.6}", jiff::Timestamp::now());
        let mut spec = json!({
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": lease_seconds(self.config.lease_duration),
            "renewTime": now,
        });
        if acquire {
            let transitions = match &self.known {
                Known::Present { lease, .. } => lease
                    .spec
                    .as_ref()
                    .and_then(|s| s.lease_transitions)
                    .unwrap_or(0),
                _ => 0,
            };
            spec["acquireTime"] = json!(now);
            spec["leaseTransitions"] = json!(transitions.saturating_add(1));
        }
        json!({
            "metadata": { "resourceVersion": self.version().unwrap_or_default() },
            "spec": spec,
        })
    }

    fn new_lease(&self) -> Lease {
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(jiff::Timestamp::now());
        Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(self.config.lease_name.clone()),
                namespace: Some(self.config.namespace.clone()),
                owner_references: self.config.owner.clone().map(|owner| vec![owner]),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(lease_seconds(self.config.lease_duration)),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        }
    }

    /// A write naming this process succeeded: it leads until the renew deadline.
    fn won(&mut self, lease: Lease, sent: Instant) {
        let ours = holder(&lease) == Some(self.config.identity.as_str());
        self.known = Known::Present {
            lease: Box::new(lease),
            since: sent,
        };
        if !ours {
            self.step_down();
            return;
        }
        let deadline = sent + self.config.valid_for();
        if Instant::now() >= deadline {
            // The answer came too late to act on; the next write proves it again.
            self.step_down();
            return;
        }
        let was_leading = self.renewed.is_some();
        self.renewed = Some(sent);
        self.fence.set(FenceState::Until(deadline));
        if !was_leading {
            tracing::info!(identity = %self.config.identity, "holding the Lease");
            self.signal.send_replace(true);
        }
    }

    /// An authoritative read (GET): what it says is the truth now.
    fn observe_read(&mut self, lease: Option<Lease>, now: Instant) {
        let Some(lease) = lease else {
            if self.renewed.is_some() {
                tracing::warn!("the Lease was deleted; stopping all writes");
                self.step_down();
            }
            self.gone(now);
            return;
        };
        if self.renewed.is_some() && holder(&lease) != Some(self.config.identity.as_str()) {
            tracing::warn!(holder = ?holder(&lease), "another process holds the Lease; stopping all writes");
            self.step_down();
        }
        self.remember(lease, now);
    }

    /// What the watch reported. It may lag behind this process's own writes, so while leading
    /// it is trusted only to raise doubt, settled by a read.
    fn observe_watch(&mut self, seen: Seen, now: Instant) {
        match seen {
            Seen::Deleted if self.renewed.is_some() => self.known = Known::Unknown,
            Seen::Deleted => self.gone(now),
            Seen::Lease(lease) => {
                if self.renewed.is_some() {
                    if holder(&lease) != Some(self.config.identity.as_str()) {
                        self.known = Known::Unknown;
                    }
                    return;
                }
                if holder(&lease).is_none() {
                    // Released: compete now, even if a failed attempt asked to wait.
                    self.retry_at = None;
                }
                self.remember(*lease, now);
            }
        }
    }

    /// The Lease is gone. Deleted under another holder (its owner garbage-collected, or by
    /// hand), that holder may not have noticed yet and may write until its renew deadline: it is
    /// created again only a full duration later. Never held (first start, or released): now.
    fn gone(&mut self, now: Instant) {
        let held_by_another = matches!(&self.known,
            Known::Present { lease, .. } if holder(lease).is_some_and(|h| h != self.config.identity));
        self.known = Known::Absent;
        if held_by_another {
            self.retry_at = Some(now + self.config.lease_duration);
        }
    }

    /// Keep `lease` as known; a version not seen before starts its expiry clock now.
    fn remember(&mut self, lease: Lease, now: Instant) {
        let version = lease.metadata.resource_version.clone();
        let since = match &self.known {
            Known::Present { lease: old, since } if old.metadata.resource_version == version => {
                *since
            }
            _ => now,
        };
        self.known = Known::Present {
            lease: Box::new(lease),
            since,
        };
    }

    /// A failed Lease call as one line naming the call and the Lease.
    fn failed(&self, verb: &str, err: kube::Error) -> String {
        let action = format!(
            "{verb} Lease {}/{}",
            self.config.namespace, self.config.lease_name
        );
        crate::Error::api(action, err).to_string()
    }

    /// On shutdown: clear the holder (guarded), so a standby takes over at once.
    async fn release(&mut self) {
        let ours = matches!(&self.known, Known::Present { lease, .. } if holder(lease) == Some(self.config.identity.as_str()));
        let leading = self.renewed.is_some();
        self.step_down();
        if !ours || !leading {
            return;
        }
        let patch = json!({
            "metadata": { "resourceVersion": self.version().unwrap_or_default() },
            "spec": {
                "holderIdentity": null,
                "renewTime": format!("{:.6}", jiff::Timestamp::now()),
            },
        });
        let limit = self.config.request_timeout();
        match tokio::time::timeout(
            limit,
            self.api
                .patch(&self.config.lease_name, &params(), &Patch::Merge(&patch)),
        )
        .await
        {
            Ok(Ok(_)) => tracing::info!("Lease released"),
            Ok(Err(err)) if is_status(&err, 409) => {
                tracing::info!("the Lease changed meanwhile; nothing to release");
            }
            Ok(Err(err)) => {
                let error = self.failed("release (patch)", err);
                tracing::warn!(
                    error,
                    "releasing the Lease failed; a standby takes over when it expires"
                );
            }
            Err(_) => tracing::warn!(
                "releasing the Lease timed out; a standby takes over when it expires"
            ),
        }
    }
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(LEASE_FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

fn lease_seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// The Lease's own duration (the holder's setting), else ours.
fn duration_of(lease: &Lease, fallback: Duration) -> Duration {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(fallback, Duration::from_secs)
}

/// The holder, if any.
fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|spec| spec.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// The named Lease as the watch sees it.
///
/// The watch is pinned to the one name, so the Role only needs `list`/`watch` on that Lease.
/// Watch errors are retried with backoff; while the watch is down, takeover falls back to
/// waiting for the Lease to expire.
fn lease_events(api: Api<Lease>, name: &str) -> impl Stream<Item = Seen> + Send + 'static {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(|event| async move {
            match event {
                Ok(Event::Apply(lease) | Event::InitApply(lease)) => {
                    Some(Seen::Lease(Box::new(lease)))
                }
                Ok(Event::Delete(_)) => Some(Seen::Deleted),
                Ok(Event::Init | Event::InitDone) => None,
                Err(err) => {
                    tracing::warn!(error = %err, "watching the Lease failed; a released Lease is taken over when it expires");
                    None
                }
            }
        })
}

/// Validate the lease timings, with a message naming the flags.
pub fn validate_timings(duration: Duration, grace: Duration) -> Result<()> {
    if duration < Duration::from_secs(5) {
        return Err(crate::Error::usage(
            "--lease-duration must be at least 5s (default 30s)",
        ));
    }
    if grace.is_zero() || grace >= duration {
        return Err(crate::Error::usage(format!(
            "--lease-renew-grace must be more than 0s and less than --lease-duration ({}); default 10s",
            crate::api::duration::format(duration)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const D: Duration = Duration::from_secs(5);
    const G: Duration = Duration::from_secs(2);

    /// A client whose every request answers 200 `{}` and is counted.
    fn counting_client(sent: Arc<AtomicUsize>) -> Client {
        let service = tower::service_fn(move |_request: http::Request<kube::client::Body>| {
            sent.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, std::convert::Infallible>(http::Response::new(kube::client::Body::from(
                    b"{}".to_vec(),
                )))
            }
        });
        Client::new(service, "team-a")
    }

    /// The claims a kube-apiserver puts in a projected ServiceAccount token (v1.36).
    fn token(namespace: &str) -> String {
        use base64::Engine as _;
        let claims = json!({
            "aud": ["https://kubernetes.default.svc"],
            "iss": "https://kubernetes.default.svc",
            "sub": format!("system:serviceaccount:{namespace}:bulkhead"),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": "0a1b"},
                "pod": {"name": "bulkhead-5cd9cfff46-8skjj", "uid": "07b4"},
                "serviceaccount": {"name": "bulkhead", "uid": "5f3c2d1e-aaaa-bbbb-cccc-0123456789ab"}
            }
        });
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}\n",
            b64(br#"{"alg":"RS256","kid":"k"}"#),
            b64(claims.to_string().as_bytes()),
            b64(b"signature")
        )
    }

    #[test]
    fn the_lease_owner_is_the_service_account_of_the_pods_own_token() {
        let owner = service_account_owner(&token("team-a"), "team-a").unwrap();
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str()
            ),
            (
                "v1",
                "ServiceAccount",
                "bulkhead",
                "5f3c2d1e-aaaa-bbbb-cccc-0123456789ab"
            )
        );
        assert_eq!(
            owner.block_owner_deletion, None,
            "no right on the ServiceAccount needed"
        );
        // An owner must live in the Lease's namespace; anything unreadable gives none.
        assert_eq!(service_account_owner(&token("team-b"), "team-a"), None);
        assert_eq!(service_account_owner("not-a-jwt", "team-a"), None);
        assert_eq!(service_account_owner("a.%%%.c", "team-a"), None);
    }

    #[tokio::test]
    async fn a_lease_deleted_under_another_holder_is_created_again_only_a_duration_later() {
        let (mut e, _rx, _fence) = elector();
        let t0 = Instant::now();
        e.observe_read(Some(lease(Some("other"), "3")), t0);
        e.observe_watch(Seen::Deleted, t0);
        assert_eq!(
            e.plan(t0),
            Step::Wait(t0 + D),
            "the holder may still write until then"
        );
        assert_eq!(e.plan(t0 + D), Step::Create);
        // A read that finds it gone says the same.
        let (mut e, _rx, _fence) = elector();
        e.observe_read(Some(lease(Some("other"), "3")), t0);
        e.observe_read(None, t0);
        assert_eq!(e.plan(t0), Step::Wait(t0 + D));
        // Never held: created at once.
        let (mut e, _rx, _fence) = elector();
        e.observe_read(None, t0);
        assert_eq!(e.plan(t0), Step::Create);
    }

    /// A client whose Lease create is refused (403) when the Lease names an owner, as
    /// OwnerReferencesPermissionEnforcement refuses it without `delete`; echoes it otherwise.
    fn owner_refusing_client(posts: Arc<std::sync::Mutex<Vec<Value>>>) -> Client {
        use http_body_util::BodyExt as _;
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let posts = posts.clone();
            async move {
                let body = request
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut lease: Value = serde_json::from_slice(&body).unwrap_or_default();
                posts.lock().unwrap().push(lease.clone());
                let (code, answer) = if lease["metadata"]["ownerReferences"].is_array() {
                    (
                        403,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                        "message": "cannot set an ownerRef on a resource you can't delete"}),
                    )
                } else {
                    lease["metadata"]["resourceVersion"] = json!("1");
                    (201, lease)
                };
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(code)
                        .body(kube::client::Body::from(answer.to_string().into_bytes()))
                        .unwrap(),
                )
            }
        });
        Client::new(service, "team-a")
    }

    #[tokio::test]
    async fn a_refused_owner_falls_back_to_a_lease_without_one() {
        let posts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (_, rx, fence) = elector();
        let (tx, _) = watch::channel(false);
        let mut config = elector().0.config;
        config.owner = service_account_owner(&token("team-a"), "team-a");
        let mut e = Elector::new(
            Api::namespaced(owner_refusing_client(posts.clone()), "team-a"),
            config,
            fence,
            tx,
        );
        drop(rx);
        let t0 = Instant::now();
        e.observe_read(None, t0);
        e.execute(Step::Create).await;
        assert_eq!(
            e.config.owner, None,
            "the owner is given up after the refusal"
        );
        assert_eq!(
            e.plan(Instant::now()),
            Step::Create,
            "and the create is retried at once"
        );
        e.execute(Step::Create).await;
        let posts = posts.lock().unwrap();
        assert_eq!(posts.len(), 2);
        assert!(posts[0]["metadata"]["ownerReferences"].is_array());
        assert!(posts[1]["metadata"].get("ownerReferences").is_none());
        assert!(e.renewed.is_some(), "the second create leads");
    }

    #[tokio::test]
    async fn a_created_lease_names_its_owner() {
        let (mut elector, _, _) = elector();
        elector.config.owner = service_account_owner(&token("team-a"), "team-a");
        let lease = elector.new_lease();
        let owners = lease.metadata.owner_references.unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "ServiceAccount");
    }

    #[test]
    fn a_standby_retries_from_two_periods_doubling_to_the_grace_or_32_periods() {
        let retries = |duration: u64, grace_ms: u64| {
            let config = LeaderConfig {
                enabled: true,
                namespace: "team-a".into(),
                lease_name: "bulkhead".into(),
                identity: "me".into(),
                lease_duration: Duration::from_secs(duration),
                renew_grace: Duration::from_millis(grace_ms),
                owner: None,
            };
            let schedule = config.standby_retries();
            (1..=7)
                .map(|f| u64::try_from(schedule.delay(f).as_millis()).unwrap())
                .collect::<Vec<_>>()
        };
        // Grace 10 s: period 1 s, capped at the grace.
        assert_eq!(
            retries(30, 10_000),
            [2000, 4000, 8000, 10_000, 10_000, 10_000, 10_000]
        );
        // Grace 100 s: period 2 s (its ceiling), capped at 32 periods.
        assert_eq!(
            retries(300, 100_000),
            [4000, 8000, 16_000, 32_000, 64_000, 64_000, 64_000]
        );
        // Grace 500 ms: period 100 ms (its floor), capped at the grace.
        assert_eq!(retries(5, 500), [200, 400, 500, 500, 500, 500, 500]);
    }

    fn elector() -> (Elector, watch::Receiver<bool>, Fence) {
        let client = counting_client(Arc::new(AtomicUsize::new(0)));
        let config = LeaderConfig {
            enabled: true,
            namespace: "team-a".into(),
            lease_name: "bulkhead".into(),
            identity: "me".into(),
            lease_duration: D,
            renew_grace: G,
            owner: None,
        };
        let (tx, rx) = watch::channel(false);
        let fence = Fence::default();
        let elector = Elector::new(Api::namespaced(client, "team-a"), config, fence.clone(), tx);
        (elector, rx, fence)
    }

    fn lease(holder: Option<&str>, version: &str) -> Lease {
        Lease {
            metadata: kube::api::ObjectMeta {
                name: Some("bulkhead".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(5),
                ..Default::default()
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_lease_is_taken_only_after_a_full_duration_without_a_new_version() {
        let (mut e, _rx, _fence) = elector();
        let t0 = Instant::now();
        e.observe_read(Some(lease(Some("other"), "1")), t0);
        assert_eq!(e.plan(t0 + Duration::from_secs(4)), Step::Wait(t0 + D));
        // The same version read again later does not restart the clock; a new one does.
        e.observe_read(Some(lease(Some("other"), "1")), t0 + Duration::from_secs(3));
        assert_eq!(e.plan(t0 + D), Step::Write { acquire: true });
        e.observe_watch(Seen::Lease(Box::new(lease(Some("other"), "2"))), t0 + D);
        assert_eq!(e.plan(t0 + D), Step::Wait(t0 + D + D));
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_is_taken_at_once_and_every_write_is_guarded() {
        let (mut e, _rx, _fence) = elector();
        let t0 = Instant::now();
        e.observe_read(Some(lease(Some("other"), "1")), t0);
        e.observe_watch(Seen::Lease(Box::new(lease(None, "7"))), t0);
        assert_eq!(e.plan(t0), Step::Write { acquire: true });
        let claim = e.claim(true);
        assert_eq!(claim["metadata"]["resourceVersion"], "7");
        assert_eq!(claim["spec"]["holderIdentity"], "me");
        e.observe_read(None, t0);
        assert_eq!(e.plan(t0), Step::Create);
    }

    #[tokio::test(start_paused = true)]
    async fn an_old_read_from_start_up_takes_over_only_the_version_it_read() {
        // The Lease is read while the preflight runs; the preflight may retry for minutes.
        let conflict = tower::service_fn(|_request: http::Request<kube::client::Body>| async {
            let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Conflict", "code": 409, "message": "the object has been modified"});
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .status(409)
                    .body(kube::client::Body::from(status.to_string().into_bytes()))
                    .unwrap(),
            )
        });
        let (mut e, rx, fence) = elector();
        e.api = Api::namespaced(Client::new(conflict, "team-a"), "team-a");
        let read_at = Instant::now();
        e.observe_read(Some(lease(Some("other"), "1")), read_at);
        tokio::time::advance(D * 10).await;
        // Long expired by that read: a takeover, but only of the version read...
        assert_eq!(e.plan(Instant::now()), Step::Write { acquire: true });
        assert_eq!(e.claim(true)["metadata"]["resourceVersion"], "1");
        // ...which the holder has renewed since: refused, read again, nothing held.
        e.execute(Step::Write { acquire: true }).await;
        assert_eq!(e.plan(Instant::now()), Step::Read);
        assert!(!*rx.borrow() && !fence.allows());
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_renews_at_d_minus_g_and_stops_writing_at_d_minus_half_g() {
        let (mut e, rx, fence) = elector();
        let sent = Instant::now();
        e.won(lease(Some("me"), "3"), sent);
        assert!(*rx.borrow() && fence.allows());
        assert_eq!(e.plan(sent), Step::Wait(sent + Duration::from_secs(3)));
        tokio::time::advance(Duration::from_millis(3999)).await;
        e.check_deadline(Instant::now());
        assert!(*rx.borrow() && fence.allows(), "still inside the deadline");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!fence.allows(), "the fence closes by the clock alone");
        e.check_deadline(Instant::now());
        assert!(!*rx.borrow(), "and the signal follows");
        // The Lease still names it: a guarded write proves it again.
        assert_eq!(e.plan(Instant::now()), Step::Write { acquire: false });
    }

    #[tokio::test(start_paused = true)]
    async fn another_holder_seen_while_leading_is_confirmed_by_a_read() {
        let (mut e, rx, _fence) = elector();
        let sent = Instant::now();
        e.won(lease(Some("me"), "3"), sent);
        e.observe_watch(Seen::Lease(Box::new(lease(Some("other"), "2"))), sent);
        assert!(*rx.borrow(), "a watch event alone does not depose");
        assert_eq!(e.plan(sent), Step::Read);
        e.observe_read(Some(lease(Some("other"), "4")), sent);
        assert!(!*rx.borrow(), "a read that shows another holder does");
    }

    #[tokio::test(start_paused = true)]
    async fn the_fenced_client_refuses_writes_but_not_reads_when_closed() {
        let sent = Arc::new(AtomicUsize::new(0));
        let fence = Fence::default();
        let client = fenced(counting_client(sent.clone()), fence.clone());
        let api: Api<Lease> = Api::namespaced(client, "team-a");
        let params = PatchParams::default();
        let patch = Patch::Merge(json!({}));
        let refused = api.patch("bulkhead", &params, &patch).await;
        assert!(
            matches!(&refused, Err(kube::Error::Service(e)) if e.is::<NotLeader>()),
            "{refused:?}"
        );
        assert_eq!(sent.load(Ordering::SeqCst), 0, "nothing was sent");
        let _ = api.get_opt("bulkhead").await;
        assert_eq!(sent.load(Ordering::SeqCst), 1, "reads pass");
        fence.set(FenceState::Until(Instant::now() + Duration::from_secs(1)));
        let _ = api.patch("bulkhead", &params, &patch).await;
        assert_eq!(sent.load(Ordering::SeqCst), 2, "writes pass while open");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(api.patch("bulkhead", &params, &patch).await.is_err());
        assert_eq!(sent.load(Ordering::SeqCst), 2);
    }
}
