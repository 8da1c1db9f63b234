//! What the agent's outgoing HTTP requests (the CrowdSec Local API, list URLs) share.

/// A transport error's text with its causes, for logs and `status`; reqwest's own message
/// is only the outermost ("error sending request"). Without the URL: a list's may hold
/// credentials, and the caller knows which request it was.
pub fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
