//! `hack/demo.sh`, the README's "run it" command, run as a newcomer runs it (non-interactively,
//! with a timeout): a linked Tenant and four Ready Credentials, Secret keys printed and values
//! never, a kubeconfig that works; then the day-2 commands against it (`bulkhead status`, also
//! as the kubectl plugin, and `bulkhead rotate`), and a second demo with `--context` into that
//! cluster; then Ctrl-C: a clean exit that leaves no process and no directory behind.

use std::path::{Path, PathBuf};

use super::*;

/// `bash hack/demo.sh` with `TMPDIR` set and the binaries this test run built (the demo must not
/// start a second build).
fn demo_command(tmp: &Path) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("hack/demo.sh"))
        .env("TMPDIR", tmp)
        .env("BULKHEAD_DEMO_BULKHEAD", cluster::operator_binary())
        .env(
            "BULKHEAD_DEMO_DEV_CONTROL_PLANE",
            dev_control_plane_binary(),
        );
    cmd
}

/// The dev control plane example: `BULKHEAD_E2E_DEV_CONTROL_PLANE`, else the one cargo built
/// next to the `bulkhead` binary (`cargo test --all-targets`, hack/e2e.sh and hack/demo.sh
/// build it).
fn dev_control_plane_binary() -> PathBuf {
    let path = std::env::var_os("BULKHEAD_E2E_DEV_CONTROL_PLANE")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || {
                Path::new(env!("CARGO_BIN_EXE_bulkhead"))
                    .parent()
                    .unwrap()
                    .join("examples")
                    .join("dev-control-plane")
            },
            PathBuf::from,
        );
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build --example dev-control-plane` (cargo test --all-targets and hack/e2e.sh do)",
        path.display()
    );
    path
}

/// The demo script in its own process group; on drop (a failed assertion) it gets the Ctrl-C a
/// user would send, so its own cleanup stops the control plane, before the group is killed.
struct Demo {
    process: cluster::Process,
    output: PathBuf,
}

impl Demo {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Wait until the output contains `marker`; panics with the output if the script exits first.
    fn wait_output(&mut self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.output();
            if text.contains(marker) {
                return text;
            }
            if let Some(status) = self.process.try_exit() {
                panic!("hack/demo.sh exited ({status}) before {marker:?}:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "hack/demo.sh: no {marker:?} within {timeout:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if self.process.is_running() {
            self.process.signal("INT");
            self.process.wait_exit(Duration::from_secs(60));
        }
        if std::thread::panicking() {
            eprintln!("----- hack/demo.sh output -----\n{}", self.output());
        }
    }
}

/// Processes whose command line mentions `dir` (every component the demo starts runs from,
/// or with files in, its temporary directory).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

/// A status table without its relative times (`(3s ago)`), which move between two calls.
fn without_relative_times(table: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in table.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 && c != ' ' => out.push(c),
            _ => {}
        }
    }
    out
}

fn bulkhead_cli(program: &Path, kubeconfig: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn demo_shows_a_linked_tenant_and_four_ready_credentials_and_exits_clean_on_ctrl_c() {
    let binaries = Binaries::from_env();
    // The demo starts a node where it can (the same as the pod scenarios': one at a time).
    let _one_node = cluster::one_node_at_a_time();
    let _one_at_a_time = cluster::one_control_plane_at_a_time();
    let ns = "demo";
    // The demo's TMPDIR: afterwards it must be empty and no process may mention it.
    let tmp = std::env::temp_dir().join(format!(
        "bulkhead-demo-test-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_millisecond()
    ));
    std::fs::create_dir_all(&tmp).unwrap();
    let output = std::env::temp_dir().join(format!("{}.out", tmp.display()));

    let mut cmd = demo_command(&tmp);
    cmd.args(["--for", "600"])
        .env("BULKHEAD_E2E_ETCD", &binaries.etcd)
        .env("BULKHEAD_E2E_KUBE_APISERVER", &binaries.apiserver);
    if let Some(kcm) = &binaries.controller_manager {
        cmd.env("BULKHEAD_E2E_KUBE_CONTROLLER_MANAGER", kcm);
    }
    let started = Instant::now();
    let mut demo = Demo {
        process: cluster::Process::spawn("demo", &mut cmd, &output),
        output: output.clone(),
    };

    // The script promises a bound ("at most 90s") and keeps it.
    let text = demo.wait_output("running for 600s", Duration::from_secs(240));
    assert!(
        text.contains("waiting (at most 90s)")
            && text.contains("ready: Tenant linked, 4 Credentials Ready"),
        "{text}"
    );
    assert!(
        !text.contains("cargo: Compiling"),
        "the demo built although binaries were given:\n{text}"
    );
    // Where a node can start (cfg(bulkhead_node): hack/node.sh check passed), the demo runs the
    // product as users do, a pod from its image installed by helm; else a local process.
    let pod_mode = "the operator runs as a pod from its image";
    if cfg!(bulkhead_node) {
        assert!(
            text.contains(pod_mode) && text.contains("Ready in") && text.contains("node Ready at"),
            "{text}"
        );
    } else {
        assert!(
            text.contains("the operator runs as a local process"),
            "{text}"
        );
    }
    eprintln!("demo ready after {:?}", started.elapsed());
    let kubeconfig = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("export KUBECONFIG="))
        .expect("the demo prints a kubeconfig")
        .to_owned();

    // What the output says is what the cluster holds, through the printed kubeconfig.
    let client = Cluster::client_from(Path::new(&kubeconfig)).await;
    let tenant = Api::<Tenant>::namespaced(client.clone(), ns)
        .get("tenant")
        .await
        .unwrap();
    let status = tenant.status.unwrap();
    let ready = status.conditions.find("Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Linked")
    );
    assert_eq!(status.tenant_id.as_deref(), Some(ns));
    let expected_keys = [
        ("db-password", "Random", "value"),
        ("session-keys", "KeySet", "0 1"),
        ("spark-token", "ControlPlaneToken", "expiresAt token"),
        ("registry", "RegistryCredentials", ".dockerconfigjson"),
    ];
    for (name, type_, keys) in expected_keys {
        let c = get_credential(&client, ns, name).await;
        assert_eq!(c.spec.type_.as_str(), type_);
        assert!(
            c.status.as_ref().unwrap().conditions.is_true("Ready"),
            "{name}: {:?}",
            c.status
        );
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")) && l.contains("keys:"))
            .unwrap_or_else(|| panic!("no keys line for {name}:\n{text}"));
        assert_eq!(line.split("keys:").nth(1).unwrap().trim(), keys, "{line}");
        // Keys only: no value of any managed Secret appears in the output.
        let s = secret(&client, ns, name).await.unwrap();
        for (key, value) in s.data.unwrap() {
            let value = String::from_utf8_lossy(&value.0).into_owned();
            assert!(value.len() >= 8, "{name}/{key} is too short to check");
            assert!(
                !text.contains(&value),
                "the demo printed the value of {name}/{key}"
            );
        }
    }

    // Day 2: `bulkhead status` with the user's kubeconfig (its context namespace is demo) and
    // the same binary as the kubectl plugin, found by the real kubectl on PATH.
    let bulkhead = cluster::operator_binary();
    let out = bulkhead_cli(&bulkhead, &kubeconfig, &["status", "-n", ns]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "status: {table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tenant_row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("tenant "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        &tenant_row[..4],
        ["tenant", "True", "Linked", ns],
        "{table}"
    );
    assert_eq!(tenant_row.last(), Some(&"4/4"), "{table}");
    for (name, type_, _) in expected_keys {
        let key_id = get_credential(&client, ns, name)
            .await
            .status
            .unwrap()
            .key_id
            .unwrap();
        let row: Vec<&str> = table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
            .split_whitespace()
            .collect();
        assert_eq!(&row[..4], [name, type_, name, "True"], "{table}");
        assert_eq!(row.last(), Some(&key_id.as_str()), "{table}");
    }
    let plugin_dir = tmp.with_extension("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    std::os::unix::fs::symlink(&bulkhead, plugin_dir.join("kubectl-bulkhead")).unwrap();
    let out = Command::new(cluster::tool("kubectl"))
        .env("KUBECONFIG", &kubeconfig)
        .env(
            "PATH",
            format!(
                "{}:{}",
                plugin_dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .args(["bulkhead", "status"])
        .output()
        .unwrap();
    let plugin_table = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success()
            && without_relative_times(&plugin_table) == without_relative_times(&table),
        "kubectl bulkhead status (no -n: the context's namespace):\n{plugin_table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(plugin_dir.join("kubectl-bulkhead"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Usage: kubectl bulkhead"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // `bulkhead rotate`: the annotation is set, and the operator really rotates once.
    let before = secret(&client, ns, "db-password").await.unwrap();
    let old_value = data(&before, "value").unwrap();
    let old_key = get_credential(&client, ns, "db-password")
        .await
        .status
        .unwrap()
        .key_id;
    let out = bulkhead_cli(&bulkhead, &kubeconfig, &["rotate", "db-password"]);
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "rotate: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("keep the current one as value.previous"),
        "{said}"
    );
    let c = get_credential(&client, ns, "db-password").await;
    assert!(
        c.annotations().contains_key(ROTATE_REQUESTED_AT),
        "{:?}",
        c.metadata
    );
    let after = eventually("db-password rotated", WAIT, || async {
        secret(&client, ns, "db-password")
            .await
            .filter(|s| data(s, "value").is_some_and(|v| v != old_value))
    })
    .await;
    assert_eq!(data(&after, "value.previous"), Some(old_value));
    let new_key = eventually("a new key id in the status", WAIT, || async {
        get_credential(&client, ns, "db-password")
            .await
            .status?
            .key_id
            .filter(|k| Some(k) != old_key.as_ref())
    })
    .await;
    assert!(!new_key.is_empty());
    let out = bulkhead_cli(&bulkhead, &kubeconfig, &["rotate", "no-such-credential"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no Credential \"no-such-credential\" in namespace demo"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The operator's real /metrics: each Credential's readiness, and every metric the chart's
    // dashboard and alerts query is exported.
    let metrics_url = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("curl -s http://"))
        .and_then(|l| l.split("/metrics").next())
        .expect("the demo prints the metrics address");
    let (code, exposition) = cluster::http_get(metrics_url.parse().unwrap(), "/metrics").unwrap();
    assert_eq!(code, 200);
    for (name, _, _) in expected_keys {
        let sample = format!("bulkhead_credential_ready{{credential=\"{name}\"}} 1");
        assert!(
            exposition.contains(&sample),
            "no {sample} in:\n{exposition}"
        );
    }
    let families: Vec<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut queried = std::fs::read_to_string(repo().join("chart/files/dashboard.json")).unwrap();
    queried.push_str(
        &std::fs::read_to_string(repo().join("chart/templates/prometheusrule.yaml")).unwrap(),
    );
    let mut rest = queried.as_str();
    let mut checked = 0;
    let mut missing = std::collections::BTreeSet::new();
    while let Some(at) = rest.find("bulkhead_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        rest = &tail[end..];
        let family = ["_total", "_bucket", "_sum", "_count", "_info"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        if !families.contains(&family) {
            missing.insert(family.to_owned());
        }
        checked += 1;
    }
    assert!(checked > 20, "only {checked} metric references found");
    // An empty family is not exposed: the demo has no failed reconcile (tests/chart.rs checks
    // that name against the registry).
    missing.remove("bulkhead_reconcile_errors");
    assert!(
        missing.is_empty(),
        "the chart queries {missing:?}, which the operator does not export:\n{exposition}"
    );

    // --context: into an existing cluster (this one, through the printed kubeconfig). A
    // namespace that exists is refused (the demo deletes its namespace on exit); the CRDs are
    // served, so they are left alone; on exit the demo's namespace is deleted.
    let context_demo = |namespace: &str| {
        demo_command(&tmp)
            .args(["--context", "bulkhead-demo", "--namespace", namespace])
            .arg("--exit-when-ready")
            .env("KUBECONFIG", &kubeconfig)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let refused = context_demo(ns);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("namespace demo already exists in context bulkhead-demo"),
        "{said}"
    );
    assert!(
        get_credential(&client, ns, "db-password")
            .await
            .metadata
            .deletion_timestamp
            .is_none(),
        "the refused run touched namespace demo"
    );
    let second = context_demo("demo2");
    let said = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&second.stderr)
    );
    for line in [
        "the Bulkhead CRDs are served in context bulkhead-demo (not touching them)",
        "ready: Tenant linked, 4 Credentials Ready",
        "deleting namespace demo2",
    ] {
        assert!(said.contains(line), "no {line:?} in:\n{said}");
    }
    let demo2 = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get_opt("demo2")
        .await
        .unwrap();
    assert!(
        demo2.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "namespace demo2 is not being deleted"
    );

    // Ctrl-C: a clean exit, everything stopped, the temporary directory gone.
    assert!(
        demo.process.is_running(),
        "the demo keeps running until Ctrl-C"
    );
    demo.process.signal("INT");
    let exit = demo
        .process
        .wait_exit(Duration::from_secs(90))
        .expect("the demo exits within 90 s of Ctrl-C");
    let text = demo.output();
    assert!(exit.success(), "exit {exit} after Ctrl-C:\n{text}");
    assert!(text.trim_end().ends_with("stopped"), "{text}");
    let left: Vec<String> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    assert!(left.is_empty(), "the demo left {left:?}");
    let running = processes_mentioning(&tmp);
    assert!(
        running.is_empty(),
        "still running after the demo: {running:#?}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&plugin_dir);
    let _ = std::fs::remove_file(&output);
}

/// `--context` on a cluster without the CRDs: refused with the admin's command unless the user
/// consents with `--install-crds`; then the CRDs are applied (and stay), the rest as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(bulkhead_e2e),
    ignore = "needs a control plane: set KUBEBUILDER_ASSETS (see README, Testing)"
)]
async fn demo_into_an_existing_cluster_installs_crds_only_with_consent() {
    let binaries = Binaries::from_env();
    let cluster = Cluster::start(binaries.without_controller_manager());
    let kubeconfig = cluster.admin_kubeconfig();
    let tmp = cluster.dir.join("demo-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let demo = |extra: &[&str]| {
        demo_command(&tmp)
            .args(["--context", "e2e", "--exit-when-ready"])
            .args(extra)
            .env("KUBECONFIG", &kubeconfig)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let admin = cluster.admin_client().await;
    let crds = Api::<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    >::all(admin.clone());
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone());

    let refused = demo(&[]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("the Bulkhead CRDs are not served in context e2e")
            && said.contains("kubectl --context e2e apply --server-side -f crds-cluster/")
            && said.contains("--install-crds"),
        "{said}"
    );
    assert!(
        crds.get_opt("credentials.bulkhead.dev")
            .await
            .unwrap()
            .is_none()
    );
    assert!(namespaces.get_opt("demo").await.unwrap().is_none());

    let consented = demo(&["--install-crds"]);
    let said = String::from_utf8_lossy(&consented.stdout);
    assert!(
        consented.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&consented.stderr)
    );
    assert!(
        said.contains("--install-crds: kubectl --context e2e apply --server-side -f crds-cluster/")
            && said.contains("ready: Tenant linked, 4 Credentials Ready"),
        "{said}"
    );
    // The CRDs stay (cluster-scoped, the user asked for them); the demo's namespace goes.
    assert!(
        crds.get_opt("credentials.bulkhead.dev")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        namespaces
            .get_opt("demo")
            .await
            .unwrap()
            .is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "namespace demo is not being deleted"
    );
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "the demo left {left:?}");
}
