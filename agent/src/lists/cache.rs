//! The last good copy of each list URL, in `STATE_DIR/lists/`: the body as fetched and its
//! validators (ETag, Last-Modified) for the next conditional request. A restarted agent
//! enforces it before its first fetch, and a node that cannot reach the list's server keeps
//! it.
//!
//! A URL may hold credentials, so a copy's file is named by the URL's SHA-256, holds the
//! URL only as shown (`ListUrl::shown`), and is written 0600 in a 0700 directory without
//! following links.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, Read, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::policy::ListUrl;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cached {
    /// The URL as shown, for a person reading the directory; the file name is the key.
    #[serde(default)]
    pub list: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub fetched_unix: u64,
    pub text: String,
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("lists")
}

/// The copy's file name: the whole URL's SHA-256, so no part of it shows.
fn file_name(url: &ListUrl) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, url.to_fetch().as_str().as_bytes());
    let hex: String = digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{hex}.json")
}

/// The name earlier versions gave a copy: the URL spelled out, credentials included.
/// Such a copy is read once, written under `file_name` and removed.
fn legacy_file_name(url: &ListUrl) -> String {
    let mut name = String::new();
    for byte in url.to_fetch().as_str().bytes() {
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
pub fn load(state_dir: &Path, url: &ListUrl) -> Option<Cached> {
    let dir = dir(state_dir);
    if let Some(cached) = read(&dir.join(file_name(url))) {
        return Some(cached);
    }
    let legacy = dir.join(legacy_file_name(url));
    let cached = read(&legacy)?;
    let moved = Cached {
        list: url.shown(),
        ..cached
    };
    match save(state_dir, url, &moved) {
        Ok(()) => {
            let _ = fs::remove_file(&legacy);
        }
        Err(e) => {
            tracing::warn!(list = %url, error = %e, "a cached list copy was not moved to its new name")
        }
    }
    Some(moved)
}

fn read(path: &Path) -> Option<Cached> {
    let mut text = String::new();
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    match serde_json::from_str::<Cached>(&text) {
        Ok(cached) => Some(cached),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "a cached list copy is not readable; it is ignored");
            None
        }
    }
}

/// Replaces the cached copy of `url`: written aside (a fresh file, 0600, never through a
/// link left at that name), then renamed over the old.
pub fn save(state_dir: &Path, url: &ListUrl, cached: &Cached) -> io::Result<()> {
    let dir = dir(state_dir);
    private_dir(&dir)?;
    let path = dir.join(file_name(url));
    let aside = path.with_extension("json.new");
    // A leftover (or a link someone left) goes; `create_new` then refuses anything there.
    match fs::remove_file(&aside) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&aside)?;
    file.write_all(&serde_json::to_vec(cached)?)?;
    file.sync_all()?;
    fs::rename(&aside, &path)
}

/// `dir`, made 0700 (created so, or tightened): a real directory, not a link to one.
fn private_dir(dir: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {
            if meta.permissions().mode() & 0o777 != 0o700 {
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            }
        }
        Ok(_) => {
            return Err(io::Error::other(format!(
                "{} is not a directory (a link?); list copies are not written through it",
                dir.display()
            )));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn url(text: &str) -> ListUrl {
        ListUrl::parse(text).unwrap()
    }

    fn copy(list: &ListUrl) -> Cached {
        Cached {
            list: list.shown(),
            etag: Some("\"abc\"".to_string()),
            last_modified: None,
            fetched_unix: 1_700_000_000,
            text: "1.2.3.0/24\n".to_string(),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_copy_is_kept_per_url() {
        let state = tempfile::tempdir().unwrap();
        let a = url("https://lists.example/drop.txt?v=1");
        let b = url("https://lists.example/drop.txt?v=2");
        save(state.path(), &a, &copy(&a)).unwrap();
        let other = Cached {
            text: "5.6.7.0/24\n".to_string(),
            ..copy(&b)
        };
        save(state.path(), &b, &other).unwrap();
        assert_eq!(load(state.path(), &a), Some(copy(&a)));
        assert_eq!(load(state.path(), &b), Some(other));
        assert_eq!(
            load(state.path(), &url("https://lists.example/other.txt")),
            None
        );
    }

    #[test]
    fn credentials_stay_out_of_names_and_the_copy_is_private() {
        let state = tempfile::tempdir().unwrap();
        let list = url("https://user:s3cr3t@feeds.example/drop.txt?key=k3y");
        save(state.path(), &list, &copy(&list)).unwrap();
        let dir = dir(state.path());
        let names = names(&dir);
        assert_eq!(names.len(), 1);
        assert!(
            !names[0].contains("s3cr3t") && !names[0].contains("k3y"),
            "{names:?}"
        );
        let written = fs::read_to_string(dir.join(&names[0])).unwrap();
        assert!(
            !written.contains("s3cr3t") && !written.contains("k3y"),
            "{written}"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(&names[0])), 0o600);
    }

    #[test]
    fn a_link_at_the_aside_name_is_replaced_not_followed() {
        let state = tempfile::tempdir().unwrap();
        let list = url("https://feeds.example/drop.txt");
        let victim = state.path().join("victim");
        fs::write(&victim, "untouched").unwrap();
        let dir = dir(state.path());
        fs::create_dir_all(&dir).unwrap();
        symlink(
            &victim,
            dir.join(file_name(&list)).with_extension("json.new"),
        )
        .unwrap();
        save(state.path(), &list, &copy(&list)).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(load(state.path(), &list), Some(copy(&list)));
    }

    #[test]
    fn a_linked_directory_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        symlink(elsewhere.path(), dir(state.path())).unwrap();
        let list = url("https://feeds.example/drop.txt");
        let refused = save(state.path(), &list, &copy(&list)).unwrap_err();
        assert!(
            refused.to_string().contains("is not a directory"),
            "{refused}"
        );
        assert!(names(elsewhere.path()).is_empty());
    }

    #[test]
    fn a_copy_under_the_old_name_is_read_once_and_moved() {
        let state = tempfile::tempdir().unwrap();
        let list = url("https://user:s3cr3t@feeds.example/drop.txt");
        let dir = dir(state.path());
        fs::create_dir_all(&dir).unwrap();
        // As earlier versions wrote it.
        let old = serde_json::json!({
            "url": list.to_fetch().as_str(),
            "etag": "\"abc\"",
            "last_modified": null,
            "fetched_unix": 1_700_000_000,
            "text": "1.2.3.0/24\n",
        });
        fs::write(dir.join(legacy_file_name(&list)), old.to_string()).unwrap();
        assert_eq!(load(state.path(), &list), Some(copy(&list)));
        assert_eq!(names(&dir), vec![file_name(&list)]);
        assert_eq!(load(state.path(), &list), Some(copy(&list)));
    }
}
