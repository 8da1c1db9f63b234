//! Restarts and upgrades without an enforcement gap: the agent killed with SIGKILL under
//! traffic and started again, a clean exit that keeps the programs, `detach`, and the
//! refusal to take an interface that another XDP program holds.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use agent_common::{BLOCK_EPOCH, BLOCK_RULE, BanEntry, maps};
use aya::maps::{
    Map, MapData,
    lpm_trie::{Key, LpmTrie},
};
use portcullis_tests::{
    agent::{Agent, AgentPaths, Leftovers, binary},
    netns::{CLIENT_V4, NetnsPair, SERVER_V4},
    output_text, replace_file, require_kernel,
    traffic::{UdpCounter, tcp_connects, tcp_reachable_within, tcp_server, udp_send},
};

const DENIED: &str = "10.77.0.66";
const FLOODER: &str = "10.77.0.99";
const SHORT: Duration = Duration::from_millis(700);

const POLICY: &str = r#"
deny: [10.77.0.66]
rate_limits:
  - name: api
    protocol: udp
    ports: [9000]
    rate: 1/h
    burst: 5
    ban: {after: 3, within: 1h, for: 1h}
"#;

/// Sends UDP from `src` to the server's `port` in rounds of 100 until `stop` is set, at
/// most 20,000 packets; returns how many left.
fn send_until(pair: &NetnsPair, src: &str, port: u16, stop: &AtomicBool) -> u64 {
    let mut sent = 0;
    for _ in 0..200 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        sent += udp_send(pair, src, SERVER_V4, port, 100, Duration::from_micros(200)).unwrap();
    }
    sent
}

/// Runs `during` while the denied source sends to port 9100 and the flooder to 9101; returns
/// what `during` returned and how many packets each sender sent.
fn while_sending<T: Send>(pair: &NetnsPair, during: impl FnOnce() -> T + Send) -> (T, [u64; 2]) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let senders = [(DENIED, 9100), (FLOODER, 9101)].map(|(src, port)| {
            let stop = &stop;
            scope.spawn(move || send_until(pair, src, port, stop))
        });
        let result = during();
        stop.store(true, Ordering::Relaxed);
        (result, senders.map(|s| s.join().unwrap()))
    })
}

fn setup() -> (NetnsPair, tempfile::TempDir, std::path::PathBuf) {
    let pair = NetnsPair::new().unwrap();
    for addr in [DENIED, FLOODER] {
        pair.add_client_addr(addr).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).unwrap();
    (pair, dir, policy)
}

/// `setup` with a TCP server on port 7000 and `policy_text` as the policy, and the guard
/// that removes what the test's agents leave behind.
fn serving(
    policy_text: impl AsRef<str>,
) -> (NetnsPair, tempfile::TempDir, std::path::PathBuf, Leftovers) {
    let (pair, dir, policy) = setup();
    let leftovers = Leftovers::of(&pair.server_ns);
    tcp_server(&pair, "0.0.0.0", 7000).unwrap();
    std::fs::write(&policy, policy_text.as_ref()).unwrap();
    (pair, dir, policy, leftovers)
}

#[test]
fn sigkill_and_restart_leave_no_gap_and_keep_bans_and_buckets() {
    require_kernel!();
    let (pair, _dir, policy) = setup();
    let _leftovers = Leftovers::of(&pair.server_ns);
    let mut first = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]).unwrap();
    let api = UdpCounter::bind(&pair, "0.0.0.0", 9000).unwrap();

    // A client spends 3 of its 5 tokens; the flooder exhausts its bucket and gets banned.
    udp_send(
        &pair,
        CLIENT_V4,
        SERVER_V4,
        9000,
        3,
        Duration::from_millis(2),
    )
    .unwrap();
    udp_send(
        &pair,
        FLOODER,
        SERVER_V4,
        9000,
        20,
        Duration::from_millis(2),
    )
    .unwrap();
    assert_eq!(
        api.count(Duration::from_millis(300), Duration::from_secs(3)),
        3 + 5
    );
    let bans = first.cli(&["bans", "--json"]);
    assert!(
        String::from_utf8_lossy(&bans.stdout).contains(FLOODER),
        "no ban before the kill"
    );
    let old_program = first.attached_program(&pair.server_if).expect("attached");

    // Denied and banned traffic flows, bounded, through the kill and the restart.
    let denied_sink = UdpCounter::bind(&pair, "0.0.0.0", 9100).unwrap();
    let banned_sink = UdpCounter::bind(&pair, "0.0.0.0", 9101).unwrap();
    let (second, [sent_denied, sent_banned]) = while_sending(&pair, || {
        std::thread::sleep(Duration::from_millis(300));
        first.kill_hard();
        // No agent at all for a while: the pinned programs keep enforcing on their own.
        std::thread::sleep(Duration::from_millis(500));
        let second = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        second
    });
    drop(first);
    let status = second.status().unwrap();
    assert_eq!(status["took_over_maps"], true, "{status}");
    assert_eq!(status["interfaces"][0]["adopted"], true, "{status}");
    assert!(
        sent_denied > 1000 && sent_banned > 1000,
        "senders too slow: {sent_denied}, {sent_banned}"
    );
    assert_eq!(
        denied_sink.count(Duration::from_millis(300), Duration::from_secs(3)),
        0,
        "denied packets got through around the restart"
    );
    assert_eq!(
        banned_sink.count(Duration::from_millis(300), Duration::from_secs(3)),
        0,
        "banned packets got through around the restart"
    );

    // The program was replaced inside the same link, and the state survived: the ban is
    // still listed and the client has exactly 2 tokens left.
    let new_program = second.attached_program(&pair.server_if).expect("attached");
    assert_ne!(
        new_program, old_program,
        "the new agent's program should have replaced the old one"
    );
    let bans = second.cli(&["bans", "--json"]);
    assert!(
        String::from_utf8_lossy(&bans.stdout).contains(FLOODER),
        "the ban did not survive the restart: {}",
        output_text(&bans)
    );
    let before = api.count(Duration::from_millis(200), Duration::from_secs(2));
    udp_send(
        &pair,
        CLIENT_V4,
        SERVER_V4,
        9000,
        5,
        Duration::from_millis(2),
    )
    .unwrap();
    let after = api.count(Duration::from_millis(300), Duration::from_secs(3));
    assert_eq!(
        after - before,
        2,
        "the client's bucket did not survive the restart"
    );
}

#[test]
fn keep_on_exit_then_take_over_then_detach() {
    require_kernel!();
    let (pair, _dir, policy, _leftovers) = serving(format!("deny: [{CLIENT_V4}]\n"));
    let mut first = Agent::start(
        &pair.server_ns,
        &pair.server_if,
        &policy,
        &["--on-exit", "keep"],
    )
    .unwrap();
    assert!(!tcp_connects(&pair, CLIENT_V4, SERVER_V4, 7000, SHORT));
    first.keep_pins();
    first.keep_state();
    assert!(first.stop().unwrap().success());
    assert!(
        first.stderr_contains("left attached"),
        "{:?}",
        first.stderr()
    );
    let pin_dir = first.pin_dir.clone();
    drop(first);
    assert!(
        pin_dir.join("links").exists(),
        "--on-exit keep removed the pins"
    );
    assert!(
        !tcp_connects(&pair, CLIENT_V4, SERVER_V4, 7000, SHORT),
        "enforcement stopped with the agent"
    );

    // A new agent takes over and exits with the default: detach.
    let mut second = Agent::start(
        &pair.server_ns,
        &pair.server_if,
        &policy,
        &["--on-exit", "keep"],
    )
    .unwrap();
    let status = second.status().unwrap();
    assert_eq!(status["took_over_maps"], true, "{status}");
    assert_eq!(status["interfaces"][0]["adopted"], true, "{status}");
    second.keep_pins();
    let status = second.stop().unwrap();
    assert!(status.success(), "{status}: {:?}", second.stderr());
    drop(second);

    // `portcullis detach` removes what the agents left, and only that.
    let out = Command::new(binary())
        .args(["detach", "--pin-dir"])
        .arg(&pin_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pin_dir.exists());
    // The kernel releases an unpinned link in deferred work, just after detach returns.
    assert!(
        tcp_reachable_within(
            &pair,
            CLIENT_V4,
            SERVER_V4,
            7000,
            true,
            Duration::from_secs(2)
        ),
        "detach left the deny in force"
    );
}

/// An upgrade or a new `capacity` can change a map's layout. A starting agent replaces
/// pinned policy maps (all of them, with GENERATION), counters and token buckets of another
/// layout, with the old programs enforcing the old policy until the new ones replace them,
/// and keeps the maps holding bans and blocks; a changed layout of one of those refuses the
/// start, and the previous programs go on enforcing.
#[test]
fn maps_of_another_layout_are_replaced_unless_they_hold_state() {
    require_kernel!();
    let policy_with = |capacity: &str| format!("deny: [{DENIED}]\ncapacity: {{{capacity}}}\n");
    let (pair, _dir, policy, _leftovers) = serving(policy_with("cidrs: 1000"));
    let mut first = Agent::start(
        &pair.server_ns,
        &pair.server_if,
        &policy,
        &["--on-exit", "keep"],
    )
    .unwrap();
    first.cli(&["block", FLOODER]);
    first.keep_pins();
    first.keep_state();
    assert!(first.stop().unwrap().success(), "{:?}", first.stderr());
    drop(first);

    // Twice the CIDR room and another bucket room: ten policy maps, GENERATION and the
    // buckets are replaced.
    replace_file(&policy, &policy_with("cidrs: 2000, sources: 8192")).unwrap();
    let denied_sink = UdpCounter::bind(&pair, "0.0.0.0", 9100).unwrap();
    let blocked_sink = UdpCounter::bind(&pair, "0.0.0.0", 9101).unwrap();
    let (mut second, sent) = while_sending(&pair, || {
        std::thread::sleep(Duration::from_millis(200));
        let second = Agent::start(
            &pair.server_ns,
            &pair.server_if,
            &policy,
            &["--on-exit", "keep"],
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        second
    });
    let sent: u64 = sent.iter().sum();
    assert!(sent > 1000, "senders too slow: {sent}");
    let replaced = second
        .stderr()
        .into_iter()
        .find(|line| line.contains("replaced by fresh ones"));
    assert!(
        replaced
            .as_ref()
            .is_some_and(|line| line.contains("BUCKETS")),
        "{:?}",
        second.stderr()
    );
    let status = second.status().unwrap();
    assert_eq!(status["took_over_maps"], true, "{status}");
    for (sink, what) in [(&denied_sink, "denied"), (&blocked_sink, "blocked")] {
        assert_eq!(
            sink.count(Duration::from_millis(300), Duration::from_secs(3)),
            0,
            "{what} packets got through while the policy maps were replaced"
        );
    }
    let bans = second.cli(&["bans", "--json"]);
    assert!(
        String::from_utf8_lossy(&bans.stdout).contains(FLOODER),
        "the block did not survive: {}",
        output_text(&bans)
    );
    second.keep_pins();
    second.keep_state();
    assert!(second.stop().unwrap().success());
    drop(second);

    udp_send(&pair, DENIED, SERVER_V4, 9100, 20, Duration::from_millis(1)).unwrap();
    assert_eq!(
        denied_sink.count(Duration::from_millis(300), Duration::from_secs(3)),
        0,
        "the programs left attached stopped enforcing"
    );

    // Another ban room would drop the bans: refused, and the programs keep enforcing.
    replace_file(
        &policy,
        &policy_with("cidrs: 2000, sources: 8192, bans: 777"),
    )
    .unwrap();
    let refused = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]);
    let error = format!("{:#}", refused.err().expect("the start was refused"));
    assert!(
        error.contains("BANS_V4") && error.contains("portcullis detach"),
        "{error}"
    );
    udp_send(&pair, DENIED, SERVER_V4, 9100, 20, Duration::from_millis(1)).unwrap();
    assert_eq!(
        denied_sink.count(Duration::from_millis(300), Duration::from_secs(3)),
        0,
        "the refused start stopped enforcement"
    );
}

/// Agents before the block maps kept blocks in the ban maps, under the block rule and its
/// epoch. A newer agent taking such maps over moves them into the block maps, where bans
/// can no longer hide them, and enforces them all along.
#[test]
fn blocks_an_earlier_agent_kept_in_the_ban_maps_are_moved_to_the_block_maps() {
    require_kernel!();
    let (pair, _dir, policy, _leftovers) = serving("deny: []\n");
    let mut first = Agent::start(
        &pair.server_ns,
        &pair.server_if,
        &policy,
        &["--on-exit", "keep"],
    )
    .unwrap();
    first.keep_pins();
    first.keep_state();
    assert!(first.stop().unwrap().success());
    let pin_dir = first.pin_dir.clone();
    drop(first);
    // A block as the earlier layout stored it, written into the pinned ban map.
    let bans = MapData::from_pin(pin_dir.join("maps").join(maps::BANS_V4.name)).unwrap();
    let mut bans: LpmTrie<MapData, [u8; 4], BanEntry> =
        LpmTrie::try_from(Map::from_map_data(bans).unwrap()).unwrap();
    let client: std::net::Ipv4Addr = CLIENT_V4.parse().unwrap();
    let legacy = BanEntry {
        expires_ns: u64::MAX,
        rule: BLOCK_RULE,
        epoch: BLOCK_EPOCH,
    };
    bans.insert(&Key::new(32, client.octets()), legacy, 0)
        .unwrap();
    drop(bans);

    let second = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let listed = loop {
        let out = second.cli(&["bans", "--json"]);
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let moved = listed["bans"]
            .as_array()
            .is_some_and(|bans| bans.len() == 1 && bans[0]["kind"] == "block");
        if moved || std::time::Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(listed["bans"][0]["kind"], "block", "{listed}");
    assert_eq!(
        listed["bans"][0]["cidr"],
        format!("{CLIENT_V4}/32"),
        "{listed}"
    );
    assert_eq!(listed["bans"].as_array().unwrap().len(), 1, "{listed}");
    assert!(
        !tcp_connects(&pair, CLIENT_V4, SERVER_V4, 7000, SHORT),
        "the moved block is not enforced"
    );
    let out = second.cli(&["unblock", &format!("{CLIENT_V4}/32")]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(tcp_connects(&pair, CLIENT_V4, SERVER_V4, 7000, SHORT));
}

/// Whoever reads the agent's stdout goes away (a log shipper restarts): writing events
/// fails from then on. The agent keeps enforcing and answering, counts what it could not
/// write, and a first start's clean-up does not take the programs away.
#[test]
fn a_closed_stdout_does_not_stop_enforcement() {
    require_kernel!();
    let (pair, _dir, policy, _leftovers) = serving(format!("deny: [{DENIED}]\n"));
    // Close-on-exec, so that the agent does not hold the reading end itself.
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let mut agent = Agent::start_with_stdout(
        &pair.server_ns,
        &pair.server_if,
        &policy,
        &["--on-exit", "keep"],
        std::process::Stdio::from(writer),
    )
    .unwrap();
    drop(reader);
    // Denied traffic makes events, and a summary comes every second: writes that fail.
    for _ in 0..3 {
        assert!(!tcp_connects(&pair, DENIED, SERVER_V4, 7000, SHORT));
        std::thread::sleep(Duration::from_millis(600));
    }
    assert!(
        agent.is_running(),
        "the agent exited:\n{}",
        agent.stderr().join("\n")
    );
    assert!(
        agent.stderr_contains("cannot write events to stdout"),
        "{:?}",
        agent.stderr()
    );
    let stats = agent.cli(&["stats", "--json"]);
    assert!(stats.status.success(), "{}", output_text(&stats));
    assert!(tcp_connects(&pair, CLIENT_V4, SERVER_V4, 7000, SHORT));
    assert!(
        !tcp_connects(&pair, DENIED, SERVER_V4, 7000, SHORT),
        "enforcement stopped"
    );
}

/// A policy file broken while no agent ran: the next agent starts with the last version
/// that was in force, and says so, instead of leaving the node unprotected.
#[test]
fn an_invalid_policy_file_at_start_runs_the_last_good_version() {
    require_kernel!();
    let (pair, _dir, policy, _leftovers) = serving(format!("deny: [{DENIED}]\n"));
    let mut first = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]).unwrap();
    first.keep_state();
    assert!(first.stop().unwrap().success());
    drop(first);

    std::fs::write(&policy, "deny: [10.77.0.66/8]\n").unwrap();
    let second = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]).unwrap();
    let status = second.status().unwrap();
    assert_eq!(status["policy_version"], 1, "{status}");
    let error = status["policy_file_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(":1:") && error.contains("host bits are set"),
        "{status}"
    );
    assert!(!tcp_connects(&pair, DENIED, SERVER_V4, 7000, SHORT));
    assert!(tcp_connects(&pair, CLIENT_V4, SERVER_V4, 7000, SHORT));
    // Fixed, the file is applied, and the error is gone.
    replace_file(&policy, "deny: []\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while second.status().unwrap()["policy_file_error"] != serde_json::Value::Null
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = second.status().unwrap();
    assert_eq!(
        status["policy_file_error"],
        serde_json::Value::Null,
        "{status}"
    );
    assert!(tcp_connects(&pair, DENIED, SERVER_V4, 7000, SHORT));
}

/// A state directory that cannot be written (here: a file where the directory should be)
/// costs the policy history, not protection: the agent starts, enforces and applies.
#[test]
fn an_unusable_state_directory_does_not_stop_the_agent() {
    require_kernel!();
    let (pair, dir, policy, _leftovers) = serving(format!("deny: [{DENIED}]\n"));
    let state_dir = AgentPaths::of(&pair.server_ns).state_dir;
    std::fs::write(&state_dir, "a file, not a directory").unwrap();
    let agent = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]).unwrap();
    assert!(!tcp_connects(&pair, DENIED, SERVER_V4, 7000, SHORT));
    assert!(
        agent.stderr_contains("the policy history was not saved"),
        "{:?}",
        agent.stderr()
    );
    let next = dir.path().join("next.yaml");
    std::fs::write(&next, "deny: []\n").unwrap();
    let out = agent.cli(&["policy", "apply", next.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(tcp_connects(&pair, DENIED, SERVER_V4, 7000, SHORT));
}

/// A reload that failed for a reason other than the text (here the kernel's maps cannot
/// take a new capacity) is tried again at the next change in the directory, not skipped
/// as already seen.
#[test]
fn a_failed_reload_is_tried_again_at_the_next_change() {
    require_kernel!();
    let (pair, dir, policy) = setup();
    let _leftovers = Leftovers::of(&pair.server_ns);
    std::fs::write(&policy, "deny: []\n").unwrap();
    let agent = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]).unwrap();
    let failures = || {
        agent
            .stderr()
            .iter()
            .filter(|line| line.contains("policy not reloaded"))
            .count()
    };
    replace_file(&policy, "capacity: {sources: 1000}\n").unwrap();
    assert!(agent.wait_for_stderr("policy not reloaded", Duration::from_secs(5)));
    assert_eq!(failures(), 1);
    // Another file in the directory changes: the same text is tried again.
    std::fs::write(dir.path().join("unrelated"), "x").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while failures() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(failures(), 2, "{:?}", agent.stderr());
}

#[test]
fn refuses_an_interface_held_by_another_xdp_program_or_agent() {
    require_kernel!();
    let (pair, dir, policy) = setup();
    let first = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]).unwrap();
    let run_second = |pin_dir: &std::path::Path, extra: &[&str]| {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", pair.server_ns))
            .arg(binary())
            .arg("--socket")
            .arg(dir.path().join("second.sock"))
            .args(["run", "--iface", &pair.server_if, "--policy"])
            .arg(&policy)
            .arg("--pin-dir")
            .arg(pin_dir)
            .arg("--state-dir")
            .arg(dir.path().join("second-state"))
            .args(extra)
            .output()
            .unwrap()
    };
    // Same pins: refused by the lock.
    let out = run_second(&first.pin_dir, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another agent is running with the pins"),
        "{stderr}"
    );
    // Other pins: the interface's XDP hook is taken by a program this agent does not own.
    let other_pins =
        std::path::PathBuf::from(format!("/sys/fs/bpf/pc-test-other-{}", pair.server_ns));
    let out = run_second(&other_pins, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&other_pins);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already has an XDP program that this agent does not own"),
        "{stderr}"
    );
    assert!(!other_pins.exists());
    // Even when told to replace foreign programs, a program held by another process's bpf
    // link (here: the first agent's) is not severed.
    let out = run_second(&other_pins, &["--replace-foreign-xdp"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&other_pins);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("held by another process's bpf link"),
        "{stderr}"
    );
    // `detach` will not pull the pins from under a running agent.
    let out = Command::new(binary())
        .args(["detach", "--pin-dir"])
        .arg(&first.pin_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another agent is running with the pins"),
        "{stderr}"
    );
    // The first agent is untouched.
    assert!(first.attached_program(&pair.server_if).is_some());
}

/// The XDP program id `ip -d link` reports on the server interface, if any.
fn xdp_program_on(pair: &NetnsPair) -> Option<u32> {
    let out = Command::new("ip")
        .args(["-n", &pair.server_ns, "-d", "link", "show", &pair.server_if])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let after = text.split("prog/xdp id ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn replaces_a_foreign_xdp_program_only_when_told_to() {
    require_kernel!();
    let (pair, _dir, policy) = setup();
    // Another tool's program: the floor program of a separately loaded object, attached
    // through netlink in generic mode, as `ip link set ... xdpgeneric` would.
    let foreign = portcullis_tests::harness::Harness::new("{}\n").unwrap();
    let fd = foreign
        .programs
        .fd(portcullis_tests::test_programs::FLOOR)
        .unwrap();
    let iface = pair.server_if.clone();
    NetnsPair::run_in(&pair.server_ns, || {
        let ifindex = portcullis::loader::ifindex(&iface).unwrap();
        portcullis::loader::foreign::netlink_set_xdp(ifindex, fd, 1 << 1).unwrap();
    });
    let foreign_id = xdp_program_on(&pair).expect("the foreign program is attached");

    let refused = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]);
    let err = match refused {
        Ok(agent) => panic!("the agent must refuse: {:?}", agent.stderr()),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("already has an XDP program that this agent does not own"),
        "{err}"
    );
    assert_eq!(
        xdp_program_on(&pair),
        Some(foreign_id),
        "the refusal changed the interface"
    );

    let mut agent = Agent::start(
        &pair.server_ns,
        &pair.server_if,
        &policy,
        &["--replace-foreign-xdp"],
    )
    .unwrap();
    assert!(
        agent.stderr_contains("replaced a foreign XDP program"),
        "{:?}",
        agent.stderr()
    );
    let ours = agent.attached_program(&pair.server_if).expect("attached");
    assert_eq!(xdp_program_on(&pair), Some(ours));
    assert!(agent.stop().unwrap().success());
    assert_eq!(xdp_program_on(&pair), None, "detach left a program behind");
}
