//! The container image `cargo xtask image` writes (`PORTCULLIS_IMAGE`, an OCI archive):
//! one layer holding the static binary and nothing else, `portcullis run` as entrypoint,
//! the version in its labels and reported by the binary, and only the agent's own programs
//! in the object it embeds.

use std::{collections::HashMap, io::Read as _, os::unix::fs::PermissionsExt as _};

use portcullis_tests::{kernel::from_xtask, test_programs};
use serde_json::Value;

/// Every file of a tar stream by path.
fn files(reader: impl std::io::Read) -> HashMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(reader);
    let mut files = HashMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        files.insert(path, data);
    }
    files
}

fn blob<'a>(files: &'a HashMap<String, Vec<u8>>, digest: &Value) -> &'a [u8] {
    let digest = digest.as_str().unwrap();
    let path = format!("blobs/{}", digest.replacen(':', "/", 1));
    files
        .get(&path)
        .unwrap_or_else(|| panic!("{path} missing from the archive"))
}

#[test]
fn image_holds_the_static_binary_only_and_runs_it() {
    let Some(path) = from_xtask("PORTCULLIS_IMAGE") else {
        return;
    };
    let outer = files(std::fs::File::open(&path).unwrap());
    let index: Value = serde_json::from_slice(&outer["index.json"]).unwrap();
    let manifest: Value =
        serde_json::from_slice(blob(&outer, &index["manifests"][0]["digest"])).unwrap();
    let config: Value =
        serde_json::from_slice(blob(&outer, &manifest["config"]["digest"])).unwrap();

    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/portcullis", "run"])
    );
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.version"],
        version
    );

    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let layer = files(flate2::read::GzDecoder::new(blob(
        &outer,
        &layers[0]["digest"],
    )));
    assert_eq!(
        layer.keys().collect::<Vec<_>>(),
        ["portcullis"],
        "the image holds more than the binary"
    );

    // The kernel object it embeds holds the agent's programs and none of the programs only
    // tests and the benchmark load (their names are in an object's string table).
    let binary_bytes = &layer["portcullis"];
    let holds = |name: &str| {
        binary_bytes
            .windows(name.len())
            .any(|window| window == name.as_bytes())
    };
    for program in [
        portcullis::loader::XDP_PROGRAM,
        portcullis::loader::TC_PROGRAM,
    ] {
        assert!(holds(program), "the shipped object lacks {program}");
    }
    for program in test_programs::ALL {
        assert!(!holds(program), "the shipped object holds {program}");
    }

    // The binary runs with nothing around it, and reports the version, also through the
    // entrypoint's subcommand.
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("portcullis");
    std::fs::write(&binary, &layer["portcullis"]).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(&binary)
        .args(["run", "--version"])
        .env_clear()
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("portcullis-run {version}").as_str(),
        "{out:?}"
    );
}
