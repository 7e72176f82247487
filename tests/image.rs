//! The operator image built here (`hack/image.sh operator`, no registry, no engine) agrees with
//! the published `Dockerfile`'s final stage: user, entrypoint, command, ports, labels, the
//! binary's path, and no shell or package manager in it.
//!
//! The archive is `BULKHEAD_E2E_OPERATOR_IMAGE` when set (hack/test.sh builds it from the
//! release binary), else one built here from the binary cargo built for this run: the layout
//! under test is the script's, whichever binary it packs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The instructions of the Dockerfile's last stage, continuation lines joined: (KEYWORD, rest).
fn final_stage(dockerfile: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() && current.is_empty() {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            joined.push(std::mem::take(&mut current));
        }
    }
    let last_from = joined
        .iter()
        .rposition(|l| l.to_uppercase().starts_with("FROM "))
        .expect("a FROM");
    joined[last_from..]
        .iter()
        .filter_map(|l| {
            let (keyword, rest) = l.split_once(' ')?;
            Some((keyword.to_uppercase(), rest.trim().to_owned()))
        })
        .collect()
}

/// `LABEL k="v" k2="v2"` → map.
fn labels(rest: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = rest.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').expect("closing quote");
            (&quoted[..end], &quoted[end + 1..])
        } else {
            after.split_once(' ').unwrap_or((after, ""))
        };
        out.insert(key.trim().to_owned(), value.to_owned());
        rest = tail.trim();
    }
    out
}

fn archive() -> PathBuf {
    if let Some(path) = std::env::var_os("BULKHEAD_E2E_OPERATOR_IMAGE").filter(|v| !v.is_empty()) {
        return PathBuf::from(path);
    }
    let dir = std::env::temp_dir().join(format!("bulkhead-image-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("operator.tar");
    run_ok(
        Command::new("bash")
            .arg(repo().join("hack/image.sh"))
            .args([
                "operator",
                "--binary",
                env!("CARGO_BIN_EXE_bulkhead"),
                "--out",
            ])
            .arg(&out),
    );
    out
}

fn extract(archive: &Path, member: &str, into: &Path) -> PathBuf {
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(into)
            .arg(member),
    );
    into.join(member)
}

#[test]
fn the_image_built_here_agrees_with_the_dockerfile_and_has_no_shell() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let stage = final_stage(&dockerfile);
    let one = |keyword: &str| {
        stage
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, v)| v.clone())
            .next_back()
            .unwrap_or_else(|| panic!("the Dockerfile's final stage has no {keyword}"))
    };
    let archive = archive();
    let work = tempdir();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(extract(&archive, "manifest.json", &work)).unwrap())
            .unwrap();
    let config_name = manifest[0]["Config"].as_str().unwrap();
    let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
    assert_eq!(manifest[0]["Layers"].as_array().unwrap().len(), 1);
    let config: Value =
        serde_json::from_slice(&std::fs::read(extract(&archive, config_name, &work)).unwrap())
            .unwrap();
    let c = &config["config"];

    assert_eq!(c["User"], one("USER"), "USER");
    let entrypoint: Value = serde_json::from_str(&one("ENTRYPOINT")).unwrap();
    assert_eq!(c["Entrypoint"], entrypoint, "ENTRYPOINT");
    let cmd: Value = serde_json::from_str(&one("CMD")).unwrap();
    assert_eq!(c["Cmd"], cmd, "CMD");
    let mut dockerfile_ports: Vec<String> = one("EXPOSE")
        .split_whitespace()
        .map(|p| {
            if p.contains('/') {
                p.to_owned()
            } else {
                format!("{p}/tcp")
            }
        })
        .collect();
    dockerfile_ports.sort();
    let image_ports: Vec<String> = c["ExposedPorts"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(image_ports, dockerfile_ports, "EXPOSE");
    let image_labels: BTreeMap<String, String> =
        serde_json::from_value(c["Labels"].clone()).unwrap();
    assert_eq!(image_labels, labels(&one("LABEL")), "LABEL");
    // The Dockerfile copies the binary to the entrypoint's path.
    let copy = one("COPY");
    let binary_path = entrypoint[0].as_str().unwrap();
    assert!(
        copy.ends_with(binary_path),
        "COPY {copy} lands at {binary_path}"
    );

    // The layer: the binary where the entrypoint says, the user it runs as, nothing to shell
    // into and nothing to install packages with.
    let layer = extract(&archive, layer_name, &work);
    let listing = String::from_utf8(run_ok(Command::new("tar").arg("-tvf").arg(&layer))).unwrap();
    let paths: Vec<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| format!("/{}", p.trim_start_matches("./").trim_end_matches('/')))
        .collect();
    let binary_line = listing
        .lines()
        .find(|l| l.ends_with(binary_path.trim_start_matches('/')))
        .unwrap_or_else(|| panic!("{binary_path} in the layer:\n{listing}"));
    assert!(binary_line.starts_with("-rwxr-xr-x"), "{binary_line}");
    let forbidden = [
        "sh", "bash", "dash", "ash", "busybox", "apt", "apt-get", "dpkg", "apk", "yum", "dnf",
        "rpm", "microdnf",
    ];
    let found: Vec<&String> = paths
        .iter()
        .filter(|p| {
            let name = p.rsplit('/').next().unwrap_or_default();
            forbidden.contains(&name)
        })
        .collect();
    assert!(
        found.is_empty(),
        "a shell or package manager in the image: {found:?}"
    );
    assert!(paths.iter().any(|p| p == "/etc/passwd"), "{paths:?}");
    let passwd = extract(&archive, layer_name, &work);
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(&passwd)
            .arg("-C")
            .arg(&work)
            .arg("etc/passwd"),
    );
    let passwd = std::fs::read_to_string(work.join("etc/passwd")).unwrap();
    let uid = one("USER");
    let uid = uid.split(':').next().unwrap();
    assert!(
        passwd.lines().any(|l| l.split(':').nth(2) == Some(uid)),
        "user {uid} in /etc/passwd: {passwd}"
    );
    let size = std::fs::metadata(&layer).unwrap().len();
    eprintln!(
        "image: layer {:.1} MiB ({})",
        size as f64 / 1048576.0,
        archive.display()
    );
    let _ = std::fs::remove_dir_all(&work);
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "bulkhead-image-check-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
