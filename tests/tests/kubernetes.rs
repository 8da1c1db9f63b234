//! deploy/kubernetes: the manifests render, pass strict schema validation and the security
//! scan, agree with the build, and the DaemonSet's container, run by podman exactly as the
//! rendered manifest describes it, enforces the ConfigMap's policy on a test node, answers
//! its probes, survives an upgrade without a gap, and the uninstall DaemonSet removes it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use portcullis_tests::{
    agent,
    configmap::ConfigMapVolume,
    kernel::from_xtask,
    kubernetes::{deploy_dir, object, render, tool},
    netns::{CLIENT_V4, NetnsPair, SERVER_V4},
    output_text,
    podman::{BpfFs, Node, Podman},
    require_kernel,
    traffic::{http_fetch, tcp_connects, tcp_reachable_within, tcp_server},
};
use serde_json::Value;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.37.0";
/// How soon a ConfigMap change must be in force once the kubelet has written it.
const APPLY_WITHIN: Duration = Duration::from_secs(2);
const SHORT: Duration = Duration::from_millis(300);

/// The kustomizations a user applies.
fn kustomizations() -> [PathBuf; 4] {
    let dir = deploy_dir();
    [
        dir.clone(),
        dir.join("overlays/example"),
        dir.join("overlays/crowdsec"),
        dir.join("uninstall"),
    ]
}

/// Renders `kustomization` into a file in `dir` (the tools read files), with `edit`
/// (from, to) made once if given: the file, and how many objects it holds.
fn render_to_file(
    tools: &Path,
    kustomization: &Path,
    dir: &Path,
    edit: Option<(&str, &str)>,
) -> (PathBuf, usize) {
    let (mut yaml, documents) = render(tools, kustomization).unwrap();
    if let Some((from, to)) = edit {
        assert!(yaml.contains(from), "nothing to edit: {from}");
        yaml = yaml.replacen(from, to, 1);
    }
    let path = dir.join("rendered.yaml");
    std::fs::write(&path, yaml).unwrap();
    (path, documents.len())
}

fn validate(tools: &Path, file: &Path) -> std::process::Output {
    tool(tools, "kubernetes-validate")
        .args(["--kubernetes-version", KUBERNETES_VERSION, "--strict"])
        .arg(file)
        .output()
        .unwrap()
}

fn scan(tools: &Path, file: &Path) -> std::process::Output {
    tool(tools, "checkov")
        .arg("--config-file")
        .arg(deploy_dir().join("checkov.yaml"))
        .arg("--file")
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn manifests_pass_strict_schema_validation() {
    let Some(tools) = from_xtask("PORTCULLIS_TOOLS") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for kustomization in kustomizations() {
        let (file, objects) = render_to_file(&tools, &kustomization, dir.path(), None);
        let out = validate(&tools, &file);
        let said = output_text(&out);
        assert!(out.status.success(), "{}: {said}", kustomization.display());
        assert_eq!(
            said.matches("passed for resource").count(),
            objects,
            "every object validated: {said}"
        );
    }

    // Strict: a field the schema does not have is an error, not ignored.
    let misspelt = ("readOnlyRootFilesystem:", "readOnlyRootFileSystem:");
    let (file, _) = render_to_file(&tools, &deploy_dir(), dir.path(), Some(misspelt));
    let out = validate(&tools, &file);
    let said = output_text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("readOnlyRootFileSystem"), "{said}");
}

#[test]
fn manifests_pass_the_security_scan_with_the_listed_skips() {
    let Some(tools) = from_xtask("PORTCULLIS_TOOLS") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for kustomization in kustomizations() {
        let (file, _) = render_to_file(&tools, &kustomization, dir.path(), None);
        let out = scan(&tools, &file);
        let said = output_text(&out);
        assert!(
            out.status.success() && said.contains("Failed checks: 0"),
            "{}: {said}",
            kustomization.display()
        );
    }

    // The scan does fail a manifest that gives too much away.
    let privileged = ("privileged: false", "privileged: true");
    let (file, _) = render_to_file(&tools, &deploy_dir(), dir.path(), Some(privileged));
    let out = scan(&tools, &file);
    let said = output_text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("CKV_K8S_16"), "{said}");
}

#[test]
fn manifests_agree_with_the_build() {
    let Some(tools) = from_xtask("PORTCULLIS_TOOLS") else {
        return;
    };
    let version = env!("CARGO_PKG_VERSION");
    for kustomization in [deploy_dir(), deploy_dir().join("uninstall")] {
        let (_, documents) = render(&tools, &kustomization).unwrap();
        for document in documents.iter().filter(|d| d["kind"] == "DaemonSet") {
            let pod = &document["spec"]["template"]["spec"];
            let containers = pod["containers"].as_array().unwrap().iter();
            let init = pod["initContainers"].as_array().into_iter().flatten();
            for container in containers.chain(init) {
                let image = container["image"].as_str().unwrap();
                if image.contains("portcullis") {
                    assert_eq!(image, format!("localhost/portcullis:{version}"));
                }
            }
        }
    }

    // Every policy a kustomization ships is valid.
    for kustomization in kustomizations() {
        let (_, documents) = render(&tools, &kustomization).unwrap();
        for map in documents.iter().filter(|d| d["kind"] == "ConfigMap") {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("policy.yaml");
            std::fs::write(&file, map["data"]["policy.yaml"].as_str().unwrap()).unwrap();
            let out = Command::new(agent::binary())
                .args(["policy", "validate"])
                .arg(&file)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", output_text(&out));
        }
    }

    // CrowdSec: off in the base; the overlay turns it on with the agent's own flags, the
    // credentials read from the Secret's files, and the node's name.
    let agent_daemonset = |kustomization: &Path| {
        let (_, documents) = render(&tools, kustomization).unwrap();
        object(&documents, "DaemonSet", "portcullis").clone()
    };
    let base = agent_daemonset(&deploy_dir());
    assert!(
        !serde_json::to_string(&base).unwrap().contains("crowdsec"),
        "the base keeps CrowdSec off"
    );
    let on = agent_daemonset(&deploy_dir().join("overlays/crowdsec"));
    let pod = &on["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "crowdsec")
        .expect("the Secret is mounted");
    assert_eq!(mount["readOnly"], true);
    let dir = mount["mountPath"].as_str().unwrap();
    let help = Command::new(agent::binary())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = output_text(&help);
    for (flag, key) in [
        ("--crowdsec-key-file", "bouncer-key"),
        ("--crowdsec-machine-file", "machine.yaml"),
    ] {
        assert!(help.contains(flag), "the agent takes {flag}");
        assert!(
            args.contains(&format!("{flag}={dir}/{key}").as_str()),
            "{flag} reads the Secret's {key}: {args:?}"
        );
    }
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "crowdsec")
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "portcullis-crowdsec");
    let node = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "PORTCULLIS_NODE_NAME")
        .expect("the node's name");
    assert!(help.contains("PORTCULLIS_NODE_NAME"));
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");

    // The seccomp profile is what its generator makes of the runtime default here.
    let seccomp = deploy_dir().join("seccomp");
    let out = Command::new("python3")
        .arg(seccomp.join("derive.py"))
        .arg("/usr/share/containers/seccomp.json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        std::fs::read_to_string(seccomp.join("portcullis.json")).unwrap(),
        "seccomp/portcullis.json is stale: rerun seccomp/derive.py"
    );
}

/// The image archive and the tools directory, or `None` (skipped) outside `cargo xtask test`.
fn image_and_tools() -> Option<(PathBuf, PathBuf)> {
    Some((
        from_xtask("PORTCULLIS_IMAGE")?,
        from_xtask("PORTCULLIS_TOOLS")?,
    ))
}

/// A test node: the server side of a veth pair with a default route (the agent finds its
/// interface from it), a private bpffs, host directories and the ConfigMap volume.
struct TestNode {
    node: Node,
    volume: ConfigMapVolume,
    bpffs: BpfFs,
    _dir: tempfile::TempDir,
}

impl TestNode {
    fn new(pair: &NetnsPair, config_map: &Value) -> Self {
        pair.add_server_default_route().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let bpffs = BpfFs::mount(&dir.path().join("bpffs")).unwrap();
        let data: Vec<(&str, &str)> = config_map["data"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        let cm_dir = dir.path().join("configmap");
        std::fs::create_dir(&cm_dir).unwrap();
        let volume = ConfigMapVolume::new(&cm_dir, &data).unwrap();
        let name = config_map["metadata"]["name"].as_str().unwrap().to_string();
        let node = Node {
            netns: pair.server_ns.clone(),
            host_ip: SERVER_V4.to_string(),
            // As README tells: the profile goes to /var/lib/kubelet/seccomp on each node.
            seccomp_root: deploy_dir().join("seccomp"),
            host_paths: HashMap::from([
                (
                    "/sys/fs/bpf/portcullis".to_string(),
                    bpffs.path.join("portcullis"),
                ),
                ("/run/portcullis".to_string(), dir.path().join("run")),
                ("/var/lib/portcullis".to_string(), dir.path().join("state")),
            ]),
            config_maps: HashMap::from([(name, cm_dir)]),
        };
        Self {
            node,
            volume,
            bpffs,
            _dir: dir,
        }
    }
}

/// The HTTP GET of a probe (`livenessProbe`, `readinessProbe`), made at the node's address
/// as the kubelet makes it for a host-network pod: the status code.
fn probe(container: &Value, which: &str, ns: &str) -> Option<u16> {
    let get = &container[which]["httpGet"];
    let addr = format!("{SERVER_V4}:{}", get["port"]);
    http_fetch(ns, &addr, get["path"].as_str().unwrap()).map(|(status, _)| status)
}

fn wait_ready(podman: &Podman, name: &str, container: &Value, ns: &str) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if probe(container, "readinessProbe", ns) == Some(200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{name} not ready within 20 s: {}", podman.logs(name));
}

/// True once the client's TCP connections succeed (`open`) or fail, within `APPLY_WITHIN`.
fn client_reaches_node(pair: &NetnsPair, open: bool) -> bool {
    tcp_reachable_within(pair, CLIENT_V4, SERVER_V4, 7000, open, APPLY_WITHIN)
}

fn status(podman: &Podman, name: &str) -> Value {
    let out = podman.exec(name, &["/portcullis", "status", "--json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn daemonset_pod_enforces_the_configmap_and_hands_over_on_upgrade() {
    require_kernel!();
    let Some((archive, tools)) = image_and_tools() else {
        return;
    };
    let (_, documents) = render(&tools, &deploy_dir()).unwrap();
    let daemonset = object(&documents, "DaemonSet", "portcullis");
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let config_map = object(&documents, "ConfigMap", "portcullis-policy");
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());

    // Both DaemonSets see only Portcullis's own directory of the node's bpffs, never other
    // tools' pins; the metrics endpoint listens on the node's own address only.
    let (_, uninstall_documents) = render(&tools, &deploy_dir().join("uninstall")).unwrap();
    for ds in [
        daemonset,
        object(&uninstall_documents, "DaemonSet", "portcullis-uninstall"),
    ] {
        for volume in ds["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
        {
            let path = volume["hostPath"]["path"].as_str().unwrap_or_default();
            assert!(
                !path.starts_with("/sys/fs/bpf") || path == "/sys/fs/bpf/portcullis",
                "{} mounts {path}",
                ds["metadata"]["name"]
            );
        }
    }
    assert!(
        container["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|arg| arg == "--metrics=$(HOST_IP):9477"),
        "{}",
        container["args"]
    );

    let pair = NetnsPair::new().unwrap();
    let mut node = TestNode::new(&pair, config_map);
    let (podman, image) = Podman::load(&archive).unwrap();
    assert_eq!(container["image"], image.as_str(), "the manifest's image");
    tcp_server(&pair, "0.0.0.0", 7000).unwrap();

    // The pod starts, attaches to the default route's interface, answers its probes and
    // serves metrics where its scrape annotations say.
    podman.start("agent-1", &image, pod, container, &node.node);
    wait_ready(&podman, "agent-1", container, &pair.server_ns);
    assert_eq!(
        probe(container, "livenessProbe", &pair.server_ns),
        Some(200)
    );
    let annotations = &daemonset["spec"]["template"]["metadata"]["annotations"];
    let metrics = http_fetch(
        &pair.server_ns,
        &format!(
            "{SERVER_V4}:{}",
            annotations["prometheus.io/port"].as_str().unwrap()
        ),
        annotations["prometheus.io/path"].as_str().unwrap(),
    )
    .expect("metrics answer");
    assert!(
        metrics.1.contains("portcullis_packets_total"),
        "{}",
        metrics.1
    );
    let first = status(&podman, "agent-1");
    assert_eq!(first["interfaces"][0]["interface"], pair.server_if.as_str());
    assert_eq!(first["agent_version"], env!("CARGO_PKG_VERSION"));

    // The shipped policy only counts: the client gets through.
    assert!(
        client_reaches_node(&pair, true),
        "{}",
        podman.logs("agent-1")
    );

    // Cluster-wide change: the ConfigMap now denies the client; the kubelet swaps it in.
    let shipped = config_map["data"]["policy.yaml"].as_str().unwrap();
    let denying = shipped.replace("deny: []", &format!("deny: [{CLIENT_V4}]"));
    assert_ne!(
        denying, shipped,
        "the shipped policy has an empty deny list to edit"
    );
    node.volume.update(&[("policy.yaml", &denying)]).unwrap();
    assert!(
        client_reaches_node(&pair, false),
        "the ConfigMap's deny was not in force within {APPLY_WITHIN:?}: {}",
        podman.logs("agent-1")
    );
    let second = status(&podman, "agent-1");
    assert!(
        second["policy_version"].as_u64() > first["policy_version"].as_u64(),
        "{second}"
    );

    // On one node, through `kubectl exec -i`: a policy file from stdin, then a rollback.
    let out = podman.exec_with_input(
        "agent-1",
        &["/portcullis", "policy", "apply", "/dev/stdin"],
        shipped,
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(client_reaches_node(&pair, true), "the local apply");
    let out = podman.exec("agent-1", &["/portcullis", "policy", "rollback"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(client_reaches_node(&pair, false), "the rollback");

    // Upgrade or pod deletion: SIGTERM, a clean exit within the grace period, and the
    // node stays protected until the next pod takes over.
    assert_eq!(
        podman.terminate("agent-1", grace),
        Some(0),
        "{}",
        podman.logs("agent-1")
    );
    assert!(
        !tcp_connects(&pair, CLIENT_V4, SERVER_V4, 7000, SHORT),
        "the node was unprotected between two pods"
    );
    podman.start("agent-2", &image, pod, container, &node.node);
    wait_ready(&podman, "agent-2", container, &pair.server_ns);
    assert!(
        podman.logs("agent-2").contains(r#""adopted":true"#),
        "the new pod did not take the pinned programs over: {}",
        podman.logs("agent-2")
    );
    assert!(
        !tcp_connects(&pair, CLIENT_V4, SERVER_V4, 7000, SHORT),
        "the deny was lost across the upgrade"
    );

    // Removal. While an agent runs, the uninstall init container refuses and is retried.
    let (_, uninstall) = render(&tools, &deploy_dir().join("uninstall")).unwrap();
    let remover = object(&uninstall, "DaemonSet", "portcullis-uninstall");
    let remover_pod = &remover["spec"]["template"]["spec"];
    let detach = &remover_pod["initContainers"][0];
    let within = Duration::from_secs(20);
    let (code, output) =
        podman.run_to_end("detach-1", &image, remover_pod, detach, &node.node, within);
    assert_ne!(code, 0, "{output}");
    assert!(output.contains("another agent is running"), "{output}");

    // Once the DaemonSet is deleted it succeeds, and the node passes traffic again.
    assert_eq!(podman.terminate("agent-2", grace), Some(0));
    let (code, output) =
        podman.run_to_end("detach-2", &image, remover_pod, detach, &node.node, within);
    assert_eq!(code, 0, "{output}");
    assert!(
        tcp_reachable_within(
            &pair,
            CLIENT_V4,
            SERVER_V4,
            7000,
            true,
            Duration::from_secs(2)
        ),
        "still enforcing after the uninstall"
    );
    // The pin directory was the remover's mount point: emptied, and left in place.
    let pins: Vec<_> = std::fs::read_dir(node.bpffs.path.join("portcullis"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(pins.is_empty(), "left pinned: {pins:?}");
    let others: Vec<_> = std::fs::read_dir(&node.bpffs.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| !name.ends_with(".debug") && name != "portcullis")
        .collect();
    assert!(others.is_empty(), "left in the node's bpffs: {others:?}");
}

#[test]
fn each_added_capability_the_seccomp_profile_and_bpffs_are_needed() {
    require_kernel!();
    let Some((archive, tools)) = image_and_tools() else {
        return;
    };
    let (_, documents) = render(&tools, &deploy_dir()).unwrap();
    let pod = &object(&documents, "DaemonSet", "portcullis")["spec"]["template"]["spec"];
    let config_map = object(&documents, "ConfigMap", "portcullis-policy");
    let pair = NetnsPair::new().unwrap();
    let node = TestNode::new(&pair, config_map);
    let (podman, image) = Podman::load(&archive).unwrap();

    let added: Vec<String> = pod["containers"][0]["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let mut variants: Vec<(String, Value)> = added
        .iter()
        .map(|cap| {
            let mut pod = pod.clone();
            pod["containers"][0]["securityContext"]["capabilities"]["add"] = added
                .iter()
                .filter(|c| *c != cap)
                .map(|c| Value::from(c.as_str()))
                .collect();
            (format!("without CAP_{cap}"), pod)
        })
        .collect();
    let mut runtime_default = pod.clone();
    runtime_default["securityContext"]["seccompProfile"] =
        serde_json::json!({"type": "RuntimeDefault"});
    variants.push((
        "with the runtime's default seccomp profile".into(),
        runtime_default,
    ));

    for (n, (what, pod)) in variants.iter().enumerate() {
        let (code, output) = podman.run_to_end(
            &format!("variant-{n}"),
            &image,
            pod,
            &pod["containers"][0],
            &node.node,
            Duration::from_secs(20),
        );
        assert_ne!(code, 0, "the agent ran {what}: {output}");
        assert!(
            output.contains("Operation not permitted") || output.contains("Permission denied"),
            "{what}: {output}"
        );
    }

    // A node whose /sys/fs/bpf is not bpffs: the agent cannot mount one from inside the
    // container, and says what the node needs rather than failing later at pinning.
    let plain = tempfile::tempdir().unwrap();
    let mut no_bpffs = node.node.clone();
    no_bpffs
        .host_paths
        .insert("/sys/fs/bpf/portcullis".into(), plain.path().to_path_buf());
    let (code, output) = podman.run_to_end(
        "no-bpffs",
        &image,
        pod,
        &pod["containers"][0],
        &no_bpffs,
        Duration::from_secs(20),
    );
    assert_ne!(code, 0, "{output}");
    assert!(
        output.contains("/sys/fs/bpf is not on a BPF filesystem"),
        "{output}"
    );
}
