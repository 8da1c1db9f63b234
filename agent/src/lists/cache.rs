//! The last good copy of each list URL, in `STATE_DIR/lists/`: the body as fetched and its
//! validators (ETag, Last-Modified) for the next conditional request. A restarted agent
//! enforces it before its first fetch, and a node that cannot reach the list's server keeps
//! it.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cached {
    pub url: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub fetched_unix: u64,
    pub text: String,
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("lists")
}

/// A file name that names one URL and no other: bytes outside `[A-Za-z0-9.-]` as `_XX`.
fn file_name(url: &str) -> String {
    let mut name = String::with_capacity(url.len() + 5);
    for byte in url.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'.' || byte == b'-' {
            name.push(byte as char);
        } else {
            name.push_str(&format!("_{byte:02x}"));
        }
    }
    name.push_str(".json");
    name
}

/// The cached copy of `url`, if there is a readable one.
pub fn load(state_dir: &Path, url: &str) -> Option<Cached> {
    let path = dir(state_dir).join(file_name(url));
    let text = std::fs::read_to_string(&path).ok()?;
    match serde_json::from_str::<Cached>(&text) {
        Ok(cached) if cached.url == url => Some(cached),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "a cached list copy is not readable; it is ignored");
            None
        }
    }
}

/// Replaces the cached copy of `cached.url` (written aside, then renamed over the old).
pub fn save(state_dir: &Path, cached: &Cached) -> io::Result<()> {
    let dir = dir(state_dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(file_name(&cached.url));
    let aside = path.with_extension("json.new");
    std::fs::write(&aside, serde_json::to_vec(cached)?)?;
    std::fs::rename(&aside, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_kept_per_url() {
        let dir =
            std::env::temp_dir().join(format!("portcullis-list-cache-{}", std::process::id()));
        let a = Cached {
            url: "https://lists.example/drop.txt?v=1".to_string(),
            etag: Some("\"abc\"".to_string()),
            last_modified: None,
            fetched_unix: 1_700_000_000,
            text: "1.2.3.0/24\n".to_string(),
        };
        let b = Cached {
            url: "https://lists.example/drop.txt?v=2".to_string(),
            ..a.clone()
        };
        save(&dir, &a).unwrap();
        save(&dir, &b).unwrap();
        assert_eq!(load(&dir, &a.url), Some(a.clone()));
        assert_eq!(load(&dir, &b.url), Some(b));
        assert_eq!(load(&dir, "https://lists.example/other.txt"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_names_are_plain_and_distinct() {
        assert_eq!(
            file_name("https://a.example/x"),
            "https_3a_2f_2fa.example_2fx.json"
        );
        assert_ne!(file_name("http://a/b_c"), file_name("http://a/b/c"));
    }
}
