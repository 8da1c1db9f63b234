//! The last good copy of each list URL, in `STATE_DIR/lists/`: the body as fetched and its
//! validators (ETag, Last-Modified) for the next conditional request. A restarted agent
//! enforces it before its first fetch, and a node that cannot reach the list's server keeps
//! it. A copy's file is one line of `Meta` as JSON, then the body: written and read as a
//! stream, never whole in memory.
//!
//! A URL may hold credentials, so a copy's file is named by the URL's SHA-256, holds the
//! URL only as shown (`ListUrl::shown`), and is written 0600 in a 0700 directory without
//! following links.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::format::{EntryBound, ListCopy, Reader, Refused};
use crate::policy::ListUrl;

/// What is kept with a copy's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// The URL as shown, for a person reading the directory; the file name is the key.
    #[serde(default)]
    pub list: String,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub fetched_unix: u64,
    /// The body, in the one-JSON files earlier versions wrote; never written now.
    #[serde(default, skip_serializing)]
    pub text: Option<String>,
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

/// The validators of the cached copy of `url`, if there is a readable one.
pub fn meta(state_dir: &Path, url: &ListUrl) -> Option<Meta> {
    let dir = dir(state_dir);
    [file_name(url), legacy_file_name(url)]
        .iter()
        .find_map(|name| open(&dir.join(name)))
        .map(|(meta, _)| Meta { text: None, ..meta })
}

/// The cached copy of `url`, read under `bound`, if there is a readable one.
pub fn read(
    state_dir: &Path,
    url: &ListUrl,
    bound: EntryBound,
) -> Option<(Meta, Result<ListCopy, Refused>)> {
    let dir = dir(state_dir);
    let path = dir.join(file_name(url));
    if let Some((meta, mut body)) = open(&path) {
        return match Reader::new(bound).read_all(&mut body, |_| {}) {
            Ok(copy) => Some((meta, copy)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "a cached list copy is not readable; it is ignored");
                None
            }
        };
    }
    let legacy = dir.join(legacy_file_name(url));
    let (meta, _) = open(&legacy)?;
    let text = meta.text.clone().unwrap_or_default();
    let meta = Meta {
        list: url.shown(),
        text: None,
        ..meta
    };
    let moved = Writer::create(state_dir, url, &meta).and_then(|mut writer| {
        writer.write(text.as_bytes())?;
        writer.commit()
    });
    match moved {
        Ok(()) => {
            let _ = fs::remove_file(&legacy);
        }
        Err(e) => {
            tracing::warn!(list = %url, error = %e, "a cached list copy was not moved to its new name")
        }
    }
    let copy = super::format::parse(&text, bound);
    Some((meta, copy))
}

/// The file at `path`: its `Meta` line, and the body after it.
fn open(path: &Path) -> Option<(Meta, BufReader<File>)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let mut body = BufReader::new(file);
    let mut line = String::new();
    body.read_line(&mut line).ok()?;
    match serde_json::from_str::<Meta>(&line) {
        Ok(meta) => Some((meta, body)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "a cached list copy is not readable; it is ignored");
            None
        }
    }
}

/// A copy being written aside: a fresh file, 0600, never through a link left at that name.
/// `commit` renames it over the old copy; dropped before, it is removed.
pub struct Writer {
    file: File,
    aside: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Writer {
    pub fn create(state_dir: &Path, url: &ListUrl, meta: &Meta) -> io::Result<Self> {
        let dir = dir(state_dir);
        private_dir(&dir)?;
        let path = dir.join(file_name(url));
        let aside = path.with_extension("json.new");
        // A leftover (or a link someone left) goes; `create_new` then refuses anything there.
        match fs::remove_file(&aside) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&aside)?;
        let mut writer = Self {
            file,
            aside,
            path,
            committed: false,
        };
        let mut line = serde_json::to_vec(meta)?;
        line.push(b'\n');
        writer.write(&line)?;
        Ok(writer)
    }

    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)
    }

    pub fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        fs::rename(&self.aside, &self.path)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.aside);
        }
    }
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

    fn meta(list: &ListUrl) -> Meta {
        Meta {
            list: list.shown(),
            etag: Some("\"abc\"".to_string()),
            last_modified: None,
            fetched_unix: 1_700_000_000,
            text: None,
        }
    }

    fn save(state: &Path, list: &ListUrl, body: &str) {
        let mut writer = Writer::create(state, list, &meta(list)).unwrap();
        writer.write(body.as_bytes()).unwrap();
        writer.commit().unwrap();
    }

    /// The copy's meta and entries as text.
    fn load(state: &Path, list: &ListUrl) -> Option<(Meta, Vec<String>)> {
        let (meta, copy) = read(state, list, EntryBound::none())?;
        let nets = copy.unwrap().nets.iter().map(ToString::to_string).collect();
        Some((meta, nets))
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
        save(state.path(), &a, "1.2.3.0/24\n");
        save(state.path(), &b, "5.6.7.0/24\n");
        let a_copy = (meta(&a), vec!["1.2.3.0/24".to_string()]);
        assert_eq!(load(state.path(), &a), Some(a_copy));
        assert_eq!(load(state.path(), &b).unwrap().1, ["5.6.7.0/24"]);
        assert_eq!(super::meta(state.path(), &a), Some(meta(&a)));
        assert_eq!(
            load(state.path(), &url("https://lists.example/other.txt")),
            None
        );
    }

    #[test]
    fn a_copy_not_committed_leaves_nothing_behind() {
        let state = tempfile::tempdir().unwrap();
        let list = url("https://lists.example/drop.txt");
        save(state.path(), &list, "1.2.3.0/24\n");
        let mut writer = Writer::create(state.path(), &list, &meta(&list)).unwrap();
        writer.write(b"<html>").unwrap();
        drop(writer);
        assert_eq!(names(&dir(state.path())), [file_name(&list)]);
        assert_eq!(load(state.path(), &list).unwrap().1, ["1.2.3.0/24"]);
    }

    #[test]
    fn credentials_stay_out_of_names_and_the_copy_is_private() {
        let state = tempfile::tempdir().unwrap();
        let list = url("https://user:s3cr3t@feeds.example/drop.txt?key=k3y");
        save(state.path(), &list, "1.2.3.0/24\n");
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
        save(state.path(), &list, "1.2.3.0/24\n");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(load(state.path(), &list).unwrap().1, ["1.2.3.0/24"]);
    }

    #[test]
    fn a_linked_directory_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        symlink(elsewhere.path(), dir(state.path())).unwrap();
        let list = url("https://feeds.example/drop.txt");
        let Err(refused) = Writer::create(state.path(), &list, &meta(&list)) else {
            panic!("written through a link");
        };
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
        // As earlier versions wrote it: one JSON object, the URL whole, the body inside.
        let old = serde_json::json!({
            "url": list.to_fetch().as_str(),
            "etag": "\"abc\"",
            "last_modified": null,
            "fetched_unix": 1_700_000_000,
            "text": "1.2.3.0/24\n",
        });
        fs::write(dir.join(legacy_file_name(&list)), old.to_string()).unwrap();
        assert_eq!(
            super::meta(state.path(), &list).unwrap().etag,
            meta(&list).etag
        );
        let copy = (meta(&list), vec!["1.2.3.0/24".to_string()]);
        assert_eq!(load(state.path(), &list), Some(copy.clone()));
        assert_eq!(names(&dir), vec![file_name(&list)]);
        assert_eq!(load(state.path(), &list), Some(copy));
    }
}
