//! Command-line interface: `run`, `crds`, `rbac`, `check`, `status`, `rotate`, `version`.
//!
//! Every `run` flag has a `BULKHEAD_*` environment twin. There is no cluster-wide mode: `run`
//! and `check` refuse to start without a namespace.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::api::credential::RestartKind;
use crate::leader::{self, LeaderConfig};
use crate::operator::{self, RunConfig};
use crate::rbac::{self, RbacOptions};
use crate::telemetry::{self, LogFormat, Metrics, Readiness};
use crate::{Error, Result, preflight};

/// Bulkhead: credentials for one team namespace, with nothing but a namespaced Role.
#[derive(Parser, Debug)]
#[command(name = "bulkhead", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator in one namespace.
    Run(RunArgs),
    /// Print the cluster-admin bundle: the CRDs and the aggregated ClusterRoles.
    Crds,
    /// Print the exact Role this version needs.
    Rbac(RbacArgs),
    /// Preflight a namespace: CRDs served, every needed right granted, nothing beyond need.
    /// Exit code 0: ready; 1: something is missing; 2: the check could not run.
    Check(CheckArgs),
    /// Show the namespace's Tenant and Credentials: readiness, last/next rotation, key id.
    /// Uses your kubeconfig. Exit code 0: everything Ready; 1: something is not.
    Status(crate::day2::StatusArgs),
    /// Rotate a Credential now (sets the bulkhead.dev/rotate-requested-at annotation) and say
    /// what the operator will do. Uses your kubeconfig.
    Rotate(crate::day2::RotateArgs),
    /// Print the version.
    Version,
}

/// Flags shared by `run`, `rbac` and `check`: the values the Role depends on.
#[derive(Args, Debug, Clone)]
pub struct RoleArgs {
    /// Name of the leader-election Lease. Fixed per namespace so that a second release in the
    /// same namespace stays standby instead of fighting the first.
    #[arg(long, env = "BULKHEAD_LEASE_NAME", default_value = "bulkhead")]
    pub lease_name: String,

    /// Watch managed Secrets (label-selected) to repair drift at once. Needs list/watch on
    /// Secrets, which also lets the operator enumerate every Secret of the namespace; off by
    /// default, when drift is repaired on a periodic re-check instead.
    #[arg(long, env = "BULKHEAD_WATCH_MANAGED_SECRETS", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub watch_managed_secrets: bool,

    /// A workload that Credentials may restart after a rotation, as Kind/name
    /// (Deployment/api, StatefulSet/db, DaemonSet/agent). Repeat for each; the Role pins them.
    #[arg(long = "restart-target", env = "BULKHEAD_RESTART_TARGETS", value_delimiter = ',', value_parser = parse_restart_target)]
    pub restart_targets: Vec<(RestartKind, String)>,

    /// Name of the Secret holding the mTLS identity (tls.crt, tls.key, ca.crt) for the
    /// control-plane link. The Role can list/watch only this Secret (chart value
    /// identity.secretName); a Tenant's spec.controlPlane.identitySecretName must match it.
    #[arg(
        long,
        env = "BULKHEAD_IDENTITY_SECRET",
        default_value = "bulkhead-identity"
    )]
    pub identity_secret: String,
}

impl RoleArgs {
    pub fn rbac_options(&self) -> RbacOptions {
        RbacOptions {
            lease_name: self.lease_name.clone(),
            watch_managed_secrets: self.watch_managed_secrets,
            restart_targets: self.restart_targets.clone(),
            identity_secret: self.identity_secret.clone(),
        }
    }
}

fn parse_restart_target(value: &str) -> std::result::Result<(RestartKind, String), String> {
    let fix =
        "write it as Kind/name, e.g. Deployment/api (Kind: Deployment, StatefulSet or DaemonSet)";
    let (kind, name) = value
        .split_once('/')
        .ok_or_else(|| format!("{value:?} has no '/'; {fix}"))?;
    let kind = match kind {
        "Deployment" => RestartKind::Deployment,
        "StatefulSet" => RestartKind::StatefulSet,
        "DaemonSet" => RestartKind::DaemonSet,
        other => return Err(format!("{other:?} is not a restartable kind; {fix}")),
    };
    if name.is_empty() || name.contains('/') {
        return Err(format!("{value:?} has no usable name; {fix}"));
    }
    Ok((kind, name.to_owned()))
}

fn parse_duration(value: &str) -> std::result::Result<Duration, String> {
    crate::api::duration::parse(value).map_err(|e| e.to_string())
}

/// `bulkhead run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The namespace to manage (the chart passes the pod's own namespace). Required: there is
    /// no cluster-wide mode.
    #[arg(long, env = "BULKHEAD_NAMESPACE", required = true)]
    pub namespace: Option<String>,

    #[command(flatten)]
    pub role: RoleArgs,

    /// Compete for the Lease and reconcile only while holding it. Turn off only for a single
    /// replica you are sure is alone.
    #[arg(long, env = "BULKHEAD_LEADER_ELECT", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,

    /// How long a Lease is valid without renewal (a standby takes over after this when the
    /// leader dies without releasing it).
    #[arg(long, env = "BULKHEAD_LEASE_DURATION", default_value = "30s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// How long before the Lease expires the leader renews it (renewal every
    /// lease-duration minus this); a leader that cannot renew stops writing half of it before
    /// the Lease expires.
    #[arg(long, env = "BULKHEAD_LEASE_RENEW_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub lease_renew_grace: Duration,

    /// Address of the Prometheus metrics endpoint (`/metrics`).
    #[arg(long, env = "BULKHEAD_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Address of the probe endpoints (`/healthz`, `/readyz`).
    #[arg(long, env = "BULKHEAD_PROBE_ADDR", default_value = "0.0.0.0:8081")]
    pub probe_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "BULKHEAD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log filter: a level (info, debug) or per-target directives (bulkhead=debug,kube=warn).
    #[arg(long, env = "BULKHEAD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// This process's name in the Lease and in Events (the chart passes the pod name).
    #[arg(long, env = "BULKHEAD_POD_NAME")]
    pub pod_name: Option<String>,

    /// How often each managed Secret is re-read (by name) to repair drift when
    /// --watch-managed-secrets is off. Each re-check is one GET per Credential.
    #[arg(long, env = "BULKHEAD_DRIFT_CHECK_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub drift_check_interval: Duration,

    /// How long in-flight reconciles may take to finish on shutdown.
    #[arg(long, env = "BULKHEAD_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Credential reconciles in flight at once: a burst or a cold start is worked through this
    /// many at a time (more is faster and holds more memory at the peak).
    #[arg(long, env = "BULKHEAD_MAX_CONCURRENT_RECONCILES", default_value_t = crate::controller::RECONCILE_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
}

/// Output format of `bulkhead rbac`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Yaml,
    Json,
}

/// `bulkhead rbac`.
#[derive(Args, Debug)]
pub struct RbacArgs {
    /// Namespace written into the printed Role.
    #[arg(long, env = "BULKHEAD_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Name of the printed Role.
    #[arg(long, default_value = "bulkhead")]
    pub name: String,

    #[command(flatten)]
    pub role: RoleArgs,

    /// yaml (commented, for people) or json (the rules, for tools).
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Yaml)]
    pub output: OutputFormat,
}

/// `bulkhead check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The namespace to check.
    #[arg(long, env = "BULKHEAD_NAMESPACE", required = true)]
    pub namespace: Option<String>,

    #[command(flatten)]
    pub role: RoleArgs,
}

fn require_namespace(ns: Option<String>) -> Result<String> {
    match ns {
        Some(ns) if !ns.trim().is_empty() => Ok(ns),
        _ => Err(Error::usage(
            "no namespace: pass --namespace NS or set BULKHEAD_NAMESPACE (Bulkhead has no cluster-wide mode)",
        )),
    }
}

/// The Kubernetes client, the API server it talks to as a user names it (the URL and the
/// kubeconfig context, or `in-cluster`), and whether it is the in-cluster configuration.
async fn client() -> Result<(kube::Client, String, bool)> {
    let kubeconfig = kube::config::Kubeconfig::read();
    let config = kube::Config::infer().await.map_err(|e| {
        let message = format!(
            "cannot build a Kubernetes client: {}",
            no_config(&e, kubeconfig.as_ref().err())
        );
        Error::config_from(message, e)
    })?;
    let in_cluster = kubeconfig.is_err();
    let context = match &kubeconfig {
        Ok(k) => k
            .current_context
            .clone()
            .map_or_else(|| "kubeconfig".to_owned(), |c| format!("context {c}")),
        Err(_) => "in-cluster".to_owned(),
    };
    let server = format!("{} ({context})", config.cluster_url);
    let client = crate::kubeclient::build(config).map_err(|e| {
        let message = format!(
            "cannot build a Kubernetes client for {server}: {}",
            crate::error::describe_kube(&e)
        );
        Error::config_from(message, e)
    })?;
    Ok((client, server, in_cluster))
}

/// Why no Kubernetes configuration was found, naming the kubeconfig path once, unquoted.
fn no_config(
    infer: &kube::config::InferConfigError,
    kubeconfig: Option<&kube::config::KubeconfigError>,
) -> String {
    let fix = "set KUBECONFIG to a readable kubeconfig, or run in a pod with a ServiceAccount";
    let path = std::env::var_os("KUBECONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".kube/config"))
        });
    match (kubeconfig, path) {
        (Some(_), Some(path)) => match std::fs::metadata(&path) {
            Err(io) => format!(
                "no Kubernetes configuration: not in a pod, and the kubeconfig {} cannot be read ({io}); {fix}",
                path.display()
            ),
            Ok(_) => format!(
                "no usable Kubernetes configuration: the kubeconfig {} is invalid ({}); {fix}",
                path.display(),
                kubeconfig
                    .map(|e| crate::error::chain(e))
                    .unwrap_or_default()
            ),
        },
        _ => format!(
            "no Kubernetes configuration ({}); {fix}",
            crate::error::chain(infer)
        ),
    }
}

/// A process identity unique per process, for the Lease.
fn process_identity(pod_name: Option<String>) -> String {
    let base = pod_name
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "bulkhead".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{base}_{:x}{:05x}", std::process::id(), nanos & 0xfffff)
}

/// The bundle a cluster admin applies: CRDs and aggregated ClusterRoles, as YAML documents.
pub fn crd_bundle() -> Result<String> {
    let mut docs = Vec::new();
    for crd in crate::api::crds() {
        docs.push(
            serde_saphyr::to_string(&crd)
                .map_err(|e| Error::usage_from(format!("cannot render CRD: {e}"), e))?,
        );
    }
    for role in crate::api::aggregated_cluster_roles() {
        docs.push(
            serde_saphyr::to_string(&role)
                .map_err(|e| Error::usage_from(format!("cannot render ClusterRole: {e}"), e))?,
        );
    }
    let mut out = String::from(
        "# Bulkhead cluster-admin bundle, generated by `bulkhead crds`; do not edit.\n# Apply once per cluster: kubectl apply --server-side -f crds-cluster/\n",
    );
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&doc);
    }
    Ok(out)
}

/// Parse the process arguments, named as [`crate::day2::display_name`] says (`kubectl bulkhead`
/// when started as the kubectl plugin).
pub fn parse_cli() -> Cli {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let argv0 = std::env::args_os().next();
    let matches = Cli::command()
        .bin_name(crate::day2::display_name(argv0.as_deref()))
        .get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

async fn shutdown_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; only SIGINT stops the operator");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    token.cancel();
}

async fn run(args: RunArgs) -> Result<()> {
    telemetry::init_logging(args.log_format, &args.log_level)?;
    let namespace = require_namespace(args.namespace)?;
    leader::validate_timings(args.lease_duration, args.lease_renew_grace)?;
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::starting();
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_signal(shutdown.clone()));

    let mut servers = vec![
        telemetry::serve(
            args.probe_addr,
            telemetry::probe_router(metrics.clone(), readiness.clone()),
            shutdown.clone(),
        )
        .await?,
    ];
    // Port 0 asks the OS for a free port, so two `:0` addresses never collide.
    if args.metrics_addr == args.probe_addr && args.metrics_addr.port() != 0 {
        return Err(Error::usage("--metrics-addr and --probe-addr must differ"));
    }
    servers.push(
        telemetry::serve(
            args.metrics_addr,
            telemetry::metrics_router(metrics.clone(), readiness.clone()),
            shutdown.clone(),
        )
        .await?,
    );

    let (client, server, in_cluster) = client().await?;
    tracing::info!(%namespace, version = env!("CARGO_PKG_VERSION"), identity_secret = %args.role.identity_secret, api_server = %server, "starting");
    let config = RunConfig {
        leader: LeaderConfig {
            enabled: args.leader_elect,
            namespace: namespace.clone(),
            lease_name: args.role.lease_name.clone(),
            identity: process_identity(args.pod_name),
            lease_duration: args.lease_duration,
            renew_grace: args.lease_renew_grace,
            // The pod's own token, in cluster only (a kubeconfig's user is someone else).
            owner: in_cluster
                .then(|| std::fs::read_to_string(crate::leader::TOKEN_PATH).ok())
                .flatten()
                .and_then(|token| crate::leader::service_account_owner(&token, &namespace)),
        },
        rbac: args.role.rbac_options(),
        namespace,
        drain_timeout: args.drain_timeout,
        settings: crate::controller::Settings {
            // With the Secret watch, drift is seen at once; the re-check is a safety net.
            drift_check: if args.role.watch_managed_secrets {
                args.drift_check_interval.max(Duration::from_secs(3600))
            } else {
                args.drift_check_interval
            },
            watch_managed_secrets: args.role.watch_managed_secrets,
            identity_secret: args.role.identity_secret.clone(),
            control_plane: crate::controlplane::client::ClientSettings::default(),
            permitted_restarts: Some(args.role.restart_targets.clone()),
            reconcile_concurrency: args.max_concurrent_reconciles,
        },
    };
    // Every line names the API server: a failing preflight says which server it could not reach.
    let span = tracing::info_span!("operator", api_server = %server);
    let outcome = tracing::Instrument::instrument(
        operator::run(client, config, metrics, readiness, shutdown.clone()),
        span,
    )
    .await;
    shutdown.cancel();
    for server in servers {
        let _ = server.await;
    }
    tracing::info!("stopped");
    outcome
}

async fn check(args: CheckArgs) -> Result<i32> {
    let namespace = require_namespace(args.namespace)?;
    let (client, server, _) = client().await?;
    let required = rbac::required_rules(&args.role.rbac_options());
    let result = preflight::run(&client, &namespace, &required).await;
    println!("API server {server}");
    print!("{}", result.report(&namespace));
    Ok(if result.cannot_check.is_some() {
        2
    } else if result.is_ok() {
        0
    } else {
        1
    })
}

fn print_rbac(args: &RbacArgs) -> Result<()> {
    let rules = rbac::required_rules(&args.role.rbac_options());
    match args.output {
        OutputFormat::Yaml => print!("{}", rbac::role_yaml(&args.namespace, &args.name, &rules)),
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&rules)?),
    }
    Ok(())
}

/// Run the parsed command; returns the process exit code.
pub async fn execute(cli: Cli) -> i32 {
    let outcome = match cli.command {
        Command::Run(args) => run(args).await.map(|()| 0),
        Command::Crds => crd_bundle().map(|bundle| {
            print!("{bundle}");
            0
        }),
        Command::Rbac(args) => print_rbac(&args).map(|()| 0),
        Command::Check(args) => check(args).await,
        Command::Status(args) => crate::day2::status(args).await,
        Command::Rotate(args) => crate::day2::rotate(args).await,
        Command::Version => {
            println!("bulkhead {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
    };
    match outcome {
        Ok(code) => code,
        // Said once: as a log line where logging is set up (`run`), else on stderr.
        Err(err) if telemetry::logging_installed() => {
            tracing::error!(error = %err, "bulkhead failed");
            2
        }
        Err(err) => {
            eprintln!("error: {err}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_plugin_name_parses_the_same_subcommands_and_names_itself_in_usage() {
        let err = Cli::command()
            .bin_name("kubectl bulkhead")
            .try_get_matches_from(["kubectl-bulkhead", "rotate"])
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("kubectl bulkhead rotate"), "{err}");
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_shows_the_namespace_as_required() {
        for sub in ["run", "check"] {
            let mut cmd = Cli::command();
            let usage = cmd
                .find_subcommand_mut(sub)
                .unwrap()
                .render_usage()
                .to_string();
            assert!(usage.contains("--namespace <NAMESPACE>"), "{sub}: {usage}");
        }
    }

    #[test]
    fn run_refuses_to_start_without_a_namespace() {
        let err = require_namespace(None).unwrap_err().to_string();
        assert!(
            err.contains("--namespace") && err.contains("BULKHEAD_NAMESPACE"),
            "{err}"
        );
        assert!(require_namespace(Some("  ".into())).is_err());
        assert_eq!(require_namespace(Some("team-a".into())).unwrap(), "team-a");
    }

    #[test]
    fn run_defaults_match_the_spec() {
        let cli = Cli::try_parse_from(["bulkhead", "run", "--namespace", "team-a"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.role.lease_name, "bulkhead");
        assert!(args.leader_elect);
        assert_eq!(args.lease_duration, Duration::from_secs(30));
        assert!(!args.role.watch_managed_secrets);
        assert_eq!(args.log_format, LogFormat::Json);
    }

    #[test]
    fn boolean_flags_take_explicit_values() {
        let cli = Cli::try_parse_from([
            "bulkhead",
            "run",
            "--namespace",
            "a",
            "--leader-elect=false",
            "--watch-managed-secrets",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert!(!args.leader_elect);
        assert!(args.role.watch_managed_secrets);
    }

    #[test]
    fn restart_targets_parse_and_bad_ones_name_the_fix() {
        let cli = Cli::try_parse_from([
            "bulkhead",
            "rbac",
            "--restart-target",
            "Deployment/api,StatefulSet/db",
        ])
        .unwrap();
        let Command::Rbac(args) = cli.command else {
            panic!("not rbac")
        };
        assert_eq!(
            args.role.restart_targets,
            vec![
                (RestartKind::Deployment, "api".into()),
                (RestartKind::StatefulSet, "db".into())
            ]
        );
        let err = Cli::try_parse_from(["bulkhead", "rbac", "--restart-target", "Pod/x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("Deployment/api"), "{err}");
    }

    #[test]
    fn bad_durations_name_the_flag_format() {
        let err = Cli::try_parse_from(["bulkhead", "run", "--lease-duration", "30"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--lease-duration") && err.contains("720h"),
            "{err}"
        );
    }
}
