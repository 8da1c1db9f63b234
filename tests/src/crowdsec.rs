//! A real CrowdSec Local API for the tests: Debian's crowdsec, unpacked by `cargo xtask
//! setup` (`PORTCULLIS_CROWDSEC` names the directory), run as `crowdsec -no-cs` (the Local
//! API alone: no log acquisition, no Central API) inside a test's network namespace, with
//! a configuration and database of its own in a temporary directory. `cscli` runs in the
//! same namespace against the same configuration. The process is killed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Where `cargo xtask setup` unpacked Debian's crowdsec package.
pub fn root() -> PathBuf {
    std::env::var_os("PORTCULLIS_CROWDSEC")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/portcullis/crowdsec")
        })
}

pub struct LocalApi {
    dir: tempfile::TempDir,
    ns: String,
    /// `http://ADDR:PORT`, as agents in its namespace reach it (`127.0.0.1` for a Local API
    /// listening on every address).
    pub url: String,
    child: Option<Child>,
}

/// Runs of a `cscli` command the database's lock refused.
const CSCLI_TRIES: u32 = 5;

impl LocalApi {
    /// Starts a Local API listening on `addr:port` in namespace `ns` (`0.0.0.0`: every
    /// address), with one machine for `cscli` already registered, and waits until it
    /// answers.
    pub fn start(ns: &str, addr: &str, port: u16) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        for sub in ["data", "hub", "notifications"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        std::fs::write(d.join("hub/.index.json"), "{}")?;
        std::fs::write(d.join("acquis.yaml"), "")?;
        std::fs::write(d.join("simulation.yaml"), "simulation: off\n")?;
        // As Debian's default profile: an alert without decisions of its own gets a 4 h
        // ban of its source; alerts that carry decisions (as Portcullis posts) keep them.
        std::fs::write(
            d.join("profiles.yaml"),
            "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && Alert.GetScope() == \"Ip\"\ndecisions:\n - type: ban\n   duration: 4h\non_success: break\n",
        )?;
        let config = format!(
            "common:
  daemonize: false
  log_media: stdout
  log_level: info
  working_dir: {d}
config_paths:
  config_dir: {d}/
  data_dir: {d}/data/
  simulation_path: {d}/simulation.yaml
  hub_dir: {d}/hub/
  index_path: {d}/hub/.index.json
  notification_dir: {d}/notifications/
  plugin_dir: {root}/usr/lib/crowdsec/plugins/
crowdsec_service:
  acquisition_path: {d}/acquis.yaml
cscli:
  output: raw
db_config:
  log_level: info
  type: sqlite
  db_path: {d}/data/crowdsec.db
  use_wal: true
api:
  client:
    insecure_skip_verify: false
    credentials_path: {d}/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: {addr}:{port}
    profiles_path: {d}/profiles.yaml
prometheus:
  enabled: false
",
            d = d.display(),
            root = root().display(),
        );
        std::fs::write(d.join("config.yaml"), config)?;
        let local = if addr == "0.0.0.0" { "127.0.0.1" } else { addr };
        let mut api = Self {
            url: format!("http://{local}:{port}"),
            ns: ns.to_string(),
            dir,
            child: None,
        };
        let credentials = api.dir.path().join("local_api_credentials.yaml");
        api.cscli(&[
            "machines",
            "add",
            "cscli",
            "--auto",
            "-f",
            &credentials.display().to_string(),
            "--url",
            &api.url.clone(),
        ])?;
        api.run()?;
        Ok(api)
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// Starts the process and waits until it accepts connections.
    fn run(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join("crowdsec.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(root().join("usr/bin/crowdsec"))
            .arg("-c")
            .arg(self.config())
            .arg("-no-cs")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting crowdsec (run `cargo xtask setup`)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.log().contains("CrowdSec Local API listening") {
                // Listening is logged just before the socket is served.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("crowdsec exited ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the Local API did not start within 20 s:\n{}", self.log())
    }

    /// What crowdsec logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("crowdsec.log")).unwrap_or_default()
    }

    /// Runs `cscli` with this configuration in the namespace; its stdout, or the error with
    /// its stderr. A command the Local API refused because its SQLite database was busy
    /// with its own writes ("database is locked", which changed nothing) is run again, a
    /// few times.
    pub fn cscli(&self, args: &[&str]) -> Result<String> {
        let mut tries = 0;
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.ns])
                .arg(root().join("usr/bin/cscli"))
                .arg("-c")
                .arg(self.config())
                .args(args)
                .output()
                .context("running cscli")?;
            if out.status.success() {
                return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            let stderr = String::from_utf8_lossy(&out.stderr);
            tries += 1;
            if tries < CSCLI_TRIES && stderr.contains("database is locked") {
                std::thread::sleep(std::time::Duration::from_millis(200));
                continue;
            }
            bail!("cscli {}: {}", args.join(" "), stderr.trim());
        }
    }

    /// Registers a bouncer and writes its API key into a file in the configuration's
    /// directory: the file's path.
    pub fn bouncer_key_file(&self, name: &str) -> Result<PathBuf> {
        let key = self.cscli(&["bouncers", "add", name, "-o", "raw"])?;
        let key = key.trim();
        if key.is_empty() {
            bail!("cscli bouncers add {name} printed no key");
        }
        let path = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&path, format!("{key}\n"))?;
        Ok(path)
    }

    /// Registers a machine and returns the credentials file `cscli` writes for it (`url`,
    /// `login`, `password`), as an agent that shares its bans takes it.
    pub fn machine_file(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.path().join(format!("{name}.machine.yaml"));
        self.cscli(&[
            "machines",
            "add",
            name,
            "--auto",
            "-f",
            &path.display().to_string(),
            "--url",
            &self.url,
        ])?;
        Ok(path)
    }

    /// Stops the Local API (its database stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same database.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.run()
    }
}

impl Drop for LocalApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Debian's crowdsec-firewall-bouncer (nftables mode), unpacked by `cargo xtask setup`
/// (`PORTCULLIS_CROWDSEC_BOUNCER` names the directory), following a Local API in namespace
/// `ns`, where it installs its nftables tables. Killed on drop, with its tables.
pub struct FirewallBouncer {
    dir: tempfile::TempDir,
    ns: String,
    child: Option<Child>,
}

/// Where `cargo xtask setup` unpacked Debian's crowdsec-firewall-bouncer package.
pub fn bouncer_root() -> PathBuf {
    std::env::var_os("PORTCULLIS_CROWDSEC_BOUNCER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cache/portcullis/crowdsec-firewall-bouncer")
        })
}

impl FirewallBouncer {
    /// Starts the bouncer against the Local API at `url` with bouncer key `key`, pulling
    /// every `interval_secs`.
    pub fn start(ns: &str, url: &str, key: &str, interval_secs: u32) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = format!(
            "mode: nftables
pid_dir: {d}
update_frequency: {interval_secs}s
daemonize: false
log_mode: stdout
log_level: info
api_url: {url}/
api_key: {key}
disable_ipv6: false
deny_action: DROP
deny_log: false
supported_decisions_types:
  - ban
blacklists_ipv4: crowdsec-blacklists
blacklists_ipv6: crowdsec6-blacklists
nftables:
  ipv4:
    enabled: true
    set-only: false
    table: crowdsec
    chain: crowdsec-chain
  ipv6:
    enabled: true
    set-only: false
    table: crowdsec6
    chain: crowdsec6-chain
prometheus:
  enabled: false
",
            d = dir.path().display()
        );
        let path = dir.path().join("bouncer.yaml");
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(dir.path().join("bouncer.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bouncer_root().join("usr/bin/crowdsec-firewall-bouncer"))
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting crowdsec-firewall-bouncer (run `cargo xtask setup`)")?;
        let bouncer = Self {
            dir,
            ns: ns.to_string(),
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while bouncer.set_size().is_none() {
            if Instant::now() > deadline {
                bail!(
                    "the bouncer made no nftables set within 20 s:\n{}",
                    bouncer.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(bouncer)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bouncer.log")).unwrap_or_default()
    }

    /// Whether its IPv4 set holds `addr`.
    pub fn holds(&self, addr: std::net::Ipv4Addr) -> bool {
        Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "get", "element", "ip", "crowdsec",
            ])
            .arg("crowdsec-blacklists")
            .arg(format!("{{ {addr} }}"))
            .output()
            .is_ok_and(|out| out.status.success())
    }

    /// Addresses in its IPv4 set, or `None` before it made the set.
    pub fn set_size(&self) -> Option<usize> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.ns, "nft", "-j", "list", "set", "ip", "crowdsec",
            ])
            .arg("crowdsec-blacklists")
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let set = json["nftables"]
            .as_array()?
            .iter()
            .find_map(|item| item.get("set"))?;
        Some(set["elem"].as_array().map_or(0, Vec::len))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for FirewallBouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for table in ["ip crowdsec", "ip6 crowdsec6"] {
            let mut args = vec!["netns", "exec", &self.ns, "nft", "delete", "table"];
            args.extend(table.split(' '));
            let _ = Command::new("ip").args(&args).output();
        }
    }
}
