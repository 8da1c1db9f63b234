//! Routes compiled into keys of the kernel's route trie (see `agent_common::http`): each
//! route's path, once per method it names (every method if it names none) and once per
//! byte that may end a path segment after it. The trie's longest match is then the most
//! specific route, with no scan over routes in the kernel.

use std::collections::BTreeMap;

use agent_common::http::{Method, ROUTE_KEY_BYTES};

use crate::policy::http::Route;

/// Bytes after a route's path that end a path segment: the end of the target (the space
/// before the HTTP version), a deeper segment, a query. A path ending in `/` is a segment
/// boundary already and is stored as it is.
const SEGMENT_ENDS: [u8; 3] = [b' ', b'/', b'?'];

/// One key of the route trie: its bytes (a method code, then a target prefix, zero-padded)
/// and how many of its bits count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteKey {
    pub bits: u32,
    pub data: [u8; ROUTE_KEY_BYTES],
}

impl RouteKey {
    fn new(method: Method, prefix: &[u8]) -> Self {
        let mut data = [0; ROUTE_KEY_BYTES];
        data[0] = method.code();
        data[1..=prefix.len()].copy_from_slice(prefix);
        Self {
            bits: 8 * (1 + prefix.len() as u32),
            data,
        }
    }
}

/// The trie's entries for `routes`: each key with the index of the route it names. Where
/// a route naming the method and one that names none store the same key, the one naming it
/// wins, whatever their order (validation refuses two routes of the same kind for the same
/// method and path).
pub fn compile(routes: &[Route]) -> BTreeMap<RouteKey, usize> {
    let mut keys: BTreeMap<RouteKey, (usize, bool)> = BTreeMap::new();
    for (index, route) in routes.iter().enumerate() {
        let names_methods = !route.methods.is_empty();
        let methods = if names_methods {
            route.methods.clone()
        } else {
            Method::ALL.to_vec()
        };
        let path = route.path.as_bytes();
        let prefixes: Vec<Vec<u8>> = if path.ends_with(b"/") {
            vec![path.to_vec()]
        } else {
            SEGMENT_ENDS
                .iter()
                .map(|end| [path, &[*end]].concat())
                .collect()
        };
        for method in methods {
            for prefix in &prefixes {
                let key = RouteKey::new(method, prefix);
                match keys.get(&key) {
                    Some(&(_, true)) => {}
                    Some(&(_, false)) if !names_methods => {}
                    _ => {
                        keys.insert(key, (index, names_methods));
                    }
                }
            }
        }
    }
    keys.into_iter()
        .map(|(key, (index, _))| (key, index))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Mode, http::RouteAction};

    /// The route the trie gives a request with `method` whose target window is `window` (the
    /// bytes after "METHOD "): what the kernel's longest-prefix lookup answers.
    fn lookup(entries: &BTreeMap<RouteKey, usize>, method: Method, window: &[u8]) -> Option<usize> {
        let copied = window.len().min(ROUTE_KEY_BYTES - 1);
        let request = RouteKey::new(method, &window[..copied]);
        entries
            .iter()
            .filter(|(key, _)| {
                // The key is a prefix of the request's bits (all whole bytes).
                let bytes = key.bits as usize / 8;
                key.bits <= request.bits && key.data[..bytes] == request.data[..bytes]
            })
            .max_by_key(|(key, _)| key.bits)
            .map(|(_, &index)| index)
    }

    fn route(name: &str, methods: &[Method], path: &str) -> Route {
        Route {
            name: name.into(),
            methods: methods.to_vec(),
            path: path.into(),
            action: RouteAction::Deny,
            over_limit: Default::default(),
            mode: Mode::Enforce,
        }
    }

    fn routed(routes: &[Route], method: Method, request: &str) -> Option<String> {
        let entries = compile(routes);
        let window = format!("{request} HTTP/1.1\r\nHost: example\r\n\r\n");
        lookup(&entries, method, window.as_bytes()).map(|i| routes[i].name.clone())
    }

    #[test]
    fn a_path_matches_on_segment_boundaries_only() {
        let routes = [route("login", &[Method::Post], "/api/login")];
        for (target, matched) in [
            ("/api/login", true),
            ("/api/login/x", true),
            ("/api/login?next=/", true),
            ("/api/loginx", false),
            ("/api/logi", false),
            ("/api", false),
            ("/API/login", false),
        ] {
            assert_eq!(
                routed(&routes, Method::Post, target).is_some(),
                matched,
                "{target}"
            );
        }
        assert_eq!(
            routed(&routes, Method::Get, "/api/login"),
            None,
            "other method"
        );
    }

    #[test]
    fn the_most_specific_route_wins() {
        let routes = [
            route("api", &[], "/api"),
            route("login-post", &[Method::Post], "/api/login"),
            route("login-any", &[], "/api/login"),
            route("admin", &[], "/admin/"),
            route("root", &[], "/"),
        ];
        let cases = [
            (Method::Post, "/api/login", "login-post"),
            (Method::Get, "/api/login", "login-any"),
            (Method::Post, "/api/login/reset", "login-post"),
            (Method::Post, "/api/items", "api"),
            (Method::Delete, "/api", "api"),
            (Method::Get, "/admin/users", "admin"),
            (Method::Get, "/admin", "root"),
            (Method::Get, "/", "root"),
            (Method::Get, "/static/app.js", "root"),
        ];
        for (method, target, name) in cases {
            assert_eq!(
                routed(&routes, method, target).as_deref(),
                Some(name),
                "{} {target}",
                method.name()
            );
        }
    }

    #[test]
    fn keys_are_a_method_byte_and_the_path_with_each_segment_end() {
        let entries = compile(&[route("login", &[Method::Post], "/api/login")]);
        let keys: Vec<(u32, String)> = entries
            .keys()
            .map(|k| {
                let bytes = k.bits as usize / 8;
                (
                    k.data[0] as u32,
                    String::from_utf8_lossy(&k.data[1..bytes]).into_owned(),
                )
            })
            .collect();
        let post = u32::from(Method::Post.code());
        assert_eq!(
            keys,
            vec![
                (post, "/api/login ".to_string()),
                (post, "/api/login/".to_string()),
                (post, "/api/login?".to_string()),
            ]
        );
        assert!(entries.keys().all(|k| k.bits == 8 * (1 + 11)));
        // A route for every method stores its keys once per method.
        assert_eq!(
            compile(&[route("all", &[], "/x")]).len(),
            3 * Method::ALL.len()
        );
        assert_eq!(
            compile(&[route("dir", &[], "/x/")]).len(),
            Method::ALL.len()
        );
    }

    #[test]
    fn a_target_longer_than_the_window_still_matches_its_prefix() {
        let long = format!("/files/{}", "a".repeat(400));
        let routes = [route("files", &[], "/files")];
        assert_eq!(
            routed(&routes, Method::Get, &long).as_deref(),
            Some("files")
        );
    }
}
