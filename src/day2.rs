//! Day-2 commands for people, with their own kubeconfig (also as `kubectl bulkhead ...`):
//! `status` prints the namespace's Tenant and Credentials as tables, `rotate` asks for one
//! rotation by setting the `bulkhead.dev/rotate-requested-at` annotation and says what the
//! operator will do. Both touch only the one namespace, and never read a Secret.

use std::fmt::Write as _;

use clap::Args;
use jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::api::credential::{ROTATE_REQUESTED_AT, RestartKind};
use crate::api::tenant::condition as tenant_condition;
use crate::api::{ConditionSet, Credential, CredentialType, Tenant};
use crate::{Error, Result};

/// `bulkhead status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Namespace (default: the current context's namespace in your kubeconfig).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

/// `bulkhead rotate`.
#[derive(Args, Debug)]
pub struct RotateArgs {
    /// The Credential to rotate.
    pub name: String,

    /// Namespace (default: the current context's namespace in your kubeconfig).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

/// The name a kubectl plugin has on `PATH`: `kubectl bulkhead status` runs
/// `kubectl-bulkhead status`.
pub const PLUGIN_NAME: &str = "kubectl-bulkhead";

/// The command-line name to show in help and errors: `kubectl bulkhead` when the binary was
/// started as the kubectl plugin (`argv[0]` is `kubectl-bulkhead`), else `bulkhead`.
pub fn display_name(argv0: Option<&std::ffi::OsStr>) -> &'static str {
    let invoked_as = argv0
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_stem)
        .and_then(std::ffi::OsStr::to_str);
    if invoked_as == Some(PLUGIN_NAME) {
        "kubectl bulkhead"
    } else {
        "bulkhead"
    }
}

/// A client from the user's kubeconfig (`KUBECONFIG`, `~/.kube/config`, or in-cluster) and the
/// namespace to use: `-n`, else the context's.
async fn user_client(namespace: Option<String>) -> Result<(Client, String)> {
    let config = kube::Config::infer().await.map_err(|e| {
        let message = format!(
            "cannot build a Kubernetes client: {e}; point KUBECONFIG at a kubeconfig (hack/demo.sh prints one)"
        );
        Error::config_from(message, e)
    })?;
    let namespace = namespace
        .filter(|ns| !ns.trim().is_empty())
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| {
        let message = format!(
            "cannot build a Kubernetes client: {}",
            crate::error::describe_kube(&e)
        );
        Error::config_from(message, e)
    })?;
    Ok((client, namespace))
}

/// Run `bulkhead status`: exit code 0 when the Tenant and every Credential are Ready, 1 when
/// something is not.
pub async fn status(args: StatusArgs) -> Result<i32> {
    let (client, namespace) = user_client(args.namespace).await?;
    let tenants = Api::<Tenant>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| access_error(e, "list tenants.bulkhead.dev", &namespace))?
        .items;
    let mut credentials = Api::<Credential>::namespaced(client, &namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| access_error(e, "list credentials.bulkhead.dev", &namespace))?
        .items;
    credentials.sort_by_key(ResourceExt::name_any);
    print!(
        "{}",
        render_status(&namespace, &tenants, &credentials, Timestamp::now())
    );
    let ready = |c: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>| {
        c.is_some_and(|c| c.is_true("Ready"))
    };
    let all_ready = tenants
        .iter()
        .all(|t| ready(t.status.as_ref().map(|s| &s.conditions)))
        && credentials
            .iter()
            .all(|c| ready(c.status.as_ref().map(|s| &s.conditions)));
    Ok(if all_ready { 0 } else { 1 })
}

/// Run `bulkhead rotate NAME`.
pub async fn rotate(args: RotateArgs) -> Result<i32> {
    let (client, namespace) = user_client(args.namespace).await?;
    let api = Api::<Credential>::namespaced(client, &namespace);
    let Some(credential) = api
        .get_opt(&args.name)
        .await
        .map_err(|e| access_error(e, &format!("get credentials/{}", args.name), &namespace))?
    else {
        return Err(Error::usage(format!(
            "no Credential {:?} in namespace {namespace}: see `bulkhead status -n {namespace}` (or pass -n NAMESPACE)",
            args.name
        )));
    };
    let stamp = Timestamp::now().to_string();
    let patch = json!({"metadata": {"annotations": {ROTATE_REQUESTED_AT: stamp}}});
    api.patch(&args.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            access_error(
                e,
                &format!("patch credentials/{} (the annotation)", args.name),
                &namespace,
            )
        })?;
    print!("{}", describe_rotation(&credential, &namespace, &stamp));
    Ok(0)
}

/// A 403 or 404 from the user's own kubeconfig, with what to do about it; any other failure
/// as the call that failed.
fn access_error(err: kube::Error, action: &str, namespace: &str) -> Error {
    let fix = if crate::error::is_status(&err, 403) {
        format!(
            "your kubeconfig's user may not {action} in namespace {namespace} (the aggregated edit/view ClusterRoles of crds-cluster/ grant it to namespace editors/viewers)"
        )
    } else if crate::error::is_status(&err, 404) {
        "the Bulkhead CRDs are not served: a cluster admin applies crds-cluster/ once (kubectl apply --server-side -f crds-cluster/)".to_owned()
    } else {
        return Error::api(format!("{action} in namespace {namespace}"), err);
    };
    let message = format!("{fix}: {}", crate::error::describe_kube(&err));
    Error::config_from(message, err)
}

/// What `rotate` tells the user will happen, from the Credential's spec.
pub fn describe_rotation(credential: &Credential, namespace: &str, stamp: &str) -> String {
    let name = credential.name_any();
    let secret = credential.secret_name();
    let spec = &credential.spec;
    let keep_previous = spec.rotation.as_ref().is_none_or(|r| r.keep_previous);
    let mut out = format!(
        "Credential {namespace}/{name}: set {ROTATE_REQUESTED_AT}={stamp}.\nThe operator will, once, within seconds:\n"
    );
    let what = match spec.type_ {
        CredentialType::Random if keep_previous => format!(
            "write a new random value to Secret {secret} (key value) and keep the current one as value.previous"
        ),
        CredentialType::Random => format!(
            "write a new random value to Secret {secret} (key value); the current one is dropped (rotation.keepPrevious: false)"
        ),
        CredentialType::KeySet => format!(
            "promote the staged key of Secret {secret} to primary, stage a fresh key 0 and drop the oldest beyond keySet.size ({})",
            spec.key_set.as_ref().map_or(3, |k| k.size)
        ),
        CredentialType::ControlPlaneToken => format!(
            "ask the control plane for a new token and write it to Secret {secret} (keys token, expiresAt)"
        ),
        CredentialType::RegistryCredentials => format!(
            "ask the control plane for new registry credentials and write them to Secret {secret} (key .dockerconfigjson)"
        ),
    };
    let _ = writeln!(out, "  - {what}");
    for target in &spec.restart_on_rotation {
        let kind = match target.kind {
            RestartKind::Deployment => "Deployment",
            RestartKind::StatefulSet => "StatefulSet",
            RestartKind::DaemonSet => "DaemonSet",
        };
        let _ = writeln!(
            out,
            "  - then restart {kind} {} (a pod-template annotation), if the chart's rbac.restartTargets lists it",
            target.name
        );
    }
    if spec.type_.is_issued() {
        let _ = writeln!(
            out,
            "  (the Tenant must be linked to the control plane; until then Ready=False, reason ControlPlaneNotLinked)"
        );
    }
    let _ = writeln!(
        out,
        "Follow it: kubectl get credential {name} -n {namespace} -w   (LAST ROTATION changes; bulkhead status -n {namespace})"
    );
    out
}

/// The `status` tables.
pub fn render_status(
    namespace: &str,
    tenants: &[Tenant],
    credentials: &[Credential],
    now: Timestamp,
) -> String {
    let mut out = String::new();
    if tenants.is_empty() {
        let _ = writeln!(
            out,
            "No Tenant in namespace {namespace} (create one named \"tenant\"; see README)."
        );
    } else {
        let mut rows = vec![row(&[
            "TENANT",
            "READY",
            "REASON",
            "TENANT ID",
            "CONTROL PLANE",
            "IDENTITY EXPIRES",
            "CREDENTIALS READY",
        ])];
        for t in tenants {
            let status = t.status.clone().unwrap_or_default();
            let (ready, reason) = condition(&status.conditions, "Ready");
            let connected = status
                .conditions
                .find(tenant_condition::CONTROL_PLANE_CONNECTED)
                .map_or_else(|| "-".to_owned(), |c| c.reason.clone());
            let expires = status
                .identity
                .as_ref()
                .map_or_else(|| "-".to_owned(), |i| when(Some(&i.not_after), now));
            let counts = status
                .credentials
                .map_or_else(|| "-".to_owned(), |c| format!("{}/{}", c.ready, c.total));
            rows.push(vec![
                t.name_any(),
                ready,
                reason,
                status.tenant_id.unwrap_or_else(|| "-".to_owned()),
                connected,
                expires,
                counts,
            ]);
        }
        out.push_str(&table(&rows));
    }
    out.push('\n');
    if credentials.is_empty() {
        let _ = writeln!(out, "No Credentials in namespace {namespace}.");
        return out;
    }
    let mut rows = vec![row(&[
        "CREDENTIAL",
        "TYPE",
        "SECRET",
        "READY",
        "REASON",
        "LAST ROTATION",
        "NEXT ROTATION",
        "KEY ID",
    ])];
    for c in credentials {
        let status = c.status.clone().unwrap_or_default();
        let (ready, reason) = condition(&status.conditions, "Ready");
        rows.push(vec![
            c.name_any(),
            c.spec.type_.as_str().to_owned(),
            status.secret_name.unwrap_or_else(|| c.secret_name()),
            ready,
            reason,
            when(status.last_rotation_time.as_deref(), now),
            when(status.next_rotation_time.as_deref(), now),
            status.key_id.unwrap_or_else(|| "-".to_owned()),
        ]);
    }
    out.push_str(&table(&rows));
    // Why something is not Ready, in full: the table only has room for the reason.
    for c in credentials {
        if let Some(cond) = c
            .status
            .as_ref()
            .and_then(|s| s.conditions.find("Ready"))
            .filter(|cond| cond.status != "True")
        {
            let _ = writeln!(out, "  {}: {}", c.name_any(), cond.message);
        }
    }
    out
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// (status, reason) of a condition, `Unknown`/`-` when it is absent (not reconciled yet).
fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> (String, String) {
    conditions.find(type_).map_or_else(
        || ("Unknown".to_owned(), "NotReconciled".to_owned()),
        |c| (c.status.clone(), c.reason.clone()),
    )
}

/// An RFC 3339 time as `2026-11-29T14:00:00Z (5m ago)` / `(in 29d)`; `-` when absent.
fn when(time: Option<&str>, now: Timestamp) -> String {
    let Some(text) = time else {
        return "-".to_owned();
    };
    let Ok(at) = text.parse::<Timestamp>() else {
        return text.to_owned();
    };
    let at_seconds = Timestamp::from_second(at.as_second()).unwrap_or(at);
    let delta = at.duration_since(now);
    let relative = if delta.is_negative() {
        format!("{} ago", short(delta.abs()))
    } else {
        format!("in {}", short(delta))
    };
    format!("{at_seconds} ({relative})")
}

/// A duration in its largest unit: 42s, 5m, 3h, 29d.
fn short(d: SignedDuration) -> String {
    let s = d.as_secs();
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Left-aligned columns separated by three spaces, like kubectl's tables.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 3;
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn an_access_error_names_the_call_the_fix_and_keeps_the_kube_error() {
        let answer = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: "nope".into(),
                ..kube::core::Status::default()
            }))
        };
        let forbidden = access_error(answer(403), "list tenants.bulkhead.dev", "team-a");
        let text = forbidden.to_string();
        assert!(
            text.starts_with(
                "your kubeconfig's user may not list tenants.bulkhead.dev in namespace team-a"
            ) && text.ends_with(": HTTP 403 Forbidden: nope"),
            "{text}"
        );
        assert!(std::error::Error::source(&forbidden).is_some_and(|s| s.is::<kube::Error>()));
        let absent = access_error(answer(404), "list tenants.bulkhead.dev", "team-a");
        assert!(
            absent
                .to_string()
                .contains("kubectl apply --server-side -f crds-cluster/")
        );
        let other = access_error(answer(500), "list tenants.bulkhead.dev", "team-a");
        assert_eq!(
            other.to_string(),
            "list tenants.bulkhead.dev in namespace team-a failed: HTTP 500 Internal Server Error: nope"
        );
        assert_eq!(other.metric_label(), "kube");
    }

    fn credential(name: &str, spec: serde_json::Value, status: serde_json::Value) -> Credential {
        serde_json::from_value(json!({
            "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Credential",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": spec, "status": status,
        }))
        .unwrap()
    }

    fn tenant(status: serde_json::Value) -> Tenant {
        serde_json::from_value(json!({
            "apiVersion": "bulkhead.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "tenant", "namespace": "demo"},
            "spec": {}, "status": status,
        }))
        .unwrap()
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> serde_json::Value {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastTransitionTime": "2026-11-29T10:00:00Z"})
    }

    #[test]
    fn status_tables_show_readiness_rotations_and_key_ids_aligned() {
        let now = ts("2026-11-29T12:00:00Z");
        let tenants = [tenant(json!({
            "tenantId": "demo",
            "identity": {"subject": "CN=x", "notAfter": "2027-02-27T12:00:00Z", "fingerprint": "ab"},
            "credentials": {"total": 2, "ready": 1},
            "conditions": [cond("Ready", "True", "Linked", "linked"),
                           cond("ControlPlaneConnected", "True", "Connected", "ok")],
        }))];
        let credentials = [
            credential(
                "db-password",
                json!({"type": "Random", "random": {}, "rotation": {"every": "720h"}}),
                json!({"secretName": "db-password", "keyId": "k-3f9a",
                       "lastRotationTime": "2026-11-29T11:55:00Z",
                       "nextRotationTime": "2026-12-29T12:00:00.123Z",
                       "conditions": [cond("Ready", "True", "Ready", "fine")]}),
            ),
            credential(
                "registry",
                json!({"type": "RegistryCredentials", "registryCredentials": {"server": "r.example"}, "secretName": "pull"}),
                json!({"conditions": [cond("Ready", "False", "ControlPlaneNotLinked", "the Tenant has no control-plane link yet")]}),
            ),
        ];
        let text = render_status("demo", &tenants, &credentials, now);
        let expected = "\
TENANT   READY   REASON   TENANT ID   CONTROL PLANE   IDENTITY EXPIRES                CREDENTIALS READY
tenant   True    Linked   demo        Connected       2027-02-27T12:00:00Z (in 90d)   1/2

CREDENTIAL    TYPE                  SECRET        READY   REASON                  LAST ROTATION                   NEXT ROTATION                   KEY ID
db-password   Random                db-password   True    Ready                   2026-11-29T11:55:00Z (5m ago)   2026-12-29T12:00:00Z (in 30d)   k-3f9a
registry      RegistryCredentials   pull          False   ControlPlaneNotLinked   -                               -                               -
  registry: the Tenant has no control-plane link yet
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn status_says_what_is_missing_and_unreconciled_objects_are_unknown() {
        let now = ts("2026-11-29T12:00:00Z");
        let text = render_status("team-a", &[], &[], now);
        assert!(text.contains("No Tenant in namespace team-a"), "{text}");
        assert!(
            text.contains("No Credentials in namespace team-a."),
            "{text}"
        );

        let fresh = credential("new", json!({"type": "KeySet", "keySet": {}}), json!(null));
        let text = render_status("team-a", &[], &[fresh], now);
        let line = text.lines().find(|l| l.starts_with("new ")).unwrap();
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "new",
                "KeySet",
                "new",
                "Unknown",
                "NotReconciled",
                "-",
                "-",
                "-"
            ]
        );
    }

    #[test]
    fn rotate_describes_what_the_operator_will_do_per_type() {
        let random = credential(
            "db",
            json!({"type": "Random", "random": {}, "secretName": "db-password",
                   "restartOnRotation": [{"kind": "Deployment", "name": "api"}]}),
            json!(null),
        );
        let text = describe_rotation(&random, "team-a", "2026-11-29T12:00:00Z");
        assert!(
            text.starts_with(
                "Credential team-a/db: set bulkhead.dev/rotate-requested-at=2026-11-29T12:00:00Z."
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "Secret db-password (key value) and keep the current one as value.previous"
            ),
            "{text}"
        );
        assert!(text.contains("restart Deployment api"), "{text}");
        assert!(
            text.contains("kubectl get credential db -n team-a -w"),
            "{text}"
        );

        let dropped = credential(
            "db",
            json!({"type": "Random", "random": {}, "rotation": {"every": "1h", "keepPrevious": false}}),
            json!(null),
        );
        assert!(describe_rotation(&dropped, "a", "t").contains("keepPrevious: false"));
        let keys = credential(
            "k",
            json!({"type": "KeySet", "keySet": {"size": 5}}),
            json!(null),
        );
        assert!(describe_rotation(&keys, "a", "t").contains("beyond keySet.size (5)"));
        let token = credential(
            "t",
            json!({"type": "ControlPlaneToken", "controlPlaneToken": {"audience": "x"}}),
            json!(null),
        );
        let text = describe_rotation(&token, "a", "t");
        assert!(
            text.contains("new token") && text.contains("ControlPlaneNotLinked"),
            "{text}"
        );
    }

    #[test]
    fn started_as_kubectl_bulkhead_it_is_named_as_the_plugin() {
        use std::ffi::OsStr;
        assert_eq!(
            display_name(Some(OsStr::new("/home/me/bin/kubectl-bulkhead"))),
            "kubectl bulkhead"
        );
        assert_eq!(
            display_name(Some(OsStr::new("kubectl-bulkhead"))),
            "kubectl bulkhead"
        );
        assert_eq!(
            display_name(Some(OsStr::new("target/debug/bulkhead"))),
            "bulkhead"
        );
        assert_eq!(display_name(None), "bulkhead");
    }

    #[test]
    fn durations_use_their_largest_unit() {
        let now = ts("2026-11-29T12:00:00Z");
        assert_eq!(when(None, now), "-");
        assert_eq!(
            when(Some("2026-11-29T11:59:18Z"), now),
            "2026-11-29T11:59:18Z (42s ago)"
        );
        assert_eq!(
            when(Some("2026-11-29T15:00:00Z"), now),
            "2026-11-29T15:00:00Z (in 3h)"
        );
        assert_eq!(when(Some("not a time"), now), "not a time");
    }
}
