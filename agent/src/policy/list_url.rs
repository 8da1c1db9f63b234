//! A list's URL. Feeds authenticate in the URL (`https://user:TOKEN@host/...`, or a key in
//! the query), so a `ListUrl` shows itself without credentials and query: metrics, logs,
//! `status`, error text and the cache's file names only ever hold the shown form, and only
//! the fetch reads the whole URL.

use std::fmt;

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListUrl(reqwest::Url);

/// What stands in for credentials and query values.
const HIDDEN: &str = "***";

impl ListUrl {
    /// An http(s) URL; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let url = reqwest::Url::parse(text).ok()?;
        matches!(url.scheme(), "http" | "https").then_some(Self(url))
    }

    /// The whole URL, credentials included: for the request only.
    pub fn to_fetch(&self) -> &reqwest::Url {
        &self.0
    }

    /// The URL with its user information and query replaced by `***`. The fragment stays:
    /// it is never sent, and it tells apart lists whose URLs differ only in what is hidden.
    pub fn shown(&self) -> String {
        let url = &self.0;
        let mut shown = format!("{}://", url.scheme());
        if !url.username().is_empty() || url.password().is_some() {
            shown.push_str(HIDDEN);
            shown.push('@');
        }
        shown.push_str(url.host_str().unwrap_or_default());
        if let Some(port) = url.port() {
            shown.push_str(&format!(":{port}"));
        }
        shown.push_str(url.path());
        if url.query().is_some() {
            shown.push('?');
            shown.push_str(HIDDEN);
        }
        if let Some(fragment) = url.fragment() {
            shown.push('#');
            shown.push_str(fragment);
        }
        shown
    }
}

impl fmt::Display for ListUrl {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

/// As `Display`: a policy printed for debugging must not leak the credentials either.
impl fmt::Debug for ListUrl {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "ListUrl({})", self.shown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> String {
        ListUrl::parse(text).unwrap().to_string()
    }

    #[test]
    fn credentials_and_query_are_never_shown() {
        let url = "https://user:s3cr3t-TOKEN@feeds.example:8443/drop.txt?key=k3y&level=1";
        let list = ListUrl::parse(url).unwrap();
        assert_eq!(
            list.to_string(),
            "https://***@feeds.example:8443/drop.txt?***"
        );
        assert_eq!(
            format!("{list:?}"),
            "ListUrl(https://***@feeds.example:8443/drop.txt?***)"
        );
        assert_eq!(list.to_fetch().as_str(), url);
        assert_eq!(
            shown("https://TOKEN@feeds.example/x"),
            "https://***@feeds.example/x"
        );
        assert_eq!(
            shown("https://:TOKEN@feeds.example/x"),
            "https://***@feeds.example/x"
        );
    }

    #[test]
    fn a_url_without_secrets_shows_as_written() {
        assert_eq!(
            shown("https://www.spamhaus.org/drop/drop.txt"),
            "https://www.spamhaus.org/drop/drop.txt"
        );
        assert_eq!(
            shown("http://[fd00::1]:8080/l#level1"),
            "http://[fd00::1]:8080/l#level1"
        );
    }

    #[test]
    fn only_http_and_https_are_lists() {
        assert!(ListUrl::parse("ftp://feeds.example/drop.txt").is_none());
        assert!(ListUrl::parse("https://").is_none());
        assert!(ListUrl::parse("/etc/drop.txt").is_none());
    }
}
