//! The README quickstart's control plane: the test suite's development control plane as a
//! program. It makes (once) a tenant CA, a server certificate and a client identity in `--dir`,
//! prints the command that turns the identity into the operator's Secret, and serves until
//! Ctrl-C. Development only: state is in memory, and it is not part of the release binary.
//!
//!     cargo run --example dev-control-plane -- --dir ./dev-pki --tenant team-a --listen 127.0.0.1:8443

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "devcp/mod.rs"]
mod devcp;
#[allow(dead_code)]
#[path = "pki.rs"]
mod pki;

use std::error::Error;
use std::fs;
use std::io::{IsTerminal as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

type BoxError = Box<dyn Error + Send + Sync>;

const CA_CRT: &str = "ca.crt";
const CLIENT_CRT: &str = "tls.crt";
const CLIENT_KEY: &str = "tls.key";
const SERVER_CRT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
const FILES: [&str; 5] = [CA_CRT, CLIENT_CRT, CLIENT_KEY, SERVER_CRT, SERVER_KEY];

/// A development control plane for Bulkhead (mutual TLS, in memory).
#[derive(Parser, Debug)]
#[command(name = "dev-control-plane")]
struct Args {
    /// Where the CA, server certificate and client identity live; generated when absent.
    #[arg(long, default_value = "./dev-pki")]
    dir: PathBuf,
    /// The tenant id the client identity carries (spiffe://<trust-domain>/tenant/<id>).
    #[arg(long, default_value = "team-a")]
    tenant: String,
    /// The trust domain of the identity's spiffe URI.
    #[arg(long, default_value = "bulkhead.dev")]
    trust_domain: String,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// The endpoint written into the identity's https URI SAN, as the operator will reach this
    /// server (e.g. https://host.docker.internal:8443 from a kind cluster).
    /// Default: https://<listen address>, or https://localhost:<port> when listening on all
    /// addresses.
    #[arg(long)]
    endpoint: Option<String>,
    /// More DNS names or IP addresses for the server certificate (the endpoint's host, localhost
    /// and the listen address are always in it).
    #[arg(long = "server-name")]
    server_names: Vec<String>,
    /// The namespace shown in the printed kubectl command.
    #[arg(long, default_value = "team-a")]
    namespace: String,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, default_value_t = 900)]
    token_ttl_seconds: u64,
}

#[tokio::main]
async fn main() {
    if let Err(e) = run(Args::parse()).await {
        eprintln!("dev-control-plane: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if !devcp::identity::valid_tenant_id(&args.tenant) {
        return Err(format!(
            "--tenant {:?} is not a tenant id ([a-z0-9]([a-z0-9-]{{0,61}}[a-z0-9])?)",
            args.tenant
        )
        .into());
    }
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| default_endpoint(args.listen));
    ensure_pki(&args, &endpoint)?;

    let read = |name: &str| fs::read_to_string(args.dir.join(name));
    let tenant = tenant_of(&read(CLIENT_CRT)?)?;
    if tenant != args.tenant {
        return Err(format!(
            "{} holds an identity for tenant {tenant:?}, not {:?}: use another --dir (or delete it)",
            args.dir.display(),
            args.tenant
        )
        .into());
    }
    let cp = devcp::DevControlPlane::start(devcp::DevConfig {
        ca_pem: read(CA_CRT)?,
        server_cert_pem: read(SERVER_CRT)?,
        server_key_pem: read(SERVER_KEY)?,
        token_ttl: Duration::from_secs(args.token_ttl_seconds),
        bind: args.listen,
    })
    .await
    .map_err(|e| format!("cannot serve on {}: {e}", args.listen))?;

    print_instructions(&args, &tenant, &endpoint, cp.addr());
    tokio::signal::ctrl_c().await?;
    cp.shutdown().await;
    Ok(())
}

fn default_endpoint(listen: SocketAddr) -> String {
    match listen.ip() {
        ip if ip.is_unspecified() => format!("https://localhost:{}", listen.port()),
        _ => format!("https://{listen}"),
    }
}

/// Generates everything when `--dir` holds none of the files; reuses them when it holds all.
fn ensure_pki(args: &Args, endpoint: &str) -> Result<(), BoxError> {
    let present: Vec<&str> = FILES
        .into_iter()
        .filter(|f| args.dir.join(f).exists())
        .collect();
    if present.len() == FILES.len() {
        return Ok(());
    }
    if !present.is_empty() {
        return Err(format!(
            "{} holds only {} of {}: delete it (or pick another --dir) to generate a fresh set",
            args.dir.display(),
            present.join(", "),
            FILES.join(", ")
        )
        .into());
    }
    fs::create_dir_all(&args.dir)?;

    let ca = pki::TestCa::new(&format!("bulkhead dev CA ({})", args.tenant))?;
    let spec = pki::ClientCert::new(&args.tenant, &args.trust_domain)
        .with_endpoint(endpoint)
        .valid_for(Duration::from_secs(90 * 24 * 3600));
    let client = ca.client_identity(&spec)?;

    let mut dns = vec!["localhost".to_owned()];
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    if !args.listen.ip().is_unspecified() {
        ips.push(args.listen.ip());
    }
    let endpoint_host = endpoint_host(endpoint)?;
    for name in args
        .server_names
        .iter()
        .chain(std::iter::once(&endpoint_host))
    {
        match name.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(name.clone()),
        }
    }
    dns.sort();
    dns.dedup();
    ips.sort();
    ips.dedup();
    let dns: Vec<&str> = dns.iter().map(String::as_str).collect();
    let server = ca.server_cert(&dns, &ips)?;

    write(&args.dir, CA_CRT, &client.ca_pem, false)?;
    write(&args.dir, CLIENT_CRT, &client.cert_pem, false)?;
    write(&args.dir, CLIENT_KEY, &client.key_pem, true)?;
    write(&args.dir, SERVER_CRT, &server.cert_pem, false)?;
    write(&args.dir, SERVER_KEY, &server.key_pem, true)?;
    eprintln!(
        "generated a tenant CA, a server certificate and the identity of tenant {} in {}",
        args.tenant,
        args.dir.display()
    );
    Ok(())
}

/// The host in `https://host[:port]` (IPv6 without brackets).
fn endpoint_host(endpoint: &str) -> Result<String, BoxError> {
    let rest = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| format!("--endpoint {endpoint:?} must start with https://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return Err(format!("--endpoint {endpoint:?} has no host").into());
    }
    Ok(host.to_owned())
}

/// Private keys are created readable by the owner only.
fn write(dir: &Path, name: &str, contents: &str, secret: bool) -> Result<(), BoxError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let path = dir.join(name);
    options
        .open(&path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}

fn tenant_of(cert_pem: &str) -> Result<String, BoxError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
    Ok(devcp::tenant_from_cert_der(&der)?)
}

fn print_instructions(args: &Args, tenant: &str, endpoint: &str, addr: SocketAddr) {
    let dir = args.dir.display();
    println!(
        "\nBulkhead dev control plane for tenant {tenant} on https://{addr} (endpoint in the identity: {endpoint})\n\
         \n\
         Create the operator's identity Secret (kubernetes.io/tls with tls.crt, tls.key and ca.crt):\n\
         \n  kubectl --namespace {ns} create secret generic bulkhead-identity --type=kubernetes.io/tls \\\n\
         \x20   --from-file=tls.crt={dir}/{CLIENT_CRT} \\\n\
         \x20   --from-file=tls.key={dir}/{CLIENT_KEY} \\\n\
         \x20   --from-file=ca.crt={dir}/{CA_CRT}\n\
         \n\
         (`kubectl create secret tls bulkhead-identity --cert={dir}/{CLIENT_CRT} --key={dir}/{CLIENT_KEY}` \
         makes the same Secret without ca.crt, which the operator needs to trust this server.)\n\
         \n\
         State is in memory and lost on exit. Ctrl-C stops.\n",
        ns = args.namespace,
    );
}
