//! Runs the image the way a kubelet would run a pod spec's container: rootful podman with
//! the capabilities, security options, resource limits, mounts, command and arguments
//! read from the rendered manifest, on a "node" the test makes (a network namespace, a
//! private bpffs, directories for the host paths).
//!
//! Nothing global is touched: podman gets its own storage, run and temporary directories
//! and its own cgroup parent, uses runc (crun refuses this VM's hybrid cgroup layout) and
//! lower ulimits than its defaults, which runc cannot set here. The guard removes containers, cgroups and directories on drop.

use std::{
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// What the test provides in place of a node: where each hostPath and ConfigMap volume
/// lives, which network namespace is the host network, and the kubelet's seccomp root.
#[derive(Clone)]
pub struct Node {
    pub netns: String,
    /// The node's address, what `status.hostIP` gives.
    pub host_ip: String,
    pub seccomp_root: PathBuf,
    pub host_paths: HashMap<String, PathBuf>,
    pub config_maps: HashMap<String, PathBuf>,
}

/// A fresh bpffs instance standing in for the node's /sys/fs/bpf: the test's pins are its
/// own, and unmounting it releases whatever is still pinned there.
pub struct BpfFs {
    pub path: PathBuf,
}

impl BpfFs {
    pub fn mount(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(path)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mount -t bpf: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).output();
    }
}

pub struct Podman {
    dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl Podman {
    /// A private podman with `archive` (an OCI archive) loaded; returns it and the image's
    /// name as loaded.
    pub fn load(archive: &Path) -> Result<(Self, String)> {
        let podman = Self {
            dir: tempfile::tempdir()?,
            cgroup_parent: format!(
                "/portcullis-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let out = checked(podman.command().arg("load").arg("--input").arg(archive))?;
        let loaded = String::from_utf8_lossy(&out.stdout);
        let image = loaded
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image: "))
            .with_context(|| format!("podman load printed no image name: {loaded}"))?
            .trim()
            .to_string();
        Ok((podman, image))
    }

    /// `podman` with this instance's private directories and runtime.
    fn command(&self) -> Command {
        let dir = self.dir.path();
        let mut command = Command::new("podman");
        command
            .arg("--root")
            .arg(dir.join("storage"))
            .arg("--runroot")
            .arg(dir.join("run"))
            .arg("--tmpdir")
            .arg(dir.join("tmp"))
            .args(["--storage-driver", "vfs", "--runtime", "runc"])
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"]);
        command
    }

    /// Starts `container` (an entry of `pod`'s containers or initContainers) as container
    /// `name`, detached.
    pub fn start(&self, name: &str, image: &str, pod: &Value, container: &Value, node: &Node) {
        let mut run = self.command();
        run.args(["run", "--detach", "--name", name]);
        run.arg(format!("--cgroup-parent={}", self.cgroup_parent));
        // conmon would get a cgroup of its own under a global parent.
        run.arg("--cgroups=no-conmon");
        run.args(pod_run_args(pod, container, node));
        run.arg(image).args(container_args(container, node));
        if let Err(e) = checked(&mut run) {
            panic!("starting {name}: {e:#}");
        }
    }

    /// Runs `container` to its end; its exit code and output (stdout then stderr).
    pub fn run_to_end(
        &self,
        name: &str,
        image: &str,
        pod: &Value,
        container: &Value,
        node: &Node,
        within: Duration,
    ) -> (i64, String) {
        self.start(name, image, pod, container, node);
        let code = self
            .wait_exit(name, within)
            .unwrap_or_else(|| panic!("{name} still running after {within:?}"));
        (code, self.logs(name))
    }

    /// The exit code once `name` has stopped, or `None` if it still runs after `within`.
    pub fn wait_exit(&self, name: &str, within: Duration) -> Option<i64> {
        let started = Instant::now();
        while started.elapsed() < within {
            let state = self.inspect(name);
            if state["State"]["Status"] == "exited" {
                return state["State"]["ExitCode"].as_i64();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    fn inspect(&self, name: &str) -> Value {
        let out =
            checked(self.command().args(["inspect", name])).unwrap_or_else(|e| panic!("{e:#}"));
        let all: Value = serde_json::from_slice(&out.stdout).expect("podman inspect JSON");
        all[0].clone()
    }

    /// Sends SIGTERM (as the kubelet does when a pod goes) and waits up to `grace`; the
    /// exit code, or `None` if it had to be killed.
    pub fn terminate(&self, name: &str, grace: Duration) -> Option<i64> {
        let _ = checked(self.command().args(["kill", "--signal", "TERM", name]));
        let code = self.wait_exit(name, grace);
        if code.is_none() {
            let _ = checked(self.command().args(["kill", "--signal", "KILL", name]));
        }
        code
    }

    /// Runs a command in a running container, as `kubectl exec` does.
    pub fn exec(&self, name: &str, command: &[&str]) -> Output {
        self.exec_with_input(name, command, "")
    }

    /// As `exec`, with `input` on the command's stdin (`kubectl exec -i ... < file`).
    pub fn exec_with_input(&self, name: &str, command: &[&str], input: &str) -> Output {
        let mut child = self
            .command()
            .args(["exec", "--interactive", name])
            .args(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running podman exec");
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .expect("writing to podman exec");
        drop(stdin);
        child.wait_with_output().expect("waiting for podman exec")
    }

    /// A container's output so far, stdout then stderr.
    pub fn logs(&self, name: &str) -> String {
        let out = self
            .command()
            .args(["logs", name])
            .output()
            .expect("running podman logs");
        crate::output_text(&out)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command().args(["rm", "--all", "--force"]).output();
        // cgroupfs leaves the (empty) parent directories in every hierarchy.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for hierarchy in hierarchies.flatten() {
                remove_cgroup(
                    &hierarchy
                        .path()
                        .join(self.cgroup_parent.trim_start_matches('/')),
                );
            }
        }
    }
}

/// Runs a podman command, failing on a non-zero exit with what podman said.
fn checked(command: &mut Command) -> Result<Output> {
    let out = command.output().context("running podman")?;
    if !out.status.success() {
        bail!(
            "{:?}: {}",
            command.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Removes a cgroup directory and its children, deepest first (cgroups go by rmdir).
fn remove_cgroup(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&child.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// The container's environment as the kubelet sets it on `node`; only plain values and
/// `status.hostIP` are reproduced.
fn container_env(container: &Value, node: &Node) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|var| {
            let name = var["name"].as_str().unwrap().to_string();
            let value = if let Some(value) = var["value"].as_str() {
                value.to_string()
            } else {
                match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                    Some("status.hostIP") => node.host_ip.clone(),
                    other => panic!("env {name}: {other:?} is not reproduced"),
                }
            };
            (name, value)
        })
        .collect()
}

/// The container's args with `$(NAME)` references to its environment expanded, as the
/// kubelet expands them.
fn container_args(container: &Value, node: &Node) -> Vec<String> {
    let env = container_env(container, node);
    strings(&container["args"])
        .into_iter()
        .map(|arg| {
            env.iter().fold(arg, |arg, (name, value)| {
                arg.replace(&format!("$({name})"), value)
            })
        })
        .collect()
}

/// The `podman run` options for `container` of `pod`, from the manifest, on `node`.
/// Anything in the spec this cannot reproduce is a panic, not silently dropped.
pub fn pod_run_args(pod: &Value, container: &Value, node: &Node) -> Vec<String> {
    let mut args = Vec::new();
    let (nofile, nproc) = (ulimit(libc::RLIMIT_NOFILE), ulimit(libc::RLIMIT_NPROC));
    args.push(format!("--ulimit=nofile={nofile}:{nofile}"));
    args.push(format!("--ulimit=nproc={nproc}:{nproc}"));
    args.push(if pod["hostNetwork"] == true {
        format!("--network=ns:/run/netns/{}", node.netns)
    } else {
        "--network=none".into()
    });

    // Container settings override the pod's, as in Kubernetes.
    let security = |key: &str| {
        let own = &container["securityContext"][key];
        if own.is_null() {
            pod["securityContext"][key].clone()
        } else {
            own.clone()
        }
    };
    assert_ne!(security("privileged"), true, "privileged is not reproduced");
    if let (Some(uid), gid) = (security("runAsUser").as_i64(), security("runAsGroup")) {
        let gid = gid.as_i64().unwrap_or(uid);
        args.push(format!("--user={uid}:{gid}"));
    }
    if security("readOnlyRootFilesystem") == true {
        args.push("--read-only".into());
    }
    if security("allowPrivilegeEscalation") == false {
        args.push("--security-opt=no-new-privileges".into());
    }
    let capabilities = security("capabilities");
    for cap in strings(&capabilities["drop"]) {
        args.push(format!("--cap-drop={cap}"));
    }
    for cap in strings(&capabilities["add"]) {
        args.push(format!("--cap-add={cap}"));
    }
    let seccomp = security("seccompProfile");
    match seccomp["type"].as_str() {
        // podman's default profile is containers-common's, the runtime default.
        Some("RuntimeDefault") => {}
        Some("Localhost") => {
            let profile = node
                .seccomp_root
                .join(seccomp["localhostProfile"].as_str().unwrap());
            assert!(profile.exists(), "no seccomp profile {}", profile.display());
            args.push(format!("--security-opt=seccomp={}", profile.display()));
        }
        Some("Unconfined") => args.push("--security-opt=seccomp=unconfined".into()),
        other => panic!("seccomp profile type {other:?} is not reproduced"),
    }

    let limits = &container["resources"]["limits"];
    if let Some(memory) = limits["memory"].as_str() {
        args.push(format!("--memory={}", bytes(memory)));
    }
    if let Some(cpu) = limits["cpu"].as_str() {
        args.push(format!("--cpus={}", cpus(cpu)));
    }

    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = mount["name"].as_str().unwrap();
        let volume = pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name))
            .unwrap_or_else(|| panic!("no volume {name}"));
        let source = if let Some(path) = volume["hostPath"]["path"].as_str() {
            let source = node
                .host_paths
                .get(path)
                .unwrap_or_else(|| panic!("the test node has no host path {path}"));
            match volume["hostPath"]["type"].as_str() {
                Some("DirectoryOrCreate") => std::fs::create_dir_all(source).unwrap(),
                Some("Directory") => assert!(source.is_dir(), "{path} must exist"),
                other => panic!("hostPath type {other:?} is not reproduced"),
            }
            source.clone()
        } else if let Some(map) = volume["configMap"]["name"].as_str() {
            node.config_maps
                .get(map)
                .unwrap_or_else(|| panic!("the test node has no ConfigMap {map}"))
                .clone()
        } else {
            panic!("volume {name}: only hostPath and configMap are reproduced")
        };
        let read_only = if mount["readOnly"] == true { ":ro" } else { "" };
        args.push(format!(
            "--volume={}:{}{read_only}",
            source.display(),
            mount["mountPath"].as_str().unwrap()
        ));
    }

    for (name, value) in container_env(container, node) {
        args.push(format!("--env={name}={value}"));
    }
    let command = strings(&container["command"]);
    if !command.is_empty() {
        args.push(format!(
            "--entrypoint={}",
            serde_json::to_string(&command).unwrap()
        ));
    }
    args
}

/// A limit runc can set: podman's defaults (over a million) exceed this VM's hard limits,
/// and even the hard process limit was refused here, so at most 16384.
fn ulimit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(resource, &mut limit) }, 0);
    limit.rlim_max.min(16_384)
}

/// A Kubernetes memory quantity ("512Mi", "1Gi", "64M", bytes) in bytes.
fn bytes(quantity: &str) -> u64 {
    let units = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = quantity.strip_suffix(suffix) {
            return n.parse::<u64>().expect("memory quantity") * factor;
        }
    }
    quantity.parse().expect("memory quantity")
}

/// A Kubernetes CPU quantity ("1", "500m") in CPUs.
fn cpus(quantity: &str) -> f64 {
    match quantity.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().expect("cpu quantity") / 1000.0,
        None => quantity.parse().expect("cpu quantity"),
    }
}
