//! The CrowdSec Local API as a bouncer sees it: the decision stream
//! (`GET /v1/decisions/stream`), authenticated by the bouncer's API key.

use std::time::Duration;

use serde::Deserialize;

use crate::http_client::describe;

/// How long one request to the Local API may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LapiError {
    #[error("{url} is not a Local API URL: {why}")]
    Url { url: String, why: String },
    #[error("the Local API did not answer: {0}")]
    Transport(String),
    #[error("the Local API answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the Local API's answer is not a decision stream: {0}")]
    Body(#[from] serde_json::Error),
}

/// One decision as the stream gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Decision {
    pub id: i64,
    #[serde(default)]
    pub origin: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub scope: String,
    #[serde(default)]
    pub value: String,
    /// Time left, as Go prints a duration (`3h59m58.51s`); negative once ended.
    #[serde(default)]
    pub duration: String,
    #[serde(default)]
    pub scenario: String,
}

/// One answer of the stream: decisions made and decisions deleted (or ended) since the
/// last pull; with `startup`, every decision in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Stream {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub new: Vec<Decision>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub deleted: Vec<Decision>,
}

/// The Local API writes `null` for an empty list.
fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Decision>, D::Error> {
    Ok(Option::<Vec<Decision>>::deserialize(d)?.unwrap_or_default())
}

pub struct Lapi {
    http: reqwest::Client,
    stream_url: String,
    /// The bouncer's API key: sent in a header, never logged.
    key: String,
}

impl Lapi {
    pub fn new(url: &str, key: String) -> Result<Self, LapiError> {
        let bad = |why: &str| LapiError::Url {
            url: url.to_string(),
            why: why.to_string(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https"));
        }
        Ok(Self {
            http: client()?,
            stream_url: format!("{}/v1/decisions/stream", url.trim_end_matches('/')),
            key,
        })
    }

    /// The decisions since the last pull, or with `startup` all of them.
    pub async fn pull(&self, startup: bool) -> Result<Stream, LapiError> {
        let response = self
            .http
            .get(&self.stream_url)
            .query(&[("startup", if startup { "true" } else { "false" })])
            .header("X-Api-Key", &self.key)
            .send()
            .await
            .map_err(|e| LapiError::Transport(describe(e)))?;
        answer(response).await
    }
}

/// The HTTP client every request to the Local API goes through.
pub(super) fn client() -> Result<reqwest::Client, LapiError> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| LapiError::Transport(e.to_string()))
}

/// The JSON body of a successful answer, or the status and the start of the body.
pub(super) async fn answer<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, LapiError> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| LapiError::Transport(describe(e)))?;
    if !status.is_success() {
        let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(LapiError::Status {
            status: status.as_u16(),
            body,
        });
    }
    Ok(serde_json::from_slice(&body)?)
}

/// A Go duration (`time.Duration.String()`: `1h2m3.5s`, `250ms`, `-1.5s`), as the Local API
/// writes a decision's time left. `None` for one that is not; a negative one is zero.
pub fn go_duration(text: &str) -> Option<Duration> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    if negative {
        return Some(Duration::ZERO);
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_as_the_local_api_writes_them() {
        let secs = |s: f64| Some(Duration::from_secs_f64(s));
        assert_eq!(
            go_duration("3h59m58.5s"),
            secs(3.0 * 3600.0 + 59.0 * 60.0 + 58.5)
        );
        assert_eq!(go_duration("1m"), secs(60.0));
        assert_eq!(go_duration("250ms"), secs(0.25));
        assert_eq!(go_duration("1.5µs"), secs(1.5e-6));
        assert_eq!(go_duration("0s"), Some(Duration::ZERO));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration("-1.5s"), Some(Duration::ZERO), "ended");
        for bad in ["", "1", "1x", "h", "1h-2m", "forever"] {
            assert_eq!(go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn streams_parse_with_null_lists() {
        let stream: Stream = serde_json::from_str(
            r#"{"deleted":null,"new":[{"duration":"3h59m59.1s","id":7,"origin":"cscli","scenario":"manual 'ban' from 'x'","scope":"Ip","type":"ban","value":"192.0.2.7"}]}"#,
        )
        .unwrap();
        assert!(stream.deleted.is_empty());
        assert_eq!(stream.new[0].id, 7);
        assert_eq!(stream.new[0].kind, "ban");
        let empty: Stream = serde_json::from_str(r#"{"new":null,"deleted":null}"#).unwrap();
        assert_eq!(empty, Stream::default());
    }

    #[test]
    fn only_http_urls_are_taken() {
        assert!(Lapi::new("http://127.0.0.1:8080/", "k".into()).is_ok());
        for bad in ["127.0.0.1:8080", "ftp://lapi", "not a url"] {
            assert!(
                matches!(Lapi::new(bad, "k".into()), Err(LapiError::Url { .. })),
                "{bad}"
            );
        }
    }
}
