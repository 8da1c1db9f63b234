//! The benchmark program runs every section and writes well-formed results. No timing is
//! asserted: the numbers of a smoke run on a busy machine mean nothing.

use portcullis_tests::{output_text, require_kernel};
use serde_json::Value;

fn positive(value: &Value) -> bool {
    value.as_f64().is_some_and(|v| v > 0.0 && v.is_finite())
}

#[test]
fn bench_smoke_run_writes_its_tables_and_numbers() {
    require_kernel!();
    let out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_bench"))
        .arg("--smoke")
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", output_text(&run));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let md = std::fs::read_to_string(out.path().join("bench.md")).unwrap();
    assert_eq!(md, stdout, "the Markdown file and stdout differ");
    for heading in [
        "## Per-packet cost",
        "## Deny path with events on and off",
        "## HTTP routes, per packet",
        "## HTTP responses, per segment",
        "## CrowdSec decisions, per packet",
        "## Bans and blocks, per packet",
        "## Flood throughput, one source",
        "## Events under a flood",
        "## Flood throughput, 1,048,576 spoofed sources",
        "## Legitimate HTTP during a one-source UDP flood",
        "## Login flood: NGINX limit_req and Portcullis side by side",
        "## Applying a policy",
        "## Policy file edit to enforcement",
        "## Agent memory, idle",
        "## CrowdSec: importing decisions",
    ] {
        assert!(md.contains(heading), "{heading} missing:\n{md}");
    }
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("bench.json")).unwrap())
            .unwrap();
    assert_eq!(json["smoke"], true);

    let paths = json["per_packet"]["paths"].as_array().unwrap();
    assert_eq!(paths.len(), 9, "one row per path");
    for row in paths {
        assert!(positive(&row["ns_per_packet"]), "{row}");
        assert!(positive(&row["floor_ns_per_packet"]), "{row}");
    }
    assert_eq!(json["per_packet"]["events"].as_array().unwrap().len(), 2);
    let http = json["per_packet"]["http"].as_array().unwrap();
    assert_eq!(http.len(), 4 * 3, "four HTTP paths, three route counts");
    for row in http {
        assert!(positive(&row["ns_per_packet"]), "{row}");
    }
    let decisions = json["per_packet"]["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 3, "three decision counts");
    assert!(positive(&decisions[2]["hit_ns"]), "{decisions:?}");
    let responses = json["per_packet"]["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 5, "five response paths");
    for row in responses {
        assert!(positive(&row["ns_per_packet"]), "{row}");
    }
    let bans = json["per_packet"]["bans"].as_array().unwrap();
    assert_eq!(bans.len(), 3, "ban hit, block hit, deny hit");
    for row in bans {
        assert!(positive(&row["ns_per_packet"]), "{row}");
    }

    // Every filter received frames; the baseline's ratio to itself is 1; Portcullis rows
    // carry the agent's memory, the others do not.
    let flood = json["flood"].as_array().unwrap();
    assert_eq!(
        flood.len(),
        16,
        "10 filters with one source (the ceiling and its calibration), 6 with spoofed ones (the ceiling, XDP pass only)"
    );
    for row in flood {
        assert!(positive(&row["packets_per_second"]), "{row}");
        let filter = row["filter"].as_str().unwrap();
        // Each round's rate, and the cost over the ceiling (none for the ceiling itself);
        // the program's own time for the BPF programs (Portcullis's and the ceiling's).
        assert!(!row["rounds"].as_array().unwrap().is_empty(), "{row}");
        assert!(row["added_ns_per_packet"].is_f64(), "{row}");
        if filter.starts_with("XDP read source + drop") {
            assert_eq!(row["added_ns_per_packet"].as_f64(), Some(0.0), "{row}");
        }
        assert_eq!(
            filter.starts_with("Portcullis") || filter.starts_with("XDP "),
            positive(&row["program_ns_per_run"]),
            "{row}"
        );
        if filter == "iptables raw hashlimit" {
            assert_eq!(row["ratio_to_iptables_hashlimit"].as_f64(), Some(1.0));
        }
        assert_eq!(
            filter.starts_with("Portcullis"),
            positive(&row["agent_rss_kib"]),
            "{row}"
        );
        // Each event the kernel meant to report is written, suppressed or lost.
        if filter.starts_with("Portcullis XDP deny") && row["sources"] == "one source" {
            let events = &row["agent_events"];
            let total: u64 = ["written", "suppressed", "lost"]
                .iter()
                .map(|k| events[k].as_u64().unwrap())
                .sum();
            assert!(total > 0, "{row}");
            if filter.ends_with("events off") {
                assert_eq!(events["written"], 0, "{row}");
            }
        }
    }
    // A one-source flood is dropped before the stack by every filter (it is over any
    // limit after its burst), and reaches the stack without one.
    for row in flood.iter().filter(|r| r["sources"] == "one source") {
        let dropped = row["dropped_share"].as_f64().unwrap();
        if row["filter"] == "no filter" {
            assert!(dropped < 0.01, "{row}");
        } else {
            assert!(dropped > 0.9, "{row}");
        }
    }

    let legit = json["legit_under_flood"].as_array().unwrap();
    assert_eq!(legit.len(), 4);
    for row in legit {
        assert!(positive(&row["alone"]["requests_per_second"]), "{row}");
        assert!(positive(&row["alone"]["p99_ms"]), "{row}");
        assert!(positive(&row["flood_cpu"]), "{row}");
        assert!(positive(&row["flood_packets_per_second"]), "{row}");
    }

    // Every front was attacked (the legitimate client's figures are there, but a second of
    // an overloaded smoke run may serve it nothing); a filter refuses attempts, and lets
    // none through beyond its limit.
    let login = json["login_flood"].as_array().unwrap();
    assert_eq!(login.len(), 3, "nothing, NGINX, Portcullis");
    for row in login {
        assert!(positive(&row["attempts"]), "{row}");
        assert!(row["legitimate_requests_per_second"].is_f64(), "{row}");
        let reached = row["reached"].as_f64().unwrap();
        if row["front"].as_str().unwrap().starts_with("nothing") {
            assert_eq!(row["refused"].as_f64(), Some(0.0), "{row}");
        } else {
            assert!(positive(&row["refused"]), "{row}");
            assert!(reached <= row["allowed"].as_f64().unwrap(), "{row}");
        }
    }

    let control = &json["control_plane"];
    assert_eq!(control["apply"][0]["cidrs"], 1000);
    assert!(positive(&control["apply"][0]["write_s"]));
    assert_eq!(control["apply"][1]["routes"], 10_000);
    assert_eq!(json["crowdsec"]["decisions"], 1_000);
    assert!(positive(&json["crowdsec"]["import_to_enforced_s"]));
    // The flood from a banned source met each enforcer (the section fails if it got
    // through either).
    for key in [
        "banned_flood_pps",
        "denied_flood_pps",
        "bouncer_banned_flood_pps",
    ] {
        assert!(
            positive(&json["crowdsec"][key]),
            "{key}: {}",
            json["crowdsec"]
        );
    }
    assert!(positive(&control["apply"][1]["write_s"]));
    let edits = control["edit_to_enforcement_s"].as_array().unwrap();
    assert!(!edits.is_empty() && edits.iter().all(positive), "{edits:?}");
    for row in control["idle_rss_kib"].as_array().unwrap() {
        assert!(positive(&row["rss_kib"]), "{row}");
    }
}
