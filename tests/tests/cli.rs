//! The `portcullis` command line: exit codes and messages a user sees.

use std::process::Command;

use portcullis_tests::{agent::binary, netns::NetnsPair, require_kernel};

fn portcullis(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .output()
        .expect("run portcullis");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn validate_accepts_the_shipped_examples() {
    for example in ["examples/policy.yaml", "examples/demo-policy.yaml"] {
        let path = format!("{}/../{example}", env!("CARGO_MANIFEST_DIR"));
        let (code, stdout, stderr) = portcullis(&["policy", "validate", &path]);
        assert_eq!(code, 0, "{example}: {stderr}");
        assert!(stdout.contains("valid"), "{stdout}");
    }
}

/// The `http:` section is validated now, and said not to be enforced yet.
#[test]
fn validate_checks_the_http_section() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        &dir,
        "http.yaml",
        "http:\n  ports: [80]\n  routes:\n    - {name: login, methods: [POST], path: /api/login, rate: 5/m}\n",
    );
    let (code, stdout, stderr) = portcullis(&["policy", "validate", &good]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("http: 1 routes and 0 response rules on ports [80]"),
        "{stdout}"
    );
    // The commented-out section of the shipped example is valid as written.
    let example = std::fs::read_to_string(format!(
        "{}/../examples/policy.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let section: String = example
        .lines()
        .skip_while(|line| *line != "# http:")
        .map(|line| format!("{}\n", line.strip_prefix("# ").unwrap_or("")))
        .collect();
    assert!(
        section.starts_with("http:"),
        "no http section in the example"
    );
    let uncommented = write(&dir, "example-http.yaml", &section);
    let (code, stdout, stderr) = portcullis(&["policy", "validate", &uncommented]);
    assert_eq!(code, 0, "{section}\n{stderr}");
    assert!(stdout.contains("2 routes and 1 response rules"), "{stdout}");
    let bad = write(
        &dir,
        "route.yaml",
        "http:\n  ports: [80]\n  routes:\n    - {name: login, path: api/login, rate: 5/m}\n",
    );
    let (code, _, stderr) = portcullis(&["policy", "validate", &bad]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("route.yaml:4: route 'login': path \"api/login\" must start with /"),
        "{stderr}"
    );
}

#[test]
fn validate_rejects_bad_files_with_exit_64_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "syntax.yaml",
            "allow: [10.0.0.0/8\n",
            "syntax.yaml:1:8: unclosed bracket",
        ),
        (
            "unknown.yaml",
            "allow: []\ndenny: []\n",
            "unknown.yaml:2:1: unknown field `denny`",
        ),
        (
            "cidr.yaml",
            "deny:\n  - 10.0.0.0/8\n  - 300.0.0.0/8\n",
            "cidr.yaml:3: invalid CIDR '300.0.0.0/8'",
        ),
        (
            "zero.yaml",
            "rate_limits:\n  - {name: a, protocol: udp, rate: 0/s}\n",
            "zero.yaml:2: invalid rate '0/s': a rate must be above zero",
        ),
        (
            "contradiction.yaml",
            "allow: [10.0.0.0/8]\ndeny: [10.9.0.0/16]\n",
            "contradiction.yaml:2: deny entry 10.9.0.0/16 can never apply",
        ),
        (
            "full.yaml",
            "capacity: {cidrs: 2}\ndeny: [1.0.0.0/8, 2.0.0.0/8, 3.0.0.0/8]\n",
            "more than capacity.cidrs (2) allows",
        ),
    ];
    for (name, text, needle) in cases {
        let path = write(&dir, name, text);
        let (code, _, stderr) = portcullis(&["policy", "validate", &path]);
        assert_eq!(code, 64, "{name}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{name}: {stderr:?} lacks {needle:?}"
        );
    }
    let (code, _, stderr) = portcullis(&["policy", "validate", "/nonexistent/policy.yaml"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("/nonexistent/policy.yaml: cannot read the policy file"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_a_bad_policy_before_touching_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "bad.yaml",
        "rate_limits:\n  - {name: a, protocol: udp, rate: fast}\n",
    );
    let pin_dir = dir.path().join("pins");
    let (code, _, stderr) = portcullis(&[
        "run",
        "--iface",
        "lo",
        "--policy",
        &path,
        "--pin-dir",
        pin_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("bad.yaml:2: invalid rate 'fast'"),
        "{stderr}"
    );
    assert!(!pin_dir.exists(), "nothing may be pinned for a bad policy");
}

#[test]
fn run_reports_a_missing_interface_and_leaves_nothing_behind() {
    require_kernel!();
    let pair = NetnsPair::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "ok.yaml", "deny: [192.0.2.0/24]\n");
    let pin_dir = format!("/sys/fs/bpf/pc-test-missing-{}", pair.server_ns);
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", pair.server_ns))
        .arg(binary())
        .args([
            "run",
            "--iface",
            "nope0",
            "--policy",
            &path,
            "--pin-dir",
            &pin_dir,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no interface named nope0"), "{stderr}");
    assert!(!std::path::Path::new(&pin_dir).exists());
}
