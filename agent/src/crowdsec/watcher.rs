//! The Local API as a watcher (a "machine") sees it: a login with the machine's
//! credentials (`cscli machines add`), then alerts that carry ban decisions. This is how a
//! node's own bans reach every other node: each pulls them back as decisions.

use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::json;

use super::lapi::{LapiError, client};
use crate::http_client::describe;

/// A token is renewed this long before the Local API says it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// Without an expiry the Local API understands, a token is used this long.
const TOKEN_DEFAULT_LIFE: Duration = Duration::from_secs(30 * 60);

/// The machine's credentials, from the file `cscli machines add NAME -f FILE` writes (`url`,
/// `login`, `password`; `--crowdsec-url`, if given, wins over its `url`). The password is
/// never logged.
#[derive(Clone)]
pub struct Credentials {
    pub url: Option<String>,
    pub login: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("url", &self.url)
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading the CrowdSec machine credentials {}",
                path.display()
            )
        })?;
        #[derive(Deserialize)]
        struct File {
            url: Option<String>,
            login: Option<String>,
            password: Option<String>,
        }
        let file: File = serde_saphyr::from_str(&text).with_context(|| {
            format!(
                "{}: expected the YAML `cscli machines add NAME -f FILE` writes (url, login, password)",
                path.display()
            )
        })?;
        match (file.login, file.password) {
            (Some(login), Some(password)) if !login.is_empty() && !password.is_empty() => {
                Ok(Self {
                    url: file.url.filter(|url| !url.is_empty()),
                    login,
                    password,
                })
            }
            _ => bail!("{}: needs a login and a password", path.display()),
        }
    }
}

/// The scenario of a decision node `node` posts for a ban of `rule`: the node is named so
/// that it can tell its own decisions when they come back (nodes may share one machine's
/// credentials, as pods of a DaemonSet sharing a Secret do).
pub fn scenario(node: &str, rule: &str) -> String {
    format!("portcullis/{rule} ({node})")
}

/// Whether `scenario` is one node `node` posted.
pub fn is_own(node: &str, scenario: &str) -> bool {
    scenario.starts_with("portcullis/") && scenario.ends_with(&format!(" ({node})"))
}

/// A ban this node made, to share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedBan {
    pub net: IpNet,
    pub rule: String,
    /// Time it has left.
    pub left: Duration,
}

pub struct Watcher {
    http: reqwest::Client,
    base: String,
    credentials: Credentials,
    /// This node's name, in the scenario of what it posts.
    node: String,
    token: Option<(String, Instant)>,
}

impl Watcher {
    pub fn new(url: &str, credentials: Credentials, node: String) -> Result<Self, LapiError> {
        Ok(Self {
            http: client()?,
            base: url.trim_end_matches('/').to_string(),
            credentials,
            node,
            token: None,
        })
    }

    /// Whether `decision` is one this node posted.
    pub fn is_own(&self, decision: &super::lapi::Decision) -> bool {
        is_own(&self.node, &decision.scenario)
    }

    async fn token(&mut self) -> Result<String, LapiError> {
        if let Some((token, until)) = &self.token
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        #[derive(Deserialize)]
        struct Login {
            token: String,
            #[serde(default)]
            expire: String,
        }
        let body = json!({
            "machine_id": self.credentials.login,
            "password": self.credentials.password,
            "scenarios": [],
        });
        let response = self
            .http
            .post(format!("{}/v1/watchers/login", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| LapiError::Transport(describe(e)))?;
        let login: Login = super::lapi::answer(response).await?;
        let life = humantime::parse_rfc3339_weak(login.expire.trim_end_matches('Z'))
            .ok()
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or(TOKEN_DEFAULT_LIFE);
        let until = Instant::now() + life.saturating_sub(TOKEN_MARGIN);
        self.token = Some((login.token.clone(), until));
        Ok(login.token)
    }

    /// Posts one alert per ban, each with its ban decision. A refused token is renewed once.
    pub async fn post(&mut self, bans: &[SharedBan]) -> Result<(), LapiError> {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let alerts: Vec<_> = bans.iter().map(|ban| self.alert(ban, &now)).collect();
        for attempt in 0..2 {
            let token = self.token().await?;
            let response = self
                .http
                .post(format!("{}/v1/alerts", self.base))
                .bearer_auth(&token)
                .json(&alerts)
                .send()
                .await
                .map_err(|e| LapiError::Transport(describe(e)))?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                self.token = None;
                continue;
            }
            let _ids: Vec<String> = super::lapi::answer(response).await?;
            return Ok(());
        }
        unreachable!("the second attempt returns")
    }

    fn alert(&self, ban: &SharedBan, now: &str) -> serde_json::Value {
        let (scope, value) = match ban.net {
            IpNet::V4(n) if n.prefix_len() == 32 => ("Ip", n.addr().to_string()),
            IpNet::V6(n) if n.prefix_len() == 128 => ("Ip", n.addr().to_string()),
            net => ("Range", net.to_string()),
        };
        let seconds = ban.left.as_secs().max(1);
        let scenario = scenario(&self.node, &ban.rule);
        json!({
            "scenario": scenario,
            "scenario_hash": "",
            "scenario_version": "",
            "message": format!(
                "{}: Portcullis rule {} banned {} for {seconds} s",
                self.node, ban.rule, ban.net
            ),
            "events_count": 1,
            "events": [],
            "start_at": now,
            "stop_at": now,
            "capacity": 0,
            "leakspeed": "0",
            "simulated": false,
            "remediation": true,
            "source": {"scope": scope, "value": value},
            "decisions": [{
                "origin": agent_common::decision::Origin::Portcullis.name(),
                "type": "ban",
                "scope": scope,
                "value": value,
                "duration": format!("{seconds}s"),
                "scenario": scenario,
            }],
        })
    }
}
