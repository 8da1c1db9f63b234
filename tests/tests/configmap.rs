//! Policy from a mounted ConfigMap: the agent follows the kubelet's `..data` symlink swap,
//! applies a new version within a couple of seconds and keeps the old one on a broken
//! version. (Edits in place and by rename are in netns.rs.)

use std::time::Duration;

use portcullis_tests::{
    agent::Agent,
    configmap::ConfigMapVolume,
    netns::{CLIENT_V4, NetnsPair, SERVER_V4},
    require_kernel,
    traffic::{tcp_connects, tcp_reachable_within, tcp_server},
};

const SHORT: Duration = Duration::from_millis(300);
/// How soon a ConfigMap change must be in force once the kubelet has written it.
const APPLY_WITHIN: Duration = Duration::from_secs(2);

/// True once the client's TCP connections succeed (`open`) or fail, within `APPLY_WITHIN`.
fn wait_for(pair: &NetnsPair, open: bool) -> bool {
    tcp_reachable_within(pair, CLIENT_V4, SERVER_V4, 7000, open, APPLY_WITHIN)
}

#[test]
fn configmap_updates_apply_and_broken_ones_change_nothing() {
    require_kernel!();
    let pair = NetnsPair::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut volume =
        ConfigMapVolume::new(dir.path(), &[("policy.yaml", "deny: [192.0.2.1]\n")]).unwrap();
    let agent = Agent::start(
        &pair.server_ns,
        &pair.server_if,
        &volume.path("policy.yaml"),
        &[],
    )
    .unwrap();
    tcp_server(&pair, "0.0.0.0", 7000).unwrap();
    assert!(wait_for(&pair, true), "client before the update");

    // The ConfigMap now denies the client.
    volume
        .update(&[("policy.yaml", &format!("deny: [{CLIENT_V4}]\n"))])
        .unwrap();
    assert!(
        wait_for(&pair, false),
        "the updated ConfigMap was not in force within {APPLY_WITHIN:?}: {:?}",
        agent.stderr()
    );

    // A broken version is reported and the deny stays in force.
    volume
        .update(&[("policy.yaml", "deny: [10.77.0.1\n")])
        .unwrap();
    assert!(
        agent.wait_for_stderr("policy not reloaded", Duration::from_secs(5)),
        "{:?}",
        agent.stderr()
    );
    assert!(
        !tcp_connects(&pair, CLIENT_V4, SERVER_V4, 7000, SHORT),
        "a broken ConfigMap lifted the deny"
    );

    // A fixed version lifts it.
    volume.update(&[("policy.yaml", "deny: []\n")]).unwrap();
    assert!(
        wait_for(&pair, true),
        "the fixed ConfigMap was not in force within {APPLY_WITHIN:?}: {:?}",
        agent.stderr()
    );
}
