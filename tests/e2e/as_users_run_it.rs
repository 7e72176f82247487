//! The path users take: the operator as a pod from its image (`hack/image.sh`), installed with
//! `helm install` into a namespace that enforces Pod Security `restricted`, on a real node
//! (`hack/node.sh`: containerd, kubelet, kube-proxy), beside workloads that read its Secrets.
//!
//! The module's name sorts it first, so that libtest starts it first: it gives up its
//! control-plane turn for its long token wait (`Cluster::let_others_run`), and the rest of the
//! suite runs meanwhile.
//!
//! Needs `cfg(bulkhead_node)` (hack/test.sh sets `BULKHEAD_E2E_NODE=1` when `hack/node.sh
//! check` passes); without it these tests are ignored with the reason, never passed.

use super::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{EvictParams, LogParams};
use sha2::{Digest, Sha256};

const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/name=bulkhead,app.kubernetes.io/instance=bulkhead";
/// Lease timings for these scenarios: a hand-over is measured against the duration.
const LEASE_DURATION_S: u64 = 10;

/// A measured figure, on the test's stderr even when the test passes (libtest captures
/// `eprintln!`, not the stderr handle): CI's log and README Performance show it.
fn measure(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "e2e-measure: {line}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn data_bytes(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret.data.as_ref()?.get(key).map(|v| v.0.clone())
}

/// A Deployment of the test workload image that reads Secret `secret` as the env var VALUE and
/// as the file /secret/value, and prints `env=<sha256> file=<sha256>` every second (hashes:
/// values never reach a log). Ready 2 s after start; on SIGTERM it keeps running 4 s more, so
/// an old pod is still running while the new ones serve. Fit for `restricted`.
fn consumer(ns: &str, name: &str, secret: &str, replicas: i32) -> Deployment {
    let script = "trap 'sleep 4; exit 0' TERM; sleep 2; touch /tmp/ready; \
                  while true; do \
                  echo \"env=$(printf %s \"$VALUE\" | sha256sum | cut -c1-64) file=$(sha256sum < /secret/value | cut -c1-64)\"; \
                  sleep 1; done";
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"}
                    },
                    "containers": [{
                        "name": "app",
                        "image": cluster::WORKLOAD_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c", script],
                        "env": [{"name": "VALUE", "valueFrom": {"secretKeyRef": {"name": secret, "key": "value"}}}],
                        "volumeMounts": [
                            {"name": "secret", "mountPath": "/secret", "readOnly": true},
                            {"name": "tmp", "mountPath": "/tmp"}
                        ],
                        "readinessProbe": {"exec": {"command": ["/bin/sh", "-c", "test -f /tmp/ready"]}, "periodSeconds": 1},
                        "securityContext": {
                            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}
                        }
                    }],
                    "volumes": [
                        {"name": "secret", "secret": {"secretName": secret}},
                        {"name": "tmp", "emptyDir": {}}
                    ]
                }
            }
        }
    }))
    .unwrap()
}

async fn pods(client: &Client, ns: &str, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn template_hash(pod: &Pod) -> String {
    pod.labels()
        .get("pod-template-hash")
        .cloned()
        .unwrap_or_default()
}

/// The last `env=… file=…` line a consumer pod printed: (env hash, file hash).
async fn reported(client: &Client, ns: &str, pod: &str) -> Option<(String, String)> {
    let logs = Api::<Pod>::namespaced(client.clone(), ns)
        .logs(
            pod,
            &LogParams {
                tail_lines: Some(1),
                ..LogParams::default()
            },
        )
        .await
        .ok()?;
    let line = logs.lines().last()?;
    let env = line.strip_prefix("env=")?.split(' ').next()?.to_owned();
    let file = line.split(" file=").nth(1)?.trim().to_owned();
    Some((env, file))
}

/// Wait until Deployment `name` is rolled out (observed, updated = ready = available =
/// replicas, no old pod left) and every pod reports `value`'s hash in env and file.
async fn wait_consumers_hold(client: &Client, ns: &str, name: &str, value: &str) {
    eventually(
        &format!("Deployment {name} rolled out with every pod holding the current value"),
        Duration::from_secs(120),
        || async {
            let d = Api::<Deployment>::namespaced(client.clone(), ns)
                .get(name)
                .await
                .ok()?;
            let want = d.spec.replicas.unwrap_or(1);
            let s = d.status.as_ref()?;
            let done = s.observed_generation >= d.metadata.generation
                && s.updated_replicas == Some(want)
                && s.ready_replicas == Some(want)
                && s.available_replicas == Some(want)
                && s.replicas == Some(want);
            if !done {
                return None;
            }
            let list = pods(client, ns, &format!("app={name}")).await;
            if list.len() != usize::try_from(want).ok()? {
                return None;
            }
            for pod in &list {
                let (env, file) = reported(client, ns, &pod.name_any()).await?;
                if env != value || file != value {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// Wait until Secret `name` records the rotation request `stamp` as handled; returns it.
async fn wait_handled(client: &Client, ns: &str, name: &str, stamp: &str) -> Secret {
    eventually(
        &format!("rotation request {stamp} handled in Secret {name}"),
        WAIT,
        || async {
            let s = secret(client, ns, name).await?;
            (annotation(&s, "bulkhead.dev/rotate-request-handled").as_deref() == Some(stamp))
                .then_some(s)
        },
    )
    .await
}

async fn generation(client: &Client, ns: &str, name: &str) -> i64 {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap_or_default()
}

/// The operator pods of the release.
async fn operator_pods(client: &Client, ns: &str) -> Vec<Pod> {
    pods(client, ns, OPERATOR_SELECTOR).await
}

/// The host PIDs of the `bulkhead` processes in pod `pod`'s containers on the node (found by
/// the pod's UID in their cgroup path).
fn operator_pids(pod: &Pod) -> Vec<u32> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let out = cluster::run(Command::new("pgrep").args(["-f", "^/usr/local/bin/bulkhead run"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|cg| cg.contains(&format!("pod{uid}")))
        })
        .collect()
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The kubelet's view of a container's memory (the Summary API through the API server):
/// `(workingSetBytes, rssBytes)`.
fn kubelet_memory(cluster: &Cluster, pod: &str, container: &str) -> Option<(u64, u64)> {
    let raw = cluster.kubectl_ok(&[
        "get",
        "--raw",
        &format!("/api/v1/nodes/{}/proxy/stats/summary", cluster::NODE_NAME),
    ]);
    let summary: serde_json::Value = serde_json::from_str(&raw).ok()?;
    summary["pods"].as_array()?.iter().find_map(|p| {
        (p["podRef"]["name"] == pod).then_some(())?;
        p["containers"].as_array()?.iter().find_map(|c| {
            (c["name"] == container).then_some(())?;
            Some((
                c["memory"]["workingSetBytes"].as_u64()?,
                c["memory"]["rssBytes"].as_u64()?,
            ))
        })
    })
}

/// Writes to Secrets by `user` in the audit log after byte `offset`.
fn secret_writes_since(cluster: &Cluster, offset: u64, user: &str) -> Vec<String> {
    cluster
        .audit_after(offset)
        .by_user(user)
        .filter(|e| e.resource() == "secrets" && e.is_write())
        .map(|e| e.describe())
        .collect()
}

/// `helm install` into a `restricted` namespace; the pod is admitted, Ready through its probes,
/// logs JSON, serves /metrics through the chart's Service; a consumer Deployment rolls on
/// rotation and an old pod still running holds the previous value, which the Secret keeps; the
/// container killed on the node comes back with no rotation; `helm upgrade` (two replicas, a
/// second restart target) loses and repeats no rotation; deleting the leader pod hands the
/// Lease over within its duration; `helm uninstall` leaves the `Retain` Secret and the CRDs and
/// nothing of the release; tearing the node down leaves nothing on the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (hack/test.sh uses ../shared/envtest)"
)]
#[cfg_attr(
    all(bulkhead_e2e, not(bulkhead_node)),
    ignore = "needs a real node: hack/node.sh check says why (hack/test.sh sets BULKHEAD_E2E_NODE=1 when it can start one)"
)]
async fn the_chart_runs_the_operator_as_a_pod_beside_workloads_that_roll_on_rotation() {
    let ns = "team-a";
    let cluster = Cluster::start_with_node(Binaries::from_env());
    measure(&format!(
        "node start (containerd, kubelet Ready, scheduler, kube-proxy): {:.1} s",
        cluster.node().started_in.as_secs_f64()
    ));
    cluster.install_crds();
    cluster.create_restricted_namespace(ns);
    let admin = cluster.admin_client().await;

    // team-b: a release whose pod's API token lives 600 s, the shortest Kubernetes allows; the
    // kubelet refreshes it at about 480 s. Checked at the end, after everything else.
    let ns_b = "team-b";
    cluster.create_restricted_namespace(ns_b);
    let (release_b, _) = cluster.helm_install(ns_b, &["serviceAccount.tokenExpirationSeconds=600"]);
    let token_b_issued = Instant::now();
    create(&admin, ns_b, &credential(ns_b, "db").random(16).build()).await;
    wait_value(&admin, ns_b, "db", WAIT).await;

    // Pod Security is really enforced here: a pod without the restricted settings is refused.
    let refused = Api::<Pod>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unrestricted"},
                "spec": {"containers": [{"name": "c", "image": cluster::WORKLOAD_IMAGE}]}
            }))
            .unwrap(),
        )
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains("PodSecurity")),
        "namespace {ns} must refuse a pod that is not restricted: {refused:?}"
    );

    // ---- helm install: admitted, Ready through the probes ----------------------------------
    let lease = format!("leaderElection.leaseDuration={LEASE_DURATION_S}s");
    let first_values = [
        lease.as_str(),
        "leaderElection.renewGrace=4s",
        "rbac.restartTargets[0].kind=Deployment",
        "rbac.restartTargets[0].name=consumer",
    ];
    let (release, install_took) = cluster.helm_install(ns, &first_values);
    let user = release.user();
    let operator = operator_pods(&admin, ns).await;
    assert_eq!(operator.len(), 1, "one operator pod");
    let pod = &operator[0];
    assert!(is_ready(pod), "helm --wait returned with the pod Ready");
    let readiness = pod.spec.as_ref().unwrap().containers[0]
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .map(|h| h.path.clone().unwrap_or_default());
    assert_eq!(
        readiness.as_deref(),
        Some("/readyz"),
        "Ready through /readyz"
    );
    let created = pod.metadata.creation_timestamp.clone().unwrap().0;
    let ready_at = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.clone())
        .unwrap()
        .0;
    measure(&format!(
        "helm install --wait: {:.1} s; pod created -> Ready: {} s (whole seconds, from the pod's own timestamps)",
        install_took.as_secs_f64(),
        ready_at.duration_since(created).as_secs_f64()
    ));

    // JSON logs, readable with kubectl logs.
    let logs = cluster.kubectl_ok(&["logs", "-n", ns, &pod.name_any()]);
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().all(|l| l["level"].is_string()
            && l["message"].is_string()
            && l["timestamp"].is_string()),
        "every log line has timestamp, level, message: {logs}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "acquired the Lease; reconciling"),
        "the pod leads: {logs}"
    );
    // In-cluster configuration: the kubernetes Service.
    assert!(logs.contains("(in-cluster)"), "in-cluster config: {logs}");

    // /metrics through the chart's Service (the API server's service proxy picks its endpoint).
    let metrics = cluster.kubectl_ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/services/http:bulkhead-metrics:metrics/proxy/metrics"),
    ]);
    assert!(
        metrics.lines().any(|l| l == "bulkhead_leader 1"),
        "{metrics}"
    );

    // Memory: the kubelet's cgroup view beside the process's own.
    let pids = operator_pids(pod);
    assert_eq!(pids.len(), 1, "one bulkhead process on the node: {pids:?}");
    // The kubelet's first stats of a new container may take a housekeeping round.
    let (working_set, cgroup_rss) = eventually(
        "the kubelet's stats of the operator container",
        Duration::from_secs(60),
        || async { kubelet_memory(&cluster, &pod.name_any(), "operator") },
    )
    .await;
    measure(&format!(
        "operator pod memory: cgroup working set {:.1} MiB (cgroup rss {:.1} MiB); process VmRSS {:.1} MiB, RssAnon {:.1} MiB",
        working_set as f64 / 1048576.0,
        cgroup_rss as f64 / 1048576.0,
        status_kib(pids[0], "VmRSS").unwrap_or_default() as f64 / 1024.0,
        status_kib(pids[0], "RssAnon").unwrap_or_default() as f64 / 1024.0,
    ));

    // ---- a consumer rolls on rotation; an old pod still running holds a valid value ----------
    let db = credential(ns, "db")
        .random(32)
        .every("720h")
        .keep_previous(true)
        .restart(RestartKind::Deployment, "consumer")
        .build();
    create(&admin, ns, &db).await;
    create(
        &admin,
        ns,
        &credential(ns, "kept").random(16).retain().build(),
    )
    .await;
    let first = wait_value(&admin, ns, "db", WAIT).await;
    let first_value = sha256_hex(&data_bytes(&first, "value").unwrap());
    create(&admin, ns, &consumer(ns, "consumer", "db", 2)).await;
    wait_consumers_hold(&admin, ns, "consumer", &first_value).await;
    let old_hash = pods(&admin, ns, "app=consumer").await[0].clone();
    let old_hash = template_hash(&old_hash);

    let rotation_started = Instant::now();
    request_rotation(&admin, ns, "db", "rotation-1").await;
    let rotated = wait_handled(&admin, ns, "db", "rotation-1").await;
    let secret_updated = rotation_started.elapsed();
    let new_value = sha256_hex(&data_bytes(&rotated, "value").unwrap());
    let previous =
        data_bytes(&rotated, "value.previous").expect("keepPrevious keeps the old value");
    assert_eq!(
        sha256_hex(&previous),
        first_value,
        "value.previous is the value the old pods hold"
    );
    assert_ne!(new_value, first_value);
    // While the rollout runs: new pods hold the new value, and some old pod, still running,
    // holds the previous one, which the Secret still carries.
    let overlap = eventually(
        "an old consumer pod still running beside a Ready new one",
        Duration::from_secs(120),
        || async {
            let list = pods(&admin, ns, "app=consumer").await;
            let (old, new): (Vec<&Pod>, Vec<&Pod>) =
                list.iter().partition(|p| template_hash(p) == old_hash);
            let new_ready = new.iter().find(|p| is_ready(p))?;
            let old_running = old.iter().find(|p| is_running(p))?;
            let (new_env, new_file) = reported(&admin, ns, &new_ready.name_any()).await?;
            let (old_env, _) = reported(&admin, ns, &old_running.name_any()).await?;
            Some((new_env, new_file, old_env))
        },
    )
    .await;
    assert_eq!(
        (overlap.0.as_str(), overlap.1.as_str()),
        (new_value.as_str(), new_value.as_str()),
        "a new pod holds the new value in env and file"
    );
    assert_eq!(
        overlap.2, first_value,
        "an old pod still running holds the previous value (value.previous)"
    );
    wait_consumers_hold(&admin, ns, "consumer", &new_value).await;
    measure(&format!(
        "rotation with restartOnRotation -> Secret updated {:.2} s, 2-replica consumer rolled out with the new value {:.1} s",
        secret_updated.as_secs_f64(),
        rotation_started.elapsed().as_secs_f64()
    ));

    // ---- the operator's container killed on the node: restarted, no rotation ----------------
    let before = secret(&admin, ns, "db").await.unwrap();
    let offset = cluster.audit_len();
    let killed = cluster::run(Command::new("kill").args(["-KILL", &pids[0].to_string()]));
    assert!(killed.status.success());
    let pod_name = pod.name_any();
    eventually(
        "the kubelet restarts the killed container",
        Duration::from_secs(60),
        || async {
            let p = Api::<Pod>::namespaced(admin.clone(), ns)
                .get(&pod_name)
                .await
                .ok()?;
            let restarts = p.status.as_ref()?.container_statuses.as_ref()?[0].restart_count;
            (restarts == 1 && is_ready(&p)).then_some(())
        },
    )
    .await;
    cluster.wait_reconciled(&admin, &user, ns, "db", "db").await;
    let after = secret(&admin, ns, "db").await.unwrap();
    for key in [ROTATED_AT, "bulkhead.dev/key-id"] {
        assert_eq!(
            annotation(&before, key),
            annotation(&after, key),
            "{key} unchanged"
        );
    }
    let writes = secret_writes_since(&cluster, offset, &user);
    assert!(
        writes.is_empty(),
        "a restarted container rotates nothing: {writes:#?}"
    );

    // ---- helm upgrade: two replicas, a second restart target --------------------------------
    create(&admin, ns, &consumer(ns, "consumer-b", "db", 1)).await;
    wait_consumers_hold(&admin, ns, "consumer-b", &new_value).await;
    let upgraded_values = [
        lease.as_str(),
        "leaderElection.renewGrace=4s",
        "replicas=2",
        "rbac.restartTargets[0].kind=Deployment",
        "rbac.restartTargets[0].name=consumer",
        "rbac.restartTargets[1].kind=Deployment",
        "rbac.restartTargets[1].name=consumer-b",
    ];
    let generation_a = generation(&admin, ns, "consumer").await;
    // A rotation requested while the upgrade replaces the operator's pods is done exactly once.
    let mut upgrade = cluster.helm_chart("upgrade", ns, &upgraded_values);
    let upgrade = std::thread::spawn(move || cluster::run_ok(&mut upgrade));
    // Requested once the upgrade is retiring the pod that leads (deletionTimestamp set, or
    // gone): the old pod is draining or the new one taking over.
    let retiring = pod.name_any();
    eventually(
        "the upgrade retires the leading pod",
        Duration::from_secs(120),
        || async {
            let p = Api::<Pod>::namespaced(admin.clone(), ns)
                .get_opt(&retiring)
                .await
                .ok()?;
            p.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
                .then_some(())
        },
    )
    .await;
    request_rotation(&admin, ns, "db", "rotation-2").await;
    upgrade.join().expect("helm upgrade");
    let during = wait_handled(&admin, ns, "db", "rotation-2").await;
    let during_value = sha256_hex(&data_bytes(&during, "value").unwrap());
    wait_consumers_hold(&admin, ns, "consumer", &during_value).await;
    assert_eq!(
        generation(&admin, ns, "consumer").await,
        generation_a + 1,
        "one rotation across the upgrade, one restart: none lost, none repeated"
    );
    let operator = operator_pods(&admin, ns).await;
    assert_eq!(
        operator.iter().filter(|p| is_ready(p)).count(),
        2,
        "two Ready replicas"
    );
    // The new restart target takes effect: the chart's Role now grants it, and the Credential
    // names it.
    let targets = json!({"spec": {"restartOnRotation": [
        {"kind": "Deployment", "name": "consumer"},
        {"kind": "Deployment", "name": "consumer-b"}
    ]}});
    Api::<Credential>::namespaced(admin.clone(), ns)
        .patch("db", &PatchParams::default(), &Patch::Merge(&targets))
        .await
        .unwrap();
    cluster.wait_reconciled(&admin, &user, ns, "db", "db").await;
    let (generation_a, generation_b) = (
        generation(&admin, ns, "consumer").await,
        generation(&admin, ns, "consumer-b").await,
    );
    request_rotation(&admin, ns, "db", "rotation-3").await;
    let third = wait_handled(&admin, ns, "db", "rotation-3").await;
    let third_value = sha256_hex(&data_bytes(&third, "value").unwrap());
    wait_consumers_hold(&admin, ns, "consumer", &third_value).await;
    wait_consumers_hold(&admin, ns, "consumer-b", &third_value).await;
    assert_eq!(generation(&admin, ns, "consumer").await, generation_a + 1);
    assert_eq!(generation(&admin, ns, "consumer-b").await, generation_b + 1);
    assert_eq!(
        condition(&admin, ns, "db", "RestartNotPermitted")
            .await
            .map(|c| c.0),
        Some("False".to_owned()),
        "the upgraded Role permits the second target"
    );

    // ---- deleting the leader pod hands the Lease over within its duration --------------------
    let holder = lease_holder(&admin, ns).await.expect("a leader");
    let leader = operator
        .iter()
        .find(|p| holder.starts_with(&format!("{}_", p.name_any())))
        .unwrap_or_else(|| panic!("the holder {holder} is one of the pods"))
        .name_any();
    // The disruption controller writes the PDB's status a moment after the pods change.
    eventually(
        "the PDB covering both replicas and allowing one voluntary disruption (2/2/1)",
        Duration::from_secs(30),
        || async {
            (cluster.kubectl_ok(&[
                "get",
                "pdb",
                "bulkhead",
                "-n",
                ns,
                "-o",
                "jsonpath={.status.expectedPods}/{.status.currentHealthy}/{.status.disruptionsAllowed}",
            ]) == "2/2/1")
                .then_some(())
        },
    )
    .await;
    // Evicted, as a node drain does it (the eviction API, which the PDB gates).
    let pods_api = Api::<Pod>::namespaced(admin.clone(), ns);
    let deleted = Instant::now();
    pods_api
        .evict(&leader, &EvictParams::default())
        .await
        .unwrap();

    let new_holder = eventually(
        "another pod holds the Lease",
        Duration::from_secs(LEASE_DURATION_S * 2),
        || async {
            lease_holder(&admin, ns)
                .await
                .filter(|h| !h.starts_with(&format!("{leader}_")))
        },
    )
    .await;
    let handover = deleted.elapsed();
    measure(&format!(
        "leader pod deleted -> Lease held by {new_holder}: {:.2} s (lease duration {LEASE_DURATION_S} s)",
        handover.as_secs_f64()
    ));
    assert!(
        handover < Duration::from_secs(LEASE_DURATION_S),
        "hand-over took {handover:?}, more than the lease duration"
    );

    // ---- helm uninstall: the Retain Secret and the CRDs stay, nothing else of the release ---
    cluster.kubectl_ok(&["delete", "credential", "kept", "-n", ns, "--wait=false"]);
    let kept_secret = eventually("Credential kept gone", WAIT, || async {
        Api::<Credential>::namespaced(admin.clone(), ns)
            .get_opt("kept")
            .await
            .ok()?
            .is_none()
            .then_some(())
    });
    kept_secret.await;
    run_ok_helm(
        &cluster,
        &[
            "uninstall",
            "bulkhead",
            "--namespace",
            ns,
            "--wait",
            "--timeout",
            "120s",
        ],
    );
    eventually(
        "the operator's pods gone",
        Duration::from_secs(60),
        || async { operator_pods(&admin, ns).await.is_empty().then_some(()) },
    )
    .await;
    let left = cluster.kubectl_ok(&[
        "get",
        "deployments,replicasets,pods,serviceaccounts,roles,rolebindings,services,networkpolicies,poddisruptionbudgets,configmaps,secrets",
        "-n",
        ns,
        "-l",
        "app.kubernetes.io/instance=bulkhead",
        "-o",
        "name",
    ]);
    assert_eq!(
        left.trim(),
        "",
        "helm uninstall leaves nothing of the release"
    );
    let releases =
        cluster.kubectl_ok(&["get", "secrets", "-n", ns, "-l", "owner=helm", "-o", "name"]);
    assert_eq!(releases.trim(), "", "no release record left");
    assert!(
        secret(&admin, ns, "kept").await.is_some(),
        "the Retain Secret stays"
    );
    cluster.kubectl_ok(&[
        "get",
        "crd",
        "credentials.bulkhead.dev",
        "tenants.bulkhead.dev",
    ]);
    // The garbage collector deletes it after the ServiceAccount, asynchronously.
    eventually(
        "the Lease gone with the release (owned by its ServiceAccount)",
        Duration::from_secs(60),
        || async {
            Api::<Lease>::namespaced(admin.clone(), ns)
                .get_opt("bulkhead")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;

    // ---- team-b's token, refreshed by the kubelet: the operator keeps working ---------------
    // Nothing else to do here: let the suite's next control plane start meanwhile.
    let mut cluster = cluster;
    cluster.let_others_run();
    let user_b = release_b.user();
    let first_token = cluster
        .audit()
        .by_user(&user_b)
        .find_map(|e| e.user.credential_id().map(str::to_owned))
        .expect("the API server records which token a request used");
    let refreshed = loop {
        let audit = cluster.audit();
        let newer = audit
            .by_user(&user_b)
            .filter(|e| e.code() == 200)
            .find_map(|e| {
                e.user
                    .credential_id()
                    .filter(|id| *id != first_token)
                    .map(str::to_owned)
            });
        if let Some(id) = newer {
            break id;
        }
        assert!(
            token_b_issued.elapsed() < Duration::from_secs(720),
            "no request of {user_b} with a refreshed token within 720 s (token lifetime 600 s)"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    measure(&format!(
        "team-b's operator used a refreshed token {:.0} s after its release was installed (lifetime 600 s)",
        token_b_issued.elapsed().as_secs_f64()
    ));
    let offset = cluster.audit_len();
    request_rotation(&admin, ns_b, "db", "after-refresh").await;
    wait_handled(&admin, ns_b, "db", "after-refresh").await;
    let after = cluster.audit_after(offset);
    let writes: Vec<_> = after
        .by_user(&user_b)
        .filter(|e| e.resource() == "secrets" && e.is_write())
        .collect();
    assert!(!writes.is_empty(), "the rotation wrote the Secret");
    assert!(
        writes
            .iter()
            .all(|e| e.user.credential_id() != Some(first_token.as_str())),
        "written with a newer token than the first: {:#?}",
        writes.iter().map(|e| e.describe()).collect::<Vec<_>>()
    );
    // A refused token leaves no user name in the audit log: no 401 in team-b's namespace.
    // (team-a's terminating pods get some after `helm uninstall` deleted their ServiceAccount.)
    let refused: Vec<String> = cluster
        .audit()
        .events
        .iter()
        .filter(|e| e.code() == 401 && e.is_within(ns_b))
        .map(|e| e.describe())
        .collect();
    assert!(
        refused.is_empty(),
        "requests were refused for their token: {refused:#?}"
    );
    let _ = refreshed;

    drop(admin);
    // Torn down and checked while this test still holds the node: no other can start one
    // in between.
    let leftovers = cluster.stop_node();
    drop(cluster);
    assert!(leftovers.is_empty(), "the node left: {leftovers}");
}

fn run_ok_helm(cluster: &Cluster, args: &[&str]) -> String {
    cluster::run_ok(cluster.helm().args(args))
}
