//! The exact Role this version needs: the single source of truth for `bulkhead rbac`, the
//! chart's Role (a test compares them) and the start-up preflight.
//!
//! Every rule names the code that needs it. Rights are compared as expanded
//! (group, resource, verb, name) grants so that "missing" and "beyond need" are exact.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::api::credential::RestartKind;

/// What the Role depends on besides the binary version: the values the chart pins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RbacOptions {
    /// Name of the leader-election Lease.
    pub lease_name: String,
    /// Grant list/watch on Secrets for instant drift repair (a documented trade-off).
    pub watch_managed_secrets: bool,
    /// Workloads that may be restarted after a rotation.
    pub restart_targets: Vec<(RestartKind, String)>,
    /// The mTLS identity Secret, the only Secret the operator may watch by default.
    pub identity_secret: String,
}

/// One rule of the Role, with the reason it exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleRule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    pub verbs: Vec<String>,
    /// The code that needs this rule (not part of the Kubernetes object).
    #[serde(skip)]
    pub why: &'static str,
    /// The chart value that grants it, for error messages.
    #[serde(skip)]
    pub chart_value: &'static str,
}

fn rule(
    group: &str,
    resources: &[&str],
    names: &[String],
    verbs: &[&str],
    why: &'static str,
    chart_value: &'static str,
) -> RoleRule {
    RoleRule {
        api_groups: vec![group.to_owned()],
        resources: resources.iter().map(|s| (*s).to_owned()).collect(),
        resource_names: names.to_vec(),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        why,
        chart_value,
    }
}

/// The rules this version needs, in a stable order.
pub fn required_rules(opts: &RbacOptions) -> Vec<RoleRule> {
    let mut rules = vec![
        rule(
            "bulkhead.dev",
            &["tenants", "credentials"],
            &[],
            &["get", "list", "watch"],
            "controller caches: the Tenant and Credential watchers (src/controller/mod.rs) and the CRD preflight list with limit=1 (src/preflight.rs)",
            "the chart's Role (always granted)",
        ),
        rule(
            "bulkhead.dev",
            &["tenants/status", "credentials/status"],
            &[],
            &["patch"],
            "status written by server-side apply (src/controller/tenant.rs, src/controller/credential.rs)",
            "the chart's Role (always granted)",
        ),
        rule(
            "bulkhead.dev",
            &["credentials/finalizers"],
            &[],
            &["update"],
            "managed Secrets carry an ownerReference with blockOwnerDeletion, which needs update on the owner's finalizers (src/resources/secret.rs)",
            "the chart's Role (always granted)",
        ),
        rule(
            "",
            &["secrets"],
            &[],
            &["get", "create", "patch"],
            "managed Secrets are read by name and written by server-side apply; no list, no watch (src/controller/credential.rs)",
            "the chart's Role (always granted)",
        ),
        rule(
            "",
            &["secrets"],
            std::slice::from_ref(&opts.identity_secret),
            &["list", "watch"],
            "the mTLS identity is hot-reloaded through a watch on exactly this Secret (fieldSelector metadata.name); get is already granted above (src/controller/mod.rs, src/controlplane/identity.rs)",
            "identity.secretName",
        ),
        rule(
            "coordination.k8s.io",
            &["leases"],
            std::slice::from_ref(&opts.lease_name),
            &["get", "list", "watch", "patch"],
            "leader election renews its own Lease, and a standby watches it (fieldSelector metadata.name) to take over the moment it is released (src/leader.rs)",
            "leaderElection.leaseName",
        ),
        rule(
            "coordination.k8s.io",
            &["leases"],
            &[],
            &["create"],
            "leader election creates the Lease on first start; create cannot be limited by name (src/leader.rs)",
            "the chart's Role (always granted)",
        ),
        rule(
            "events.k8s.io",
            &["events"],
            &[],
            &["create", "patch"],
            "Events on condition transitions and rotations; patch updates a repeated Event's series (src/controller/events.rs)",
            "the chart's Role (always granted)",
        ),
    ];
    if opts.watch_managed_secrets {
        rules.push(rule(
            "",
            &["secrets"],
            &[],
            &["list", "watch"],
            "--watch-managed-secrets: a label-selected watch repairs drift at once; it also lets the operator enumerate every Secret of the namespace (src/controller/credential.rs)",
            "rbac.watchManagedSecrets",
        ));
    }
    for kind in [
        RestartKind::Deployment,
        RestartKind::StatefulSet,
        RestartKind::DaemonSet,
    ] {
        // An empty resourceNames list would grant every name: emit the rule only with names.
        let names: BTreeSet<String> = opts
            .restart_targets
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.clone())
            .collect();
        if !names.is_empty() {
            rules.push(rule(
                "apps",
                &[kind.resource()],
                &names.into_iter().collect::<Vec<_>>(),
                &["patch"],
                "restartOnRotation patches the pod template's restart annotation (src/controller/restart.rs)",
                "rbac.restartTargets",
            ));
        }
    }
    rules
}

/// One expanded grant: a verb on a resource, optionally limited to one name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    pub group: String,
    pub resource: String,
    pub verb: String,
    /// `None`: any name.
    pub name: Option<String>,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)?;
        if let Some(name) = &self.name {
            write!(f, " (resourceNames: {name})")?;
        }
        Ok(())
    }
}

/// Expand rules into individual grants.
pub fn expand(rules: &[RoleRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for r in rules {
        for group in &r.api_groups {
            for resource in &r.resources {
                for verb in &r.verbs {
                    if r.resource_names.is_empty() {
                        out.insert(Grant {
                            group: group.clone(),
                            resource: resource.clone(),
                            verb: verb.clone(),
                            name: None,
                        });
                    } else {
                        for name in &r.resource_names {
                            out.insert(Grant {
                                group: group.clone(),
                                resource: resource.clone(),
                                verb: verb.clone(),
                                name: Some(name.clone()),
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// A rule as a `SelfSubjectRulesReview` returns it (wildcards allowed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantedRule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub resource_names: Vec<String>,
    pub verbs: Vec<String>,
}

impl GrantedRule {
    fn matches(list: &[String], value: &str) -> bool {
        list.iter().any(|v| v == "*" || v == value)
    }

    /// Whether this granted rule allows the grant.
    pub fn allows(&self, grant: &Grant) -> bool {
        let resource_ok = self.resources.iter().any(|r| {
            r == "*"
                || r == &grant.resource
                || r.strip_suffix("/*")
                    .is_some_and(|base| grant.resource.starts_with(&format!("{base}/")))
        });
        let name_ok = self.resource_names.is_empty()
            || grant
                .name
                .as_ref()
                .is_some_and(|n| self.resource_names.contains(n));
        Self::matches(&self.api_groups, &grant.group)
            && resource_ok
            && Self::matches(&self.verbs, &grant.verb)
            && name_ok
    }
}

/// Rules every authenticated user has (system:basic-user, system:discovery): never "excess".
fn granted_to_everyone(rule: &GrantedRule) -> bool {
    rule.api_groups
        .iter()
        .all(|g| g == "authorization.k8s.io" || g == "authentication.k8s.io")
        && rule.resources.iter().all(|r| {
            matches!(
                r.as_str(),
                "selfsubjectaccessreviews" | "selfsubjectrulesreviews" | "selfsubjectreviews"
            )
        })
}

/// The outcome of comparing granted rights with what this version needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RightsReport {
    /// Needed grants the Role does not give, with the rule's chart value.
    pub missing: Vec<(Grant, &'static str)>,
    /// Granted rules beyond need, described for a warning.
    pub excess: Vec<String>,
    /// The API server could not list every rule (e.g. a webhook authorizer).
    pub incomplete: bool,
}

impl RightsReport {
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Compare what a `SelfSubjectRulesReview` says with what this version needs.
pub fn compare(required: &[RoleRule], granted: &[GrantedRule], incomplete: bool) -> RightsReport {
    let mut report = RightsReport {
        incomplete,
        ..RightsReport::default()
    };
    for r in required {
        for grant in expand(std::slice::from_ref(r)) {
            if !granted.iter().any(|g| g.allows(&grant)) {
                report.missing.push((grant, r.chart_value));
            }
        }
    }
    let needed = expand(required);
    for g in granted {
        if granted_to_everyone(g) {
            continue;
        }
        let wildcard = [&g.api_groups, &g.resources, &g.verbs]
            .iter()
            .any(|list| list.iter().any(|v| v == "*" || v.ends_with("/*")));
        let beyond: Vec<String> = if wildcard {
            vec![describe_rule(g)]
        } else {
            expand(&[RoleRule {
                api_groups: g.api_groups.clone(),
                resources: g.resources.clone(),
                resource_names: g.resource_names.clone(),
                verbs: g.verbs.clone(),
                why: "",
                chart_value: "",
            }])
            .into_iter()
            .filter(|grant| !covered_by(&needed, grant))
            .map(|grant| grant.to_string())
            .collect()
        };
        report.excess.extend(beyond);
    }
    report
}

/// A needed grant without a name covers the same grant limited to any name.
fn covered_by(needed: &BTreeSet<Grant>, grant: &Grant) -> bool {
    needed.contains(grant)
        || (grant.name.is_some()
            && needed.contains(&Grant {
                name: None,
                ..grant.clone()
            }))
}

fn describe_rule(g: &GrantedRule) -> String {
    let mut s = format!(
        "{} on {} in groups {}",
        g.verbs.join(","),
        g.resources.join(","),
        g.api_groups.join(",")
    );
    if !g.resource_names.is_empty() {
        let _ = write!(s, " (resourceNames: {})", g.resource_names.join(","));
    }
    s
}

/// The Role as YAML, each rule preceded by a comment naming the code that needs it.
pub fn role_yaml(namespace: &str, name: &str, rules: &[RoleRule]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# The exact Role Bulkhead {} needs.",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(out, "apiVersion: rbac.authorization.k8s.io/v1");
    let _ = writeln!(out, "kind: Role");
    let _ = writeln!(out, "metadata:");
    let _ = writeln!(out, "  name: {name}");
    let _ = writeln!(out, "  namespace: {namespace}");
    let _ = writeln!(out, "rules:");
    let list = |items: &[String]| -> String {
        let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
        format!("[{}]", quoted.join(", "))
    };
    for r in rules {
        let _ = writeln!(out, "  # {}", r.why);
        let _ = writeln!(out, "  - apiGroups: {}", list(&r.api_groups));
        let _ = writeln!(out, "    resources: {}", list(&r.resources));
        if !r.resource_names.is_empty() {
            let _ = writeln!(out, "    resourceNames: {}", list(&r.resource_names));
        }
        let _ = writeln!(out, "    verbs: {}", list(&r.verbs));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> RbacOptions {
        RbacOptions {
            lease_name: "bulkhead".into(),
            identity_secret: "bulkhead-identity".into(),
            ..RbacOptions::default()
        }
    }

    fn as_granted(rules: &[RoleRule]) -> Vec<GrantedRule> {
        rules
            .iter()
            .map(|r| GrantedRule {
                api_groups: r.api_groups.clone(),
                resources: r.resources.clone(),
                resource_names: r.resource_names.clone(),
                verbs: r.verbs.clone(),
            })
            .collect()
    }

    fn basic_user() -> GrantedRule {
        GrantedRule {
            api_groups: vec!["authorization.k8s.io".into()],
            resources: vec![
                "selfsubjectaccessreviews".into(),
                "selfsubjectrulesreviews".into(),
            ],
            verbs: vec!["create".into()],
            ..GrantedRule::default()
        }
    }

    #[test]
    fn default_role_lists_and_watches_only_the_identity_secret() {
        let grants = expand(&required_rules(&opts()));
        let secret_reads: Vec<_> = grants
            .iter()
            .filter(|g| g.resource == "secrets" && (g.verb == "list" || g.verb == "watch"))
            .map(|g| (g.verb.as_str(), g.name.as_deref()))
            .collect();
        // Pinned to one name: the other Secrets of the namespace cannot be enumerated.
        assert_eq!(
            secret_reads,
            [
                ("list", Some("bulkhead-identity")),
                ("watch", Some("bulkhead-identity"))
            ]
        );
        assert!(grants.iter().all(|g| g.verb != "*" && g.resource != "*"));
    }

    #[test]
    fn watch_managed_secrets_adds_exactly_list_and_watch() {
        let base = expand(&required_rules(&opts()));
        let with = expand(&required_rules(&RbacOptions {
            watch_managed_secrets: true,
            ..opts()
        }));
        let added: Vec<String> = with.difference(&base).map(ToString::to_string).collect();
        assert_eq!(added, vec!["list core/secrets", "watch core/secrets"]);
    }

    #[test]
    fn restart_targets_are_pinned_by_name_and_absent_without_names() {
        let none = required_rules(&opts());
        assert!(
            none.iter()
                .all(|r| !r.api_groups.contains(&"apps".to_string()))
        );
        let rules = required_rules(&RbacOptions {
            restart_targets: vec![
                (RestartKind::Deployment, "api".into()),
                (RestartKind::Deployment, "worker".into()),
                (RestartKind::StatefulSet, "db".into()),
            ],
            ..opts()
        });
        let apps: Vec<_> = rules.iter().filter(|r| r.api_groups == ["apps"]).collect();
        assert_eq!(apps.len(), 2);
        assert_eq!(apps[0].resources, ["deployments"]);
        assert_eq!(apps[0].resource_names, ["api", "worker"]);
        assert_eq!(apps[1].resources, ["statefulsets"]);
        assert_eq!(apps[1].verbs, ["patch"]);
    }

    #[test]
    fn exact_role_is_complete_and_has_no_excess() {
        let required = required_rules(&opts());
        let mut granted = as_granted(&required);
        granted.push(basic_user());
        let report = compare(&required, &granted, false);
        assert!(report.is_ok(), "{report:?}");
        assert!(report.excess.is_empty(), "{report:?}");
    }

    #[test]
    fn a_missing_rule_is_named_with_its_chart_value() {
        let required = required_rules(&opts());
        let granted: Vec<GrantedRule> = as_granted(&required)
            .into_iter()
            .filter(|g| g.resources != ["leases"] || g.resource_names.is_empty())
            .collect();
        let report = compare(&required, &granted, false);
        let missing: Vec<String> = report
            .missing
            .iter()
            .map(|(g, v)| format!("{g} via {v}"))
            .collect();
        assert_eq!(
            missing,
            vec![
                "get coordination.k8s.io/leases (resourceNames: bulkhead) via leaderElection.leaseName",
                "list coordination.k8s.io/leases (resourceNames: bulkhead) via leaderElection.leaseName",
                "patch coordination.k8s.io/leases (resourceNames: bulkhead) via leaderElection.leaseName",
                "watch coordination.k8s.io/leases (resourceNames: bulkhead) via leaderElection.leaseName",
            ]
        );
    }

    #[test]
    fn list_secrets_is_reported_as_excess() {
        let required = required_rules(&opts());
        let mut granted = as_granted(&required);
        granted.push(GrantedRule {
            api_groups: vec![String::new()],
            resources: vec!["secrets".into()],
            verbs: vec!["get".into(), "list".into()],
            ..GrantedRule::default()
        });
        let report = compare(&required, &granted, false);
        assert!(report.is_ok());
        assert_eq!(report.excess, vec!["list core/secrets"]);
    }

    #[test]
    fn wildcards_satisfy_needs_but_are_reported() {
        let required = required_rules(&opts());
        let admin = GrantedRule {
            api_groups: vec!["*".into()],
            resources: vec!["*".into()],
            verbs: vec!["*".into()],
            ..GrantedRule::default()
        };
        let report = compare(&required, &[admin], false);
        assert!(report.is_ok());
        assert_eq!(report.excess, vec!["* on * in groups *"]);
    }

    #[test]
    fn a_name_pinned_grant_does_not_satisfy_an_any_name_need() {
        let need = Grant {
            group: String::new(),
            resource: "secrets".into(),
            verb: "get".into(),
            name: None,
        };
        let pinned = GrantedRule {
            api_groups: vec![String::new()],
            resources: vec!["secrets".into()],
            resource_names: vec!["only-this".into()],
            verbs: vec!["get".into()],
        };
        assert!(!pinned.allows(&need));
        assert!(pinned.allows(&Grant {
            name: Some("only-this".into()),
            ..need
        }));
    }

    #[test]
    fn role_yaml_parses_and_carries_a_reason_per_rule() {
        let rules = required_rules(&RbacOptions {
            restart_targets: vec![(RestartKind::DaemonSet, "agent".into())],
            ..opts()
        });
        let yaml = role_yaml("team-a", "bulkhead", &rules);
        #[derive(Deserialize)]
        struct Role {
            kind: String,
            rules: Vec<RoleRule>,
        }
        let role: Role = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(role.kind, "Role");
        let parsed: Vec<_> = role
            .rules
            .iter()
            .map(|r| (&r.resources, &r.verbs, &r.resource_names))
            .collect();
        let expected: Vec<_> = rules
            .iter()
            .map(|r| (&r.resources, &r.verbs, &r.resource_names))
            .collect();
        assert_eq!(parsed, expected);
        assert_eq!(yaml.matches("\n  # ").count(), rules.len());
    }
}
