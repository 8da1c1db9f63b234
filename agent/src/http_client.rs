//! What the agent's outgoing HTTP requests (the CrowdSec Local API, list URLs) share.

/// A transport error's text with its causes, for logs and `status`; reqwest's own message
/// is only the outermost ("error sending request"). URLs in it carry no secret: keys travel
/// in headers.
pub fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
