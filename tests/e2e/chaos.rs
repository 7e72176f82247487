//! Leadership through outages, against the real API server: a frozen leader, a paused API
//! server, an etcd restart, and a restart with settled Credentials.
//!
//! Two operator processes run for one release, each with its own ServiceAccount bound to the
//! chart's Role, so the audit log tells their requests apart. A sampler scrapes both processes'
//! `bulkhead_leader` five times a second through every scenario; at no sample may both lead.
//! Short Lease timings (5 s Lease, 2 s renew grace: renewal every 3 s, renew deadline 4 s)
//! keep each scenario to seconds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::*;

const LEASE: &str = "5s";
const GRACE: &str = "2s";
/// Well past the Lease: a standby would have taken it over long before.
const OUTAGE: Duration = Duration::from_secs(12);
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
const CREDENTIALS: usize = 3;

/// `bulkhead_leader` of one process, or `None` when it does not answer within 150 ms (frozen,
/// or not started).
fn leader_sample(addr: SocketAddr) -> Option<bool> {
    let limit = Duration::from_millis(150);
    let (_, body) = cluster::http_get_within(addr, "/metrics", limit, limit)?;
    body.lines().find_map(|line| match line {
        "bulkhead_leader 1" => Some(true),
        "bulkhead_leader 0" => Some(false),
        _ => None,
    })
}

/// Scrapes every process's `bulkhead_leader` five times a second until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Vec<Option<bool>>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    fn start(addrs: Vec<SocketAddr>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    // Both at once: a frozen process's timeout must not delay the other's.
                    let round: Vec<Option<bool>> = std::thread::scope(|scope| {
                        let probes: Vec<_> = addrs
                            .iter()
                            .map(|a| scope.spawn(move || leader_sample(*a)))
                            .collect();
                        probes.into_iter().map(|p| p.join().unwrap()).collect()
                    });
                    let leaders = round.iter().filter(|v| **v == Some(true)).count();
                    assert!(leaders <= 1, "two leaders in one sample: {round:?}");
                    samples.lock().unwrap().push(round);
                    std::thread::sleep(SAMPLE_EVERY.saturating_sub(started.elapsed()));
                }
            })
        };
        Self {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// Stop, and check: never two leaders (the thread panics on one), ≥ 4 samples a second,
    /// and a leader at the end. Returns the number of samples.
    fn finish(mut self, span: Duration) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
        {
            std::panic::resume_unwind(panic);
        }
        let samples = self.samples.lock().unwrap();
        let per_second = samples.len() as f64 / span.as_secs_f64();
        assert!(
            per_second >= 4.0,
            "{} samples in {span:?}: fewer than 4 a second",
            samples.len()
        );
        // (A scrape of a loaded machine may time out: any of the last five rounds will do.)
        let last = &samples[samples.len().saturating_sub(5)..];
        assert!(
            last.iter().any(|round| round.contains(&Some(true))),
            "nobody leads at the end: {last:?}"
        );
        samples.len()
    }
}

/// A second ServiceAccount bound to the release's Role, and a kubeconfig with its token: the
/// audit log then tells the two processes apart.
fn second_account(cluster: &Cluster, release: &Release, name: &str) -> (PathBuf, String) {
    let ns = release.namespace.as_str();
    let role = cluster.kubectl_ok(&["get", "role", "-n", ns, "-o", "name"]);
    let role = role
        .trim()
        .trim_start_matches("role.rbac.authorization.k8s.io/");
    cluster.kubectl_ok(&["create", "serviceaccount", name, "-n", ns]);
    cluster.kubectl_ok(&[
        "create",
        "rolebinding",
        name,
        "-n",
        ns,
        &format!("--role={role}"),
        &format!("--serviceaccount={ns}:{name}"),
    ]);
    let token = cluster.kubectl_ok(&["create", "token", name, "-n", ns, "--duration=1h"]);
    let path = cluster.dir.join(format!("{ns}-{name}.kubeconfig"));
    cluster.write_kubeconfig(&path, name, token.trim());
    (path, format!("system:serviceaccount:{ns}:{name}"))
}

fn options(ns: &str, pod: &str) -> OperatorOptions {
    let mut options = OperatorOptions::new(ns, pod);
    options.lease_duration = LEASE.to_owned();
    options.renew_grace = GRACE.to_owned();
    options
}

/// The settled state every scenario starts from and compares against.
struct Scene {
    cluster: Cluster,
    admin: Client,
    ns: &'static str,
    a: Operator,
    b: Option<Operator>,
    users: [String; 2],
    /// Each Credential's Secret value.
    values: Vec<String>,
}

fn tenant(ns: &str) -> Tenant {
    serde_json::from_value(json!({
        "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "tenant", "namespace": ns},
        "spec": {"displayName": "Team A"},
    }))
    .unwrap()
}

async fn tenant_counts(admin: &Client, ns: &str) -> Option<(u32, u32)> {
    let t = Api::<Tenant>::namespaced(admin.clone(), ns)
        .get_opt("tenant")
        .await
        .ok()??;
    let c = t.status?.credentials?;
    Some((c.total, c.ready))
}

/// A control plane, a release, the Tenant and `CREDENTIALS` settled Credentials; op-a leads,
/// op-b (when `standby`) stands by.
async fn scene(binaries: Binaries, standby: bool) -> Scene {
    let cluster = Cluster::start(binaries.without_controller_manager());
    cluster.install_crds();
    let ns = "team-a";
    let admin = cluster.admin_client().await;
    let release = cluster.install_release(ns, &[]);
    let kubeconfig_a = cluster.service_account_kubeconfig(&release);
    let (kubeconfig_b, user_b) = second_account(&cluster, &release, "op-b");
    let mut a = Operator::start(&cluster, &kubeconfig_a, &options(ns, "op-a"));
    a.wait_ready(WAIT);
    a.wait_leader(WAIT);
    create(&admin, ns, &tenant(ns)).await;
    let mut values = Vec::new();
    for i in 0..CREDENTIALS {
        let name = format!("c{i}");
        create(&admin, ns, &random_credential(ns, &name)).await;
        let s = wait_value(&admin, ns, &name, WAIT).await;
        values.push(data(&s, "value").unwrap());
    }
    let want = u32::try_from(CREDENTIALS).unwrap();
    eventually("the Tenant counts every Credential", WAIT, || async {
        (tenant_counts(&admin, ns).await == Some((want, want))).then_some(())
    })
    .await;
    let b = if standby {
        let mut b = Operator::start(&cluster, &kubeconfig_b, &options(ns, "op-b"));
        b.wait_ready(WAIT);
        Some(b)
    } else {
        None
    };
    Scene {
        cluster,
        admin,
        ns,
        a,
        b,
        users: [release.user(), user_b],
        values,
    }
}

impl Scene {
    fn sampler(&self) -> Sampler {
        let mut addrs = vec![self.a.metrics];
        addrs.extend(self.b.as_ref().map(|b| b.metrics));
        Sampler::start(addrs)
    }

    /// Every Secret value and the Tenant's counts are as they were settled (`rotated`: except
    /// that Credential, which must hold `value.previous` = its settled value).
    async fn assert_unchanged(&self, rotated: Option<usize>) {
        for (i, value) in self.values.iter().enumerate() {
            let s = secret(&self.admin, self.ns, &format!("c{i}"))
                .await
                .unwrap();
            if rotated == Some(i) {
                assert_ne!(data(&s, "value").as_ref(), Some(value), "c{i} rotated");
                assert_eq!(
                    data(&s, "value.previous").as_ref(),
                    Some(value),
                    "c{i} rotated exactly once"
                );
            } else {
                assert_eq!(data(&s, "value").as_ref(), Some(value), "c{i} unchanged");
                assert_eq!(data(&s, "value.previous"), None, "c{i} never rotated");
            }
        }
        let want = u32::try_from(CREDENTIALS).unwrap();
        assert_eq!(
            tenant_counts(&self.admin, self.ns).await,
            Some((want, want))
        );
    }

    /// Writes by `user` received at or after `since`, other than the Lease, dry runs and
    /// self-reviews.
    fn writes_since(&self, user: &str, since: jiff::Timestamp) -> Vec<String> {
        self.cluster
            .audit()
            .by_user(user)
            .filter(|e| e.request_received_timestamp >= since && e.is_write())
            .filter(|e| e.resource() != "leases")
            .filter(|e| !e.request_uri.contains("dryRun=All") && !e.is_discovery_or_self_review())
            .map(|e| e.describe())
            .collect()
    }

    /// Wait until process `which` (0: op-a, 1: op-b) leads and has renewed the Lease since.
    async fn wait_settled_leader(&mut self, which: usize) {
        let op = if which == 0 {
            &mut self.a
        } else {
            self.b.as_mut().unwrap()
        };
        op.wait_leader(Duration::from_secs(40));
        let leading = jiff::Timestamp::now();
        self.renewed_since(which, leading).await;
        let op = if which == 0 {
            &self.a
        } else {
            self.b.as_ref().unwrap()
        };
        assert!(op.is_leader(), "{} kept the Lease", op.process.name);
    }

    /// A reconcile of every Credential by process `which` has run start to finish after this
    /// call began (see [`Cluster::wait_reconciled`]).
    async fn credentials_reconciled(&self, which: usize) {
        for i in 0..CREDENTIALS {
            let name = format!("c{i}");
            self.cluster
                .wait_reconciled(&self.admin, &self.users[which], self.ns, &name, &name)
                .await;
        }
    }

    /// A reconcile of the Tenant by `op` has run start to finish after this call began. The
    /// Tenant reconcile reads only caches (nothing in the audit log), so its counter: one
    /// reconcile may be in flight, and the reconciles of one object never overlap, so two
    /// rounds of "touch an annotation, wait for the counter to move" prove it.
    async fn tenant_reconciled(&self, op: &Operator) {
        let tenants = Api::<Tenant>::namespaced(self.admin.clone(), self.ns);
        let count = || {
            op.metric("bulkhead_reconcile_total{controller=\"tenant\"}")
                .unwrap_or(0.0)
        };
        for round in 0..2 {
            let before = count();
            let poke =
                json!({"metadata": {"annotations": {"test.bulkhead.dev/poke": round.to_string()}}});
            tenants
                .patch("tenant", &PatchParams::default(), &Patch::Merge(&poke))
                .await
                .unwrap();
            eventually("a Tenant reconcile", WAIT, || async {
                (count() > before).then_some(())
            })
            .await;
        }
    }

    /// Wait for a Lease write by process `which` received after `since` that the server
    /// accepted: a renewal (renewals are due every 3 s).
    async fn renewed_since(&self, which: usize, since: jiff::Timestamp) {
        let user = &self.users[which];
        self.cluster
            .wait_audit("a renewal of the Lease", Duration::from_secs(20), |e| {
                e.user.username == *user
                    && e.resource() == "leases"
                    && e.is_write()
                    && e.code() == 200
                    && e.request_received_timestamp >= since
            })
            .await;
    }
}

/// Freeze the leader (SIGSTOP) past the Lease and request a rotation meanwhile: the standby
/// takes over and rotates once. Resume the old leader (SIGCONT): it steps down without a single
/// write — no second rotation, no status, no Event — and only ever tries the Lease, and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn a_frozen_leader_resumes_without_writing() {
    let binaries = Binaries::from_env();
    let mut scene = scene(binaries, true).await;
    let sampler = scene.sampler();
    let started = Instant::now();
    scene.a.process.signal("STOP");
    let frozen = jiff::Timestamp::now();
    let b = scene.b.as_mut().unwrap();
    b.wait_leader(Duration::from_secs(20));
    request_rotation(&scene.admin, scene.ns, "c0", "while-frozen").await;
    let original = scene.values[0].clone();
    eventually("c0 rotated by op-b", WAIT, || async {
        secret(&scene.admin, scene.ns, "c0")
            .await
            .filter(|s| data(s, "value").is_some_and(|v| v != original))
    })
    .await;
    scene.a.process.signal("CONT");
    let resumed = jiff::Timestamp::now();
    // op-a answers again, as a standby; op-b still leads.
    eventually(
        "op-a answers as standby",
        Duration::from_secs(10),
        || async { (leader_sample(scene.a.metrics) == Some(false)).then_some(()) },
    )
    .await;
    // op-b renewed after op-a was back: op-a had its chance to write and did not take over.
    let answered = jiff::Timestamp::now();
    scene.renewed_since(1, answered).await;
    let b = scene.b.as_mut().unwrap();
    assert!(b.is_leader(), "op-b keeps the Lease");
    sampler.finish(started.elapsed());
    scene.assert_unchanged(Some(0)).await;
    let a_writes = scene.writes_since(&scene.users[0], frozen);
    assert!(
        a_writes.is_empty(),
        "the frozen leader wrote after the freeze: {a_writes:?}"
    );
    let audit = scene.cluster.audit();
    let a_lease_writes: Vec<_> = audit
        .by_user(&scene.users[0])
        .filter(|e| e.request_received_timestamp >= resumed && e.is_write())
        .filter(|e| e.resource() == "leases")
        .collect();
    assert!(
        a_lease_writes.iter().all(|e| e.code() == 409),
        "op-a's Lease writes after resuming are refused by the version guard: {:?}",
        a_lease_writes
            .iter()
            .map(|e| e.describe())
            .collect::<Vec<_>>()
    );
    let b_rotations = audit
        .by_user(&scene.users[1])
        .filter(|e| e.resource() == "secrets" && e.name() == "c0" && e.is_write())
        .count();
    assert_eq!(b_rotations, 1, "op-b wrote the Secret once: one rotation");
}

/// Pause the API server (SIGSTOP) past the Lease, then resume it: at most one leader at every
/// sample, one leader at the end, and no value changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn a_paused_api_server_never_yields_two_leaders() {
    let binaries = Binaries::from_env();
    let mut scene = scene(binaries, true).await;
    let sampler = scene.sampler();
    let started = Instant::now();
    scene.cluster.signal_apiserver("STOP");
    std::thread::sleep(OUTAGE);
    assert_eq!(
        scene.a.metric("bulkhead_leader"),
        Some(0.0),
        "a leader that cannot renew stops leading within the Lease"
    );
    scene.cluster.signal_apiserver("CONT");
    let leader = wait_for_a_leader(&mut scene);
    scene.wait_settled_leader(leader).await;
    sampler.finish(started.elapsed());
    scene.assert_unchanged(None).await;
}

/// Stop etcd past the Lease and start it again: at most one leader at every sample, one
/// leader at the end, and no value changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn an_etcd_restart_never_yields_two_leaders() {
    let binaries = Binaries::from_env();
    let mut scene = scene(binaries, true).await;
    let sampler = scene.sampler();
    let started = Instant::now();
    scene.cluster.stop_etcd();
    std::thread::sleep(OUTAGE);
    assert_eq!(
        scene.a.metric("bulkhead_leader"),
        Some(0.0),
        "a leader that cannot renew stops leading within the Lease"
    );
    scene.cluster.restart_etcd();
    let leader = wait_for_a_leader(&mut scene);
    scene.wait_settled_leader(leader).await;
    sampler.finish(started.elapsed());
    scene.assert_unchanged(None).await;
}

/// Which process (0: op-a, 1: op-b) leads after an outage.
fn wait_for_a_leader(scene: &mut Scene) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if scene.a.is_leader() {
            return 0;
        }
        if scene.b.as_ref().is_some_and(Operator::is_leader) {
            return 1;
        }
        assert!(
            Instant::now() < deadline,
            "nobody leads a minute after the outage:\n{}\n{}",
            scene.a.process.log_tail(20),
            scene
                .b
                .as_ref()
                .map(|b| b.process.log_tail(20))
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM the leader of settled Credentials and start a new process: it reads everything and
/// writes nothing but the Lease (no status, no Secret, no Event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn a_restart_with_settled_credentials_writes_nothing() {
    let binaries = Binaries::from_env();
    let mut scene = scene(binaries, false).await;
    // The settle is over: a reconcile of each object after it wrote nothing more (its last
    // status writes have landed before the restart).
    scene.credentials_reconciled(0).await;
    scene.tenant_reconciled(&scene.a).await;
    scene.a.process.signal("TERM");
    let status = scene
        .a
        .process
        .wait_exit(Duration::from_secs(20))
        .expect("op-a exits on SIGTERM");
    assert!(status.success(), "{status}");
    let restarted = jiff::Timestamp::now();
    let kubeconfig = scene.cluster.dir.join("team-a-op-b.kubeconfig");
    let mut b = Operator::start(&scene.cluster, &kubeconfig, &options(scene.ns, "op-b"));
    b.wait_ready(WAIT);
    b.wait_leader(WAIT);
    // The signal that the work ran: every Credential and the Tenant were reconciled.
    let reconciled = |op: &Operator, controller: &str| {
        op.metric(&format!(
            "bulkhead_reconcile_total{{controller=\"{controller}\"}}"
        ))
        .unwrap_or(0.0)
    };
    eventually("every object reconciled", WAIT, || async {
        (reconciled(&b, "credential") >= CREDENTIALS as f64 && reconciled(&b, "tenant") >= 1.0)
            .then_some(())
    })
    .await;
    // Anything a reconcile queued (the Tenant's counts are coalesced for a second) has landed
    // or been superseded once a later reconcile of each object has finished.
    scene.b = Some(b);
    scene.credentials_reconciled(1).await;
    scene.tenant_reconciled(scene.b.as_ref().unwrap()).await;
    scene.assert_unchanged(None).await;
    let writes = scene.writes_since(&scene.users[1], restarted);
    assert!(writes.is_empty(), "a restart wrote: {writes:#?}");
    let lease_writes = scene
        .cluster
        .audit()
        .by_user(&scene.users[1])
        .filter(|e| e.resource() == "leases" && e.is_write())
        .count();
    assert!(lease_writes >= 1, "the new process took the Lease");
}
