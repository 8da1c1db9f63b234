//! Debian's nginx, unpacked by `cargo xtask setup` (`PORTCULLIS_NGINX`), run in a test's
//! namespace: the reverse proxy of the login benchmark, and the web server IP lists are
//! fetched from (real ETag, Last-Modified and 304 answers).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

pub fn binary() -> Result<PathBuf> {
    let path = std::env::var_os("PORTCULLIS_NGINX")
        .map(PathBuf::from)
        .context("PORTCULLIS_NGINX is not set (`cargo xtask test` and `bench` set it)")?;
    if !path.exists() {
        bail!("{} is missing; run `cargo xtask setup`", path.display());
    }
    Ok(path)
}

/// A running nginx with its own prefix directory; stopped on drop.
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx in namespace `ns` with the configuration `conf` writes for a prefix
    /// directory (`daemon off`, its pid, logs and temp paths in that directory).
    pub fn start(ns: &str, conf: impl FnOnce(&Path) -> String) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let prefix = dir.path();
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf(prefix))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(binary()?)
            .arg("-p")
            .arg(prefix)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nginx")?;
        Ok(Self { child, dir })
    }

    /// nginx serving the files of `root` on `listen` (e.g. 127.0.0.1:8081), logging each
    /// request's path and status to `access_log`.
    pub fn serve_files(ns: &str, listen: &str, root: &Path) -> Result<Self> {
        let root = root.display().to_string();
        let nginx = Self::start(ns, |prefix| {
            let p = prefix.display();
            format!(
                "daemon off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n\
                 log_format brief '$request_uri $status';\n\
                 access_log {p}/access.log brief;\n\
                 client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fastcgi;\n\
                 uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n\
                 server {{ listen {listen}; root {root}; }}\n}}\n"
            )
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !nginx.dir.path().join("nginx.pid").exists() {
            if Instant::now() > deadline {
                bail!("nginx did not start on {listen}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines of the access log (`serve_files`: "PATH STATUS").
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers before it exits.
        // SAFETY: signalling a child we spawned.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
