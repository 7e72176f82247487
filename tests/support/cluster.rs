//! An envtest-like Kubernetes control plane for the end-to-end suite and the benchmark: etcd,
//! kube-apiserver and (optionally) kube-controller-manager started from the `KUBEBUILDER_ASSETS`
//! folder, or the binaries named by `BULKHEAD_E2E_ETCD`, `BULKHEAD_E2E_KUBE_APISERVER` and
//! `BULKHEAD_E2E_KUBE_CONTROLLER_MANAGER`.
//!
//! Free loopback ports, certificates made at start with the `openssl` CLI, RBAC authorization,
//! ServiceAccount token signing (`kubectl create token` works), a JSON audit log at Metadata level
//! with a parser. Every process runs in its own process group, killed on drop, so a failing test
//! (a panic unwinds through `Drop`) leaves nothing running. Nothing is ever downloaded or built:
//! without a control plane the tests are compiled as ignored, with the reason (`build.rs`).
//!
//! The operator runs as a local process (the `bulkhead` binary cargo built) with a kubeconfig
//! holding a token of the chart's ServiceAccount, so it has exactly the chart's Role.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Deserialize;

/// The controller-runtime envtest convention (what `setup-envtest use -p path` prints): a folder
/// holding `etcd`, `kube-apiserver` and `kube-controller-manager`.
pub const ENV_ASSETS: &str = "KUBEBUILDER_ASSETS";
pub const ENV_ETCD: &str = "BULKHEAD_E2E_ETCD";
pub const ENV_APISERVER: &str = "BULKHEAD_E2E_KUBE_APISERVER";
pub const ENV_CONTROLLER_MANAGER: &str = "BULKHEAD_E2E_KUBE_CONTROLLER_MANAGER";
/// Keep the temporary directory (logs, audit log, kubeconfigs) after the run.
pub const ENV_KEEP: &str = "BULKHEAD_E2E_KEEP";

/// `1` when hack/test.sh (or hack/e2e.sh) found that this machine can start a node
/// (`hack/node.sh check`): `build.rs` then compiles the pod scenarios in; without it they are
/// ignored with the reason, never passed.
pub const ENV_NODE: &str = "BULKHEAD_E2E_NODE";
/// The operator image (a docker archive from `hack/image.sh operator`, tagged [`OPERATOR_IMAGE`]).
pub const ENV_OPERATOR_IMAGE: &str = "BULKHEAD_E2E_OPERATOR_IMAGE";
/// The node's address: the bridge `hack/node.sh` makes. The API server advertises it, so the
/// `kubernetes` Service leads pods there; pod traffic never leaves this machine.
pub const NODE_IP: &str = "10.244.0.1";
pub const NODE_NAME: &str = "bulkhead-node";
/// The image tags `hack/image.sh` gives by default; pods use them with `imagePullPolicy: Never`.
pub const OPERATOR_IMAGE: &str = "bulkhead.local/bulkhead:dev";
pub const WORKLOAD_IMAGE: &str = "bulkhead.local/workload:dev";

/// The service account issuer; `kubectl create token` tokens carry it.
const ISSUER: &str = "https://kubernetes.default.svc";
/// A /16: a fleet of hundreds of releases has a Service (a ClusterIP) each; a /24 runs out at 254.
const SERVICE_CIDR: &str = "10.0.0.0/16";

/// The control-plane binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: Option<PathBuf>,
}

impl Binaries {
    /// The binaries named by the environment: the three `BULKHEAD_E2E_*` variables where set,
    /// else the `KUBEBUILDER_ASSETS` folder. The e2e tests are compiled as ignored when neither
    /// is set (`build.rs`), so reaching this without them, or with a path that is not a file,
    /// is a failure, not a skip: the suite was asked to run.
    pub fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let assets = var(ENV_ASSETS);
        let pick = |name: &str, file: &str| {
            var(name).or_else(|| assets.as_ref().map(|dir| dir.join(file)))
        };
        let (Some(etcd), Some(apiserver)) = (
            pick(ENV_ETCD, "etcd"),
            pick(ENV_APISERVER, "kube-apiserver"),
        ) else {
            panic!(
                "no control plane: set {ENV_ASSETS} to a folder with etcd, kube-apiserver and \
                 kube-controller-manager (hack/test.sh uses ../shared/envtest), or {ENV_ETCD} \
                 and {ENV_APISERVER}"
            );
        };
        let controller_manager = pick(ENV_CONTROLLER_MANAGER, "kube-controller-manager");
        for (what, path) in [
            ("etcd", Some(&etcd)),
            ("kube-apiserver", Some(&apiserver)),
            ("kube-controller-manager", controller_manager.as_ref()),
        ] {
            if let Some(path) = path {
                assert!(path.is_file(), "{what}: {} is not a file", path.display());
            }
        }
        Self {
            etcd,
            apiserver,
            controller_manager,
        }
    }

    /// The same binaries without the controller manager (no garbage collection, less noise).
    pub fn without_controller_manager(mut self) -> Self {
        self.controller_manager = None;
        self
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `helm`/`kubectl`: `$BULKHEAD_TOOLS_DIR/bin`, then `.tools/bin` (hack/install-tools.sh), then
/// `PATH`.
pub fn tool(name: &str) -> PathBuf {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("BULKHEAD_TOOLS_DIR") {
        dirs.push(PathBuf::from(dir).join("bin"));
    }
    dirs.push(repo().join(".tools").join("bin"));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found in $BULKHEAD_TOOLS_DIR/bin, .tools/bin or PATH: run hack/install-tools.sh"))
}

/// A loopback port nobody listens on (and that this process has not handed out before).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("no free port");
}

fn unique_dir(prefix: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let base =
        std::env::var_os("BULKHEAD_E2E_TMPDIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = base.join(format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        Timestamp::now().as_millisecond()
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run a command, panicking with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn signal_group(pgid: u32, signal: &str) {
    // kill(1): the crate forbids unsafe code, so no libc::kill.
    let _ = Command::new("kill")
        .args([format!("-{signal}"), "--".to_owned(), format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A child in its own process group, logging to a file; killed (the whole group) on drop.
///
/// A drop does not run when the test process itself is killed (SIGKILL, or SIGINT from a
/// terminal, which the children in their own groups do not get), so each child also has a
/// watchdog shell that kills its group once the test process is gone.
pub struct Process {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    exited: Option<ExitStatus>,
    watchdog: Option<Child>,
}

fn watchdog(pgid: u32) -> Option<Child> {
    watch_groups(&[pgid], 1)
}

/// A shell that kills the process groups `pgids` once the test process is gone (polled every
/// `every_s` seconds).
fn watch_groups(pgids: &[u32], every_s: u32) -> Option<Child> {
    let groups: Vec<String> = pgids.iter().map(|g| format!("-{g}")).collect();
    let script = format!(
        // env kill: dash's builtin cannot signal a process group.
        "while kill -0 {} 2>/dev/null; do sleep {every_s}; done; env kill -KILL -- {} 2>/dev/null",
        std::process::id(),
        groups.join(" ")
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

impl Process {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Self {
        Self::spawn_inner(name, cmd, log, true)
    }

    /// Like [`Process::spawn`] but without its own watchdog shell: for fleets of hundreds of
    /// processes, whose per-process watchdogs (a `sleep 1` fork each per second) would be the
    /// load being measured. Cover them with a [`GroupWatchdog`].
    pub fn spawn_unwatched(name: &str, cmd: &mut Command, log: &Path) -> Self {
        Self::spawn_inner(name, cmd, log, false)
    }

    fn spawn_inner(name: &str, cmd: &mut Command, log: &Path, watched: bool) -> Self {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let watchdog = if watched { watchdog(child.id()) } else { None };
        Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            exited: None,
            watchdog,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (TERM, KILL, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status();
    }

    /// The exit status, if it has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        self.exited
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// Wait for the exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the whole process group and reap the child.
    pub fn kill(&mut self) {
        // Once reaped, the id may belong to someone else: signal only a live child's group.
        if self.try_exit().is_none() {
            signal_group(self.pid(), "KILL");
            self.exited = self.child.wait().ok();
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS")
    }

    /// A KiB field of /proc/<pid>/status: VmRSS, VmHWM (peak RSS), RssAnon (private), ...
    pub fn status_kib(&self, field: &str) -> u64 {
        self.proc_kib("status", field)
    }

    /// A KiB field of /proc/<pid>/smaps_rollup: Pss (proportional: pages shared by N processes
    /// count 1/N each), Pss_Anon, Pss_File, ...
    pub fn rollup_kib(&self, field: &str) -> u64 {
        self.proc_kib("smaps_rollup", field)
    }

    /// `field:  N kB` of /proc/<pid>/<file>, in KiB.
    fn proc_kib(&self, file: &str, field: &str) -> u64 {
        let text = fs::read_to_string(format!("/proc/{}/{file}", self.pid())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/<pid>/{file}"))
    }

    /// User plus system CPU time so far, in clock ticks (utime + stime of /proc/<pid>/stat).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // The command name may contain spaces: fields are counted after the closing paren.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // rest starts at field 3 (state); utime and stime are fields 14 and 15.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() && self.name.starts_with("operator") {
            eprintln!(
                "----- last lines of {} ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            );
        }
        // The watchdog first: once the group is gone its id may be reused.
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        self.kill();
    }
}

/// One watchdog shell for many process groups (see [`Process::spawn_unwatched`]): kills them
/// all once the test process is gone; stopped on drop.
pub struct GroupWatchdog(Option<Child>);

impl GroupWatchdog {
    pub fn new(pgids: &[u32]) -> Self {
        Self(watch_groups(pgids, 2))
    }
}

impl Drop for GroupWatchdog {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Clock ticks per second for [`Process::cpu_ticks`].
pub fn clock_ticks_per_second() -> u64 {
    run_ok(Command::new("getconf").arg("CLK_TCK"))
        .trim()
        .parse()
        .unwrap()
}

/// Minimal HTTP/1.1 GET on loopback (probes, metrics, etcd health): (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_get_within(addr, path, Duration::from_secs(2), Duration::from_secs(5))
}

/// [`http_get`] giving up after `connect` to connect and `answer` for each read or write.
pub fn http_get_within(
    addr: SocketAddr,
    path: &str,
    connect: Duration,
    answer: Duration,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, connect).ok()?;
    stream.set_read_timeout(Some(answer)).ok()?;
    stream.set_write_timeout(Some(answer)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

fn wait_for(
    what: &str,
    timeout: Duration,
    procs: &mut [&mut Process],
    mut ok: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        for p in procs.iter_mut() {
            if let Some(status) = p.try_exit() {
                panic!(
                    "{} exited ({status}) while waiting for {what}:\n{}",
                    p.name,
                    p.log_tail(40)
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The right to run a control plane in this process, held until dropped.
pub struct ControlPlaneSlot(std::sync::MutexGuard<'static, ()>);

/// The lock every control plane of this process is started under (`Cluster::start`, and
/// tests that start one by other means, such as hack/demo.sh): one at a time on a small machine.
/// Each test has its own runtime and takes it once, so holding it across awaits cannot deadlock.
pub fn one_control_plane_at_a_time() -> ControlPlaneSlot {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    // A test that failed while holding it poisons it; the next one may still run.
    ControlPlaneSlot(
        ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// The right to start a node on this machine (its bridge, iptables chains and containerd
/// sockets are machine-wide), held until dropped. Take it before
/// [`one_control_plane_at_a_time`], as `Cluster::start_with_node` does, never after.
pub fn one_node_at_a_time() -> NodeSlot {
    static ONE_NODE: Mutex<()> = Mutex::new(());
    NodeSlot(
        ONE_NODE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// The right to run a node on this machine, held until dropped.
pub struct NodeSlot(std::sync::MutexGuard<'static, ()>);

/// A running control plane in a temporary directory.
pub struct Cluster {
    /// One control plane at a time in this process: the suite runs under a plain `cargo test`,
    /// whose test threads would otherwise start several on a 2-core machine.
    /// [`Cluster::let_others_run`] gives it up early, for a long idle wait.
    one_at_a_time: Option<ControlPlaneSlot>,
    /// One node at a time on this machine (its bridge and iptables chains are machine-wide).
    _one_node: Option<NodeSlot>,
    pub dir: PathBuf,
    binaries: Binaries,
    etcd: Option<Process>,
    apiserver: Option<Process>,
    controller_manager: Option<Process>,
    pub api_port: u16,
    etcd_port: u16,
    admin_token: String,
    /// A real node (kubelet, containerd, scheduler, kube-proxy), when started with one.
    node: Option<Node>,
    with_node: bool,
}

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args));
}

impl Cluster {
    /// Start etcd, kube-apiserver and, when configured, kube-controller-manager; returns when
    /// the API server is ready (and the controller manager healthy).
    pub fn start(binaries: Binaries) -> Self {
        Self::start_inner(binaries, false)
    }

    /// [`Cluster::start`] plus one real node (`hack/node.sh up`): the API server advertises
    /// [`NODE_IP`] and authorizes the kubelet (Node,RBAC), and pods run. The operator and
    /// workload images are imported ([`Cluster::import_images`]). Needs `cfg(bulkhead_node)`:
    /// tests that call this are compiled as ignored without it.
    pub fn start_with_node(binaries: Binaries) -> Self {
        assert!(
            binaries.controller_manager.is_some(),
            "a node needs the controller manager (ServiceAccount tokens, the root CA ConfigMap)"
        );
        let one_node = one_node_at_a_time();
        let mut cluster = Self::start_inner(binaries, true);
        cluster._one_node = Some(one_node);
        cluster.start_node();
        cluster
    }

    /// Give up this cluster's turn: the next test's control plane may start beside this one.
    /// For a test whose remaining work is a long, idle wait (a kubelet's token refresh), so
    /// that the suite does not wait with it. A node stays exclusive.
    pub fn let_others_run(&mut self) {
        self.one_at_a_time = None;
    }

    fn start_inner(binaries: Binaries, with_node: bool) -> Self {
        let one_at_a_time = one_control_plane_at_a_time();
        let started = Instant::now();
        let dir = unique_dir("bulkhead-e2e");
        let pki = dir.join("pki");
        fs::create_dir_all(&pki).unwrap();
        // A CA, a serving certificate for 127.0.0.1, the ServiceAccount signing key.
        openssl(
            &pki,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=bulkhead-e2e-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        );
        openssl(
            &pki,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=kube-apiserver",
                "-keyout",
                "apiserver.key",
                "-out",
                "apiserver.csr",
            ],
        );
        // Pods reach the API server at the node's address (kube-proxy leads the `kubernetes`
        // Service there) or at 10.0.0.1 (the Service): both are in the certificate.
        fs::write(
            pki.join("san.ext"),
            format!("subjectAltName=IP:127.0.0.1,IP:10.0.0.1,IP:{NODE_IP},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"),
        )
        .unwrap();
        openssl(
            &pki,
            &[
                "x509",
                "-req",
                "-in",
                "apiserver.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                "apiserver.crt",
            ],
        );
        if with_node {
            // The API server's client certificate for the kubelet (logs, exec, stats): the
            // kubelet trusts the cluster CA's clients. X.509 v3, as every certificate here.
            openssl(
                &pki,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/O=system:masters/CN=kube-apiserver-kubelet-client",
                    "-keyout",
                    "kubelet-client.key",
                    "-out",
                    "kubelet-client.csr",
                ],
            );
            fs::write(
                pki.join("client.ext"),
                "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
            )
            .unwrap();
            openssl(
                &pki,
                &[
                    "x509",
                    "-req",
                    "-in",
                    "kubelet-client.csr",
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    "client.ext",
                    "-out",
                    "kubelet-client.crt",
                ],
            );
        }
        openssl(&pki, &["genrsa", "-out", "sa.key", "2048"]);
        openssl(&pki, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        let admin_token = run_ok(Command::new("openssl").args(["rand", "-hex", "24"]))
            .trim()
            .to_owned();
        fs::write(
            pki.join("tokens.csv"),
            format!("{admin_token},admin,admin-uid,\"system:masters\"\n"),
        )
        .unwrap();
        // Metadata level for everything: who did what to which object, never a body.
        fs::write(
            dir.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n",
        )
        .unwrap();

        let etcd_port = free_port();
        let api_port = free_port();
        let mut cluster = Self {
            one_at_a_time: Some(one_at_a_time),
            _one_node: None,
            dir,
            binaries,
            etcd: None,
            apiserver: None,
            controller_manager: None,
            api_port,
            etcd_port,
            admin_token,
            node: None,
            with_node,
        };
        cluster.write_kubeconfig(
            &cluster.admin_kubeconfig(),
            "admin",
            &cluster.admin_token.clone(),
        );
        cluster.start_etcd();
        cluster.start_apiserver();
        cluster.start_controller_manager();
        eprintln!(
            "e2e: control plane up in {:.1}s at {} (dir {})",
            started.elapsed().as_secs_f64(),
            cluster.server(),
            cluster.dir.display()
        );
        cluster
    }

    fn start_etcd(&mut self) {
        let peer = free_port();
        let url = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(&self.binaries.etcd);
        cmd.env_remove("ETCDCTL_API")
            .arg("--name=e2e")
            .arg(format!(
                "--data-dir={}",
                self.dir.join("etcd-data").display()
            ))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=e2e={peer_url}"))
            .arg("--initial-cluster-state=new");
        let mut etcd = Process::spawn("etcd", &mut cmd, &self.dir.join("etcd.log"));
        let addr: SocketAddr = format!("127.0.0.1:{}", self.etcd_port).parse().unwrap();
        wait_for(
            "etcd /health",
            Duration::from_secs(60),
            &mut [&mut etcd],
            || {
                http_get(addr, "/health")
                    .is_some_and(|(code, body)| code == 200 && body.contains("\"health\":\"true\""))
            },
        );
        self.etcd = Some(etcd);
    }

    /// Start (or restart) the API server on its port, with the same data and keys.
    pub fn start_apiserver(&mut self) {
        assert!(self.apiserver.is_none(), "the API server is running");
        let pki = self.dir.join("pki");
        let p = |f: &str| pki.join(f).display().to_string();
        let mut cmd = Command::new(&self.binaries.apiserver);
        if self.with_node {
            // Pods reach it through the `kubernetes` Service, whose endpoint is the advertised
            // address (loopback cannot be one): the node's bridge address. The kubelet is
            // authorized by the Node authorizer, and reached by its InternalIP with a client
            // certificate it trusts.
            cmd.arg("--bind-address=0.0.0.0")
                .arg(format!("--advertise-address={NODE_IP}"))
                .arg("--authorization-mode=Node,RBAC")
                .arg(format!(
                    "--kubelet-client-certificate={}",
                    p("kubelet-client.crt")
                ))
                .arg(format!("--kubelet-client-key={}", p("kubelet-client.key")))
                .arg("--kubelet-preferred-address-types=InternalIP");
        } else {
            cmd.arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg("--authorization-mode=RBAC");
        }
        cmd.arg(format!("--secure-port={}", self.api_port))
            .arg(format!(
                "--etcd-servers=http://127.0.0.1:{}",
                self.etcd_port
            ))
            .arg(format!(
                "--cert-dir={}",
                pki.join("apiserver-generated").display()
            ))
            .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
            .arg(format!("--client-ca-file={}", p("ca.crt")))
            .arg(format!("--token-auth-file={}", p("tokens.csv")))
            .arg(format!("--service-account-issuer={ISSUER}"))
            .arg(format!("--service-account-key-file={}", p("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                p("sa.key")
            ))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .arg(format!(
                "--audit-log-path={}",
                self.audit_log_path().display()
            ))
            .arg(format!(
                "--audit-policy-file={}",
                self.dir.join("audit-policy.yaml").display()
            ))
            .arg("--audit-log-format=json")
            .arg("--audit-log-mode=blocking")
            .arg("--audit-log-maxbackup=0")
            .arg("--audit-log-maxsize=0");
        let apiserver = Process::spawn("kube-apiserver", &mut cmd, &self.dir.join("apiserver.log"));
        self.apiserver = Some(apiserver);
        self.wait_apiserver_ready(Duration::from_secs(120));
    }

    fn wait_apiserver_ready(&mut self, timeout: Duration) {
        let kubectl = tool("kubectl");
        let kubeconfig = self.admin_kubeconfig();
        let mut procs: Vec<&mut Process> = self
            .etcd
            .iter_mut()
            .chain(self.apiserver.iter_mut())
            .collect();
        wait_for("kube-apiserver /readyz", timeout, &mut procs, || {
            Command::new(&kubectl)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args(["get", "--raw=/readyz", "--request-timeout=5s"])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| {
                    o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok"
                })
        });
    }

    /// Stop the API server: SIGTERM (graceful) or SIGKILL, and wait until it is gone.
    pub fn stop_apiserver(&mut self, signal: &str) {
        let mut apiserver = self
            .apiserver
            .take()
            .expect("the API server is not running");
        apiserver.signal(signal);
        if apiserver.wait_exit(Duration::from_secs(60)).is_none() {
            apiserver.kill();
        }
        // Reap the whole group (nothing should be left), the log stays.
        apiserver.kill();
    }

    /// Send a signal to the API server: STOP and CONT pause and resume it.
    pub fn signal_apiserver(&self, signal: &str) {
        self.apiserver
            .as_ref()
            .expect("the API server is not running")
            .signal(signal);
    }

    /// Stop etcd (SIGTERM, then SIGKILL) and wait until it is gone; its data stays.
    pub fn stop_etcd(&mut self) {
        let mut etcd = self.etcd.take().expect("etcd is not running");
        etcd.signal("TERM");
        if etcd.wait_exit(Duration::from_secs(30)).is_none() {
            etcd.kill();
        }
        etcd.kill();
    }

    /// Start etcd again on its port with the same data (after `stop_etcd`).
    pub fn restart_etcd(&mut self) {
        assert!(self.etcd.is_none(), "etcd is running");
        self.start_etcd();
    }

    fn start_controller_manager(&mut self) {
        let Some(binary) = self.binaries.controller_manager.clone() else {
            return;
        };
        let pki = self.dir.join("pki");
        let p = |f: &str| pki.join(f).display().to_string();
        let kubeconfig = self.admin_kubeconfig().display().to_string();
        let port = free_port();
        // This kube-controller-manager's tree (OpenShift's fork, see ../shared/envtest) adds
        // the `openshift-service-ca.crt` ConfigMap to every pod's token volume; with a node,
        // its publisher must run or no pod can mount its token.
        let controllers = if self.with_node {
            "--controllers=*,-bootstrapsigner,-tokencleaner"
        } else {
            "--controllers=*,-bootstrapsigner,-tokencleaner,-service-ca-certificate-publisher-controller"
        };
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--authentication-kubeconfig={kubeconfig}"))
            .arg(format!("--authorization-kubeconfig={kubeconfig}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!(
                "--cert-dir={}",
                pki.join("kcm-generated").display()
            ))
            .arg(controllers)
            .arg("--use-service-account-credentials")
            .arg("--leader-elect=false")
            .arg(format!(
                "--service-account-private-key-file={}",
                p("sa.key")
            ))
            .arg(format!("--root-ca-file={}", p("ca.crt")))
            .arg(format!("--cluster-signing-cert-file={}", p("ca.crt")))
            .arg(format!("--cluster-signing-key-file={}", p("ca.key")))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"));
        let mut kcm = Process::spawn(
            "kube-controller-manager",
            &mut cmd,
            &self.dir.join("kcm.log"),
        );
        // HTTPS with a self-signed serving certificate: curl -k is the simplest honest probe.
        let curl_ok = || {
            Command::new("curl")
                .args(["-ksf", &format!("https://127.0.0.1:{port}/healthz")])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| {
                    o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok"
                })
        };
        wait_for(
            "kube-controller-manager /healthz",
            Duration::from_secs(120),
            &mut [&mut kcm],
            curl_ok,
        );
        self.controller_manager = Some(kcm);
    }

    /// The kube-apiserver process (for its RSS and CPU next to a benchmark's figures).
    pub fn apiserver_process(&self) -> Option<&Process> {
        self.apiserver.as_ref()
    }

    /// The etcd process.
    pub fn etcd_process(&self) -> Option<&Process> {
        self.etcd.as_ref()
    }

    pub fn has_controller_manager(&self) -> bool {
        self.controller_manager.is_some()
    }

    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("pki").join("ca.crt")
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    pub fn audit_log_path(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Write a kubeconfig for a bearer token.
    pub fn write_kubeconfig(&self, path: &Path, user: &str, token: &str) {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: {user}}}\ncurrent-context: e2e\n",
            self.server(),
            self.ca_file().display()
        );
        fs::write(path, text).unwrap();
    }

    /// A kube client from a kubeconfig file.
    pub async fn client_from(path: &Path) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// A cluster-admin client (group system:masters).
    pub async fn admin_client(&self) -> kube::Client {
        Self::client_from(&self.admin_kubeconfig()).await
    }

    /// kubectl as cluster admin.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(tool("kubectl"));
        cmd.arg(format!(
            "--kubeconfig={}",
            self.admin_kubeconfig().display()
        ));
        cmd
    }

    /// kubectl as cluster admin; panics on failure, returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        run_ok(self.kubectl().args(args))
    }

    /// The cluster-admin bundle (CRDs and aggregated ClusterRoles), applied as the README says,
    /// and the CRDs established.
    pub fn install_crds(&self) {
        let crds = repo().join("crds-cluster");
        self.kubectl_ok(&["apply", "--server-side", "-f", &crds.display().to_string()]);
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/tenants.bulkhead.dev",
            "crd/credentials.bulkhead.dev",
        ]);
    }

    /// Create a namespace, render the chart with the real helm (`helm template`, `--set` values)
    /// and apply it there, as a team would with `helm install`.
    pub fn install_release(&self, namespace: &str, set: &[&str]) -> Release {
        self.kubectl_ok(&["create", "namespace", namespace]);
        let mut helm = Command::new(tool("helm"));
        helm.args(["template", "bulkhead"])
            .arg(repo().join("chart"))
            .args(["--namespace", namespace])
            // The API server's endpoint, as the chart requires (README, Install).
            .args(["--set", "networkPolicy.apiServer.cidrs={127.0.0.1/32}"]);
        for value in set {
            helm.args(["--set", value]);
        }
        let rendered = run_ok(&mut helm);
        let file = self.dir.join(format!("release-{namespace}.yaml"));
        fs::write(&file, &rendered).unwrap();
        self.kubectl_ok(&["apply", "-n", namespace, "-f", &file.display().to_string()]);
        Release {
            namespace: namespace.to_owned(),
            name: "bulkhead".to_owned(),
            service_account: "bulkhead".to_owned(),
            rendered,
        }
    }

    /// [`Cluster::install_release`] for many namespaces at once (a fleet): each namespace gets
    /// its own `helm template` rendering (a few in parallel), then all namespaces are created
    /// in one `kubectl apply` and the releases applied server-side in a few parallel
    /// `kubectl apply` calls of many releases each.
    pub fn install_releases(&self, namespaces: &[String]) -> Vec<Release> {
        const PARALLEL: usize = 4;
        let chart = repo().join("chart");
        let helm = tool("helm");
        let chunk = namespaces.len().div_ceil(PARALLEL).max(1);
        let rendered: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = namespaces
                .chunks(chunk)
                .map(|part| {
                    let (chart, helm) = (&chart, &helm);
                    scope.spawn(move || {
                        part.iter()
                            .map(|ns| {
                                run_ok(
                                    Command::new(helm)
                                        .args(["template", "bulkhead"])
                                        .arg(chart)
                                        .args(["--namespace", ns])
                                        // As install_release: the chart requires it.
                                        .args([
                                            "--set",
                                            "networkPolicy.apiServer.cidrs={127.0.0.1/32}",
                                        ]),
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let ns_file = self.dir.join("fleet-namespaces.yaml");
        let ns_docs: Vec<String> = namespaces
            .iter()
            .map(|ns| format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"))
            .collect();
        fs::write(&ns_file, ns_docs.join("---\n")).unwrap();
        self.kubectl_ok(&[
            "apply",
            "--server-side",
            "-f",
            &ns_file.display().to_string(),
        ]);
        let files: Vec<PathBuf> = rendered
            .chunks(chunk)
            .enumerate()
            .map(|(i, part)| {
                let file = self.dir.join(format!("fleet-releases-{i}.yaml"));
                // Every rendered object names its namespace (the chart sets it).
                fs::write(&file, part.join("\n---\n")).unwrap();
                file
            })
            .collect();
        std::thread::scope(|scope| {
            for file in &files {
                scope.spawn(move || {
                    self.kubectl_ok(&["apply", "--server-side", "-f", &file.display().to_string()])
                });
            }
        });
        namespaces
            .iter()
            .zip(rendered)
            .map(|(ns, rendered)| Release {
                namespace: ns.clone(),
                name: "bulkhead".to_owned(),
                service_account: "bulkhead".to_owned(),
                rendered,
            })
            .collect()
    }

    /// [`Cluster::service_account_kubeconfig`] for many releases: tokens from the TokenRequest
    /// API (what `kubectl create token` calls), 16 requests at a time.
    pub async fn service_account_kubeconfigs(&self, releases: &[Release]) -> Vec<PathBuf> {
        use futures::StreamExt;
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        let admin = self.admin_client().await;
        futures::stream::iter(releases)
            .map(|release| {
                let api =
                    kube::Api::<ServiceAccount>::namespaced(admin.clone(), &release.namespace);
                async move {
                    let request = TokenRequest {
                        spec: Some(TokenRequestSpec {
                            expiration_seconds: Some(4 * 3600),
                            ..TokenRequestSpec::default()
                        }),
                        ..TokenRequest::default()
                    };
                    let issued = api
                        .create_token_request(
                            &release.service_account,
                            &kube::api::PostParams::default(),
                            &request,
                        )
                        .await
                        .unwrap_or_else(|e| panic!("token for {}: {e}", release.namespace));
                    let token = issued.status.and_then(|s| s.token).unwrap_or_default();
                    let path = self.dir.join(format!(
                        "{}-{}.kubeconfig",
                        release.namespace, release.service_account
                    ));
                    self.write_kubeconfig(&path, &release.service_account, &token);
                    path
                }
            })
            .buffered(16)
            .collect()
            .await
    }

    /// A kubeconfig holding a fresh token of the release's ServiceAccount
    /// (`kubectl create token`): the operator gets exactly the chart's Role.
    pub fn service_account_kubeconfig(&self, release: &Release) -> PathBuf {
        let token = self.kubectl_ok(&[
            "create",
            "token",
            &release.service_account,
            "-n",
            &release.namespace,
            "--duration=4h",
        ]);
        let path = self.dir.join(format!(
            "{}-{}.kubeconfig",
            release.namespace, release.service_account
        ));
        self.write_kubeconfig(&path, &release.service_account, token.trim());
        path
    }

    pub fn audit(&self) -> AuditLog {
        AuditLog::read(&self.audit_log_path())
    }

    /// The audit log's length so far: [`Cluster::audit_after`] reads only what follows.
    pub fn audit_len(&self) -> u64 {
        fs::metadata(self.audit_log_path()).map_or(0, |m| m.len())
    }

    /// The audit entries written after `offset` (an [`Cluster::audit_len`]): a long run's log
    /// is not parsed again for every window.
    pub fn audit_after(&self, offset: u64) -> AuditLog {
        let mut raw = Vec::new();
        if let Ok(mut file) = fs::File::open(self.audit_log_path()) {
            use std::io::{Seek, SeekFrom};
            let _ = file.seek(SeekFrom::Start(offset));
            let _ = file.read_to_end(&mut raw);
        }
        AuditLog::parse(&String::from_utf8_lossy(&raw))
    }

    fn keep(&self) -> bool {
        std::env::var_os(ENV_KEEP).is_some_and(|v| v == "1") || std::thread::panicking()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Reverse start order; each Process drop kills its group. The node first, while the
        // API server still answers (its teardown needs none of it, but the kubelet is quieter).
        drop(self.node.take());
        drop(self.controller_manager.take());
        drop(self.apiserver.take());
        drop(self.etcd.take());
        if self.keep() {
            eprintln!(
                "e2e: kept {} (logs, audit.log, kubeconfigs)",
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A chart release applied into a namespace.
pub struct Release {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    /// The manifests `helm template` rendered.
    pub rendered: String,
}

impl Release {
    /// The audit user name of the release's ServiceAccount.
    pub fn user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

/// How to run one operator process.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    pub namespace: String,
    /// `--pod-name`: the Lease holder identity starts with it.
    pub pod_name: String,
    pub lease_duration: String,
    pub renew_grace: String,
    pub restart_targets: Vec<String>,
    pub extra_args: Vec<String>,
    /// Another `bulkhead` binary than [`operator_binary`] (the benchmark compares builds).
    pub binary: Option<PathBuf>,
    /// Extra environment (the process otherwise gets only KUBECONFIG and RUST_BACKTRACE).
    pub env: Vec<(String, String)>,
}

impl OperatorOptions {
    pub fn new(namespace: &str, pod_name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            pod_name: pod_name.to_owned(),
            lease_duration: "10s".to_owned(),
            renew_grace: "4s".to_owned(),
            restart_targets: Vec::new(),
            extra_args: Vec::new(),
            binary: None,
            env: Vec::new(),
        }
    }
}

/// The `bulkhead` binary: `BULKHEAD_E2E_OPERATOR` when set (hack/e2e.sh sets it to a private
/// copy, so a build of another checkout into a shared target directory cannot swap it
/// mid-run), else the one cargo built for this test run.
pub fn operator_binary() -> PathBuf {
    std::env::var_os("BULKHEAD_E2E_OPERATOR")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_bulkhead")),
            PathBuf::from,
        )
}

/// A running `bulkhead run` process.
pub struct Operator {
    pub process: Process,
    pub probe: SocketAddr,
    pub metrics: SocketAddr,
    pub started: Instant,
    pub options: OperatorOptions,
}

impl Operator {
    /// Start `bulkhead run` with the kubeconfig (a ServiceAccount token) on free ports.
    pub fn start(cluster: &Cluster, kubeconfig: &Path, options: &OperatorOptions) -> Self {
        Self::start_inner(cluster, kubeconfig, options, true)
    }

    /// [`Operator::start`] without a per-process watchdog ([`Process::spawn_unwatched`]):
    /// cover fleets with a [`GroupWatchdog`] over their [`Process::pid`]s.
    pub fn start_unwatched(
        cluster: &Cluster,
        kubeconfig: &Path,
        options: &OperatorOptions,
    ) -> Self {
        Self::start_inner(cluster, kubeconfig, options, false)
    }

    fn start_inner(
        cluster: &Cluster,
        kubeconfig: &Path,
        options: &OperatorOptions,
        watched: bool,
    ) -> Self {
        let probe: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(options.binary.clone().unwrap_or_else(operator_binary));
        cmd.env_clear()
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_BACKTRACE", "1")
            .arg("run")
            .arg(format!("--namespace={}", options.namespace))
            .arg(format!("--pod-name={}", options.pod_name))
            .arg(format!("--lease-duration={}", options.lease_duration))
            .arg(format!("--lease-renew-grace={}", options.renew_grace))
            .arg(format!("--probe-addr={probe}"))
            .arg(format!("--metrics-addr={metrics}"))
            .arg("--log-format=text")
            .arg("--log-level=info");
        for target in &options.restart_targets {
            cmd.arg(format!("--restart-target={target}"));
        }
        cmd.args(&options.extra_args);
        cmd.envs(options.env.iter().map(|(k, v)| (k, v)));
        let log = cluster.dir.join(format!(
            "operator-{}-{}.log",
            options.namespace, options.pod_name
        ));
        let started = Instant::now();
        let name = format!("operator {}/{}", options.namespace, options.pod_name);
        let process = if watched {
            Process::spawn(&name, &mut cmd, &log)
        } else {
            Process::spawn_unwatched(&name, &mut cmd, &log)
        };
        Self {
            process,
            probe,
            metrics,
            started,
            options: options.clone(),
        }
    }

    pub fn readyz(&self) -> Option<(u16, String)> {
        http_get(self.probe, "/readyz")
    }

    /// Wait until `/readyz` answers 200; returns the time since the process started.
    pub fn wait_ready(&mut self, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            if self.readyz().is_some_and(|(code, _)| code == 200) {
                return self.started.elapsed();
            }
            if let Some(status) = self.process.try_exit() {
                panic!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.process.name,
                    self.process.log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready after {timeout:?}: {:?}\n{}",
                self.process.name,
                self.readyz(),
                self.process.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The Prometheus exposition text.
    pub fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// One unlabelled (or fully spelled-out) sample, e.g. `bulkhead_leader`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        self.metrics_text().lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
    }

    pub fn is_leader(&self) -> bool {
        self.metric("bulkhead_leader") == Some(1.0)
    }

    /// Wait until this process holds the Lease (its `bulkhead_leader` gauge is 1).
    pub fn wait_leader(&mut self, timeout: Duration) -> Duration {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_leader() {
                return self.started.elapsed();
            }
            if let Some(status) = self.process.try_exit() {
                panic!(
                    "{} exited ({status}):\n{}",
                    self.process.name,
                    self.process.log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not lead within {timeout:?}:\n{}",
                self.process.name,
                self.process.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---- the audit log -------------------------------------------------------------------------------

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditUser {
    #[serde(default)]
    pub username: String,
    /// e.g. `authentication.kubernetes.io/credential-id: ["JTI=…"]`: which token it was.
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

impl AuditUser {
    /// The ID of the credential the request was authenticated with (a ServiceAccount token's
    /// `JTI=…`), if the API server recorded one.
    pub fn credential_id(&self) -> Option<&str> {
        self.extra
            .get("authentication.kubernetes.io/credential-id")?
            .first()
            .map(String::as_str)
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub api_group: String,
    #[serde(default)]
    pub subresource: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuditStatus {
    #[serde(default)]
    pub code: u16,
}

/// One request, as the API server audited it (Metadata level).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: String,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub verb: String,
    pub user: AuditUser,
    #[serde(default)]
    pub object_ref: Option<AuditObjectRef>,
    #[serde(default)]
    pub response_status: Option<AuditStatus>,
    pub request_received_timestamp: Timestamp,
    /// When the last stage seen (ResponseComplete, or ResponseStarted for a watch) happened.
    #[serde(default)]
    pub stage_timestamp: Option<Timestamp>,
}

impl AuditEvent {
    pub fn path(&self) -> &str {
        self.request_uri.split('?').next().unwrap_or_default()
    }

    pub fn resource(&self) -> &str {
        self.object_ref.as_ref().map_or("", |o| o.resource.as_str())
    }

    pub fn namespace(&self) -> &str {
        self.object_ref
            .as_ref()
            .map_or("", |o| o.namespace.as_str())
    }

    pub fn name(&self) -> &str {
        self.object_ref.as_ref().map_or("", |o| o.name.as_str())
    }

    /// A GET of Secret `namespace/secret` by `user` received at or after `since`.
    pub fn is_read_of_secret(
        &self,
        user: &str,
        namespace: &str,
        secret: &str,
        since: Timestamp,
    ) -> bool {
        self.user.username == user
            && self.verb == "get"
            && self.resource() == "secrets"
            && self.namespace() == namespace
            && self.name() == secret
            && self.request_received_timestamp >= since
    }

    pub fn code(&self) -> u16 {
        self.response_status.as_ref().map_or(0, |s| s.code)
    }

    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// Discovery, or the self-reviews every authenticated user may make (SPEC §2).
    pub fn is_discovery_or_self_review(&self) -> bool {
        let path = self.path();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let discovery = matches!(
            segments.as_slice(),
            ["api"] | ["api", _] | ["apis"] | ["apis", _] | ["apis", _, _] | ["version"]
        ) || path.starts_with("/openapi/");
        let self_review = path == "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews"
            || path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
        discovery || self_review
    }

    /// A request under `/api{,s}/.../namespaces/<namespace>/...`.
    pub fn is_within(&self, namespace: &str) -> bool {
        let path = self.path();
        let marker = format!("/namespaces/{namespace}/");
        let core = path.starts_with(&format!("/api/v1{marker}"));
        let grouped = path.starts_with("/apis/")
            && path
                .splitn(5, '/')
                .nth(4)
                .is_some_and(|rest| format!("/{rest}").starts_with(&marker));
        core || grouped
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {} -> {} ({})",
            self.verb,
            self.request_uri,
            self.code(),
            self.request_received_timestamp
        )
    }
}

/// The audit log, one entry per request (the last stage seen of each audit ID).
pub struct AuditLog {
    pub events: Vec<AuditEvent>,
}

impl AuditLog {
    pub fn read(path: &Path) -> Self {
        Self::parse(&fs::read_to_string(path).unwrap_or_default())
    }

    /// Entries from JSON lines (a half-written or cut first or last line is skipped).
    pub fn parse(text: &str) -> Self {
        let mut by_id: BTreeMap<String, AuditEvent> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            // The last line may be half-written while the server runs.
            let Ok(event) = serde_json::from_str::<AuditEvent>(line) else {
                continue;
            };
            by_id.insert(event.audit_id.clone(), event);
        }
        let mut events: Vec<AuditEvent> = by_id.into_values().collect();
        events.sort_by_key(|e| e.request_received_timestamp);
        Self { events }
    }

    /// Requests made by `user` (the authenticated user, not an impersonated one).
    pub fn by_user<'a>(&'a self, user: &'a str) -> impl Iterator<Item = &'a AuditEvent> + 'a {
        self.events.iter().filter(move |e| e.user.username == user)
    }

    /// Requests made by `user` received within [from, to).
    pub fn by_user_between<'a>(
        &'a self,
        user: &'a str,
        from: Timestamp,
        to: Timestamp,
    ) -> Vec<&'a AuditEvent> {
        self.by_user(user)
            .filter(|e| e.request_received_timestamp >= from && e.request_received_timestamp < to)
            .collect()
    }
}

// ---- objects and polling -------------------------------------------------------------------------

/// `bulkhead::api::credential(name)` in `namespace`: finish it with `.build()`.
pub fn credential(namespace: &str, name: &str) -> bulkhead::api::CredentialBuilder {
    bulkhead::api::credential(name).namespace(namespace)
}

/// A `Random` Credential with the defaults (32 alphanumeric characters).
pub fn random_credential(namespace: &str, name: &str) -> bulkhead::api::Credential {
    credential(namespace, name).build()
}

/// Poll `probe` every 50 ms until it returns `Some`, at most `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- signals from the audit log ------------------------------------------------------------------

/// How often the audit log is read again while waiting on it.
const AUDIT_POLL: Duration = Duration::from_millis(200);

impl Cluster {
    /// The first audit event (oldest first) that `matches`, waiting for it up to `timeout`.
    pub async fn wait_audit(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&AuditEvent) -> bool,
    ) -> AuditEvent {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.audit().events.into_iter().find(|e| matches(e)) {
                return event;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} in the audit log"
            );
            tokio::time::sleep(AUDIT_POLL).await;
        }
    }

    /// Returns once a reconcile of Credential `name` (writing Secret `secret`) has run start to
    /// finish after this call began: the proof to wait for before asserting that a reconcile
    /// changed nothing.
    ///
    /// Each Credential reconcile reads its Secret once, first, and the reconciles of one object
    /// never overlap. So: touch an annotation no one reads (a reconcile is triggered by it) and
    /// wait for the operator's (`user`'s) GET of the Secret after the touch, a reconcile that
    /// read the state as it is now; then once more, a reconcile after that one, which therefore
    /// finished.
    pub async fn wait_reconciled(
        &self,
        admin: &kube::Client,
        user: &str,
        namespace: &str,
        name: &str,
        secret: &str,
    ) {
        let credentials: kube::Api<bulkhead::api::Credential> =
            kube::Api::namespaced(admin.clone(), namespace);
        for round in 0..2 {
            let since = Timestamp::now();
            let poke = serde_json::json!({"metadata": {"annotations": {
                "test.bulkhead.dev/poke": format!("{since}-{round}"),
            }}});
            credentials
                .patch(
                    name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&poke),
                )
                .await
                .unwrap();
            self.wait_audit(
                &format!("a reconcile of Credential {name} (a GET of Secret {secret})"),
                Duration::from_secs(30),
                |e| e.is_read_of_secret(user, namespace, secret, since),
            )
            .await;
        }
    }

    /// The operator's (`user`'s) requests between two of its drift re-checks of Secret
    /// `secret`: from its first re-read after this call began (a reconcile that started after
    /// everything the caller waited for, so nothing from before is in the window) up to its
    /// `reads`th. Whatever those reconciles wrote is inside.
    pub async fn between_rereads(
        &self,
        user: &str,
        namespace: &str,
        secret: &str,
        reads: usize,
        timeout: Duration,
    ) -> Vec<AuditEvent> {
        let since = Timestamp::now();
        let deadline = Instant::now() + timeout;
        loop {
            let audit = self.audit();
            let rereads: Vec<Timestamp> = audit
                .events
                .iter()
                .filter(|e| e.is_read_of_secret(user, namespace, secret, since))
                .map(|e| e.request_received_timestamp)
                .collect();
            if rereads.len() >= reads.max(2) {
                let (from, to) = (rereads[0], rereads[reads.max(2) - 1]);
                return audit
                    .by_user_between(user, from, to)
                    .into_iter()
                    .cloned()
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "{} of {reads} re-reads of Secret {secret} within {timeout:?}",
                rereads.len()
            );
            tokio::time::sleep(AUDIT_POLL).await;
        }
    }
}

// ---- a real node -------------------------------------------------------------------------------

/// `hack/node.sh` with the tools directory first on `PATH` (it calls `kubectl`).
pub fn node_script() -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("hack").join("node.sh"));
    let kubectl_dir = tool("kubectl")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![kubectl_dir];
    dirs.extend(std::env::split_paths(&path));
    cmd.env("PATH", std::env::join_paths(dirs).unwrap());
    cmd
}

/// What `hack/node.sh leftovers` finds of any node on this machine (processes, containers,
/// mounts, network namespaces, links, iptables rules, cgroups): empty when nothing is left.
pub fn node_leftovers() -> String {
    let out = run(node_script().arg("leftovers"));
    if out.status.success() {
        String::new()
    } else {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

/// The node `hack/node.sh up` started for a [`Cluster`]; `hack/node.sh down` on drop, and from
/// a watchdog shell if the test process dies first.
pub struct Node {
    dir: PathBuf,
    watchdog: Option<Child>,
    /// containerd, kubelet Ready, scheduler and kube-proxy up.
    pub started_in: Duration,
}

impl Node {
    fn down(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let out = run(node_script().arg("down").arg(&self.dir));
        if !out.status.success() {
            eprintln!(
                "e2e: hack/node.sh down failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.down();
    }
}

/// A docker archive of the operator image: `BULKHEAD_E2E_OPERATOR_IMAGE` (hack/test.sh and
/// hack/e2e.sh build it from the release binary with `hack/image.sh operator`), else built
/// here by the same script from [`operator_binary`] (the debug build cargo made for this run).
pub fn operator_image_archive() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    if let Some(path) = std::env::var_os(ENV_OPERATOR_IMAGE).filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(path) = built.as_ref() {
        return path.clone();
    }
    let out = unique_dir("bulkhead-image").join("operator.tar");
    eprintln!(
        "e2e: {ENV_OPERATOR_IMAGE} unset: building the operator image from {}",
        operator_binary().display()
    );
    run_ok(
        Command::new("bash")
            .arg(repo().join("hack").join("image.sh"))
            .args(["operator", "--binary"])
            .arg(operator_binary())
            .arg("--out")
            .arg(&out),
    );
    *built = Some(out.clone());
    out
}

/// A docker archive of the test workload image (busybox), built once per test process.
pub fn workload_image_archive() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(path) = built.as_ref() {
        return path.clone();
    }
    let out = unique_dir("bulkhead-image").join("workload.tar");
    run_ok(
        Command::new("bash")
            .arg(repo().join("hack").join("image.sh"))
            .args(["workload", "--out"])
            .arg(&out),
    );
    *built = Some(out.clone());
    out
}

impl Cluster {
    fn start_node(&mut self) {
        let started = Instant::now();
        let pki = self.dir.join("pki");
        let mut up = node_script();
        up.arg("up")
            .arg(&self.dir)
            .env("NODE_SERVER", self.server())
            .env("NODE_KUBECONFIG", self.admin_kubeconfig())
            .env("NODE_CA_CRT", pki.join("ca.crt"))
            .env("NODE_CA_KEY", pki.join("ca.key"));
        if let Some(assets) = std::env::var_os(ENV_ASSETS) {
            up.env(ENV_ASSETS, assets);
        } else if let Some(dir) = self.binaries.apiserver.parent() {
            // The node binaries sit beside the control plane's.
            up.env(ENV_ASSETS, dir);
        }
        // Registered before `up` runs: a half-started node is torn down as well.
        let watchdog = Command::new("sh")
            .args([
                "-c",
                r#"while kill -0 "$0" 2>/dev/null; do sleep 1; done; bash "$1" down "$2""#,
            ])
            .arg(std::process::id().to_string())
            .arg(repo().join("hack").join("node.sh"))
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .ok();
        self.node = Some(Node {
            dir: self.dir.clone(),
            watchdog,
            started_in: Duration::ZERO,
        });
        let out = run(&mut up);
        assert!(
            out.status.success(),
            "hack/node.sh up failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let took = started.elapsed();
        if let Some(node) = self.node.as_mut() {
            node.started_in = took;
        }
        eprintln!("e2e: node {NODE_NAME} Ready in {:.1}s", took.as_secs_f64());
        self.import_images(&[operator_image_archive(), workload_image_archive()]);
    }

    /// Tear the node down now (`hack/node.sh down`) and return what `hack/node.sh leftovers`
    /// finds, while this cluster still holds the node: empty when nothing is left.
    pub fn stop_node(&mut self) -> String {
        drop(self.node.take());
        node_leftovers()
    }

    /// The node, when the cluster was started with one.
    pub fn node(&self) -> &Node {
        self.node
            .as_ref()
            .expect("the cluster has no node: Cluster::start_with_node")
    }

    /// Load docker archives into the node's containerd (`hack/node.sh import`).
    pub fn import_images(&self, archives: &[PathBuf]) {
        let mut cmd = node_script();
        cmd.arg("import").arg(&self.dir).args(archives);
        run_ok(&mut cmd);
    }

    /// `helm` as cluster admin.
    pub fn helm(&self) -> Command {
        let mut cmd = Command::new(tool("helm"));
        cmd.arg(format!(
            "--kubeconfig={}",
            self.admin_kubeconfig().display()
        ));
        cmd
    }

    /// A namespace whose Pod Security admission enforces `restricted` (latest).
    pub fn create_restricted_namespace(&self, namespace: &str) {
        self.kubectl_ok(&["create", "namespace", namespace]);
        self.kubectl_ok(&[
            "label",
            "namespace",
            namespace,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        ]);
    }

    /// The chart's values that run the image this suite imported into the node, with the API
    /// server's endpoint for the NetworkPolicy (the node's address).
    pub fn pod_values() -> Vec<String> {
        let (repository, tag) = OPERATOR_IMAGE.rsplit_once(':').unwrap();
        vec![
            format!("image.repository={repository}"),
            format!("image.tag={tag}"),
            "image.pullPolicy=Never".to_owned(),
            format!("networkPolicy.apiServer.cidrs={{{NODE_IP}/32}}"),
        ]
    }

    /// `helm VERB bulkhead ./chart -n NAMESPACE --wait` (`install` or `upgrade`: a real
    /// release, with its record and readiness wait) with [`Cluster::pod_values`] and `set`,
    /// given whole as `helm upgrade` without `--reuse-values` takes them.
    pub fn helm_chart(&self, verb: &str, namespace: &str, set: &[&str]) -> Command {
        let mut helm = self.helm();
        helm.args([verb, "bulkhead"])
            .arg(repo().join("chart"))
            .args(["--namespace", namespace, "--wait", "--timeout", "180s"]);
        for value in Self::pod_values()
            .iter()
            .map(String::as_str)
            .chain(set.iter().copied())
        {
            helm.args(["--set", value]);
        }
        helm
    }

    /// [`Cluster::helm_chart`] `install`: the release, and how long helm took until the
    /// Deployment was ready.
    pub fn helm_install(&self, namespace: &str, set: &[&str]) -> (Release, Duration) {
        let started = Instant::now();
        run_ok(&mut self.helm_chart("install", namespace, set));
        let took = started.elapsed();
        let rendered =
            run_ok(
                self.helm()
                    .args(["get", "manifest", "bulkhead", "--namespace", namespace]),
            );
        (
            Release {
                namespace: namespace.to_owned(),
                name: "bulkhead".to_owned(),
                service_account: "bulkhead".to_owned(),
                rendered,
            },
            took,
        )
    }
}
