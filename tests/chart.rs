//! The Helm chart, rendered by the real `helm` binary for every value set in `chart/ci/`, and
//! checked for what a namespace admin relies on: nothing cluster-scoped, a Role equal to what
//! `bulkhead rbac` prints for the same values, a restricted pod, a default-deny NetworkPolicy,
//! and a schema that rejects nonsense.
//!
//! `helm` comes from `BULKHEAD_HELM`, `PATH` or `.tools/bin` (hack/install-tools.sh). Without it
//! the tests skip with one line, except under CI (`CI` set), where they fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const NAMESPACE: &str = "team-a";
const RELEASE: &str = "bulkhead";
const SERVICE_MONITOR_API: &str = "monitoring.coreos.com/v1/ServiceMonitor";
const PROMETHEUS_RULE_API: &str = "monitoring.coreos.com/v1/PrometheusRule";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    repo().join("chart")
}

/// The real helm binary: `BULKHEAD_HELM`, else `PATH`, else `.tools/bin`.
fn helm() -> PathBuf {
    let found = if let Some(path) = std::env::var_os("BULKHEAD_HELM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "BULKHEAD_HELM={} is not a file",
            path.display()
        );
        Some(path)
    } else {
        let tools = repo().join(".tools").join("bin");
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain(std::iter::once(tools))
            .map(|dir| dir.join("helm"))
            .find(|p| p.is_file())
    };
    // Missing is a failure, never a skip that would count as passed: the test command
    // (hack/test.sh) installs helm first.
    found.expect("helm not found (BULKHEAD_HELM, PATH, .tools/bin): run hack/install-tools.sh")
}

/// The value sets that must lint and render: every `chart/ci/*-values.yaml`.
fn value_sets() -> Vec<PathBuf> {
    let mut sets: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    sets.sort();
    assert!(
        sets.len() >= 4,
        "expected the value sets of chart/ci, found {sets:?}"
    );
    sets
}

fn ci_values(name: &str) -> PathBuf {
    chart_dir().join("ci").join(format!("{name}-values.yaml"))
}

fn run_helm(helm: &Path, args: &[&str]) -> Output {
    Command::new(helm)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", helm.display()))
}

fn template_output(helm: &Path, values: &Path, extra: &[&str]) -> Output {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
        "--values",
        values.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_helm(helm, &args)
}

/// A rendering as (raw text, parsed documents).
struct Rendering {
    name: String,
    text: String,
    docs: Vec<Value>,
}

impl Rendering {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let found = self.of_kind(kind);
        assert_eq!(
            found.len(),
            1,
            "{}: expected one {kind}, found {}",
            self.name,
            found.len()
        );
        found[0]
    }

    fn container(&self) -> &Value {
        let containers = self.one("Deployment")["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1, "{}: one container", self.name);
        &containers[0]
    }

    fn args(&self) -> Vec<String> {
        self.container()["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    }
}

fn render(helm: &Path, values: &Path, extra: &[&str]) -> Rendering {
    let out = template_output(helm, values, extra);
    let name = values.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        out.status.success(),
        "helm template {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{name}: rendering is not YAML: {e}\n{text}"));
    assert!(!docs.is_empty(), "{name}: empty rendering");
    Rendering { name, text, docs }
}

/// Every value set, rendered on a cluster that serves ServiceMonitor and on one that does not.
fn all_renderings(helm: &Path) -> Vec<Rendering> {
    let mut out = Vec::new();
    for values in value_sets() {
        out.push(render(helm, &values, &[]));
        out.push(render(
            helm,
            &values,
            &[
                "--api-versions",
                SERVICE_MONITOR_API,
                "--api-versions",
                PROMETHEUS_RULE_API,
            ],
        ));
    }
    out
}

#[test]
fn lint_strict_passes_for_every_value_set() {
    let helm = helm();
    let chart = chart_dir();
    for values in value_sets() {
        let out = run_helm(
            &helm,
            &[
                "lint",
                "--strict",
                chart.to_str().unwrap(),
                "--namespace",
                NAMESPACE,
                "--values",
                values.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "helm lint --strict with {} failed:\n{}{}",
            values.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn nothing_cluster_scoped_and_everything_in_the_release_namespace() {
    let helm = helm();
    let namespaced = [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
    ];
    for r in all_renderings(&helm) {
        for doc in &r.docs {
            let kind = doc["kind"].as_str().unwrap_or_default();
            assert!(
                namespaced.contains(&kind),
                "{}: {kind} is not one of the chart's namespaced kinds (no ClusterRole, ClusterRoleBinding, CRD, webhook, Namespace)",
                r.name
            );
            assert_eq!(
                doc["metadata"]["namespace"], NAMESPACE,
                "{}: {kind} outside the release namespace",
                r.name
            );
        }
        for forbidden in [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "ValidatingWebhookConfiguration",
            "MutatingWebhookConfiguration",
        ] {
            assert!(
                r.of_kind(forbidden).is_empty(),
                "{}: renders a {forbidden}",
                r.name
            );
        }
        // The RoleBinding binds our Role to our ServiceAccount in this namespace, nothing else.
        let binding = r.one("RoleBinding");
        assert_eq!(binding["roleRef"]["kind"], "Role", "{}", r.name);
        assert_eq!(
            binding["roleRef"]["name"],
            r.one("Role")["metadata"]["name"],
            "{}",
            r.name
        );
        let subjects = binding["subjects"].as_array().unwrap();
        assert_eq!(subjects.len(), 1, "{}", r.name);
        assert_eq!(subjects[0]["kind"], "ServiceAccount");
        assert_eq!(subjects[0]["namespace"], NAMESPACE);
        assert_eq!(
            subjects[0]["name"],
            r.one("ServiceAccount")["metadata"]["name"]
        );
    }
}

/// One expanded grant: (apiGroup, resource, verb, resourceName or None for any name).
type Grant = (String, String, String, Option<String>);

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn expand(rules: &Value) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().unwrap() {
        let names = strings(&rule["resourceNames"]);
        let names: Vec<Option<String>> = if names.is_empty() {
            vec![None]
        } else {
            names.into_iter().map(Some).collect()
        };
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    for name in &names {
                        out.insert((group.clone(), resource.clone(), verb.clone(), name.clone()));
                    }
                }
            }
        }
    }
    out
}

/// The `run` flags the Role depends on (`bulkhead rbac` takes the same ones).
fn is_role_flag(arg: &str) -> bool {
    [
        "--lease-name=",
        "--identity-secret=",
        "--watch-managed-secrets=",
        "--restart-target=",
    ]
    .iter()
    .any(|flag| arg.starts_with(flag))
}

/// `bulkhead rbac -o json` for the Role-relevant flags the chart passes to `bulkhead run`.
fn binary_rules(run_args: &[String]) -> Value {
    let role_flags: Vec<&String> = run_args.iter().filter(|a| is_role_flag(a)).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("rbac")
        .args(&role_flags)
        .args(["--output", "json"])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bulkhead rbac {role_flags:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn show(grants: &BTreeSet<Grant>) -> Vec<String> {
    grants
        .iter()
        .map(|(g, r, v, n)| {
            format!(
                "{v} {g}/{r}{}",
                n.as_ref().map(|n| format!(" name={n}")).unwrap_or_default()
            )
        })
        .collect()
}

#[test]
fn role_equals_bulkhead_rbac_for_the_same_values() {
    let helm = helm();
    for values in value_sets() {
        let r = render(&helm, &values, &[]);
        let chart = expand(&r.one("Role")["rules"]);
        let binary = expand(&binary_rules(&r.args()));
        assert!(
            chart == binary,
            "{}: the chart's Role differs from `bulkhead rbac`\n  only in chart:  {:?}\n  only in binary: {:?}",
            r.name,
            show(&chart.difference(&binary).cloned().collect()),
            show(&binary.difference(&chart).cloned().collect()),
        );
    }
}

#[test]
fn role_pins_names_from_values_and_never_lists_secrets_by_default() {
    let helm = helm();
    let grant = |g: &str, r: &str, v: &str, n: Option<&str>| -> Grant {
        (g.into(), r.into(), v.into(), n.map(Into::into))
    };

    let default = expand(&render(&helm, &ci_values("default"), &[])["Role"]);
    assert!(default.contains(&grant(
        "coordination.k8s.io",
        "leases",
        "patch",
        Some("bulkhead")
    )));
    // Secrets can be listed/watched only by the identity Secret's name: no enumeration.
    let secret_reads: Vec<&Grant> = default
        .iter()
        .filter(|(_, r, v, _)| r == "secrets" && (v == "list" || v == "watch"))
        .collect();
    assert_eq!(
        secret_reads,
        [
            &grant("", "secrets", "list", Some("bulkhead-identity")),
            &grant("", "secrets", "watch", Some("bulkhead-identity")),
        ],
        "{:?}",
        show(&default)
    );
    assert!(
        !default.iter().any(|(g, ..)| g == "apps"),
        "no restart targets, no apps rule: {:?}",
        show(&default)
    );
    assert!(
        !default
            .iter()
            .any(|(g, r, v, _)| g == "*" || r == "*" || v == "*"),
        "wildcard: {:?}",
        show(&default)
    );

    let targets = expand(&render(&helm, &ci_values("restart-targets"), &[])["Role"]);
    let apps: BTreeSet<Grant> = targets
        .iter()
        .filter(|(g, ..)| g == "apps")
        .cloned()
        .collect();
    let expected: BTreeSet<Grant> = [
        grant("apps", "deployments", "patch", Some("api")),
        grant("apps", "deployments", "patch", Some("worker")),
        grant("apps", "statefulsets", "patch", Some("db")),
        grant("apps", "daemonsets", "patch", Some("agent")),
    ]
    .into();
    assert_eq!(apps, expected);
    assert!(targets.contains(&grant(
        "coordination.k8s.io",
        "leases",
        "get",
        Some("bulkhead-payments")
    )));
    assert!(
        !targets
            .iter()
            .any(|(_, r, _, n)| r == "leases" && n.as_deref() == Some("bulkhead"))
    );

    let watch = expand(&render(&helm, &ci_values("watch-secrets"), &[])["Role"]);
    assert!(watch.contains(&grant("", "secrets", "list", None)));
    assert!(watch.contains(&grant("", "secrets", "watch", None)));
}

impl std::ops::Index<&str> for Rendering {
    type Output = Value;

    /// The rules of the one document of this kind (`["Role"]`).
    fn index(&self, kind: &str) -> &Value {
        &self.one(kind)["rules"]
    }
}

/// The comment lines of `bulkhead rbac -o yaml`: one per rule, naming the code that needs it.
fn binary_reasons(run_args: &[String]) -> Vec<String> {
    let role_flags: Vec<&String> = run_args.iter().filter(|a| is_role_flag(a)).collect();
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .arg("rbac")
        .args(&role_flags)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let rules = yaml.split_once("\nrules:\n").unwrap().1;
    rules
        .lines()
        .filter(|l| l.trim_start().starts_with("# "))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn every_role_rule_names_the_code_that_needs_it() {
    let helm = helm();
    for values in value_sets() {
        let r = render(&helm, &values, &[]);
        let role_doc = r
            .text
            .split("\n---")
            .find(|d| d.contains("\nkind: Role\n"))
            .unwrap();
        let lines: Vec<&str> = role_doc.lines().map(str::trim).collect();
        let mut rules = 0;
        for (i, line) in lines.iter().enumerate() {
            if line.starts_with("- apiGroups:") {
                rules += 1;
                let comments: Vec<&&str> = lines[..i]
                    .iter()
                    .rev()
                    .take_while(|l| l.starts_with('#'))
                    .collect();
                assert!(
                    comments.iter().any(|c| c.contains("src/")),
                    "{}: rule without a comment naming its code: {line}",
                    r.name
                );
            }
        }
        assert_eq!(rules, r["Role"].as_array().unwrap().len(), "{}", r.name);
        // The reasons are the binary's own, word for word.
        let reasons = binary_reasons(&r.args());
        assert_eq!(reasons.len(), rules, "{}", r.name);
        for reason in reasons {
            assert!(
                lines.contains(&reason.as_str()),
                "{}: the Role lacks the comment `{reason}` of `bulkhead rbac`",
                r.name
            );
        }
    }
}

#[test]
fn pod_meets_restricted_pod_security_with_a_read_only_root() {
    let helm = helm();
    for r in all_renderings(&helm) {
        let deploy = r.one("Deployment");
        let pod = &deploy["spec"]["template"]["spec"];
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{}", r.name);
        assert_eq!(psc["runAsUser"], 65532, "{}", r.name);
        assert_eq!(psc["runAsGroup"], 65532, "{}", r.name);
        assert_eq!(
            psc["seccompProfile"]["type"], "RuntimeDefault",
            "{}",
            r.name
        );
        for field in ["hostNetwork", "hostPID", "hostIPC", "volumes"] {
            assert!(pod.get(field).is_none(), "{}: pod sets {field}", r.name);
        }
        assert_eq!(
            pod["automountServiceAccountToken"], true,
            "{}: the operator needs its token",
            r.name
        );
        assert_eq!(
            r.one("ServiceAccount")["automountServiceAccountToken"],
            false,
            "{}",
            r.name
        );

        let c = r.container();
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", r.name);
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", r.name);
        assert_eq!(sc["runAsNonRoot"], true, "{}", r.name);
        assert_eq!(sc["privileged"], false, "{}", r.name);
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{}",
            r.name
        );
        assert!(sc["capabilities"].get("add").is_none(), "{}", r.name);
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{}", r.name);

        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{}",
            r.name
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{}",
            r.name
        );
        assert!(
            c["resources"]["requests"]["memory"].is_string(),
            "{}: memory request",
            r.name
        );
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{}: memory limit",
            r.name
        );

        // Namespace and pod name come from the downward API, never from values.
        let env = c["env"].as_array().unwrap();
        let field_of = |name: &str| {
            env.iter()
                .find(|e| e["name"] == name)
                .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
        };
        assert_eq!(
            field_of("BULKHEAD_NAMESPACE"),
            Some(Value::from("metadata.namespace")),
            "{}",
            r.name
        );
        assert_eq!(
            field_of("BULKHEAD_POD_NAME"),
            Some(Value::from("metadata.name")),
            "{}",
            r.name
        );
        assert!(
            !r.args().iter().any(|a| a.starts_with("--namespace")),
            "{}",
            r.name
        );

        // Shutdown: drain (10s) + Lease release (5s) fit in the grace period.
        assert!(
            pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 15,
            "{}",
            r.name
        );
    }
}

#[test]
fn rendered_args_and_env_are_accepted_by_the_binary() {
    let helm = helm();
    for values in value_sets() {
        let r = render(&helm, &values, &[]);
        let env = r.container()["env"].as_array().unwrap().clone();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bulkhead"));
        cmd.args(r.args()).env_clear();
        for e in &env {
            if let Some(value) = e["value"].as_str() {
                cmd.env(e["name"].as_str().unwrap(), value);
            }
        }
        // Without BULKHEAD_NAMESPACE (the downward API is not here) clap's one complaint is
        // the required namespace: it reports an unknown flag or a bad value first, so a renamed
        // or mistyped flag would fail with another message.
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}", r.name);
        let missing: Vec<&str> = stderr
            .lines()
            .skip_while(|l| !l.contains("required arguments were not provided"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .map(str::trim)
            .collect();
        assert_eq!(
            missing,
            ["--namespace <NAMESPACE>"],
            "{}: the binary rejected the chart's args {:?}:\n{stderr}",
            r.name,
            r.args()
        );
    }
}

#[test]
fn strategy_and_pdb_never_run_two_active_reconcilers() {
    let helm = helm();
    let single = render(&helm, &ci_values("default"), &[]);
    assert_eq!(single.one("Deployment")["spec"]["replicas"], 1);
    assert_eq!(
        single.one("Deployment")["spec"]["strategy"]["type"],
        "Recreate"
    );
    assert!(
        single.of_kind("PodDisruptionBudget").is_empty(),
        "a PDB with one replica blocks drains"
    );
    assert!(single.args().contains(&"--leader-elect=true".to_owned()));

    let ha = render(&helm, &ci_values("ha"), &[]);
    assert_eq!(ha.one("Deployment")["spec"]["replicas"], 2);
    assert_eq!(
        ha.one("Deployment")["spec"]["strategy"]["type"],
        "RollingUpdate"
    );
    assert!(ha.args().contains(&"--leader-elect=true".to_owned()));
    let pdb = ha.one("PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"],
        ha.one("Deployment")["spec"]["selector"]
    );

    let no_pdb = render(
        &helm,
        &ci_values("ha"),
        &["--set", "podDisruptionBudget.enabled=false"],
    );
    assert!(no_pdb.of_kind("PodDisruptionBudget").is_empty());
}

#[test]
fn image_is_referenced_by_digest_when_one_is_given() {
    let helm = helm();
    let ha = render(&helm, &ci_values("ha"), &[]);
    assert_eq!(
        ha.container()["image"],
        "registry.example.com/platform/bulkhead@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    let default = render(&helm, &ci_values("default"), &[]);
    assert_eq!(
        default.container()["image"],
        "ghcr.io/bulkhead-dev/bulkhead:0.1.0",
        "tag defaults to appVersion"
    );
}

fn ports(rule: &Value) -> Vec<(i64, String)> {
    rule["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap(),
                p["protocol"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn network_policy_denies_by_default_and_opens_only_needed_flows() {
    let helm = helm();
    for values in value_sets() {
        let r = render(&helm, &values, &[]);
        if r.name.starts_with("no-networkpolicy") {
            assert!(r.of_kind("NetworkPolicy").is_empty(), "{}", r.name);
            continue;
        }
        let np = &r.one("NetworkPolicy")["spec"];
        assert_eq!(
            np["policyTypes"],
            serde_json::json!(["Ingress", "Egress"]),
            "{}",
            r.name
        );
        assert_eq!(
            np["podSelector"]["matchLabels"],
            r.one("Deployment")["spec"]["selector"]["matchLabels"],
            "{}",
            r.name
        );
        let ingress = np["ingress"].as_array().unwrap();
        assert_eq!(ingress.len(), 1, "{}: only metrics ingress", r.name);
        assert_eq!(
            ports(&ingress[0]),
            vec![(8080, "TCP".to_owned())],
            "{}",
            r.name
        );
        assert!(
            ingress[0]["from"][0]["namespaceSelector"]["matchLabels"].is_object(),
            "{}",
            r.name
        );
        let egress = np["egress"].as_array().unwrap();
        assert!(
            ports(&egress[0]).contains(&(53, "UDP".to_owned())),
            "{}: DNS first",
            r.name
        );
        assert!(
            egress.iter().all(|rule| rule.get("ports").is_some()),
            "{}: every egress rule names ports",
            r.name
        );
    }

    let ha = render(&helm, &ci_values("ha"), &[]);
    let egress = ha.one("NetworkPolicy")["spec"]["egress"]
        .as_array()
        .unwrap()
        .clone();
    let cidrs: Vec<&str> = egress
        .iter()
        .flat_map(|rule| rule["to"].as_array().into_iter().flatten())
        .filter_map(|peer| peer["ipBlock"]["cidr"].as_str())
        .collect();
    assert_eq!(cidrs, ["172.18.0.2/32", "172.18.0.3/32", "203.0.113.0/24"]);
    assert_eq!(egress.len(), 3, "DNS, API server, control plane");
    let ingress_from = &ha.one("NetworkPolicy")["spec"]["ingress"][0]["from"][0]["namespaceSelector"]
        ["matchLabels"];
    assert_eq!(ingress_from["team.example.com/monitoring"], "true");
}

#[test]
fn service_monitor_only_when_enabled_and_served() {
    let helm = helm();
    let served = ["--api-versions", SERVICE_MONITOR_API];
    assert!(
        render(&helm, &ci_values("ha"), &[])
            .of_kind("ServiceMonitor")
            .is_empty()
    );
    assert!(
        render(&helm, &ci_values("default"), &served)
            .of_kind("ServiceMonitor")
            .is_empty()
    );
    let ha = render(&helm, &ci_values("ha"), &served);
    let sm = ha.one("ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(ha.one("Service")["spec"]["ports"][0]["name"], "metrics");
}

#[test]
fn schema_rejects_bad_values() {
    let helm = helm();
    let dir = repo().join("tests/fixtures/chart/invalid");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    let names: Vec<String> = cases
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for must in [
        "unknown-top-level-key",
        "replicas-wrong-type",
        "webhook",
        "restart-target-bad-kind",
    ] {
        assert!(
            names.iter().any(|n| n == must),
            "fixture {must} missing from {}",
            dir.display()
        );
    }
    for case in &cases {
        let out = template_output(&helm, case, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{} rendered although it is invalid",
            case.display()
        );
        assert!(
            stderr.contains("schema"),
            "{}: failed, but not on the schema:\n{stderr}",
            case.display()
        );
    }
}

// ---- alerts and dashboard ----------------------------------------------------------------------

/// The real promtool (Debian's `prometheus` package; hack/install-tools.sh installs it). Missing
/// is a failure, never a skip that would count as passed.
fn promtool() -> PathBuf {
    std::env::var_os("BULKHEAD_PROMTOOL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(|dir| dir.join("promtool"))
                .find(|p| p.is_file())
        })
        .expect("promtool not found (BULKHEAD_PROMTOOL, PATH): run hack/install-tools.sh (apt-get install prometheus)")
}

fn monitoring(helm: &Path) -> Rendering {
    render(
        helm,
        &ci_values("monitoring"),
        &[
            "--api-versions",
            SERVICE_MONITOR_API,
            "--api-versions",
            PROMETHEUS_RULE_API,
        ],
    )
}

/// Every metric name (`bulkhead_...`) a PromQL text mentions.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = promql;
    while let Some(at) = rest.find("bulkhead_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every `expr` and query string in a JSON/YAML tree.
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", Value::String(q)) => out.push(q.clone()),
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The sample names the operator exports: the telemetry registry with every family touched.
fn exported_metric_names() -> BTreeSet<String> {
    use bulkhead::telemetry::{ControlPlaneLabels, CredentialLabels, Metrics, TypeLabels};
    let metrics = Metrics::default();
    metrics.observe_reconcile(
        "credential",
        std::time::Duration::from_millis(3),
        Some("kube"),
    );
    metrics
        .rotations
        .get_or_create(&TypeLabels { r#type: "Random" })
        .inc();
    let credential = CredentialLabels {
        credential: "db".into(),
    };
    metrics.next_rotation.get_or_create(&credential).set(1.0);
    metrics.credential_ready.get_or_create(&credential).set(1);
    metrics
        .control_plane_requests
        .get_or_create(&ControlPlaneLabels {
            operation: "heartbeat",
            code: "200".into(),
        })
        .inc();
    metrics
        .encode()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn prometheus_rule_and_dashboard_only_when_enabled() {
    let helm = helm();
    let served = [
        "--api-versions",
        SERVICE_MONITOR_API,
        "--api-versions",
        PROMETHEUS_RULE_API,
    ];
    // Off by default, even where the API is served.
    let default = render(&helm, &ci_values("default"), &served);
    assert!(default.of_kind("PrometheusRule").is_empty());
    assert!(default.of_kind("ConfigMap").is_empty());
    // On, but the Prometheus Operator is not installed: no PrometheusRule, the dashboard stays.
    let unserved = render(&helm, &ci_values("monitoring"), &[]);
    assert!(unserved.of_kind("PrometheusRule").is_empty());
    assert_eq!(unserved.of_kind("ConfigMap").len(), 1);

    let r = monitoring(&helm);
    let rule = r.one("PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert_eq!(
        alerts,
        [
            "BulkheadCredentialRotationFailing",
            "BulkheadCredentialNotReady",
            "BulkheadIdentityCertificateExpiringSoon",
            "BulkheadControlPlaneDisconnected",
            "BulkheadPreflightFailing",
            "BulkheadLeaderMissing",
        ]
    );
    for rule in rule["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let expr = rule["expr"].as_str().unwrap();
        // Scoped to the release: every selector names the release namespace.
        assert_eq!(
            expr.matches('{').count(),
            expr.matches(&format!("namespace=\"{NAMESPACE}\"")).count(),
            "{expr}"
        );
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        assert!(
            url.starts_with("https://github.com/bulkhead-dev/bulkhead/blob/main/README.md#"),
            "{url}"
        );
    }
    let dashboard = r.one("ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        dashboard["metadata"]["annotations"]["grafana_folder"],
        "Platform"
    );
}

/// The alert expressions against the real promtool: `check rules` on the rendered rule, then
/// `test rules` with tests/alerts/bulkhead.test.yaml, which must have a firing case per alert.
#[test]
fn alerts_pass_promtool_check_and_a_unit_test_per_alert() {
    let helm = helm();
    let promtool = promtool();
    // Default values (no runbookUrl): the annotations the tests expect.
    let r = render(
        &helm,
        &ci_values("default"),
        &[
            "--set",
            "prometheusRule.enabled=true",
            "--api-versions",
            PROMETHEUS_RULE_API,
        ],
    );
    let spec = &r.one("PrometheusRule")["spec"];
    let dir = std::env::temp_dir().join(format!("bulkhead-alerts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("rules.yaml"),
        serde_json::to_string_pretty(spec).unwrap(),
    )
    .unwrap();
    let tests = repo().join("tests/alerts/bulkhead.test.yaml");
    std::fs::copy(&tests, dir.join("bulkhead.test.yaml")).unwrap();

    let run = |args: &[&str]| {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let checked = run(&["check", "rules", "rules.yaml"]);
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    run(&["test", "rules", "bulkhead.test.yaml"]);

    // A firing case for every alert of the rule.
    let text = std::fs::read_to_string(&tests).unwrap();
    let unit: Value = serde_saphyr::from_str(&text).unwrap();
    let mut firing = BTreeSet::new();
    for case in unit["tests"].as_array().unwrap() {
        for t in case["alert_rule_test"].as_array().unwrap() {
            if t["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                firing.insert(t["alertname"].as_str().unwrap().to_owned());
            }
        }
    }
    let alerts: BTreeSet<String> = spec["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap().to_owned())
        .collect();
    let untested: Vec<&String> = alerts.difference(&firing).collect();
    assert!(
        untested.is_empty(),
        "alerts without a firing test: {untested:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The dashboard is JSON Grafana loads, and it (and every alert) queries only metrics the
/// operator exports.
#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    let helm = helm();
    let r = monitoring(&helm);
    let json = r.one("ConfigMap")["data"]["bulkhead.json"]
        .as_str()
        .expect("the dashboard under data.bulkhead.json");
    let dashboard: Value = serde_json::from_str(json).expect("the dashboard is valid JSON");
    assert_eq!(dashboard["uid"], "bulkhead-operator");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_i64().unwrap()), "duplicate panel id");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("namespace=\"$namespace\""),
                "panel {}: {expr} is not scoped to $namespace",
                p["title"]
            );
        }
    }

    let mut all = Vec::new();
    queries(&dashboard, &mut all);
    let dashboard_queries = all.len();
    queries(&r.one("PrometheusRule")["spec"], &mut all);
    assert!(all.len() > dashboard_queries, "no alert expressions found");
    let used: BTreeSet<String> = all.iter().flat_map(|q| metric_names(q)).collect();
    let exported = exported_metric_names();
    assert!(
        exported.contains("bulkhead_reconcile_total"),
        "{exported:?}"
    );
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "queried but not exported: {unknown:?} (exported: {exported:?})"
    );
    // Nothing worth a panel is left out.
    for name in [
        "bulkhead_leader",
        "bulkhead_preflight_ok",
        "bulkhead_credential_ready",
        "bulkhead_reconcile_errors_total",
        "bulkhead_control_plane_requests_total",
        "bulkhead_identity_expiry_timestamp_seconds",
    ] {
        assert!(used.contains(name), "the dashboard does not show {name}");
    }
}

#[test]
fn an_open_api_server_egress_is_refused_unless_asked_for_explicitly() {
    let helm = helm();
    let open = ["--set-json", "networkPolicy.apiServer.cidrs=[]"];
    let out = template_output(&helm, &ci_values("default"), &open);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rendered an open egress");
    assert!(
        stderr.contains("networkPolicy.apiServer.allowAnyAddress=true")
            && stderr.contains("kubectl get endpointslices")
            && stderr.contains("443,6443"),
        "{stderr}"
    );
    // Without a NetworkPolicy there is no egress to pin.
    let off = [&open[..], &["--set", "networkPolicy.enabled=false"]].concat();
    assert!(
        template_output(&helm, &ci_values("default"), &off)
            .status
            .success()
    );

    let allowed = [
        &open[..],
        &["--set", "networkPolicy.apiServer.allowAnyAddress=true"],
    ]
    .concat();
    let r = render(&helm, &ci_values("default"), &allowed);
    let egress = r.one("NetworkPolicy")["spec"]["egress"]
        .as_array()
        .unwrap()
        .clone();
    let api_server = egress
        .iter()
        .find(|rule| ports(rule).contains(&(6443, "TCP".to_owned())))
        .unwrap();
    assert!(api_server.get("to").is_none(), "any address: {api_server}");

    let pinned = render(&helm, &ci_values("default"), &[]);
    let egress = pinned.one("NetworkPolicy")["spec"]["egress"]
        .as_array()
        .unwrap()
        .clone();
    let api_server = egress
        .iter()
        .find(|rule| ports(rule).contains(&(6443, "TCP".to_owned())))
        .unwrap();
    assert_eq!(api_server["to"][0]["ipBlock"]["cidr"], "10.0.0.10/32");
}

#[test]
fn a_token_lifetime_projects_the_token_volume_with_it() {
    let helm = helm();
    let default = render(&helm, &ci_values("default"), &[]);
    let pod = &default.one("Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert!(pod["volumes"].is_null(), "no projected volume by default");

    // A large value from a values file must render as an integer, not 1e+06.
    let short = render(
        &helm,
        &ci_values("default"),
        &["--set", "serviceAccount.tokenExpirationSeconds=1000000"],
    );
    let pod = &short.one("Deployment")["spec"]["template"]["spec"];
    assert_eq!(
        pod["automountServiceAccountToken"], false,
        "the projected volume replaces it"
    );
    let sources = pod["volumes"][0]["projected"]["sources"]
        .as_array()
        .unwrap();
    assert_eq!(
        sources[0]["serviceAccountToken"]["expirationSeconds"],
        1_000_000
    );
    assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
    assert_eq!(sources[2]["downwardAPI"]["items"][0]["path"], "namespace");
    let mount = &short.container()["volumeMounts"][0];
    assert_eq!(
        mount["mountPath"],
        "/var/run/secrets/kubernetes.io/serviceaccount"
    );
    assert_eq!(mount["readOnly"], true);

    let refused = template_output(
        &helm,
        &ci_values("default"),
        &["--set", "serviceAccount.tokenExpirationSeconds=60"],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("tokenExpirationSeconds"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}
