//! What a person reads when something is wrong: the built binary run against an unreachable
//! API server, one that refuses the credentials, and no kubeconfig at all. Exit codes as the
//! README and `--help` say; the server and context named; each failure said once; no Rust
//! `Debug` structures; no colour codes when stderr is not a terminal.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// A kubeconfig whose one context `team-ctx` points at `server`.
fn kubeconfig(dir: &Path, server: &str) -> PathBuf {
    let path = dir.join("config");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster: {{server: \"{server}\"}}\n  name: c\ncontexts:\n- context: {{cluster: c, user: u}}\n  name: team-ctx\ncurrent-context: team-ctx\nusers:\n- name: u\n  user: {{token: not-a-valid-token}}\n"
        ),
    )
    .unwrap();
    path
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bulkhead-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bulkhead(kubeconfig: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap())
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_against_an_unreachable_server_exits_2_naming_server_and_context() {
    let dir = tempdir("check-unreachable");
    let port = closed_port();
    let config = kubeconfig(&dir, &format!("https://127.0.0.1:{port}"));
    let output = bulkhead(&config, &["check", "--namespace", "team-a"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("127.0.0.1:{port}")) && stdout.contains("team-ctx"),
        "{stdout}"
    );
    let fails: Vec<&str> = stdout.lines().filter(|l| l.contains("FAIL")).collect();
    assert_eq!(fails.len(), 1, "one line, not one per check: {stdout}");
    assert!(
        fails[0].contains("cannot reach the Kubernetes API server"),
        "{stdout}"
    );
    assert!(!stdout.contains("ServiceError"), "{stdout}");
}

#[test]
fn run_against_an_unreachable_server_says_so_once_per_attempt_without_colour() {
    let dir = tempdir("run-unreachable");
    let port = closed_port();
    let config = kubeconfig(&dir, &format!("https://127.0.0.1:{port}"));
    // Two attempts (1 s apart), then stop.
    let command = bulkhead(
        &config,
        &[
            "run",
            "--namespace",
            "team-a",
            "--log-format",
            "text",
            "--metrics-addr",
            "127.0.0.1:0",
            "--probe-addr",
            "127.0.0.2:0",
        ],
    );
    let lines = stderr_until(command, |lines| {
        lines.iter().filter(|l| l.contains("cannot reach")).count() >= 2
    });
    let errors: Vec<&String> = lines.iter().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 2, "one ERROR line per attempt: {lines:#?}");
    for line in &errors {
        assert!(
            line.contains(&format!("127.0.0.1:{port}")) && line.contains("team-ctx"),
            "the line names the server and the context: {line}"
        );
    }
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "no ANSI colour codes into a pipe: {lines:#?}"
    );
}

/// Runs `command` and reads its stderr until `done` holds for the lines so far (30 s at most),
/// then kills it and returns the lines.
fn stderr_until(mut command: Command, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let mut child = command
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&lines) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("not seen within 30 s (or the process ended): {lines:#?}"));
        lines.push(line);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    lines
}

#[test]
fn ephemeral_metrics_and_probe_ports_on_one_address_are_accepted() {
    let dir = tempdir("run-port-0");
    let port = closed_port();
    let config = kubeconfig(&dir, &format!("https://127.0.0.1:{port}"));
    let run = |metrics: &str, probe: &str| {
        bulkhead(
            &config,
            &[
                "run",
                "--namespace",
                "team-a",
                "--log-format",
                "text",
                "--metrics-addr",
                metrics,
                "--probe-addr",
                probe,
            ],
        )
    };
    // Port 0 twice: two different free ports, so the operator starts and goes on to the API.
    let lines = stderr_until(run("127.0.0.1:0", "127.0.0.1:0"), |lines| {
        lines.iter().any(|l| l.contains("cannot reach"))
    });
    assert!(
        lines.iter().all(|l| !l.contains("must differ")),
        "{lines:#?}"
    );
    // One fixed port twice is still refused, naming both flags.
    let fixed = format!("127.0.0.1:{}", closed_port());
    let output = run(&fixed, &fixed).output().unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--metrics-addr and --probe-addr must differ"),
        "{stderr}"
    );
}

/// An API server that answers every request with a 401 Status, as kube-apiserver does for a
/// bad token.
fn unauthorized_server() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn check_with_refused_credentials_reads_well_and_exits_2() {
    let dir = tempdir("check-401");
    let port = unauthorized_server();
    let config = kubeconfig(&dir, &format!("http://127.0.0.1:{port}"));
    let output = bulkhead(&config, &["check", "--namespace", "team-a"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    let all = format!("{stdout}{stderr}");
    assert_eq!(output.status.code(), Some(2), "{all}");
    assert!(all.contains("HTTP 401 Unauthorized"), "{all}");
    assert!(all.contains("refused the credentials"), "{all}");
    for debug in ["Status {", "ListMeta", "continue_", "Some("] {
        assert!(!all.contains(debug), "Debug formatting {debug:?} in: {all}");
    }
}

#[test]
fn a_missing_kubeconfig_is_said_once_with_the_path_quoted_never_twice() {
    let dir = tempdir("no-kubeconfig");
    let missing = dir.join("absent");
    let output = bulkhead(&missing, &["check", "--namespace", "team-a"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    let mentions: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&*missing.to_string_lossy()))
        .collect();
    assert_eq!(mentions.len(), 1, "said once: {stderr}");
    assert!(!stderr.contains("'\""), "no double quoting: {stderr}");
    assert!(stderr.contains("KUBECONFIG"), "names the fix: {stderr}");

    // `run` logs it, once, and does not print it a second time.
    let output = bulkhead(
        &missing,
        &[
            "run",
            "--namespace",
            "team-a",
            "--metrics-addr",
            "127.0.0.1:0",
            "--probe-addr",
            "127.0.0.2:0",
        ],
    )
    .output()
    .unwrap();
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let mentions = stderr
        .lines()
        .filter(|l| l.contains(&*missing.to_string_lossy()))
        .count();
    assert_eq!(mentions, 1, "said once: {stderr}");
}
