//! The per-instance cost benchmark (SPEC §8), on the e2e harness: a real kube-apiserver + etcd,
//! the chart applied into team namespaces, the operator as a local process with its
//! ServiceAccount's token and the chart's defaults (30 s Lease, 10 min drift re-check).
//!
//! Measured per instance: start-up to ready, idle RSS and CPU with 0/100/1000 Credentials,
//! API requests per minute at steady state (from the audit log, by the ServiceAccount), Lease
//! writes per minute, create→Secret latency over 200 Credentials; then 20 instances in 20
//! namespaces at once. Prints a markdown table. Ignored by default; run `hack/bench.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/cluster.rs"]
mod cluster;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead::api::Credential;
use cluster::{Binaries, Cluster, Operator, OperatorOptions, Release, random_credential};
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

const MANAGED: &str = "app.kubernetes.io/managed-by=bulkhead";
/// How long each idle window lasts.
const IDLE: Duration = Duration::from_secs(60);
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

/// One idle window of one or more instances.
struct Idle {
    rss_kib: u64,
    /// Private (anonymous) memory; the rest of RSS is the mapped binary and libraries.
    anon_kib: u64,
    cpu_seconds: f64,
    requests_per_min: f64,
    lease_writes_per_min: f64,
    other_writes: Vec<String>,
}

async fn idle_window(cluster: &Cluster, instances: &[(&Operator, &Release)]) -> Idle {
    tokio::time::sleep(SETTLE).await;
    let ticks = cluster::clock_ticks_per_second() as f64;
    let cpu_before: u64 = instances.iter().map(|(o, _)| o.process.cpu_ticks()).sum();
    let from = Timestamp::now();
    tokio::time::sleep(IDLE).await;
    let to = Timestamp::now();
    let cpu_after: u64 = instances.iter().map(|(o, _)| o.process.cpu_ticks()).sum();
    let rss_kib = instances.iter().map(|(o, _)| o.process.rss_kib()).sum();
    let anon_kib = instances
        .iter()
        .map(|(o, _)| o.process.status_kib("RssAnon"))
        .sum();
    // The audit log is written when a request completes; give the last ones a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let audit = cluster.audit();
    let minutes = IDLE.as_secs_f64() / 60.0;
    let mut requests = 0usize;
    let mut lease_writes = 0usize;
    let mut other_writes = Vec::new();
    for (_, release) in instances {
        let user = release.user();
        let events = audit.by_user_between(&user, from, to);
        requests += events.len();
        lease_writes += events
            .iter()
            .filter(|e| e.resource() == "leases" && e.is_write())
            .count();
        other_writes.extend(
            events
                .iter()
                .filter(|e| e.resource() != "leases" && e.is_write())
                .map(|e| e.describe()),
        );
    }
    Idle {
        rss_kib,
        anon_kib,
        cpu_seconds: (cpu_after - cpu_before) as f64 / ticks,
        requests_per_min: requests as f64 / minutes,
        lease_writes_per_min: lease_writes as f64 / minutes,
        other_writes,
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
    cluster::eventually(
        &format!("{total_expected} Secrets in {ns}"),
        Duration::from_secs(600),
        || async {
            let n = secrets
                .list_metadata(&ListParams::default().labels(MANAGED))
                .await
                .ok()?
                .items
                .len();
            (n >= total_expected).then_some(())
        },
    )
    .await;
}

/// Sequential create→Secret latencies: each Credential is created once the previous one's
/// Secret was seen by a watch (the admin's), so each is measured on an otherwise idle instance.
async fn latencies(client: &Client, ns: &str, count: usize) -> Vec<Duration> {
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    let recorder = seen.clone();
    let watch = tokio::spawn(async move {
        watcher(secrets, watcher::Config::default().labels(MANAGED))
            .for_each(|event| {
                if let Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) = event {
                    recorder
                        .lock()
                        .unwrap()
                        .entry(s.name_any())
                        .or_insert_with(Instant::now);
                }
                futures::future::ready(())
            })
            .await;
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api = Api::<Credential>::namespaced(client.clone(), ns);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("latency-{i:03}");
        let started = Instant::now();
        api.create(&PostParams::default(), &random_credential(ns, &name))
            .await
            .unwrap();
        let seen_at =
            cluster::eventually(&format!("Secret {name}"), Duration::from_secs(30), || {
                let seen = seen.clone();
                let name = name.clone();
                async move { seen.lock().unwrap().get(&name).copied() }
            })
            .await;
        out.push(seen_at - started);
    }
    watch.abort();
    out.sort();
    out
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn machine() -> String {
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
    let version = |var: &str| {
        let binary = std::env::var(var).unwrap_or_default();
        let out = cluster::run_ok(Command::new(binary).arg("--version"));
        out.lines().next().unwrap_or_default().trim().to_owned()
    };
    format!(
        "{} · {nproc} CPUs ({model}) · {} · {} · operator built with `--release`",
        Timestamp::now().strftime("%Y-%m-%d"),
        version(cluster::ENV_APISERVER),
        version(cluster::ENV_ETCD).replace("Version: ", "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark (several minutes): run hack/bench.sh"]
async fn per_instance_cost() {
    let binaries = Binaries::from_env();
    // No controller manager: nothing here needs garbage collection, and the machine stays quiet.
    let cluster = Cluster::start(binaries.without_controller_manager());
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
            op.process.signal("TERM");
            assert!(
                op.process
                    .wait_exit(Duration::from_secs(20))
                    .unwrap()
                    .success()
            );
        } else {
            operator = Some(op);
        }
    }
    let mut op = operator.unwrap();
    startups.sort();
    let startup = startups[startups.len() / 2];
    eprintln!("bench: start-up to ready {startups:?}");

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
    let lat = latencies(&admin, ns, 200).await;
    eprintln!("bench: latencies done");
    create_many(
        &admin,
        ns,
        (100..800).map(|i| format!("bulk-{i:04}")).collect(),
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
    op.process.signal("TERM");
    assert!(
        op.process
            .wait_exit(Duration::from_secs(20))
            .unwrap()
            .success()
    );
    drop(op);
    let mut restarted = Operator::start(&cluster, &kubeconfig, &options(ns, "bench-restart"));
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
    let cold_reconcile = cold.elapsed();
    tokio::time::sleep(SETTLE).await;
    let restart_peak = restarted.process.status_kib("VmHWM");
    let restart_rss = restarted.process.rss_kib();
    drop(restarted);

    // 20 instances in 20 namespaces, 5 Credentials each.
    let mut fleet = Vec::new();
    for i in 0..20 {
        let ns = format!("team-{i:02}");
        let release = cluster.install_release(&ns, &[]);
        let kubeconfig = cluster.service_account_kubeconfig(&release);
        let op = Operator::start(&cluster, &kubeconfig, &options(&ns, "fleet"));
        fleet.push((op, release));
    }
    for (op, release) in &mut fleet {
        op.wait_leader(Duration::from_secs(120));
        create_many(
            &admin,
            &release.namespace,
            (0..5).map(|i| format!("c{i}")).collect(),
            5,
        )
        .await;
    }
    let refs: Vec<(&Operator, &Release)> = fleet.iter().map(|(o, r)| (o, r)).collect();
    let twenty = idle_window(&cluster, &refs).await;

    let mut table = String::new();
    let _ = writeln!(table, "Machine: {}\n", machine());
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
    table.push_str(&row("idle RSS (of which private)", &|w| {
        format!("{:.1} MiB ({:.1})", mib(w.rss_kib), mib(w.anon_kib))
    }));
    table.push_str(&row("CPU over 60 s idle", &|w| {
        format!("{:.2} s", w.cpu_seconds)
    }));
    table.push_str(&row("API requests / min (steady state)", &|w| {
        format!("{:.1}", w.requests_per_min)
    }));
    table.push_str(&row("Lease writes / min", &|w| {
        format!("{:.1}", w.lease_writes_per_min)
    }));
    table.push_str(&row("other writes in 60 s", &|w| {
        w.other_writes.len().to_string()
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
        "| create→Secret, 200 Credentials one by one: p50 / p95 / p99 | {} / {} / {} |",
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.95)),
        ms(percentile(&lat, 0.99))
    );
    let _ = writeln!(
        table,
        "| peak RSS while 1000 Credentials were created one by one or 16 at a time | {:.1} MiB |",
        mib(steady_peak)
    );
    let _ = writeln!(
        table,
        "| restart with 1000 Credentials: all reconciled in / peak RSS / RSS 10 s later | {:.1} s / {:.1} MiB / {:.1} MiB |",
        cold_reconcile.as_secs_f64(),
        mib(restart_peak),
        mib(restart_rss)
    );
    let _ = writeln!(
        table,
        "| 20 instances in 20 namespaces (5 Credentials each): total idle RSS | {:.1} MiB ({:.1} MiB each) |",
        mib(twenty.rss_kib),
        mib(twenty.rss_kib) / 20.0
    );
    let _ = writeln!(
        table,
        "| 20 instances: total CPU over 60 s idle | {:.2} s |",
        twenty.cpu_seconds
    );
    let _ = writeln!(
        table,
        "| 20 instances: API requests / min, of which Lease writes | {:.1}, {:.1} |",
        twenty.requests_per_min, twenty.lease_writes_per_min
    );
    println!("\n{table}");
    for (n, w) in &idle {
        if !w.other_writes.is_empty() {
            println!(
                "writes besides the Lease while idle with {n} Credentials: {:#?}",
                w.other_writes
            );
        }
    }
    if !twenty.other_writes.is_empty() {
        println!(
            "writes besides the Lease while 20 instances idled: {:#?}",
            twenty.other_writes
        );
    }
}

/// Idle RSS of one instance under allocator and runtime knobs (environment only, same binary),
/// with 0 and 1000 Credentials: where the memory goes. `hack/bench.sh knobs` runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: hack/bench.sh knobs"]
async fn memory_knobs() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries.without_controller_manager());
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
            op.process.signal("TERM");
            assert!(
                op.process
                    .wait_exit(Duration::from_secs(20))
                    .unwrap()
                    .success()
            );
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
