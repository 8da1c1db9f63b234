//! The `http:` section, validated: routes judged on the target of plaintext HTTP/1.x
//! requests, and rules on the status of the server's responses.

use agent_common::{Mode, http::Method};

use super::{Ban, Limit};

/// `http.strict` when the file does not say: evasive requests are refused.
pub const DEFAULT_STRICT: Option<Mode> = Some(Mode::Enforce);
/// The rule evasive requests are counted and reported under (`http.strict`); a reserved
/// name, switched with `portcullis mode http-evasion shadow` like any rule.
pub const HTTP_EVASION: &str = "http-evasion";
/// Response rules at most.
pub const MAX_RESPONSE_RULES: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct Http {
    /// TCP destination ports that carry plaintext HTTP/1.x; responses leave from them.
    pub ports: Vec<u16>,
    /// Requests shaped to slip past the route lookup are judged `http_evasion` in this
    /// mode (`strict: true` enforce, `strict: shadow` shadow); `None` (`strict: false`):
    /// they are judged by their route as read.
    pub strict: Option<Mode>,
    pub routes: Vec<Route>,
    pub responses: Vec<ResponseRule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    /// Empty: every method.
    pub methods: Vec<Method>,
    /// Starts with `/`; matches itself and what follows it after `/`, `?` or the end of
    /// the target (a path-segment prefix, as NGINX's prefix locations).
    pub path: String,
    pub action: RouteAction,
    /// What a request over the route's rate gets.
    pub over_limit: OverLimit,
    pub mode: Mode,
}

/// What a request over its route's rate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverLimit {
    /// Its connection is reset: the client sees a reset at once, nothing is left waiting.
    #[default]
    Reset,
    /// Its segment is dropped: the client's TCP sends it again, until the route has a
    /// token (the request is then served, late) or the client gives up; the connection
    /// stays open meanwhile. Like NGINX's `limit_req` without `nodelay`.
    Drop,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteAction {
    /// Refused for every source not on the allow list.
    Deny,
    /// A token bucket per source group, as for `rate_limits`.
    Limit(Limit),
}

/// Counts the server's responses with one of `statuses` per client source group; past the
/// ban's `after` within its `within`, the group is banned.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseRule {
    pub name: String,
    pub statuses: Vec<u16>,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub ban: Ban,
    pub mode: Mode,
}
