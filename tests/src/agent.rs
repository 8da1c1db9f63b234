//! The real `portcullis run` in a namespace, as a child process whose output is collected.
//! Dropping the guard stops it and removes its pins, also when a test fails.

use std::{
    ffi::CString,
    io::{BufRead as _, BufReader},
    os::unix::{ffi::OsStringExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cgroup::MemoryCgroup;

/// The agent binary: `PORTCULLIS_BIN`, or `portcullis` in the target directory these tests
/// were built into.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PORTCULLIS_BIN") {
        return PathBuf::from(path);
    }
    // Test binaries live in target/<profile>/deps, the demo in target/<profile>.
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("portcullis"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no portcullis binary near {}; build it first",
                exe.display()
            )
        })
}

/// Where an agent started by `Agent::start` in namespace `ns` keeps its pins, control
/// socket and history.
pub struct AgentPaths {
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
}

impl AgentPaths {
    pub fn of(ns: &str) -> Self {
        Self {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/pc-test-{ns}")),
            socket: std::env::temp_dir().join(format!("pc-test-{ns}.sock")),
            state_dir: std::env::temp_dir().join(format!("pc-test-{ns}-state")),
        }
    }
}

/// Removes an agent's pins, socket and history when dropped: tests whose agents leave them
/// on purpose (`kill_hard`, `keep_pins`) hold one so that a failing test still cleans up.
pub struct Leftovers(AgentPaths);

impl Leftovers {
    pub fn of(ns: &str) -> Self {
        Self(AgentPaths::of(ns))
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0.pin_dir);
        let _ = std::fs::remove_file(&self.0.socket);
        remove_state(&self.0.state_dir);
    }
}

/// Removes a state directory, or what a test put in its place.
fn remove_state(path: &Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

pub struct Agent {
    child: Option<Child>,
    pub pin_dir: PathBuf,
    /// Control socket and policy history, private to this test's namespace.
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Set by `keep_state`: the next agent in this namespace takes the history over.
    keep_state: bool,
    /// Set by `kill_hard` and `keep_pins`: the pins stay for the next agent to take over.
    keep_pins: bool,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

fn collect(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

impl Agent {
    /// Starts the agent in namespace `ns` on `iface` and waits until it is attached.
    pub fn start(ns: &str, iface: &str, policy: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_run(ns, policy, &[&["--iface", iface], extra].concat())
    }

    /// Starts `portcullis run` in namespace `ns` with `args` (which choose the interfaces)
    /// and waits until it is attached.
    pub fn start_run(ns: &str, policy: &Path, args: &[&str]) -> Result<Self> {
        Self::spawn(ns, policy, args, None, None)
    }

    /// As `start`, in `cgroup` from its first instruction: under its memory limit.
    pub fn start_in_cgroup(
        ns: &str,
        iface: &str,
        policy: &Path,
        extra: &[&str],
        cgroup: &MemoryCgroup,
    ) -> Result<Self> {
        Self::spawn(
            ns,
            policy,
            &[&["--iface", iface], extra].concat(),
            None,
            Some(cgroup),
        )
    }

    /// As `start`, with the agent's stdout going to `stdout` instead of being collected.
    pub fn start_with_stdout(
        ns: &str,
        iface: &str,
        policy: &Path,
        extra: &[&str],
        stdout: Stdio,
    ) -> Result<Self> {
        Self::spawn(
            ns,
            policy,
            &[&["--iface", iface], extra].concat(),
            Some(stdout),
            None,
        )
    }

    fn spawn(
        ns: &str,
        policy: &Path,
        args: &[&str],
        stdout: Option<Stdio>,
        cgroup: Option<&MemoryCgroup>,
    ) -> Result<Self> {
        let AgentPaths {
            pin_dir,
            socket,
            state_dir,
        } = AgentPaths::of(ns);
        let mut command = Command::new("nsenter");
        if let Some(cgroup) = cgroup {
            let procs = CString::new(cgroup.procs().into_os_string().into_vec())?;
            // SAFETY: between fork and exec only async-signal-safe calls (open, write,
            // close) on memory prepared before the fork. Writing "0" moves the writer.
            unsafe {
                command.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                    Ok(())
                });
            }
        }
        let mut child = command
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(binary())
            .args(["run", "--policy"])
            .arg(policy)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--summary-interval", "1"])
            .args(args)
            .stdout(stdout.unwrap_or_else(Stdio::piped))
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary().display()))?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(child_stdout) = child.stdout.take() {
            collect(child_stdout, stdout.clone());
        }
        collect(child.stderr.take().unwrap(), stderr.clone());
        let mut agent = Self {
            child: Some(child),
            pin_dir,
            socket,
            state_dir,
            keep_state: false,
            keep_pins: false,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if agent.status().is_some_and(|status| status["ready"] == true) {
                return Ok(agent);
            }
            if let Some(status) = agent.child.as_mut().unwrap().try_wait()? {
                // What is pinned now is a previous agent's (a failed start removes what it
                // attached itself): it must go on enforcing, as without this guard.
                agent.keep_pins = true;
                agent.keep_state = true;
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "agent exited with {status} before it was ready:\n{}",
                    agent.stderr().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("agent not ready after 30 s:\n{}", agent.stderr().join("\n"))
    }

    /// What `status --json` answers, or `None` while the agent does not answer.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Runs `portcullis --socket <this agent's socket> ARGS` and returns its output.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run the portcullis CLI")
    }

    /// True while the agent process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Keeps the policy history when this agent goes, for the next one to take over.
    pub fn keep_state(&mut self) {
        self.keep_state = true;
    }

    /// Keeps the pins when this guard drops (an agent run with `--on-exit keep`).
    pub fn keep_pins(&mut self) {
        self.keep_pins = true;
    }

    /// SIGKILL, as a crash or an OOM kill would: nothing is cleaned up, by the agent or by
    /// this guard, so the next agent finds the pins and the history.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
        self.keep_pins = true;
        self.keep_state = true;
    }

    /// The program id attached through this agent's link on `iface`, read from the kernel.
    pub fn attached_program(&self, iface: &str) -> Option<u32> {
        ["xdp", "tc"].iter().find_map(|kind| {
            let pin = self.pin_dir.join("links").join(format!("{kind}-{iface}"));
            portcullis::loader::attached_program(&pin).ok()
        })
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stderr_contains(&self, needle: &str) -> bool {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Waits until a stderr line contains `needle`; false on timeout.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stderr_contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Parsed JSON lines from stdout of the given `type` ("event" or "summary").
    pub fn json_lines(&self, kind: &str) -> Vec<serde_json::Value> {
        self.stdout()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == kind)
            .collect()
    }

    /// The agent's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.child.as_ref().context("agent stopped")?.id();
        rss_kib(pid)
    }

    /// The most memory the agent has held (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Result<u64> {
        let pid = self.child.as_ref().context("agent stopped")?.id();
        status_kib(pid, "VmHWM")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("agent already stopped")?;
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                // Let the output threads read the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        bail!("agent did not exit within 15 s of SIGTERM")
    }
}

/// Resident memory (VmRSS) of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// A memory figure of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, sig) };
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The agent removes its socket when it exits; a killed one leaves it for the next
        // agent to replace, so the guard must not remove that one's socket.
        if self.child.is_some() {
            let _ = std::fs::remove_file(&self.socket);
        }
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.keep_pins {
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
        if !self.keep_state {
            remove_state(&self.state_dir);
        }
    }
}
