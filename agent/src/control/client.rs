//! The CLI's side of the control socket.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use super::protocol::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent is running: nothing listens on {path}")]
    NoAgent { path: PathBuf },
    #[error("permission denied on {path}: the control socket is for root only")]
    PermissionDenied { path: PathBuf },
    #[error("talking to the agent on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent sent something that is not a response: {source}")]
    Protocol {
        #[source]
        source: serde_json::Error,
    },
}

fn connect(path: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ClientError::NoAgent {
                path: path.to_path_buf(),
            }
        }
        std::io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
            path: path.to_path_buf(),
        },
        _ => ClientError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

fn send(stream: &mut UnixStream, path: &Path, request: &Request) -> Result<(), ClientError> {
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    stream.write_all(&line).map_err(|source| ClientError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Sends one request and waits for its response.
pub fn call(path: &Path, request: &Request) -> Result<Response, ClientError> {
    let mut stream = connect(path)?;
    // The agent may answer and close before reading a word (a refused or busy client): the
    // send then fails, and its answer is still there to read.
    let sent = send(&mut stream, path, request);
    let mut line = String::new();
    let read = BufReader::new(&stream).read_line(&mut line);
    match (sent, read) {
        (_, Ok(n)) if n > 0 => {
            serde_json::from_str(&line).map_err(|source| ClientError::Protocol { source })
        }
        (Err(e), _) => Err(e),
        (Ok(()), Err(source)) => Err(ClientError::Io {
            path: path.to_path_buf(),
            source,
        }),
        (Ok(()), Ok(_)) => Err(ClientError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the agent closed the connection without an answer",
            ),
        }),
    }
}

/// Streams event lines to `out` until the agent goes away. The first line may be an
/// error response (a refused connection).
pub fn follow_events(path: &Path, mut out: impl std::io::Write) -> Result<(), ClientError> {
    let mut stream = connect(path)?;
    // As in `call`: a refusal may come back before the request could be sent.
    let mut sent = send(&mut stream, path, &Request::Events);
    for line in BufReader::new(&stream).lines() {
        let line = line.map_err(|source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        sent = Ok(());
        if let Ok(response) = serde_json::from_str::<Response>(&line)
            && !response.ok
        {
            let _ = writeln!(out, "{line}");
            return Ok(());
        }
        if writeln!(out, "{line}").is_err() {
            return Ok(());
        }
    }
    sent
}
