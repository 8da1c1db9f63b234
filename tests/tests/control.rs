//! The CLI against a running agent over its control socket, with real traffic showing that
//! each command took effect: apply, diff, show, rollback (also after a restart), mode,
//! block, unblock, bans, stats, status, events, and the errors a user can run into.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use portcullis_tests::{
    agent::{Agent, AgentPaths, Leftovers, binary},
    netns::{CLIENT_V4, NetnsPair, SERVER_V4},
    require_kernel,
    traffic::{tcp_connects, tcp_server},
};

const SHORT: Duration = Duration::from_millis(700);

struct Setup {
    pair: NetnsPair,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let pair = NetnsPair::new().unwrap();
        tcp_server(&pair, "0.0.0.0", 7000).unwrap();
        Self {
            pair,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn start(&self, policy: &str) -> Agent {
        let path = self.file("policy.yaml", policy);
        Agent::start(
            &self.pair.server_ns,
            &self.pair.server_if,
            path.as_ref(),
            &[],
        )
        .unwrap()
    }

    fn client_gets_through(&self) -> bool {
        tcp_connects(&self.pair, CLIENT_V4, SERVER_V4, 7000, SHORT)
    }
}

/// Runs the CLI, requires exit code `code`, returns stdout.
fn run(agent: &Agent, args: &[&str], code: i32) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = agent.cli(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr),
    );
    assert_eq!(
        status.code(),
        Some(code),
        "portcullis {args:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    if code == 0 {
        stdout.into_owned()
    } else {
        stderr.into_owned()
    }
}

fn json(agent: &Agent, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&run(agent, args, 0)).unwrap()
}

#[test]
fn apply_diff_show_mode_and_rollback_change_what_is_enforced() {
    require_kernel!();
    let s = Setup::new();
    let agent = s.start("deny: [192.0.2.0/24]\n");
    assert!(s.client_gets_through());

    let deny_client = s.file(
        "deny-client.yaml",
        &format!("deny:\n  - cidr: {CLIENT_V4}\n    name: client\n"),
    );
    let diff = run(&agent, &["policy", "diff", &deny_client], 0);
    assert!(
        diff.contains("+ deny 10.77.0.1/32 (client, enforce)")
            && diff.contains("- deny 192.0.2.0/24"),
        "{diff}"
    );
    assert!(s.client_gets_through(), "diff must not apply anything");

    let applied = run(&agent, &["policy", "apply", &deny_client], 0);
    assert!(applied.contains("version 2 in force"), "{applied}");
    assert!(!s.client_gets_through(), "applied deny not enforced");

    let shadow = run(&agent, &["mode", "client", "shadow"], 0);
    assert!(
        shadow.contains("version 3 in force")
            && shadow.contains("~ deny 10.77.0.1/32: client enforce -> client shadow"),
        "{shadow}"
    );
    assert!(s.client_gets_through(), "a shadow deny must not drop");

    let shown = json(&agent, &["policy", "show", "--json"]);
    assert_eq!(shown["version"], 3);
    assert_eq!(shown["modes"]["client"], "shadow");
    assert!(
        shown["origin"]
            .as_str()
            .unwrap()
            .contains("mode client shadow"),
        "{shown}"
    );
    let versions: Vec<u64> = shown["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);

    // Back to version 2: the deny is enforced again.
    let rolled = run(&agent, &["policy", "rollback", "2"], 0);
    assert!(
        rolled.contains("rolled back to version 2: version 4 in force"),
        "{rolled}"
    );
    assert!(
        !s.client_gets_through(),
        "rollback did not restore the enforced deny"
    );
    // Rollback without a version goes to the one before the current one (3: shadow).
    run(&agent, &["policy", "rollback"], 0);
    assert!(s.client_gets_through());

    // The status names the interface, hook, program and version.
    let status = json(&agent, &["status", "--json"]);
    assert_eq!(status["policy_version"], 5);
    assert_eq!(status["interfaces"][0]["interface"], s.pair.server_if);
    assert_eq!(status["interfaces"][0]["hook"], "xdp-native");
    assert!(status["interfaces"][0]["program_id"].as_u64().unwrap() > 0);
}

#[test]
fn block_unblock_and_bans() {
    require_kernel!();
    let s = Setup::new();
    let agent = s.start("{}\n");
    assert!(s.client_gets_through());
    let out = run(
        &agent,
        &[
            "block",
            "10.77.0.0/24",
            "--ttl",
            "10m",
            "--reason",
            "scanner",
        ],
        0,
    );
    assert!(out.contains("blocked 10.77.0.0/24 for 600 s"), "{out}");
    assert!(!s.client_gets_through(), "block not enforced");

    let bans = json(&agent, &["bans", "--json"]);
    let ban = &bans["bans"][0];
    assert_eq!(ban["cidr"], "10.77.0.0/24");
    assert_eq!(ban["kind"], "block");
    assert_eq!(ban["mode"], "enforce");
    assert_eq!(ban["reason"], "scanner");
    let left = ban["seconds_left"].as_u64().unwrap();
    assert!((590..=600).contains(&left), "{bans}");

    // Filters: by kind, and the entries that hold an address or lie inside a CIDR.
    run(&agent, &["block", "192.0.2.0/24"], 0);
    let cidrs = |args: &[&str]| -> Vec<String> {
        let listed = json(&agent, &[&["bans", "--json"], args].concat());
        listed["bans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["cidr"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(cidrs(&[]).len(), 2);
    assert_eq!(cidrs(&["--covering", CLIENT_V4]), ["10.77.0.0/24"]);
    assert_eq!(cidrs(&["--covering", "10.0.0.0/8"]), ["10.77.0.0/24"]);
    assert_eq!(
        cidrs(&["--kind", "block", "--covering", "192.0.2.9"]),
        ["192.0.2.0/24"]
    );
    assert!(cidrs(&["--kind", "escalation"]).is_empty());
    let none = run(&agent, &["bans", "--kind", "decision"], 0);
    assert!(none.contains("no bans"), "{none}");
    let err = run(&agent, &["bans", "--covering", "nonsense"], 64);
    assert!(err.contains("invalid CIDR 'nonsense'"), "{err}");
    run(&agent, &["unblock", "192.0.2.0/24"], 0);

    let again = run(&agent, &["block", "10.77.0.0/24"], 1);
    assert!(again.contains("10.77.0.0/24 is already blocked"), "{again}");
    run(&agent, &["unblock", "10.77.0.0/24"], 0);
    assert!(s.client_gets_through(), "unblock not enforced");
    let missing = run(&agent, &["unblock", "10.77.0.0/24"], 1);
    assert!(missing.contains("is not blocked"), "{missing}");

    // A short block expires by itself.
    run(&agent, &["block", CLIENT_V4, "--ttl", "1s"], 0);
    assert!(!s.client_gets_through());
    std::thread::sleep(Duration::from_millis(1200));
    assert!(s.client_gets_through(), "the block did not expire");
    assert_eq!(
        json(&agent, &["bans", "--json"])["bans"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Stats count what the block dropped, by reason and under the rule "block".
    let stats = json(&agent, &["stats", "--json"]);
    assert!(stats["verdicts"]["banned"].as_u64().unwrap() > 0, "{stats}");
    assert!(
        stats["rules"]["block"]["dropped"].as_u64().unwrap() > 0,
        "{stats}"
    );
}

#[test]
fn cli_errors_are_clear_and_exit_non_zero() {
    require_kernel!();
    let s = Setup::new();
    let agent = s.start("rate_limits:\n  - {name: api, protocol: tcp, ports: [80], rate: 10/s}\n");
    let bad = s.file("bad.yaml", "deny:\n  - 10.0.0.0/33\n");
    let err = run(&agent, &["policy", "apply", &bad], 64);
    assert!(
        err.contains("bad.yaml:2: invalid CIDR '10.0.0.0/33'"),
        "{err}"
    );
    let err = run(&agent, &["mode", "nope", "shadow"], 1);
    assert!(
        err.contains("no rate limit, route, response rule, deny name or deny CIDR called 'nope'"),
        "{err}"
    );
    let err = run(&agent, &["policy", "rollback", "99"], 1);
    assert!(err.contains("version 99 is not kept"), "{err}");
    let err = run(&agent, &["block", "10.0.0.1/8"], 64);
    assert!(err.contains("host bits are set"), "{err}");
    let err = run(&agent, &["block", "192.0.2.1", "--ttl", "soon"], 64);
    assert!(err.contains("invalid duration 'soon'"), "{err}");
    // A block that long would have wrapped the kernel's clock; without --ttl it is forever.
    let err = run(&agent, &["block", "192.0.2.1", "--ttl", "213503d"], 64);
    assert!(err.contains("at most 365d"), "{err}");
    // A valid policy the running agent cannot put in force (map sizes are fixed at load)
    // is refused as a whole, with why and what to do, and the one in force stays.
    let resized = s.file("resized.yaml", "capacity:\n  sources: 4096\n");
    let err = run(&agent, &["policy", "apply", &resized], 1);
    assert!(
        err.contains("capacity changed") && err.contains("restart the agent"),
        "{err}"
    );
    let status = json(&agent, &["status", "--json"]);
    assert_eq!(status["policy_version"], 1, "{status}");

    let nobody = Command::new(binary())
        .args(["--socket", "/nonexistent/control.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(nobody.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("no agent is running"));
}

/// Runs the CLI as the unprivileged user `nobody`.
fn as_nobody(socket: &std::path::Path) -> Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary())
        .arg("--socket")
        .arg(socket)
        .arg("status")
        .output()
        .unwrap()
}

#[test]
fn only_root_may_use_the_control_socket() {
    require_kernel!();
    let s = Setup::new();
    let agent = s.start("{}\n");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    // The file mode stops other users at connect().
    // The binary must be reachable for nobody; the target directory is under /work or /tmp.
    let out = as_nobody(&agent.socket);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("permission denied") || stderr.contains("Permission denied"),
        "{stderr}"
    );

    // If the file mode is loosened, the agent still refuses by the peer's credentials.
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&agent.socket);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused: uid 65534 is not root"),
        "{stderr}"
    );
    assert!(
        agent.wait_for_stderr("refused a control connection", Duration::from_secs(2)),
        "{:?}",
        agent.stderr()
    );
}

#[test]
fn versions_survive_a_restart_and_rollback_still_works() {
    require_kernel!();
    let s = Setup::new();
    let mut agent = s.start(&format!("deny: [{CLIENT_V4}]\n"));
    let open = s.file("open.yaml", "{}\n");
    run(&agent, &["policy", "apply", &open], 0);
    assert!(s.client_gets_through());
    agent.keep_state();
    assert!(agent.stop().unwrap().success());
    drop(agent);

    // The restarted agent starts from its policy file (which still denies the client) and
    // keeps the versions applied before.
    let agent = s.start(&format!("deny: [{CLIENT_V4}]\n"));
    let shown = json(&agent, &["policy", "show", "--json"]);
    let versions: Vec<u64> = shown["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3], "{shown}");
    assert!(!s.client_gets_through());
    run(&agent, &["policy", "rollback", "2"], 0);
    assert!(
        s.client_gets_through(),
        "rollback to a version from before the restart failed"
    );
}

#[test]
fn events_follow_streams_json_lines() {
    require_kernel!();
    let s = Setup::new();
    let agent = s.start(&format!("deny: [{CLIENT_V4}]\n"));
    let mut follower = Command::new(binary())
        .arg("--socket")
        .arg(&agent.socket)
        .args(["events", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Give the follower time to subscribe, then make denied traffic.
    std::thread::sleep(Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut event = None;
    while Instant::now() < deadline && event.is_none() {
        s.client_gets_through();
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            event = Some(line);
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let event: serde_json::Value =
        serde_json::from_str(&event.expect("no event streamed")).unwrap();
    assert_eq!(event["reason"], "denied");
    assert_eq!(event["source"], CLIENT_V4);
    assert_eq!(event["verdict"], "drop");
}

/// Connects to `socket` (as nobody, or as root), sends nothing, and returns what the agent
/// answered within `wait` (with the client's errors), and how long it took.
fn silent_client(socket: &std::path::Path, as_nobody: bool, wait: Duration) -> (String, Duration) {
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_UNIX)\n\
        s.connect(sys.argv[1])\n\
        s.settimeout(float(sys.argv[2]))\n\
        try:\n    print(s.recv(4096).decode(), end='')\n\
        except socket.timeout:\n    print('timed out', end='')\n";
    // Debian's python3 (setup installs it): a user of one's own may not reach another.
    let python = "/usr/bin/python3";
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", python]);
        c
    } else {
        Command::new(python)
    };
    let started = Instant::now();
    let out = command
        .args(["-c", script])
        .arg(socket)
        .arg(wait.as_secs_f64().to_string())
        .output()
        .unwrap();
    (portcullis_tests::output_text(&out), started.elapsed())
}

/// A client is judged at accept, before a byte is read; one that sends nothing is answered
/// after a deadline; the connections held at once are capped, and the agent answers again
/// once they go.
#[test]
fn the_control_socket_refuses_early_times_out_and_caps_connections() {
    require_kernel!();
    let s = Setup::new();
    let agent = s.start("{}\n");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (said, took) = silent_client(&agent.socket, true, Duration::from_secs(3));
    assert!(said.contains("refused: uid 65534 is not root"), "{said:?}");
    assert!(took < Duration::from_secs(2), "refused after {took:?}");

    let (said, took) = silent_client(&agent.socket, false, Duration::from_secs(10));
    assert!(said.contains("no request within 5 s"), "{said:?}");
    assert!(took < Duration::from_secs(8), "answered after {took:?}");

    let held: Vec<_> = (0..32)
        .map(|_| std::os::unix::net::UnixStream::connect(&agent.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let busy = run(&agent, &["status"], 1);
    assert!(busy.contains("busy: 32 control connections"), "{busy}");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    run(&agent, &["status"], 0);
}

/// At exit the agent removes the socket it created, and nothing else that is at the path.
#[test]
fn the_agent_removes_only_its_own_socket() {
    require_kernel!();
    let s = Setup::new();
    let mut agent = s.start("{}\n");
    let socket = agent.socket.clone();
    std::fs::rename(&socket, s.dir.path().join("moved.sock")).unwrap();
    std::fs::write(&socket, "someone else's").unwrap();
    assert!(agent.stop().unwrap().success());
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "someone else's");
    std::fs::remove_file(&socket).unwrap();
}

/// A socket directory another user could tamper with is refused at start, with why.
#[test]
fn an_unsafe_socket_directory_is_refused() {
    require_kernel!();
    let s = Setup::new();
    let _leftovers = Leftovers::of(&s.pair.server_ns);
    let pin_dir = AgentPaths::of(&s.pair.server_ns).pin_dir;
    let policy = s.file("policy.yaml", "{}\n");
    let real = s.dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = s.dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let open = s.dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    for (dir, why) in [
        (&link, "is not a directory"),
        (&open, "is writable by other users"),
    ] {
        let mut agent = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", s.pair.server_ns))
            .arg(binary())
            .args(["run", "--iface", &s.pair.server_if, "--policy", &policy])
            .arg("--pin-dir")
            .arg(&pin_dir)
            .arg("--state-dir")
            .arg(s.dir.path().join("state"))
            .arg("--socket")
            .arg(dir.join("control.sock"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: an agent that accepts the directory runs until stopped.
        let deadline = Instant::now() + Duration::from_secs(10);
        while agent.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if agent.try_wait().unwrap().is_none() {
            let _ = Command::new("kill").arg(agent.id().to_string()).status();
            let _ = agent.wait();
            panic!("the agent started with its socket in {}", dir.display());
        }
        let out = agent.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
    }
    assert!(
        s.client_gets_through(),
        "a refused start left something attached"
    );
}
