//! The control socket: a Unix stream socket, root only, one JSON request line per
//! connection and one JSON response line back (or a stream of event lines for `events`).

pub mod client;
pub mod protocol;
pub mod server;

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/portcullis/control.sock";
