//! The benchmark program runs and writes well-formed results. No timing is asserted: the
//! numbers of a smoke run on a busy machine mean nothing.

use portcullis_tests::require_kernel;

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
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let md = std::fs::read_to_string(out.path().join("bench.md")).unwrap();
    assert_eq!(md, stdout, "the Markdown file and stdout differ");
    for heading in [
        "## Per-packet cost",
        "## Deny path with events on and off",
        "## Applying a deny list",
    ] {
        assert!(md.contains(heading), "{heading} missing:\n{md}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("bench.json")).unwrap())
            .unwrap();
    assert_eq!(json["smoke"], true);
    let per_packet = json["per_packet"].as_array().unwrap();
    assert_eq!(per_packet.len(), 9, "one row per path");
    for row in per_packet {
        assert!(row["ns_per_packet"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["floor_ns_per_packet"].as_f64().unwrap() > 0.0, "{row}");
    }
    assert_eq!(json["events"].as_array().unwrap().len(), 2);
    assert_eq!(json["apply"][0]["cidrs"], 1000);
    assert!(json["apply"][0]["write_s"].as_f64().unwrap() > 0.0);
}
