//! The agent's embedded object against the map table in `agent_common::maps`: every map the
//! kernel declares is in the table with the same type, key and value size, flags and size,
//! and the table names no map the object lacks; and the object holds only the agent's
//! programs.

use std::collections::BTreeSet;

use agent_common::{
    Capacity,
    maps::{self, MapSpec},
};
use aya::maps::{Map, MapData};
use portcullis::loader::{self, TC_EGRESS_PROGRAM, TC_PROGRAM, XDP_PROGRAM};
use portcullis_tests::require_kernel;

fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(data)
        | Map::PerCpuArray(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::LpmTrie(data)
        | Map::RingBuf(data) => data,
        other => panic!("a map of a kind the table has no name for: {other:?}"),
    }
}

fn spec(name: &str) -> &'static MapSpec {
    maps::ALL
        .iter()
        .find(|spec| spec.name == name)
        .unwrap_or_else(|| panic!("the object has map {name}, which the table lacks"))
}

#[test]
fn every_map_of_the_object_is_as_the_table_says() {
    require_kernel!();
    // Sizes unlike any placeholder, so a map the loader does not size stands out.
    let capacity = Capacity {
        sources: 3000,
        cidrs: 700,
        bans: 500,
        blocks: 300,
        rules: 2500,
        decisions: 900,
    };
    let ebpf = loader::load_unpinned(&capacity).unwrap();
    let mut seen = BTreeSet::new();
    for (name, map) in ebpf.maps() {
        let spec = spec(name);
        let info = map_data(map).info().unwrap();
        let kernel = (
            info.map_type().unwrap() as u32,
            info.key_size(),
            info.value_size(),
            info.map_flags(),
            info.max_entries(),
        );
        let table = (
            spec.kind as u32,
            spec.key_size,
            spec.value_size,
            spec.flags,
            spec.max_entries(&capacity),
        );
        assert_eq!(
            kernel, table,
            "{name}: (type, key size, value size, flags, entries) in the kernel vs the table"
        );
        seen.insert(name.to_string());
    }
    let table: BTreeSet<String> = maps::ALL.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(seen, table, "maps in the object vs maps in the table");
}

#[test]
fn the_object_holds_only_the_agents_programs() {
    require_kernel!();
    let capacity = Capacity {
        sources: 16,
        cidrs: 16,
        bans: 16,
        blocks: 16,
        rules: 16,
        decisions: 16,
    };
    let ebpf = loader::load_unpinned(&capacity).unwrap();
    let programs: BTreeSet<&str> = ebpf.programs().map(|(name, _)| name).collect();
    assert_eq!(
        programs,
        BTreeSet::from([TC_EGRESS_PROGRAM, TC_PROGRAM, XDP_PROGRAM])
    );
}

/// The verifier walks at most a million instructions per program, and every path a change
/// adds to the judge multiplies what it walks. Each program must stay well within that
/// budget, so that a change which brings it near the limit fails here, with the figure,
/// rather than as a load error on some later change (or on another kernel's verifier).
#[test]
fn programs_verify_well_within_the_verifiers_budget() {
    require_kernel!();
    const BUDGET: u32 = 1_000_000;
    const HEADROOM: u32 = BUDGET / 4;
    let capacity = Capacity {
        sources: 16,
        cidrs: 16,
        bans: 16,
        blocks: 16,
        rules: 16,
        decisions: 16,
    };
    let mut ebpf = loader::load_unpinned(&capacity).unwrap();
    let mut report = Vec::new();
    for name in [XDP_PROGRAM, TC_PROGRAM, TC_EGRESS_PROGRAM] {
        let program = ebpf.program_mut(name).unwrap();
        let info = match program {
            aya::programs::Program::Xdp(p) => {
                p.load().unwrap_or_else(|e| panic!("{name}: {e:#}"));
                p.info().unwrap()
            }
            aya::programs::Program::SchedClassifier(p) => {
                p.load().unwrap_or_else(|e| panic!("{name}: {e:#}"));
                p.info().unwrap()
            }
            _ => panic!("{name}: an unexpected program type"),
        };
        let verified = info.verified_instruction_count().unwrap_or(0);
        println!("{name}: {verified} instructions verified");
        report.push((name, verified));
    }
    for (name, verified) in report {
        assert!(
            verified <= BUDGET - HEADROOM,
            "{name}: the verifier walked {verified} instructions, within {HEADROOM} of its limit"
        );
    }
}
