//! Portcullis as a CrowdSec remediation component, against a real Local API (Debian's
//! crowdsec, `crowdsec -no-cs`) in the agent's namespace: decisions added and deleted with
//! `cscli` are enforced and lifted on live traffic within the pull interval, what cannot be
//! enforced is counted, and with the Local API down what is enforced stays and is reported
//! stale until the Local API is back and the agent resyncs.

use std::time::{Duration, Instant};

use portcullis_tests::{
    agent::{Agent, Leftovers},
    crowdsec::LocalApi,
    netns::{CLIENT_V4, NetnsPair, SERVER_V4, Star},
    require_kernel,
    traffic::Probe,
};
use serde_json::Value;

const PROBE_PORT: u16 = 7001;
/// What a user of the default pull interval (1 s) may expect: in force within 2 s.
const WITHIN: Duration = Duration::from_secs(2);

fn crowdsec_status(agent: &Agent) -> Value {
    agent.status().expect("the agent answers")["crowdsec"].clone()
}

/// Polls `status` until `done` holds for its `crowdsec` part, for at most 10 s.
fn wait_status(agent: &Agent, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = crowdsec_status(agent);
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: status {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn decisions_from_the_local_api_are_enforced_and_lifted() {
    require_kernel!();
    let pair = NetnsPair::new().unwrap();
    let mut lapi = LocalApi::start(&pair.server_ns, "127.0.0.1", 8080).unwrap();
    let key_file = lapi.bouncer_key_file("portcullis").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "deny: [192.0.2.0/24]\n").unwrap();
    let key_arg = key_file.display().to_string();
    let agent = Agent::start(
        &pair.server_ns,
        &pair.server_if,
        &policy,
        &["--crowdsec-url", &lapi.url, "--crowdsec-key-file", &key_arg],
    )
    .unwrap();
    wait_status(&agent, "first pull", |s| s["pulls"].as_u64() >= Some(1));
    let probe = Probe::start(&pair, CLIENT_V4, SERVER_V4, PROBE_PORT).unwrap();
    probe
        .wait_through(Instant::now(), Duration::from_secs(5))
        .unwrap();

    // A ban of the client's address: enforced within the pull interval.
    let added = Instant::now();
    lapi.cscli(&["decisions", "add", "-i", CLIENT_V4, "-d", "1h"])
        .unwrap();
    let took = probe.wait_blocked(added, Duration::from_secs(5)).unwrap();
    println!("cscli decisions add -> enforced in {took:?}");
    assert!(took < WITHIN, "enforced after {took:?}");
    let status = wait_status(&agent, "one cscli decision", |s| {
        s["decisions"]["cscli"] == 1
    });
    assert!(status["stale_since_unix"].is_null(), "{status:#}");
    let bans: Value = serde_json::from_slice(&agent.cli(&["bans", "--json"]).stdout).unwrap();
    let decision = bans["bans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["cidr"] == format!("{CLIENT_V4}/32"))
        .unwrap_or_else(|| panic!("the decision is listed: {bans:#}"));
    assert_eq!(decision["kind"], "decision");
    assert_eq!(decision["rule"], "cscli", "the origin");
    let left = decision["seconds_left"].as_u64().unwrap();
    assert!((3500..=3600).contains(&left), "an hour left: {left}");
    let events = agent.json_lines("event");
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "decision" && e["rule"] == "cscli" && e["verdict"] == "drop"),
        "an event names the decision's origin"
    );

    // Deleted: lifted within the pull interval.
    let deleted = Instant::now();
    lapi.cscli(&["decisions", "delete", "-i", CLIENT_V4])
        .unwrap();
    let took = probe.wait_through(deleted, Duration::from_secs(5)).unwrap();
    println!("cscli decisions delete -> lifted in {took:?}");
    assert!(took < WITHIN, "lifted after {took:?}");

    // A range covering the client; a captcha decision is counted, not enforced. (A Country
    // decision is not even sent: the stream gives bouncers Ip and Range decisions only.)
    lapi.cscli(&["decisions", "add", "-r", "10.77.0.0/24", "-d", "1h"])
        .unwrap();
    lapi.cscli(&["decisions", "add", "-i", "10.77.0.99", "-t", "captcha"])
        .unwrap();
    lapi.cscli(&["decisions", "add", "--scope", "Country", "-v", "FR"])
        .unwrap();
    probe
        .wait_blocked(Instant::now(), Duration::from_secs(5))
        .unwrap();
    let status = wait_status(&agent, "the range and what was ignored", |s| {
        s["decisions"]["cscli"] == 1 && s["ignored"]["type:captcha"] == 1
    });
    println!("{status:#}");

    // The Local API goes away: what is enforced stays, the agent says it is stale and is
    // still ready.
    lapi.stop();
    let status = wait_status(&agent, "stale", |s| !s["stale_since_unix"].is_null());
    assert!(status["last_error"].is_string(), "{status:#}");
    assert!(!probe.arriving(Duration::from_secs(2)), "still enforced");
    let full = agent.status().unwrap();
    assert_eq!(
        full["ready"], true,
        "stale decisions do not make the agent unready"
    );
    let metrics = agent.cli(&["stats"]);
    assert!(metrics.status.success());

    // Back: the agent resyncs, and a deletion made since reaches it.
    lapi.restart().unwrap();
    wait_status(&agent, "in sync again", |s| s["stale_since_unix"].is_null());
    let deleted = Instant::now();
    lapi.cscli(&["decisions", "delete", "-r", "10.77.0.0/24"])
        .unwrap();
    probe.wait_through(deleted, Duration::from_secs(5)).unwrap();
    wait_status(&agent, "nothing enforced", |s| {
        s["decisions"].as_object().is_some_and(|d| d.is_empty())
    });

    // A blocklist's worth: `bans` sums decisions up by origin past 100 and lists them on
    // request; `--covering` finds one.
    let mut csv = String::from("duration,scope,value\n");
    for i in 0..150 {
        csv.push_str(&format!("1h,ip,100.64.0.{i}\n"));
    }
    let file = dir.path().join("decisions.csv");
    std::fs::write(&file, csv).unwrap();
    lapi.cscli(&["decisions", "import", "-i", &file.display().to_string()])
        .unwrap();
    wait_status(&agent, "150 imported", |s| {
        s["decisions"]["cscli-import"] == 150
    });
    let listed = agent.cli(&["bans"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("150 decisions (cscli-import 150): `bans --kind decision` lists them"),
        "{text}"
    );
    assert!(
        !text.contains("100.64.0.7/32"),
        "summed up, not listed: {text}"
    );
    let all = agent.cli(&["bans", "--kind", "decision"]);
    assert_eq!(String::from_utf8_lossy(&all.stdout).lines().count(), 151);
    let one = agent.cli(&["bans", "--covering", "100.64.0.7"]);
    let text = String::from_utf8_lossy(&one.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains("100.64.0.7/32") && text.contains("cscli-import"),
        "{text}"
    );
}

/// A restarted agent keeps enforcing the decisions it had (pinned, with their ends) while
/// the Local API is away, says they are stale, and drops what the Local API no longer has
/// once it resyncs; an agent started without a Local API lifts the pinned decisions.
#[test]
fn a_restarted_agent_keeps_its_decisions_until_it_resyncs() {
    require_kernel!();
    let pair = NetnsPair::new().unwrap();
    let _leftovers = Leftovers::of(&pair.server_ns);
    let mut lapi = LocalApi::start(&pair.server_ns, "127.0.0.1", 8080).unwrap();
    let key_file = lapi.bouncer_key_file("portcullis").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "").unwrap();
    let key_arg = key_file.display().to_string();
    let url = lapi.url.clone();
    let args = [
        "--crowdsec-url",
        &url,
        "--crowdsec-key-file",
        &key_arg,
        "--on-exit",
        "keep",
    ];
    let mut first = Agent::start(&pair.server_ns, &pair.server_if, &policy, &args).unwrap();
    let probe = Probe::start(&pair, CLIENT_V4, SERVER_V4, PROBE_PORT).unwrap();
    lapi.cscli(&["decisions", "add", "-i", CLIENT_V4, "-d", "1h"])
        .unwrap();
    probe
        .wait_blocked(Instant::now(), Duration::from_secs(5))
        .unwrap();
    first.keep_pins();
    first.keep_state();
    assert!(first.stop().unwrap().success());
    drop(first);

    // While no agent runs, the decision is deleted, then the Local API goes away.
    lapi.cscli(&["decisions", "delete", "-i", CLIENT_V4])
        .unwrap();
    lapi.stop();
    let mut second = Agent::start(&pair.server_ns, &pair.server_if, &policy, &args).unwrap();
    second.keep_pins();
    let status = wait_status(&second, "stale", |s| !s["last_error"].is_null());
    assert!(!status["stale_since_unix"].is_null(), "{status:#}");
    assert!(
        !probe.arriving(Duration::from_secs(2)),
        "the pinned decision is still enforced"
    );

    // Back: the resync lifts what the Local API no longer has.
    let back = Instant::now();
    lapi.restart().unwrap();
    let took = probe.wait_through(back, Duration::from_secs(40)).unwrap();
    println!("Local API back -> the deleted decision lifted in {took:?}");
    let status = wait_status(&second, "in sync", |s| s["stale_since_unix"].is_null());
    assert!(
        status["decisions"]
            .as_object()
            .is_some_and(|d| d.is_empty()),
        "{status:#}"
    );

    // A decision in force, then an agent without a Local API to follow takes over: it lifts
    // the decisions it cannot keep in step.
    lapi.cscli(&["decisions", "add", "-i", CLIENT_V4, "-d", "1h"])
        .unwrap();
    probe
        .wait_blocked(Instant::now(), Duration::from_secs(5))
        .unwrap();
    assert!(second.stop().unwrap().success());
    drop(second);
    let taken_over = Instant::now();
    let third = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]).unwrap();
    probe
        .wait_through(taken_over, Duration::from_secs(10))
        .unwrap();
    assert!(
        third.stderr_contains("decisions an earlier agent left are lifted"),
        "{:?}",
        third.stderr()
    );
}

/// Three agents in three namespaces act as three nodes of a fleet, each a bouncer and a
/// machine of one Local API: a source that trips an escalation ban on node A is dropped on
/// nodes B and C within 2 s (A keeps one entry for it, its ban); `cscli decisions add` and
/// `delete` reach all three within 2 s; with the Local API stopped all keep enforcing and
/// report stale, and with it back they resync.
#[test]
fn bans_are_shared_across_the_fleet() {
    require_kernel!();
    const ATTACKER: &str = "192.0.2.66";
    const LISTED: &str = "192.0.2.77";
    let star = Star::new(3).unwrap();
    star.add_hub_addr(ATTACKER).unwrap();
    star.add_hub_addr(LISTED).unwrap();
    let mut lapi = LocalApi::start(&star.hub_ns, "0.0.0.0", 8080).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "rate_limits:\n  - {name: probe-flood, protocol: udp, ports: [7001], rate: 10/s, burst: 5, ban: {after: 5, within: 1m, for: 10m}}\n",
    )
    .unwrap();
    // One machine for the fleet, as a DaemonSet's pods share one Secret; each agent names
    // its node.
    let machine = lapi.machine_file("fleet").unwrap().display().to_string();
    let mut agents = Vec::new();
    let mut leftovers = Vec::new();
    for (i, leaf) in star.leaves.iter().enumerate() {
        leftovers.push(Leftovers::of(&leaf.ns));
        let key = lapi.bouncer_key_file(&format!("node{i}")).unwrap();
        let url = format!("http://{}:8080", leaf.hub_addr);
        let key = key.display().to_string();
        let node = format!("node{i}");
        let args = [
            "--crowdsec-url",
            &url,
            "--crowdsec-key-file",
            &key,
            "--crowdsec-machine-file",
            &machine,
            "--node-name",
            &node,
        ];
        agents.push(Agent::start(&leaf.ns, &leaf.iface, &policy, &args).unwrap());
    }
    for agent in &agents {
        wait_status(agent, "first pull", |s| s["pulls"].as_u64() >= Some(1));
    }
    let probes = |src: &str, port: u16| -> Vec<Probe> {
        star.leaves
            .iter()
            .map(|leaf| Probe::between(&star.hub_ns, src, &leaf.ns, &leaf.addr, port).unwrap())
            .collect()
    };

    // The attacker, served by B and C, floods A over the rule's rate: A bans it, and B and
    // C drop it from the shared decision.
    let others = probes(ATTACKER, 7002);
    for probe in &others[1..] {
        probe
            .wait_through(Instant::now(), Duration::from_secs(5))
            .unwrap();
    }
    let flood_started = Instant::now();
    let flood = Probe::between(
        &star.hub_ns,
        ATTACKER,
        &star.leaves[0].ns,
        &star.leaves[0].addr,
        7001,
    )
    .unwrap();
    for (node, probe) in ["B", "C"].iter().zip(&others[1..]) {
        let took = probe
            .wait_blocked(flood_started, Duration::from_secs(5))
            .unwrap();
        println!("node A's ban in force on node {node} {took:?} after the flood began");
        assert!(took < WITHIN, "node {node}: {took:?}");
    }
    drop(flood);
    // A pulls its own decision back and keeps one entry: its ban.
    wait_status(&agents[0], "own decision back", |s| {
        s["ignored"]["own"].as_u64() >= Some(1)
    });
    let bans: Value = serde_json::from_slice(&agents[0].cli(&["bans", "--json"]).stdout).unwrap();
    let on_a: Vec<&Value> = bans["bans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["cidr"] == format!("{ATTACKER}/32"))
        .collect();
    assert_eq!(on_a.len(), 1, "one entry on A: {bans:#}");
    assert_eq!(on_a[0]["kind"], "escalation");
    let status = crowdsec_status(&agents[0]);
    assert_eq!(status["bans_shared"], 1, "{status:#}");
    let bans: Value = serde_json::from_slice(&agents[1].cli(&["bans", "--json"]).stdout).unwrap();
    assert!(
        bans["bans"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["cidr"] == format!("{ATTACKER}/32")
                && b["kind"] == "decision"
                && b["rule"] == "portcullis"),
        "B holds the decision, origin portcullis: {bans:#}"
    );
    let listed = lapi
        .cscli(&["decisions", "list", "--all", "-o", "json"])
        .unwrap();
    assert!(
        listed.contains("portcullis/probe-flood (node0)"),
        "the scenario names the rule and the node: {listed}"
    );

    // cscli decisions reach every node.
    let listed_probes = probes(LISTED, 7003);
    for probe in &listed_probes {
        probe
            .wait_through(Instant::now(), Duration::from_secs(5))
            .unwrap();
    }
    let added = Instant::now();
    lapi.cscli(&["decisions", "add", "-i", LISTED, "-d", "1h"])
        .unwrap();
    for (node, probe) in ["A", "B", "C"].iter().zip(&listed_probes) {
        let took = probe.wait_blocked(added, Duration::from_secs(5)).unwrap();
        println!("cscli decisions add in force on node {node} after {took:?}");
        assert!(took < WITHIN, "node {node}: {took:?}");
    }
    let deleted = Instant::now();
    lapi.cscli(&["decisions", "delete", "-i", LISTED]).unwrap();
    for (node, probe) in ["A", "B", "C"].iter().zip(&listed_probes) {
        let took = probe.wait_through(deleted, Duration::from_secs(5)).unwrap();
        println!("cscli decisions delete lifted on node {node} after {took:?}");
        assert!(took < WITHIN, "node {node}: {took:?}");
    }

    // The Local API away: every node keeps enforcing, and says it is stale.
    lapi.stop();
    for agent in &agents {
        wait_status(agent, "stale", |s| !s["stale_since_unix"].is_null());
    }
    for (node, probe) in ["B", "C"].iter().zip(&others[1..]) {
        assert!(
            !probe.arriving(Duration::from_secs(1)),
            "node {node} still drops the attacker"
        );
    }
    lapi.restart().unwrap();
    for agent in &agents {
        wait_status(agent, "in sync again", |s| s["stale_since_unix"].is_null());
    }
    for (node, probe) in ["B", "C"].iter().zip(&others[1..]) {
        assert!(
            !probe.arriving(Duration::from_secs(1)),
            "node {node} still drops the attacker after the resync"
        );
    }
}

/// Decisions beyond `capacity.decisions` are counted, not enforced, and the sync goes on:
/// no failed pulls, and a decision waiting for room takes the room a deletion makes.
#[test]
fn decisions_beyond_the_capacity_are_counted_and_wait_for_room() {
    require_kernel!();
    let pair = NetnsPair::new().unwrap();
    let lapi = LocalApi::start(&pair.server_ns, "127.0.0.1", 8080).unwrap();
    let key = lapi.bouncer_key_file("portcullis").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "capacity: {decisions: 2}\n").unwrap();
    let key = key.display().to_string();
    let agent = Agent::start(
        &pair.server_ns,
        &pair.server_if,
        &policy,
        &["--crowdsec-url", &lapi.url, "--crowdsec-key-file", &key],
    )
    .unwrap();
    wait_status(&agent, "first pull", |s| s["pulls"].as_u64() >= Some(1));
    for other in ["192.0.2.1", "192.0.2.2"] {
        lapi.cscli(&["decisions", "add", "-i", other, "-d", "1h"])
            .unwrap();
    }
    wait_status(&agent, "the maps full", |s| s["decisions"]["cscli"] == 2);
    let probe = Probe::start(&pair, CLIENT_V4, SERVER_V4, PROBE_PORT).unwrap();
    lapi.cscli(&["decisions", "add", "-i", CLIENT_V4, "-d", "1h"])
        .unwrap();
    let status = wait_status(&agent, "one over", |s| s["over_capacity"] == 1);
    assert_eq!(status["pull_errors"], 0, "{status:#}");
    assert!(
        probe.arriving(Duration::from_secs(1)),
        "the third decision waits for room"
    );
    let pulls = status["pulls"].as_u64().unwrap();
    wait_status(&agent, "pulls go on", |s| {
        s["pulls"].as_u64() >= Some(pulls + 2)
    });
    assert!(
        agent.status().unwrap()["crowdsec"]["last_error"].is_null(),
        "no error"
    );
    // A deletion makes room: the waiting decision takes it.
    let deleted = Instant::now();
    lapi.cscli(&["decisions", "delete", "-i", "192.0.2.1"])
        .unwrap();
    probe.wait_blocked(deleted, Duration::from_secs(5)).unwrap();
    wait_status(&agent, "none over", |s| s["over_capacity"] == 0);
}
