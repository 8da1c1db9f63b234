//! IP lists named by allow and deny entries, on live traffic: a list file watched like the
//! policy file, a list URL served by Debian's nginx in the agent's namespace (conditional
//! requests, 304s), bad lines skipped and reported, a page that is not a list refused
//! whole, a server that fails leaving the last good copy in force, and a restart enforcing
//! the cached copy before any fetch.

use std::{
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use portcullis_tests::{
    agent::{Agent, AgentPaths, Leftovers},
    cgroup::MemoryCgroup,
    netns::{CLIENT_V4, NetnsPair, SERVER_V4},
    nginx::Nginx,
    output_text, replace_file, require_kernel,
    traffic::{Probe, http_fetch},
};
use serde_json::Value;

const PROBE_PORT: u16 = 7002;
const LIST_SERVER: &str = "127.0.0.1:8089";
const METRICS: &str = "127.0.0.1:9479";
/// The list URL's password and query key: never shown, logged or written in a name.
const SECRET: &str = "s3cr3t-T0KEN";
const KEY: &str = "k3y-0f-the-feed";
/// A list URL refreshed every second: a change is in force within 2 s.
const WITHIN: Duration = Duration::from_secs(2);

fn lists_status(agent: &Agent) -> Vec<Value> {
    let status = agent.status().expect("the agent answers");
    status["lists"].as_array().cloned().unwrap_or_default()
}

/// Polls `status` until `done` holds for the list named `list`, for at most 10 s.
fn wait_list(agent: &Agent, list: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = lists_status(agent)
            .into_iter()
            .find(|l| l["list"] == list)
            .unwrap_or(Value::Null);
        if done(&found) {
            return found;
        }
        assert!(Instant::now() < deadline, "{what}: {found:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count_status(nginx: &Nginx, status: &str) -> usize {
    nginx
        .access_log()
        .iter()
        .filter(|line| line.ends_with(&format!(" {status}")))
        .count()
}

#[test]
fn lists_from_a_file_and_a_url_are_enforced_refreshed_and_cached() {
    require_kernel!();
    let pair = NetnsPair::new().unwrap();
    let _leftovers = Leftovers::of(&pair.server_ns);
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("www");
    std::fs::create_dir(&served).unwrap();
    let drop_txt = served.join("drop.txt");
    std::fs::write(&drop_txt, "; Spamhaus DROP List\n198.51.100.0/24 ; SBL1\n").unwrap();
    let nginx = Nginx::serve_files(&pair.server_ns, LIST_SERVER, &served).unwrap();
    // Authenticated as feeds are, in the URL: fetched whole, shown without the secrets.
    let fetched_url = format!("http://feed:{SECRET}@{LIST_SERVER}/drop.txt?key={KEY}");
    let url = format!("http://***@{LIST_SERVER}/drop.txt?***");

    let lists_dir = dir.path().join("lists");
    std::fs::create_dir(&lists_dir).unwrap();
    let local = lists_dir.join("local.netset");
    std::fs::write(&local, "# firehol-style\n192.0.2.0/24\n").unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "deny:\n  - {{list: {}, name: local-drop}}\n  - {{list: '{fetched_url}', name: spamhaus, refresh: 1s}}\n",
            local.display()
        ),
    )
    .unwrap();
    let mut agent = Agent::start(
        &pair.server_ns,
        &pair.server_if,
        &policy,
        &["--metrics", METRICS],
    )
    .unwrap();
    let probe = Probe::start(&pair, CLIENT_V4, SERVER_V4, PROBE_PORT).unwrap();
    probe
        .wait_through(Instant::now(), Duration::from_secs(5))
        .unwrap();
    let fetched = wait_list(&agent, &url, "first fetch", |l| l["entries"] == 1);
    assert_eq!(fetched["name"], "spamhaus");
    assert_eq!(fetched["from_cache"], false);
    assert_eq!(
        nginx.access_log()[0],
        format!("/drop.txt?key={KEY} 200"),
        "fetched with its query"
    );
    let file = wait_list(&agent, &local.display().to_string(), "file read", |l| {
        l["entries"] == 1
    });
    assert_eq!(file["bad_lines"], 0, "{file:#}");

    // The file gets the client's address, and a line that is not an entry: the address is
    // enforced within moments, the bad line reported with its number.
    let changed = Instant::now();
    replace_file(
        &local,
        &format!("# firehol-style\n192.0.2.0/24\nnot-an-address\n{CLIENT_V4}\n"),
    )
    .unwrap();
    let took = probe.wait_blocked(changed, Duration::from_secs(5)).unwrap();
    println!("list file changed -> enforced in {took:?}");
    assert!(took < WITHIN, "enforced after {took:?}");
    let file = wait_list(&agent, &local.display().to_string(), "bad line", |l| {
        l["bad_lines"] == 1
    });
    assert_eq!(file["entries"], 2, "{file:#}");
    let shown = file["bad_lines_shown"][0].as_str().unwrap();
    assert!(
        shown.starts_with("line 3: invalid CIDR 'not-an-address'"),
        "{shown}"
    );
    let stats: Value = serde_json::from_slice(&agent.cli(&["stats", "--json"]).stdout).unwrap();
    assert!(
        stats["rules"]["local-drop"]["dropped"].as_u64() > Some(0),
        "hits count under the list's name: {stats}"
    );

    // Back out of the file, into the URL's list: enforced within the refresh.
    let changed = Instant::now();
    replace_file(&local, "192.0.2.0/24\n").unwrap();
    probe.wait_through(changed, Duration::from_secs(5)).unwrap();
    // Unchanged meanwhile: nginx answers the agent's conditional requests with 304.
    let deadline = Instant::now() + Duration::from_secs(5);
    while count_status(&nginx, "304") == 0 {
        assert!(
            Instant::now() < deadline,
            "no 304: {:?}",
            nginx.access_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let changed = Instant::now();
    replace_file(
        &drop_txt,
        &format!("; Spamhaus DROP List\n198.51.100.0/24 ; SBL1\n{CLIENT_V4}/32 ; SBL2\n"),
    )
    .unwrap();
    let took = probe.wait_blocked(changed, Duration::from_secs(5)).unwrap();
    println!("list URL changed -> enforced in {took:?}");
    assert!(
        took < WITHIN + Duration::from_secs(1),
        "enforced after {took:?}"
    );
    wait_list(&agent, &url, "two entries", |l| l["entries"] == 2);
    let events = agent.json_lines("event");
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "denied" && e["rule"] == "spamhaus"),
        "an event names the list's rule"
    );

    // The server answers with a page that is not a list: refused whole, the last good copy
    // stays in force and the status says why.
    replace_file(
        &drop_txt,
        "<html>\n<body>\n<h1>Maintenance</h1>\n</body>\n</html>\n",
    )
    .unwrap();
    let refused = wait_list(&agent, &url, "refused copy", |l| {
        l["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("not an IP list"))
    });
    assert_eq!(refused["entries"], 2, "{refused:#}");
    assert!(refused["failing_since_unix"].is_u64(), "{refused:#}");
    assert!(
        !probe.arriving(Duration::from_millis(500)),
        "still enforced"
    );

    // The server goes away: the copy stays, the error says what failed.
    drop(nginx);
    let unreachable = wait_list(&agent, &url, "server gone", |l| {
        l["error"]
            .as_str()
            .is_some_and(|e| e.contains("error sending request"))
    });
    assert_eq!(unreachable["entries"], 2, "{unreachable:#}");
    let metrics = agent.cli(&["status"]);
    let text = output_text(&metrics);
    assert!(text.contains("failing since"), "{text}");
    assert!(
        !probe.arriving(Duration::from_millis(500)),
        "still enforced"
    );

    // A restart with the server still gone: the cached copy is enforced from the start.
    let earlier_logs = [agent.stdout(), agent.stderr()].concat().join("\n");
    agent.keep_state();
    agent.stop().unwrap();
    probe
        .wait_through(Instant::now(), Duration::from_secs(5))
        .unwrap();
    let agent = Agent::start(
        &pair.server_ns,
        &pair.server_if,
        &policy,
        &["--metrics", METRICS],
    )
    .unwrap();
    let ready = Instant::now();
    let took = probe.wait_blocked(ready, Duration::from_secs(2)).unwrap();
    assert!(
        took < Duration::from_millis(100),
        "the cached copy was enforced {took:?} after ready"
    );
    let cached = wait_list(&agent, &url, "cached copy", |l| l["entries"] == 2);
    assert_eq!(cached["from_cache"], true, "{cached:#}");

    // Nothing the agent shows or keeps holds the URL's secrets.
    let (_, metrics) = http_fetch(&pair.server_ns, METRICS, "/metrics").unwrap();
    assert!(metrics.contains(&format!("list=\"{url}\"")), "{metrics}");
    let state_dir = AgentPaths::of(&pair.server_ns).state_dir;
    let mut shown = vec![
        metrics,
        output_text(&agent.cli(&["status", "--json"])),
        output_text(&agent.cli(&["status"])),
        agent.stdout().join("\n"),
        agent.stderr().join("\n"),
        earlier_logs,
    ];
    for entry in std::fs::read_dir(state_dir.join("lists")).unwrap() {
        let entry = entry.unwrap();
        shown.push(entry.file_name().to_string_lossy().into_owned());
        shown.push(std::fs::read_to_string(entry.path()).unwrap());
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?}", entry.path());
    }
    for text in shown {
        assert!(
            !text.contains(SECRET) && !text.contains(KEY),
            "a secret of the list URL shows: {text}"
        );
    }
}

#[test]
fn an_unreadable_list_is_reported_and_applies_once_it_can_be_read() {
    require_kernel!();
    let pair = NetnsPair::new().unwrap();
    let _leftovers = Leftovers::of(&pair.server_ns);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "deny: [192.0.2.0/24]\n").unwrap();
    let agent = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]).unwrap();
    let probe = Probe::start(&pair, CLIENT_V4, SERVER_V4, PROBE_PORT).unwrap();
    probe
        .wait_through(Instant::now(), Duration::from_secs(5))
        .unwrap();

    // A deny list not there yet: the apply goes through, and says so.
    let lists_dir = dir.path().join("lists");
    std::fs::create_dir(&lists_dir).unwrap();
    let later = lists_dir.join("later.txt");
    let next = dir.path().join("next.yaml");
    std::fs::write(
        &next,
        format!(
            "deny:\n  - 192.0.2.0/24\n  - {{list: {}, name: later}}\n",
            later.display()
        ),
    )
    .unwrap();
    let validate = agent.cli(&["policy", "validate", &next.display().to_string()]);
    let text = output_text(&validate);
    assert!(validate.status.success(), "{text}");
    assert!(
        text.contains("cannot read: No such file or directory"),
        "{text}"
    );
    let applied = agent.cli(&["policy", "apply", &next.display().to_string()]);
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(applied.status.success(), "{}", output_text(&applied));
    assert!(
        stderr.contains(&format!(
            "warning: deny list {} (later, enforce): cannot read: No such file or directory",
            later.display()
        )),
        "{stderr}"
    );
    assert!(
        probe.arriving(Duration::from_millis(300)),
        "nothing listed yet"
    );

    // The file appears: read, and enforced.
    let written = Instant::now();
    replace_file(&later, &format!("{CLIENT_V4}\n")).unwrap();
    let took = probe.wait_blocked(written, Duration::from_secs(5)).unwrap();
    println!("list file created -> enforced in {took:?}");
    assert!(took < WITHIN, "enforced after {took:?}");

    // An allow list wins over deny entries, the policy's and the lists': the client's
    // address in it lets the client through although `later` names it.
    let partners = lists_dir.join("partners.txt");
    std::fs::write(&partners, format!("# partners\n{CLIENT_V4}\n")).unwrap();
    std::fs::write(
        &next,
        format!(
            "allow:\n  - {{list: {}}}\ndeny:\n  - 10.77.0.0/24\n  - {{list: {}, name: later}}\n",
            partners.display(),
            later.display()
        ),
    )
    .unwrap();
    let applied = agent.cli(&["policy", "apply", &next.display().to_string()]);
    assert!(applied.status.success(), "{}", output_text(&applied));
    let changes = String::from_utf8_lossy(&applied.stdout);
    assert!(
        changes.contains(&format!("+ allow list {}: 1 entries", partners.display())),
        "{changes}"
    );
    probe
        .wait_through(Instant::now(), Duration::from_secs(5))
        .unwrap();
    let later_status = wait_list(&agent, &later.display().to_string(), "covered", |l| {
        l["covered_by_allow"] == 1
    });
    assert_eq!(later_status["entries"], 0, "{later_status:#}");

    // A policy without the lists: they are no longer followed or reported.
    std::fs::write(&next, "deny: [192.0.2.0/24]\n").unwrap();
    let applied = agent.cli(&["policy", "apply", &next.display().to_string()]);
    let changes = String::from_utf8_lossy(&applied.stdout);
    assert!(
        changes.contains(&format!("- deny list {} (later, enforce)", later.display())),
        "{changes}"
    );
    assert!(lists_status(&agent).is_empty());
}

/// Bytes the process has read (`rchar` of /proc/PID/io: files, pipes and sockets).
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn watched_files_are_read_again_when_they_change_not_when_they_are_read() {
    require_kernel!();
    let pair = NetnsPair::new().unwrap();
    let _leftovers = Leftovers::of(&pair.server_ns);
    let dir = tempfile::tempdir().unwrap();
    // A megabyte each: reading them over and over would show.
    let list = dir.path().join("big.netset");
    let mut text = String::new();
    for i in 0..65_536u32 {
        text.push_str(&format!("10.{}.{}.0/24\n", 100 + i / 256 % 100, i % 256));
    }
    std::fs::write(&list, &text).unwrap();
    let policy = dir.path().join("policy.yaml");
    let padding = "# padding\n".repeat(100_000);
    std::fs::write(
        &policy,
        format!(
            "{padding}deny:\n  - {{list: {}, name: big}}\n",
            list.display()
        ),
    )
    .unwrap();
    let agent = Agent::start(&pair.server_ns, &pair.server_if, &policy, &[]).unwrap();
    wait_list(&agent, &list.display().to_string(), "read", |l| {
        l["entries"] == 25_600
    });
    // The agent's own reads of the two files are inotify events too (OPEN,
    // CLOSE_NOWRITE); taken as changes they would have it read both files every 150 ms.
    std::thread::sleep(Duration::from_secs(1));
    let pid = agent.pid().unwrap();
    let before = bytes_read(pid);
    std::thread::sleep(Duration::from_secs(2));
    let read = bytes_read(pid) - before;
    assert!(
        read < 256 * 1024,
        "the agent read {read} bytes in 2 s of nothing changing"
    );
}

/// `n` distinct IPv6 addresses, one a line, in their shortest text (about 10 bytes a line:
/// the most entries per byte a feed can send).
fn ipv6_list(n: u32) -> String {
    (0..n)
        .map(|i| format!("{:x}::{:x}\n", i >> 16, i & 0xffff))
        .collect()
}

/// Under a pod's memory limit, a list with more entries than the limit leaves room for
/// is refused as it is read, with the reason, and the agent lives (the agent at 1b06c1d,
/// which read lists whole, was OOM-killed here before it was ready); a list within the
/// bound then applies.
#[test]
fn a_list_larger_than_the_memory_limit_allows_is_refused_and_the_agent_lives() {
    require_kernel!();
    let pair = NetnsPair::new().unwrap();
    let _leftovers = Leftovers::of(&pair.server_ns);
    let cgroup = MemoryCgroup::new(128 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("feed.txt");
    std::fs::write(&list, ipv6_list(1_500_000)).unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "deny:\n  - {{list: {}, name: feed}}\n\
             capacity: {{cidrs: 250000, sources: 1024, decisions: 1024, bans: 1024, blocks: 1024}}\n",
            list.display()
        ),
    )
    .unwrap();
    let mut agent =
        Agent::start_in_cgroup(&pair.server_ns, &pair.server_if, &policy, &[], &cgroup).unwrap();
    let shown = list.display().to_string();
    let refused = wait_list(&agent, &shown, "refused", |l| l["error"].is_string());
    let error = refused["error"].as_str().unwrap();
    let max: u32 = error
        .strip_prefix("more than ")
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{error}"));
    assert!(
        (100_000..1_500_000).contains(&max)
            && error.contains("(what the agent's memory limit of 128 MiB leaves room for, ")
            && error.ends_with(&format!("read up to line {} and refused", max + 1)),
        "{error}"
    );
    assert_eq!(refused["entries"], 0, "{refused:#}");
    assert!(agent.is_running(), "{}", agent.stderr().join("\n"));

    replace_file(&list, &ipv6_list(150_000)).unwrap();
    let applied = wait_list(&agent, &shown, "applied", |l| l["entries"] == 150_000);
    assert!(applied["error"].is_null(), "{applied:#}");
    assert!(agent.is_running(), "{}", agent.stderr().join("\n"));
    let peak = agent.peak_rss_kib().unwrap();
    println!("peak RSS {} MiB under the 128 MiB limit", peak >> 10);
}
