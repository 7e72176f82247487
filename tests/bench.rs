//! The per-instance cost benchmark (SPEC §8), on the e2e harness: a real kube-apiserver + etcd,
//! the chart applied into team namespaces, the operator as a local process with its
//! ServiceAccount's token and the chart's defaults (30 s Lease, 10 min drift re-check).
//!
//! Measured per instance (`per_instance_cost`): start-up to ready, idle VmRSS, RssAnon and CPU
//! with 0/100/1000 Credentials, API requests and writes per minute at steady state (from the
//! audit log, by the ServiceAccount), create→Secret latency over 200 Credentials, a cold
//! restart with 1000, and memory and requests before and after 2000 foreign 64 KiB Secrets.
//! `fleet`: N instances in N namespaces on one API server. `idle_memory_of_builds`: idle
//! memory of several builds of the binary (the release profile). Each prints markdown tables.
//! Ignored by default; run `hack/bench.sh` (see its usage).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/cluster.rs"]
mod cluster;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead::api::{Credential, Tenant};
use cluster::{
    AuditEvent, AuditLog, Binaries, Cluster, GroupWatchdog, Operator, OperatorOptions, Release,
    random_credential,
};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

const MANAGED: &str = "app.kubernetes.io/managed-by=bulkhead";
/// How long each idle window lasts: 60 s, or `BULKHEAD_BENCH_IDLE_SECONDS` (a quick trial of
/// the bench itself; the README's figures use the default).
fn idle_length() -> Duration {
    Duration::from_secs(env_number("BULKHEAD_BENCH_IDLE_SECONDS", 60) as u64)
}
/// Quiet time before an idle window: creation Events and status writes have settled.
const SETTLE: Duration = Duration::from_secs(10);

/// Chart defaults, not the e2e suite's short Lease.
fn options(ns: &str, pod: &str) -> OperatorOptions {
    let mut o = OperatorOptions::new(ns, pod);
    o.lease_duration = "30s".into();
    o.renew_grace = "10s".into();
    o
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The 1-minute load average: every figure is printed next to the machine's load.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

/// One idle window of one or more instances.
struct Idle {
    rss_kib: u64,
    /// Private (anonymous) memory; the rest of RSS is the mapped binary and libraries.
    anon_kib: u64,
    cpu_seconds: f64,
    /// The window's length.
    seconds: f64,
    requests_per_min: f64,
    writes_per_min: f64,
    lease_writes_per_min: f64,
    other_writes: Vec<String>,
    /// The 1-minute load average at the window's start and end.
    load: String,
}

async fn idle_window(cluster: &Cluster, instances: &[(&Operator, &Release)]) -> Idle {
    idle_window_of(cluster, instances, idle_length()).await
}

async fn idle_window_of(
    cluster: &Cluster,
    instances: &[(&Operator, &Release)],
    length: Duration,
) -> Idle {
    tokio::time::sleep(SETTLE).await;
    let ticks = cluster::clock_ticks_per_second() as f64;
    let cpu_before: u64 = instances.iter().map(|(o, _)| o.process.cpu_ticks()).sum();
    let offset = cluster.audit_len();
    let load_before = load();
    let from = Timestamp::now();
    tokio::time::sleep(length).await;
    let to = Timestamp::now();
    let load_after = load();
    let cpu_after: u64 = instances.iter().map(|(o, _)| o.process.cpu_ticks()).sum();
    let rss_kib = instances.iter().map(|(o, _)| o.process.rss_kib()).sum();
    let anon_kib = instances
        .iter()
        .map(|(o, _)| o.process.status_kib("RssAnon"))
        .sum();
    // The audit log is written when a request completes; give the last ones a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let audit = cluster.audit_after(offset);
    let minutes = length.as_secs_f64() / 60.0;
    let users: std::collections::HashSet<String> =
        instances.iter().map(|(_, r)| r.user()).collect();
    let mut requests = 0usize;
    let mut writes = 0usize;
    let mut lease_writes = 0usize;
    let mut other_writes = Vec::new();
    for e in audit.events.iter().filter(|e| {
        users.contains(&e.user.username)
            && e.request_received_timestamp >= from
            && e.request_received_timestamp < to
    }) {
        requests += 1;
        if e.is_write() {
            writes += 1;
            if e.resource() == "leases" {
                lease_writes += 1;
            } else {
                other_writes.push(e.describe());
            }
        }
    }
    Idle {
        rss_kib,
        anon_kib,
        cpu_seconds: (cpu_after - cpu_before) as f64 / ticks,
        seconds: length.as_secs_f64(),
        requests_per_min: requests as f64 / minutes,
        writes_per_min: writes as f64 / minutes,
        lease_writes_per_min: lease_writes as f64 / minutes,
        other_writes,
        load: format!("{load_before}→{load_after}"),
    }
}

/// Create `names` as Random Credentials, 16 at a time, and wait until the namespace has
/// `total_expected` managed Secrets.
async fn create_many(client: &Client, ns: &str, names: Vec<String>, total_expected: usize) {
    create_all(client, ns, names).await;
    wait_secrets(client, ns, total_expected).await;
}

async fn create_all(client: &Client, ns: &str, names: Vec<String>) {
    let api = Api::<Credential>::namespaced(client.clone(), ns);
    futures::stream::iter(names)
        .map(|name| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &random_credential(ns, &name))
                    .await
                    .map(drop)
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
}

async fn wait_secrets(client: &Client, ns: &str, total_expected: usize) {
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    wait_managed_secrets(
        &secrets,
        &format!("{total_expected} Secrets in {ns}"),
        total_expected,
    )
    .await;
}

/// Until `secrets` (one namespace's, or the admin's across all) holds `want` managed Secrets.
async fn wait_managed_secrets(secrets: &Api<Secret>, what: &str, want: usize) {
    cluster::eventually(what, Duration::from_secs(600), || async {
        let have = secrets
            .list_metadata(&ListParams::default().labels(MANAGED))
            .await
            .ok()?
            .items
            .len();
        (have >= want).then_some(())
    })
    .await;
}

/// When each managed Secret was first seen by a watch (the admin's): the far end of every
/// create→Secret latency.
struct SeenSecrets {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SeenSecrets {
    async fn start(client: &Client, ns: &str) -> Self {
        let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let secrets = Api::<Secret>::namespaced(client.clone(), ns);
        let recorder = seen.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            watcher(secrets, watcher::Config::default().labels(MANAGED))
                .for_each(|event| {
                    match event {
                        Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                            recorder
                                .lock()
                                .unwrap()
                                .entry(s.name_any())
                                .or_insert_with(Instant::now);
                        }
                        Ok(watcher::Event::InitDone) => {
                            if let Some(tx) = ready.take() {
                                let _ = tx.send(());
                            }
                        }
                        _ => {}
                    }
                    futures::future::ready(())
                })
                .await;
        });
        // The initial list is done: every later Secret arrives as a watch event.
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .expect("the Secret watch started")
            .unwrap();
        Self { seen, task }
    }

    fn get(&self, name: &str) -> Option<Instant> {
        self.seen.lock().unwrap().get(name).copied()
    }

    async fn wait(&self, name: &str, timeout: Duration) -> Instant {
        cluster::eventually(&format!("Secret {name}"), timeout, || async {
            self.get(name)
        })
        .await
    }
}

impl Drop for SeenSecrets {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One create of the one-by-one run, on the wall clock (comparable with the audit log's
/// timestamps): just before its POST was sent, and when the bench's watch saw its Secret.
struct Create {
    name: String,
    posted: Timestamp,
    seen: Timestamp,
}

/// The one-by-one run: create→Secret latencies, sorted, and each create's wall-clock ends.
struct OneByOne {
    sorted: Vec<Duration>,
    creates: Vec<Create>,
}

/// Sequential create→Secret latencies: each Credential is created once the previous one's
/// Secret was seen by a watch (the admin's), so each is measured on an otherwise idle instance.
async fn latencies(client: &Client, ns: &str, count: usize) -> OneByOne {
    let seen = SeenSecrets::start(client, ns).await;
    let api = Api::<Credential>::namespaced(client.clone(), ns);
    let mut sorted = Vec::with_capacity(count);
    let mut creates = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("latency-{i:03}");
        let posted = Timestamp::now();
        let started = Instant::now();
        api.create(&PostParams::default(), &random_credential(ns, &name))
            .await
            .unwrap();
        let seen_at = seen.wait(&name, Duration::from_secs(30)).await;
        let took = seen_at - started;
        sorted.push(took);
        let seen = posted.checked_add(took).unwrap();
        creates.push(Create { name, posted, seen });
    }
    sorted.sort();
    OneByOne { sorted, creates }
}

/// Where each one-by-one create→Secret went, from the API server's audit log: the
/// Credential's POST, the operator's GET of the Secret (404) and its POST of the Secret, each
/// as received and as answered (the audit's ResponseComplete stage), between the bench's POST
/// and its watch seeing the Secret. Stages are in ms, signed: the audit log stamps a request
/// answered when its entry is written, which may follow the watch event it caused. A markdown table of p50 / p99 / mean per stage; the means add up to
/// the mean total. Creates whose three requests are not all in `audit` are counted apart.
fn breakdown(audit: &AuditLog, operator: &str, ns: &str, creates: &[Create]) -> String {
    const STAGES: [&str; 7] = [
        "bench sends the Credential's POST → API server receives it",
        "**API server**: the Credential's POST, received → answered",
        "POST answered → the operator's GET of the Secret received (watch delivery to the operator, queue, reconcile start)",
        "**API server**: the GET (404), received → answered",
        "GET answered → the Secret's POST received (the operator plans and builds the Secret)",
        "**API server**: the Secret's POST, received → answered",
        "Secret's POST answered → the Secret seen by the bench's watch",
    ];
    let ms_between =
        |from: Timestamp, to: Timestamp| to.duration_since(from).as_secs_f64() * 1000.0;
    let received = |e: &AuditEvent| e.request_received_timestamp;
    let answered = |e: &AuditEvent| e.stage_timestamp.unwrap_or(e.request_received_timestamp);
    let mut stages: Vec<Vec<f64>> = vec![Vec::new(); STAGES.len()];
    let mut server = Vec::new();
    let mut total = Vec::new();
    let mut unmatched = Vec::new();
    for c in creates {
        let find = |user: Option<&str>, verb: &str, resource: &str, after: Timestamp| {
            audit.events.iter().find(|e| {
                user.is_none_or(|u| e.user.username == u)
                    && e.verb == verb
                    && e.resource() == resource
                    && e.namespace() == ns
                    && e.name() == c.name
                    && e.request_received_timestamp >= after
                    && e.request_received_timestamp <= c.seen
            })
        };
        let Some(post) = find(None, "create", "credentials", c.posted) else {
            unmatched.push(c.name.clone());
            continue;
        };
        let Some(get) = find(Some(operator), "get", "secrets", received(post)) else {
            unmatched.push(c.name.clone());
            continue;
        };
        let Some(create) = find(Some(operator), "create", "secrets", received(get)) else {
            unmatched.push(c.name.clone());
            continue;
        };
        let marks = [
            c.posted,
            received(post),
            answered(post),
            received(get),
            answered(get),
            received(create),
            answered(create),
            c.seen,
        ];
        for (i, pair) in marks.windows(2).enumerate() {
            stages[i].push(ms_between(pair[0], pair[1]));
        }
        server.push(
            stages[1].last().unwrap() + stages[3].last().unwrap() + stages[5].last().unwrap(),
        );
        total.push(ms_between(c.posted, c.seen));
    }
    let row = |label: &str, values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        format!(
            "| {label} | {:.1} | {:.1} | {:.1} |\n",
            percentile_ms(values, 0.50),
            percentile_ms(values, 0.99),
            mean_ms(values)
        )
    };
    let mut t = String::new();
    if total.is_empty() {
        let _ = writeln!(t, "no create matched in the audit log: {unmatched:?}");
        return t;
    }
    let _ = writeln!(
        t,
        "| where each create→Secret went ({} creates, audit log) | p50 ms | p99 ms | mean ms |",
        total.len()
    );
    let _ = writeln!(t, "|---|---|---|---|");
    for (label, values) in STAGES.iter().zip(stages.iter_mut()) {
        t.push_str(&row(label, values));
    }
    t.push_str(&row("the API server's three answers together", &mut server));
    t.push_str(&row("create→Secret (the sum)", &mut total));
    if !unmatched.is_empty() {
        let _ = writeln!(
            t,
            "\n{} creates without all three requests in the audit log: {unmatched:?}",
            unmatched.len()
        );
    }
    t
}

/// The one-by-one run in `release`'s namespace with its breakdown (see [`breakdown`]); the
/// load average before→after.
async fn one_by_one(
    cluster: &Cluster,
    client: &Client,
    release: &Release,
    count: usize,
) -> (OneByOne, String, String) {
    let load_before = load();
    let offset = cluster.audit_len();
    let run = latencies(client, &release.namespace, count).await;
    let load = format!("{load_before}→{}", load());
    // The audit log is written when a request completes; give the last ones a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let audit = cluster.audit_after(offset);
    let table = breakdown(&audit, &release.user(), &release.namespace, &run.creates);
    (run, table, load)
}

/// A burst: `count` Credentials created at once by 16 clients; create→Secret of each (from
/// just before its POST), and what the instance wrote meanwhile.
struct Burst {
    latencies: Vec<Duration>,
    /// First POST to the last Secret seen.
    took: Duration,
    tenant_writes: usize,
    credential_writes: usize,
    reconciles: f64,
    load: String,
}

async fn burst(
    cluster: &Cluster,
    client: &Client,
    op: &Operator,
    release: &Release,
    count: usize,
) -> Burst {
    let ns = release.namespace.as_str();
    let seen = SeenSecrets::start(client, ns).await;
    let api = Api::<Credential>::namespaced(client.clone(), ns);
    let reconciles_before = op
        .metric("bulkhead_reconcile_total{controller=\"credential\"}")
        .unwrap_or(0.0);
    let load_before = load();
    let offset = cluster.audit_len();
    let from = Timestamp::now();
    let begun = Instant::now();
    let started: Vec<(String, Instant)> = futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("burst-{i:03}");
                let started = Instant::now();
                api.create(&PostParams::default(), &random_credential(ns, &name))
                    .await
                    .unwrap();
                (name, started)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut latencies = Vec::with_capacity(count);
    let mut last = begun;
    for (name, at) in &started {
        let seen_at = seen.wait(name, Duration::from_secs(120)).await;
        last = last.max(seen_at);
        latencies.push(seen_at - *at);
    }
    latencies.sort();
    // Coalesced status writes land after the burst: count them too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let to = Timestamp::now();
    let audit = cluster.audit_after(offset);
    let user = release.user();
    let events = audit.by_user_between(&user, from, to);
    let writes_to = |resource: &str| {
        events
            .iter()
            .filter(|e| e.resource() == resource && e.is_write())
            .count()
    };
    Burst {
        latencies,
        took: last - begun,
        tenant_writes: writes_to("tenants"),
        credential_writes: writes_to("credentials"),
        reconciles: op
            .metric("bulkhead_reconcile_total{controller=\"credential\"}")
            .unwrap_or(0.0)
            - reconciles_before,
        load: format!("{load_before}→{}", load()),
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// [`percentile`] of milliseconds, `sorted` ascending.
fn percentile_ms(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn mean_ms(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn machine(binaries: &Binaries) -> String {
    let nproc = cluster::run_ok(&mut Command::new("nproc"))
        .trim()
        .to_owned();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let version = |binary: &std::path::Path| {
        let out = cluster::run_ok(Command::new(binary).arg("--version"));
        out.lines().next().unwrap_or_default().trim().to_owned()
    };
    format!(
        "{} · {nproc} CPUs ({model}) · {} · {} · operator built with `--release`",
        Timestamp::now().strftime("%Y-%m-%d"),
        version(&binaries.apiserver),
        version(&binaries.etcd).replace("Version: ", "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark (several minutes): run hack/bench.sh"]
async fn per_instance_cost() {
    let binaries = Binaries::from_env();
    // No controller manager: nothing here needs garbage collection, and the machine stays quiet.
    let cluster = Cluster::start(binaries.clone().without_controller_manager());
    cluster.install_crds();
    let admin = cluster.admin_client().await;
    let ns = "bench";
    let release = cluster.install_release(ns, &[]);
    let kubeconfig = cluster.service_account_kubeconfig(&release);

    // Start-up to ready: five cold starts (each stops with SIGTERM, releasing the Lease).
    let mut startups = Vec::new();
    let mut operator = None;
    for i in 0..5 {
        let mut op = Operator::start(&cluster, &kubeconfig, &options(ns, &format!("bench-{i}")));
        startups.push(op.wait_ready(Duration::from_secs(60)));
        op.wait_leader(Duration::from_secs(60));
        if i < 4 {
            terminate(&mut op);
        } else {
            operator = Some(op);
        }
    }
    let mut op = operator.unwrap();
    startups.sort();
    let startup = startups[startups.len() / 2];
    eprintln!("bench: start-up to ready {startups:?}");
    let first_secrets: Vec<Duration> = first_secret_after_start(&cluster, &admin)
        .await
        .into_iter()
        .map(|(took, _)| took)
        .collect();
    eprintln!("bench: start→first Secret {first_secrets:?}");

    let mut idle = Vec::new();
    idle.push((0, idle_window(&cluster, &[(&op, &release)]).await));
    eprintln!("bench: idle with 0 done");
    create_many(
        &admin,
        ns,
        (0..100).map(|i| format!("bulk-{i:04}")).collect(),
        100,
    )
    .await;
    idle.push((100, idle_window(&cluster, &[(&op, &release)]).await));
    eprintln!("bench: idle with 100 done");
    let (lat, lat_breakdown, lat_load) = one_by_one(&cluster, &admin, &release, 200).await;
    let lat = lat.sorted;
    eprintln!("bench: latencies done");
    // The Tenant whose status counts the Credentials: its writes during the burst.
    let tenant: Tenant = serde_json::from_value(serde_json::json!({
        "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Tenant",
        "metadata": {"name": "tenant", "namespace": ns},
        "spec": {"displayName": "Bench", "contacts": ["bench@example.com"]},
    }))
    .unwrap();
    Api::<Tenant>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &tenant)
        .await
        .unwrap();
    tokio::time::sleep(SETTLE).await;
    let burst = burst(&cluster, &admin, &op, &release, 200).await;
    eprintln!("bench: burst done");
    create_many(
        &admin,
        ns,
        (100..600).map(|i| format!("bulk-{i:04}")).collect(),
        1000,
    )
    .await;
    idle.push((1000, idle_window(&cluster, &[(&op, &release)]).await));
    eprintln!("bench: idle with 1000 done");
    assert!(
        op.process.is_running(),
        "the instance survived 1000 Credentials"
    );
    let steady_peak = op.process.status_kib("VmHWM");

    // A restart with 1000 Credentials: every one reconciled at once by a cold instance.
    let (restarted, cold_reconcile) =
        restart_until_reconciled(&cluster, &kubeconfig, op, "bench-restart", 1000).await;
    tokio::time::sleep(SETTLE).await;
    let restart_peak = restarted.process.status_kib("VmHWM");
    let restart_rss = restarted.process.rss_kib();
    let restart_anon = restarted.process.status_kib("RssAnon");
    drop(restarted);

    // 2000 foreign Secrets beside an instance with 10 Credentials.
    let foreign = foreign_secrets(&cluster, &admin).await;

    let mut table = String::new();
    let _ = writeln!(table, "Machine: {}\n", machine(&binaries));
    let _ = writeln!(
        table,
        "| per instance | 0 Credentials | 100 Credentials | 1000 Credentials |"
    );
    let _ = writeln!(table, "|---|---|---|---|");
    let row = |label: &str, f: &dyn Fn(&Idle) -> String| {
        format!(
            "| {label} | {} |\n",
            idle.iter()
                .map(|(_, w)| f(w))
                .collect::<Vec<_>>()
                .join(" | ")
        )
    };
    table.push_str(&row("idle VmRSS", &|w| {
        format!("{:.1} MiB", mib(w.rss_kib))
    }));
    table.push_str(&row("idle RssAnon (private)", &|w| {
        format!("{:.1} MiB", mib(w.anon_kib))
    }));
    table.push_str(&row("CPU over the idle window", &|w| {
        format!("{:.2} s in {:.0} s", w.cpu_seconds, w.seconds)
    }));
    table.push_str(&row("API requests / min (steady state)", &|w| {
        format!("{:.1}", w.requests_per_min)
    }));
    table.push_str(&row("writes / min, of which Lease", &|w| {
        format!("{:.1}, {:.1}", w.writes_per_min, w.lease_writes_per_min)
    }));
    table.push_str(&row("load average (start→end of window)", &|w| {
        w.load.clone()
    }));
    let _ = writeln!(table);
    let _ = writeln!(table, "| | |");
    let _ = writeln!(table, "|---|---|");
    let _ = writeln!(
        table,
        "| start-up to ready (`/readyz` 200, median of 5) | {} |",
        ms(startup)
    );
    let _ = writeln!(
        table,
        "| create→Secret, 200 Credentials one by one: p50 / p95 / p99 (load {lat_load}) | {} / {} / {} |",
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.95)),
        ms(percentile(&lat, 0.99))
    );
    let _ = writeln!(
        table,
        "| start→first Secret for an existing Credential (process start to the Secret in a watch), median of 5 [min–max] | {} [{}–{}] |",
        ms(first_secrets[first_secrets.len() / 2]),
        ms(first_secrets[0]),
        ms(first_secrets[first_secrets.len() - 1])
    );
    let _ = writeln!(
        table,
        "| burst: 200 Credentials created at once by 16 clients: create→Secret p50 / p99, all done in (load {}) | {} / {}, {:.2} s |",
        burst.load,
        ms(percentile(&burst.latencies, 0.50)),
        ms(percentile(&burst.latencies, 0.99)),
        burst.took.as_secs_f64()
    );
    let _ = writeln!(
        table,
        "| burst: Credential reconciles / Credential writes / Tenant writes (until 3 s after) | {:.0} / {} / {} |",
        burst.reconciles, burst.credential_writes, burst.tenant_writes
    );
    let _ = writeln!(
        table,
        "| peak VmRSS while 1000 Credentials were created one by one or 16 at a time | {:.1} MiB |",
        mib(steady_peak)
    );
    let _ = writeln!(
        table,
        "| restart with 1000 Credentials: all reconciled in / peak VmRSS / VmRSS, RssAnon 10 s later | {:.1} s / {:.1} MiB / {:.1} MiB, {:.1} MiB |",
        cold_reconcile.as_secs_f64(),
        mib(restart_peak),
        mib(restart_rss),
        mib(restart_anon)
    );
    let _ = writeln!(table);
    table.push_str(&lat_breakdown);
    let _ = writeln!(table);
    table.push_str(&foreign.table());
    println!("\n{table}");
    for (n, w) in &idle {
        if !w.other_writes.is_empty() {
            println!(
                "writes besides the Lease while idle with {n} Credentials: {:#?}",
                w.other_writes
            );
        }
    }
}

/// Process start → the first Secret, for a Credential created while no instance ran: five
/// cold starts in their own namespace, sorted. Each comes with its timeline: the instance's
/// requests as the API server received them (audit log), in ms after the process started.
async fn first_secret_after_start(
    cluster: &Cluster,
    admin: &Client,
) -> Vec<(Duration, Vec<String>)> {
    let ns = "startup";
    let release = cluster.install_release(ns, &[]);
    let kubeconfig = cluster.service_account_kubeconfig(&release);
    let seen = SeenSecrets::start(admin, ns).await;
    let api = Api::<Credential>::namespaced(admin.clone(), ns);
    let mut out = Vec::new();
    for i in 0..5 {
        let name = format!("first-{i}");
        api.create(&PostParams::default(), &random_credential(ns, &name))
            .await
            .unwrap();
        let wall = Timestamp::now();
        let mut op = Operator::start(cluster, &kubeconfig, &options(ns, &format!("first-{i}")));
        // Polled from this thread (blocking): the watch that times the Secret runs elsewhere.
        let ready = tokio::task::block_in_place(|| op.wait_ready(Duration::from_secs(60)));
        let seen_at = seen.wait(&name, Duration::from_secs(60)).await;
        let until = Timestamp::now();
        let took = seen_at - op.started;
        terminate(&mut op);
        let audit = cluster.audit();
        let timeline = audit
            .by_user_between(&release.user(), wall, until)
            .into_iter()
            .map(|e| {
                let at = e.request_received_timestamp.duration_since(wall);
                // How long the API server took to answer (to start answering, for a watch).
                let served = e
                    .stage_timestamp
                    .map(|done| done.duration_since(e.request_received_timestamp));
                format!(
                    "{:6.1} ms (+{:5.1}) {} {}",
                    at.as_secs_f64() * 1000.0,
                    served.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
                    e.verb,
                    e.request_uri
                )
            })
            .collect::<Vec<String>>();
        let mut timeline = timeline;
        timeline.push(format!(
            "{:6.1} ms  /readyz answered 200 (polled every 5 ms)",
            ready.as_secs_f64() * 1000.0
        ));
        out.push((took, timeline));
    }
    out.sort_by_key(|(took, _)| *took);
    out
}

/// `hack/bench.sh concurrency C...`: for each `--max-concurrent-reconciles` value in
/// `BULKHEAD_BENCH_CONCURRENCY` (default "4 8 16 32"), in its own namespace: a burst of 200
/// Credentials from 16 clients (create→Secret p50/p99), then 1000 Credentials and a cold
/// restart among them (all reconciled in, peak VmRSS: must stay inside the chart's 64 Mi).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: hack/bench.sh concurrency"]
async fn concurrency() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries.clone().without_controller_manager());
    cluster.install_crds();
    let admin = cluster.admin_client().await;
    let values: Vec<u16> = std::env::var("BULKHEAD_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "4 8 16 32".to_owned())
        .split_whitespace()
        .map(|v| v.parse().expect("BULKHEAD_BENCH_CONCURRENCY: numbers"))
        .collect();
    let mut rows = Vec::new();
    for c in values {
        let ns = format!("conc-{c}");
        let release = cluster.install_release(&ns, &[]);
        let kubeconfig = cluster.service_account_kubeconfig(&release);
        let mut o = options(&ns, &format!("conc-{c}"));
        o.extra_args
            .push(format!("--max-concurrent-reconciles={c}"));
        let tenant: Tenant = serde_json::from_value(serde_json::json!({
            "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "tenant", "namespace": ns},
            "spec": {"displayName": "Bench", "contacts": ["bench@example.com"]},
        }))
        .unwrap();
        Api::<Tenant>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &tenant)
            .await
            .unwrap();
        let mut op = Operator::start(&cluster, &kubeconfig, &o);
        op.wait_leader(Duration::from_secs(60));
        tokio::time::sleep(SETTLE).await;
        let b = burst(&cluster, &admin, &op, &release, 200).await;
        let burst_peak = op.process.status_kib("VmHWM");
        create_many(
            &admin,
            &ns,
            (0..800).map(|i| format!("bulk-{i:04}")).collect(),
            1000,
        )
        .await;
        op.process.signal("TERM");
        assert!(
            op.process
                .wait_exit(Duration::from_secs(20))
                .unwrap()
                .success()
        );
        drop(op);
        o.pod_name = format!("conc-{c}-restart");
        let cold_load = load();
        let mut restarted = Operator::start(&cluster, &kubeconfig, &o);
        restarted.wait_leader(Duration::from_secs(60));
        let cold = Instant::now();
        cluster::eventually(
            "1000 Credentials reconciled after the restart",
            Duration::from_secs(300),
            || async {
                let n = restarted
                    .metric("bulkhead_reconcile_total{controller=\"credential\"}")
                    .unwrap_or(0.0);
                (n >= 1000.0).then_some(())
            },
        )
        .await;
        let cold_took = cold.elapsed();
        let cold_peak = restarted.process.status_kib("VmHWM");
        let cold_load = format!("{cold_load}→{}", load());
        drop(restarted);
        eprintln!("bench: concurrency {c} done");
        rows.push(format!(
            "| {c} | {} / {}, {:.2} s (load {}) | {:.1} MiB | {:.2} s / {:.1} MiB (load {cold_load}) |",
            ms(percentile(&b.latencies, 0.50)),
            ms(percentile(&b.latencies, 0.99)),
            b.took.as_secs_f64(),
            b.load,
            mib(burst_peak),
            cold_took.as_secs_f64(),
            mib(cold_peak),
        ));
    }
    println!("Machine: {}\n", machine(&binaries));
    println!(
        "| reconciles in flight | burst of 200 from 16 clients: create→Secret p50 / p99, all done in | peak VmRSS after the burst | cold restart with 1000: all reconciled in / peak VmRSS |"
    );
    println!("|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

/// `hack/bench.sh startup`: only the start→first Secret runs, each with its timeline (where
/// the time goes between the process start and the Secret).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: hack/bench.sh startup"]
async fn startup() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries.clone().without_controller_manager());
    cluster.install_crds();
    let admin = cluster.admin_client().await;
    let load_before = load();
    let runs = first_secret_after_start(&cluster, &admin).await;
    println!("start→first Secret (load {load_before}→{}):", load());
    for (took, timeline) in &runs {
        println!("\n{} (Secret seen by a watch):", ms(*took));
        for line in timeline {
            println!("  {line}");
        }
    }
}

/// How long kube-runtime's scheduler (the Controller's queue) holds a reconcile request that
/// is due at once, the way a watch event enters it (`run_at: now`): `count` requests, one at a
/// time 10 ms apart as in the one-by-one run, each timed from its send to the scheduler
/// emitting it. Its queue is a `tokio_util` `DelayQueue`, which counts whole milliseconds
/// (deadlines rounded up) on Tokio's 1 ms timer. Sorted, in ms.
async fn scheduler_hold(count: usize) -> Vec<f64> {
    use kube::runtime::scheduler::{ScheduleRequest, scheduler};
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let mut queue = std::pin::pin!(scheduler(rx));
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let sent = tokio::time::Instant::now();
        tx.unbounded_send(ScheduleRequest {
            message: i,
            run_at: sent,
        })
        .unwrap();
        let emitted = queue.next().await;
        held.push(sent.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(emitted, Some(i), "the scheduler emits what was sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    held.sort_by(f64::total_cmp);
    held
}

/// `hack/bench.sh latency`: only the one-by-one create→Secret of the main table, on the same
/// footing (chart defaults, 100 Credentials already reconciled, an idle instance), with each
/// create's breakdown from the audit log (see [`breakdown`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: hack/bench.sh latency"]
async fn latency() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries.clone().without_controller_manager());
    cluster.install_crds();
    let admin = cluster.admin_client().await;
    let ns = "bench";
    let release = cluster.install_release(ns, &[]);
    let kubeconfig = cluster.service_account_kubeconfig(&release);
    let mut op = Operator::start(&cluster, &kubeconfig, &options(ns, "bench-latency"));
    op.wait_leader(Duration::from_secs(60));
    create_many(
        &admin,
        ns,
        (0..100).map(|i| format!("bulk-{i:04}")).collect(),
        100,
    )
    .await;
    tokio::time::sleep(SETTLE).await;
    let (lat, table, lat_load) = one_by_one(&cluster, &admin, &release, 200).await;
    assert!(op.process.is_running(), "the instance survived");
    terminate(&mut op);
    println!("\nMachine: {}\n", machine(&binaries));
    println!(
        "create→Secret, 200 Credentials one by one: p50 / p95 / p99 (load {lat_load}) | {} / {} / {}\n",
        ms(percentile(&lat.sorted, 0.50)),
        ms(percentile(&lat.sorted, 0.95)),
        ms(percentile(&lat.sorted, 0.99))
    );
    println!("{table}");
    let held = scheduler_hold(200).await;
    println!(
        "kube-runtime's scheduler, a request due at once (200, 10 ms apart; the bench's debug build): held p50 / p99 / mean {:.2} / {:.2} / {:.2} ms",
        percentile_ms(&held, 0.50),
        percentile_ms(&held, 0.99),
        mean_ms(&held)
    );
}

/// An instance with 10 Credentials before and after 2000 foreign (not Bulkhead's) 64 KiB
/// Secrets are added to its namespace: operators that cache the namespace's Secrets grow
/// with them; Bulkhead reads its own by name and must stay flat.
struct Foreign {
    before: Idle,
    after: Idle,
    /// Requests the instance made while the 2000 Secrets were created.
    requests_during: usize,
    creating: Duration,
    peak_during_kib: u64,
    restart_peak_kib: u64,
    restart_rss_kib: u64,
    restart_anon_kib: u64,
}

impl Foreign {
    fn table(&self) -> String {
        let (b, a) = (&self.before, &self.after);
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| 10 Credentials, then 2000 foreign 64 KiB Secrets | before | after |"
        );
        let _ = writeln!(t, "|---|---|---|");
        let _ = writeln!(
            t,
            "| idle VmRSS | {:.1} MiB | {:.1} MiB |",
            mib(b.rss_kib),
            mib(a.rss_kib)
        );
        let _ = writeln!(
            t,
            "| idle RssAnon | {:.1} MiB | {:.1} MiB |",
            mib(b.anon_kib),
            mib(a.anon_kib)
        );
        let _ = writeln!(
            t,
            "| API requests / min, writes / min | {:.1}, {:.1} | {:.1}, {:.1} |",
            b.requests_per_min, b.writes_per_min, a.requests_per_min, a.writes_per_min
        );
        let _ = writeln!(t, "| load average | {} | {} |", b.load, a.load);
        let _ = writeln!(
            t,
            "| while the 2000 were created ({:.0} s): the instance's requests / its peak VmRSS | | {} / {:.1} MiB |",
            self.creating.as_secs_f64(),
            self.requests_during,
            mib(self.peak_during_kib)
        );
        let _ = writeln!(
            t,
            "| a restart among them: peak VmRSS / VmRSS, RssAnon 10 s later | | {:.1} MiB / {:.1} MiB, {:.1} MiB |",
            mib(self.restart_peak_kib),
            mib(self.restart_rss_kib),
            mib(self.restart_anon_kib)
        );
        t
    }
}

/// SIGTERM `op`; it must exit cleanly within 20 s.
fn terminate(op: &mut Operator) {
    op.process.signal("TERM");
    assert!(
        op.process
            .wait_exit(Duration::from_secs(20))
            .unwrap()
            .success()
    );
}

/// SIGTERM `op` (it must exit cleanly), start a new instance named `pod` in its namespace and
/// wait until it has reconciled `credentials` Credentials: the instance, and how long those
/// reconciles took from its taking the Lease.
async fn restart_until_reconciled(
    cluster: &Cluster,
    kubeconfig: &std::path::Path,
    mut op: Operator,
    pod: &str,
    credentials: u32,
) -> (Operator, Duration) {
    terminate(&mut op);
    let ns = op.options.namespace.clone();
    drop(op);
    let mut restarted = Operator::start(cluster, kubeconfig, &options(&ns, pod));
    restarted.wait_leader(Duration::from_secs(60));
    let cold = Instant::now();
    cluster::eventually(
        &format!("{credentials} Credentials reconciled after the restart"),
        Duration::from_secs(300),
        || async {
            let n = restarted
                .metric("bulkhead_reconcile_total{controller=\"credential\"}")
                .unwrap_or(0.0);
            (n >= f64::from(credentials)).then_some(())
        },
    )
    .await;
    (restarted, cold.elapsed())
}

async fn foreign_secrets(cluster: &Cluster, admin: &Client) -> Foreign {
    const COUNT: usize = 2000;
    const SIZE: usize = 64 * 1024;
    let ns = "foreign";
    let release = cluster.install_release(ns, &[]);
    let kubeconfig = cluster.service_account_kubeconfig(&release);
    let mut op = Operator::start(cluster, &kubeconfig, &options(ns, "foreign"));
    op.wait_leader(Duration::from_secs(60));
    create_many(admin, ns, (0..10).map(|i| format!("own-{i}")).collect(), 10).await;
    let before = idle_window(cluster, &[(&op, &release)]).await;
    eprintln!("bench: foreign Secrets: before done");

    let started = Instant::now();
    let offset = cluster.audit_len();
    let from = Timestamp::now();
    let secrets = Api::<Secret>::namespaced(admin.clone(), ns);
    futures::stream::iter(0..COUNT)
        .map(|i| {
            let secrets = secrets.clone();
            async move {
                // Different bytes in each (nothing along the way can share or compress them).
                let blob: Vec<u8> = (0..SIZE)
                    .map(|j| (j.wrapping_mul(31) ^ i.wrapping_mul(2_654_435_761)) as u8)
                    .collect();
                let secret = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(format!("foreign-{i:04}")),
                        ..Default::default()
                    },
                    data: Some([("blob".to_owned(), ByteString(blob))].into()),
                    ..Default::default()
                };
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .map(drop)
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    let creating = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let to = Timestamp::now();
    let requests_during = cluster
        .audit_after(offset)
        .by_user_between(&release.user(), from, to)
        .len();
    let peak_during_kib = op.process.status_kib("VmHWM");
    eprintln!(
        "bench: foreign Secrets: {COUNT} created in {:.1} s",
        creating.as_secs_f64()
    );
    let after = idle_window(cluster, &[(&op, &release)]).await;
    assert!(op.process.is_running(), "the instance survived");

    let (restarted, _) =
        restart_until_reconciled(cluster, &kubeconfig, op, "foreign-restart", 10).await;
    tokio::time::sleep(SETTLE).await;
    Foreign {
        before,
        after,
        requests_during,
        creating,
        peak_during_kib,
        restart_peak_kib: restarted.process.status_kib("VmHWM"),
        restart_rss_kib: restarted.process.rss_kib(),
        restart_anon_kib: restarted.process.status_kib("RssAnon"),
    }
}

/// Idle RSS of one instance under allocator and runtime knobs (environment only, same binary),
/// with 0 and 1000 Credentials: where the memory goes. `hack/bench.sh knobs` runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: hack/bench.sh knobs"]
async fn memory_knobs() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries.clone().without_controller_manager());
    cluster.install_crds();
    let admin = cluster.admin_client().await;
    let empty = cluster.install_release("empty", &[]);
    let full = cluster.install_release("full", &[]);
    // Created before any instance runs; the first one to lead writes the Secrets.
    create_all(
        &admin,
        "full",
        (0..1000).map(|i| format!("c{i:04}")).collect(),
    )
    .await;
    let variants: [(&str, &[(&str, &str)]); 4] = [
        ("defaults", &[]),
        ("TOKIO_WORKER_THREADS=1", &[("TOKIO_WORKER_THREADS", "1")]),
        ("MALLOC_ARENA_MAX=1", &[("MALLOC_ARENA_MAX", "1")]),
        (
            "both",
            &[("TOKIO_WORKER_THREADS", "1"), ("MALLOC_ARENA_MAX", "1")],
        ),
    ];
    let mut table = String::from(
        "| knobs | idle RSS, 0 Credentials | idle RSS, 1000 Credentials |\n|---|---|---|\n",
    );
    for (label, env) in variants {
        let mut rss = Vec::new();
        for release in [&empty, &full] {
            let kubeconfig = cluster.service_account_kubeconfig(release);
            let mut o = options(&release.namespace, "knobs");
            o.env = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let mut op = Operator::start(&cluster, &kubeconfig, &o);
            op.wait_leader(Duration::from_secs(60));
            let want = if release.namespace == "full" {
                1000.0
            } else {
                0.0
            };
            cluster::eventually(
                "every Credential reconciled",
                Duration::from_secs(300),
                || async {
                    let n = op
                        .metric("bulkhead_reconcile_total{controller=\"credential\"}")
                        .unwrap_or(0.0);
                    (n >= want).then_some(())
                },
            )
            .await;
            tokio::time::sleep(SETTLE).await;
            rss.push(op.process.rss_kib());
            terminate(&mut op);
        }
        let _ = writeln!(
            table,
            "| {label} | {:.1} MiB | {:.1} MiB |",
            mib(rss[0]),
            mib(rss[1])
        );
    }
    println!("\n{table}");
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: expected a whole number"))
        })
}

/// Wait until every instance of `batch` holds its Lease; panics with the log of one that
/// exited or did not lead in time.
fn wait_all_lead(batch: &mut [Operator], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut waiting: Vec<usize> = (0..batch.len()).collect();
    while !waiting.is_empty() {
        waiting.retain(|&i| !batch[i].is_leader());
        for &i in &waiting {
            let op = &mut batch[i];
            if let Some(status) = op.process.try_exit() {
                panic!(
                    "{} exited ({status}):\n{}",
                    op.process.name,
                    op.process.log_tail(40)
                );
            }
        }
        if let Some(&i) = waiting.first() {
            assert!(
                Instant::now() < deadline,
                "{} of the batch did not lead within {timeout:?}, e.g. {}:\n{}",
                waiting.len(),
                batch[i].process.name,
                batch[i].process.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// N instances in N namespaces on one API server (`hack/bench.sh fleet N`; N from
/// `BULKHEAD_BENCH_FLEET`, Credentials per namespace from `BULKHEAD_BENCH_FLEET_CREDENTIALS`,
/// default 5): each its own `helm template` rendering, ServiceAccount token and Lease, the
/// chart's defaults. Reports total and per-instance memory, idle CPU, API requests and Lease
/// writes per second in total (audit log), and create→Secret in one namespace while all idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: hack/bench.sh fleet N"]
async fn fleet() {
    /// Instances started at once: bounded so start-up (discovery, preflight, first lists and
    /// watches) does not swamp the API server.
    const BATCH: usize = 25;
    // Twice the per-instance window: several Lease renewals of every instance.
    let fleet_idle = idle_length() * 2;
    let n = env_number("BULKHEAD_BENCH_FLEET", 5).max(1);
    let per_ns = env_number("BULKHEAD_BENCH_FLEET_CREDENTIALS", 5);
    let begun = Instant::now();
    let progress = |what: &str| {
        eprintln!(
            "fleet: {:6.1} s  {what} (load {})",
            begun.elapsed().as_secs_f64(),
            load()
        );
    };
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries.clone().without_controller_manager());
    cluster.install_crds();
    let admin = cluster.admin_client().await;
    progress("control plane up, CRDs established");

    let namespaces: Vec<String> = (0..n).map(|i| format!("team-{i:03}")).collect();
    let releases = cluster.install_releases(&namespaces);
    progress(&format!("{n} namespaces and releases applied"));
    let kubeconfigs = cluster.service_account_kubeconfigs(&releases).await;
    progress(&format!("{n} ServiceAccount tokens"));

    let mut fleet: Vec<Operator> = Vec::with_capacity(n);
    let mut watchdogs = Vec::new();
    let starting = Instant::now();
    for (releases, kubeconfigs) in releases.chunks(BATCH).zip(kubeconfigs.chunks(BATCH)) {
        let first = fleet.len();
        for (release, kubeconfig) in releases.iter().zip(kubeconfigs) {
            fleet.push(Operator::start_unwatched(
                &cluster,
                kubeconfig,
                &options(&release.namespace, "fleet"),
            ));
        }
        let pids: Vec<u32> = fleet[first..].iter().map(|o| o.process.pid()).collect();
        watchdogs.push(GroupWatchdog::new(&pids));
        wait_all_lead(&mut fleet[first..], Duration::from_secs(180));
        progress(&format!("{} of {n} instances lead", fleet.len()));
    }
    let all_leading = starting.elapsed();

    if per_ns > 0 {
        let names: Vec<(String, String)> = namespaces
            .iter()
            .flat_map(|ns| (0..per_ns).map(move |i| (ns.clone(), format!("c{i}"))))
            .collect();
        futures::stream::iter(names)
            .map(|(ns, name)| {
                let api = Api::<Credential>::namespaced(admin.clone(), &ns);
                async move {
                    api.create(&PostParams::default(), &random_credential(&ns, &name))
                        .await
                        .map(drop)
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await
            .unwrap();
        let all_secrets = Api::<Secret>::all(admin.clone());
        let want = n * per_ns;
        wait_managed_secrets(&all_secrets, &format!("{want} managed Secrets"), want).await;
        progress(&format!(
            "{want} Credentials created and their Secrets written"
        ));
    }
    for op in &mut fleet {
        assert!(op.process.is_running(), "{} exited", op.process.name);
    }

    let ticks = cluster::clock_ticks_per_second() as f64;
    let apiserver_cpu = || cluster.apiserver_process().map_or(0, |p| p.cpu_ticks());
    let etcd_cpu = || cluster.etcd_process().map_or(0, |p| p.cpu_ticks());
    let (api_before, etcd_before) = (apiserver_cpu(), etcd_cpu());
    let refs: Vec<(&Operator, &Release)> = fleet.iter().zip(&releases).collect();
    let idle = idle_window_of(&cluster, &refs, fleet_idle).await;
    // The control plane's CPU over the settle time and the window.
    let control_plane_seconds = SETTLE.as_secs_f64() + idle.seconds;
    let api_cpu = (apiserver_cpu() - api_before) as f64 / ticks;
    let etcd_cpu_s = (etcd_cpu() - etcd_before) as f64 / ticks;
    let apiserver_rss = cluster.apiserver_process().map_or(0, |p| p.rss_kib());
    let etcd_rss = cluster.etcd_process().map_or(0, |p| p.rss_kib());
    let pss: u64 = fleet.iter().map(|o| o.process.rollup_kib("Pss")).sum();
    let per: Vec<u64> = fleet.iter().map(|o| o.process.rss_kib()).collect();
    let (min, max) = (
        per.iter().copied().min().unwrap_or(0),
        per.iter().copied().max().unwrap_or(0),
    );
    progress("idle window done");

    let lat_load = load();
    let lat = latencies(&admin, &namespaces[0], 200).await.sorted;
    let lat_load = format!("{lat_load}→{}", load());
    progress(&format!("create→Secret in {} done", namespaces[0]));
    for op in &mut fleet {
        assert!(op.process.is_running(), "{} exited", op.process.name);
    }

    let nf = n as f64;
    let mut t = String::new();
    let _ = writeln!(t, "Machine: {}\n", machine(&binaries));
    let _ = writeln!(
        t,
        "| {n} instances in {n} namespaces, {per_ns} Credentials each | total | per instance |"
    );
    let _ = writeln!(t, "|---|---|---|");
    let _ = writeln!(
        t,
        "| idle VmRSS | {:.1} MiB | {:.1} MiB (min {:.1}, max {:.1}) |",
        mib(idle.rss_kib),
        mib(idle.rss_kib) / nf,
        mib(min),
        mib(max)
    );
    let _ = writeln!(
        t,
        "| idle RssAnon (private) | {:.1} MiB | {:.2} MiB |",
        mib(idle.anon_kib),
        mib(idle.anon_kib) / nf
    );
    let _ = writeln!(
        t,
        "| idle Pss (the binary's pages, shared on one machine, counted once in total) | {:.1} MiB | {:.2} MiB |",
        mib(pss),
        mib(pss) / nf
    );
    let _ = writeln!(
        t,
        "| CPU over {:.0} s idle | {:.2} s | {:.1} ms |",
        idle.seconds,
        idle.cpu_seconds,
        idle.cpu_seconds * 1000.0 / nf
    );
    let _ = writeln!(
        t,
        "| API requests | {:.2} / s | {:.1} / min |",
        idle.requests_per_min / 60.0,
        idle.requests_per_min / nf
    );
    let _ = writeln!(
        t,
        "| Lease writes | {:.2} / s | {:.1} / min |",
        idle.lease_writes_per_min / 60.0,
        idle.lease_writes_per_min / nf
    );
    let _ = writeln!(
        t,
        "| other writes in the window | {} | |",
        idle.other_writes.len()
    );
    let _ = writeln!(
        t,
        "| load average (start→end of the idle window) | {} | |",
        idle.load
    );
    let _ = writeln!(
        t,
        "| create→Secret in {}, 200 one by one while all idle: p50 / p99 (load {lat_load}) | {} / {} | |",
        namespaces[0],
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99))
    );
    let _ = writeln!(
        t,
        "| kube-apiserver: VmRSS / CPU over the last {control_plane_seconds:.0} s | {:.0} MiB / {:.1} s | |",
        mib(apiserver_rss),
        api_cpu
    );
    let _ = writeln!(
        t,
        "| etcd: VmRSS / CPU over the last {control_plane_seconds:.0} s | {:.0} MiB / {:.1} s | |",
        mib(etcd_rss),
        etcd_cpu_s
    );
    let _ = writeln!(
        t,
        "| start-up: all {n} leading (batches of {BATCH}) after | {:.1} s | |",
        all_leading.as_secs_f64()
    );
    println!("\n{t}");
    if !idle.other_writes.is_empty() {
        println!(
            "writes besides the Lease while the fleet idled: {:#?}",
            idle.other_writes
        );
    }
    progress("done");
}

/// Idle memory of several builds of `bulkhead` (the release profile, `hack/bench.sh
/// profiles`): `BULKHEAD_BENCH_BINARIES` lists `label=path` entries separated by `;`, each
/// optionally followed by ` NAME=VALUE` environment settings (e.g. `TOKIO_WORKER_THREADS=1`).
/// Each is started in turn in a namespace with 0 Credentials, `BULKHEAD_BENCH_ROUNDS` times
/// (default 3, interleaved so a change in the machine's load hits all alike), sampled 30 s
/// after it leads; the median of VmRSS and of RssAnon are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: hack/bench.sh profiles"]
async fn idle_memory_of_builds() {
    const SAMPLE_AFTER: Duration = Duration::from_secs(30);
    let spec = std::env::var("BULKHEAD_BENCH_BINARIES")
        .expect("BULKHEAD_BENCH_BINARIES: label=path[ NAME=VALUE...];... (see hack/bench.sh)");
    let rounds = env_number("BULKHEAD_BENCH_ROUNDS", 3).max(1);
    type Build = (String, std::path::PathBuf, Vec<(String, String)>);
    let variants: Vec<Build> = spec
        .split(';')
        .filter(|e| !e.trim().is_empty())
        .map(|entry| {
            let mut words = entry.split_whitespace();
            let (label, path) = words
                .next()
                .and_then(|w| w.split_once('='))
                .unwrap_or_else(|| panic!("{entry:?}: expected label=path"));
            let env = words
                .map(|w| {
                    let (k, v) = w
                        .split_once('=')
                        .unwrap_or_else(|| panic!("{w:?}: expected NAME=VALUE"));
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            (label.to_owned(), path.into(), env)
        })
        .collect();
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries.clone().without_controller_manager());
    cluster.install_crds();
    let release = cluster.install_release("idle", &[]);
    let kubeconfig = cluster.service_account_kubeconfig(&release);
    // Per variant: (VmRSS, RssAnon, RssFile, threads, the binary's own pages, shared
    // libraries' pages) samples.
    type Sample = (u64, u64, u64, u64, u64, u64);
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    let mut loads = Vec::new();
    for round in 0..rounds {
        for (i, (label, path, env)) in variants.iter().enumerate() {
            let mut o = options("idle", &format!("build-{i}-{round}"));
            o.binary = Some(path.clone());
            o.env = env.clone();
            let mut op = Operator::start(&cluster, &kubeconfig, &o);
            op.wait_leader(Duration::from_secs(60));
            tokio::time::sleep(SAMPLE_AFTER).await;
            let p = &op.process;
            let (binary_kib, libraries_kib) = file_rss_kib(p.pid());
            samples[i].push((
                p.rss_kib(),
                p.status_kib("RssAnon"),
                p.status_kib("RssFile"),
                p.status_kib("Threads"),
                binary_kib,
                libraries_kib,
            ));
            loads.push(load());
            eprintln!("bench: round {round} {label}: {:?}", samples[i].last());
            op.process.signal("TERM");
            assert!(
                op.process
                    .wait_exit(Duration::from_secs(20))
                    .unwrap()
                    .success(),
                "{label} stops cleanly on SIGTERM"
            );
        }
    }
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let mut t = String::new();
    let _ = writeln!(t, "Machine: {}\n", machine(&binaries));
    let _ = writeln!(
        t,
        "Idle, 0 Credentials, sampled {} s after leading; median of {rounds}; load averages {}\n",
        SAMPLE_AFTER.as_secs(),
        loads.join(" ")
    );
    let _ = writeln!(
        t,
        "| build | file size | VmRSS | RssAnon | RssFile: the binary + shared libraries | threads |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|");
    for ((label, path, env), s) in variants.iter().zip(&samples) {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            t,
            "| {label}{} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB: {:.1} + {:.1} MiB | {} |",
            if env.is_empty() {
                String::new()
            } else {
                format!(" ({})", env.join(" "))
            },
            size as f64 / 1024.0 / 1024.0,
            mib(median(s.iter().map(|x| x.0).collect())),
            mib(median(s.iter().map(|x| x.1).collect())),
            mib(median(s.iter().map(|x| x.2).collect())),
            mib(median(s.iter().map(|x| x.4).collect())),
            mib(median(s.iter().map(|x| x.5).collect())),
            median(s.iter().map(|x| x.3).collect()),
        );
    }
    println!("\n{t}");
}

/// Resident KiB of a process's file mappings from /proc/<pid>/smaps: (the executable's own
/// pages, shared libraries' pages). What a smaller binary can save is in the first.
fn file_rss_kib(pid: u32) -> (u64, u64) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut binary, mut libraries) = (0, 0);
    let mut current: Option<bool> = None; // Some(true): the binary, Some(false): a library
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'))
        {
            let path = fields.get(5).copied().unwrap_or_default();
            current = if std::path::Path::new(path) == exe {
                Some(true)
            } else if path.contains(".so") {
                Some(false)
            } else {
                None
            };
        } else if fields.first() == Some(&"Rss:") {
            let kib: u64 = fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
            match current {
                Some(true) => binary += kib,
                Some(false) => libraries += kib,
                None => {}
            }
        }
    }
    (binary, libraries)
}
