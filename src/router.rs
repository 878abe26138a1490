//! The compiled routing table: built from one configuration snapshot,
//! swapped in whole, never changed in place.
//!
//! Precedence follows APISIX's default (`radixtree_host_uri`) router:
//! routes with a host before host-less ones (an exact host before wildcard
//! hosts, longer wildcard suffixes first), then an exact path before a
//! prefix, a longer prefix before a shorter one, then higher `priority`,
//! and finally the route id, so the outcome never depends on the order in
//! which routes were created. Matching costs a few hash lookups per
//! distinct host and prefix length; it does not grow with the number of
//! routes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::Method;
use ipnet::IpNet;

use crate::model::route::METHODS;

/// What the router needs of a route; the rest travels along in `T`.
#[derive(Debug)]
pub struct RouteMatch<T> {
    pub id: String,
    pub priority: i64,
    /// Bit `i` set = `METHODS[i]` allowed; 0 = every method.
    methods: u16,
    remote_addrs: Vec<IpNet>,
    pub data: T,
}

impl<T> RouteMatch<T> {
    pub fn new(
        id: String,
        priority: i64,
        methods: &[String],
        remote_addrs: Vec<IpNet>,
        data: T,
    ) -> Self {
        let methods = methods
            .iter()
            .filter_map(|m| METHODS.iter().position(|x| x == m))
            .fold(0u16, |acc, i| acc | 1 << i);
        RouteMatch {
            id,
            priority,
            methods,
            remote_addrs,
            data,
        }
    }

    fn accepts(&self, method: &Method, client: IpAddr) -> bool {
        let method_ok = self.methods == 0
            || METHODS
                .iter()
                .position(|m| *m == method.as_str())
                .is_some_and(|i| self.methods & (1 << i) != 0);
        method_ok
            && (self.remote_addrs.is_empty()
                || self.remote_addrs.iter().any(|n| n.contains(&client)))
    }
}

/// Routes of one host class, by path.
struct PathTable<T> {
    exact: HashMap<String, Vec<Arc<RouteMatch<T>>>>,
    prefixes: HashMap<String, Vec<Arc<RouteMatch<T>>>>,
    /// Distinct prefix lengths, longest first: the only lengths worth
    /// looking up.
    prefix_lens: Vec<usize>,
}

impl<T> Default for PathTable<T> {
    fn default() -> Self {
        PathTable {
            exact: HashMap::new(),
            prefixes: HashMap::new(),
            prefix_lens: Vec::new(),
        }
    }
}

impl<T> PathTable<T> {
    fn insert(&mut self, pattern: &str, route: Arc<RouteMatch<T>>) {
        match pattern.strip_suffix('*') {
            Some(prefix) => self
                .prefixes
                .entry(prefix.to_owned())
                .or_default()
                .push(route),
            None => self
                .exact
                .entry(pattern.to_owned())
                .or_default()
                .push(route),
        }
    }

    fn finish(&mut self) {
        let order = |a: &Arc<RouteMatch<T>>, b: &Arc<RouteMatch<T>>| {
            b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id))
        };
        for list in self.exact.values_mut().chain(self.prefixes.values_mut()) {
            list.sort_by(order);
            list.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
        let mut lens: Vec<usize> = self.prefixes.keys().map(String::len).collect();
        lens.sort_unstable_by(|a, b| b.cmp(a));
        lens.dedup();
        self.prefix_lens = lens;
    }

    fn find(&self, path: &str, method: &Method, client: IpAddr) -> Option<&Arc<RouteMatch<T>>> {
        if let Some(r) = self
            .exact
            .get(path)
            .and_then(|list| list.iter().find(|r| r.accepts(method, client)))
        {
            return Some(r);
        }
        for &len in &self.prefix_lens {
            if len > path.len() || !path.is_char_boundary(len) {
                continue;
            }
            if let Some(r) = self
                .prefixes
                .get(&path[..len])
                .and_then(|list| list.iter().find(|r| r.accepts(method, client)))
            {
                return Some(r);
            }
        }
        None
    }
}

/// The whole table.
pub struct Router<T> {
    /// Exact host (lower case) → its routes.
    hosts: HashMap<String, PathTable<T>>,
    /// Wildcard suffix (`.example.com` for `*.example.com`) → its routes.
    wildcards: HashMap<String, PathTable<T>>,
    /// Routes with the `*` host: any host, but still before host-less.
    any_host: PathTable<T>,
    hostless: PathTable<T>,
    len: usize,
}

impl<T> Router<T> {
    /// Builds the table from `(host patterns, path patterns, route)`.
    pub fn build(routes: Vec<(Vec<String>, Vec<String>, RouteMatch<T>)>) -> Router<T> {
        let mut router = Router {
            hosts: HashMap::new(),
            wildcards: HashMap::new(),
            any_host: PathTable::default(),
            hostless: PathTable::default(),
            len: routes.len(),
        };
        for (hosts, paths, route) in routes {
            let route = Arc::new(route);
            if hosts.is_empty() {
                for p in &paths {
                    router.hostless.insert(p, route.clone());
                }
                continue;
            }
            for host in hosts {
                let host = host.to_ascii_lowercase();
                let table = if host == "*" {
                    &mut router.any_host
                } else if let Some(suffix) = host.strip_prefix('*') {
                    router.wildcards.entry(suffix.to_owned()).or_default()
                } else {
                    router.hosts.entry(host).or_default()
                };
                for p in &paths {
                    table.insert(p, route.clone());
                }
            }
        }
        for t in router
            .hosts
            .values_mut()
            .chain(router.wildcards.values_mut())
            .chain([&mut router.any_host, &mut router.hostless])
        {
            t.finish();
        }
        router
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The route for a request. `host` is the Host header without port;
    /// `path` is already canonical.
    pub fn find(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        client: IpAddr,
    ) -> Option<&Arc<RouteMatch<T>>> {
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if !host.is_empty() {
            if let Some(r) = self
                .hosts
                .get(host)
                .and_then(|t| t.find(path, method, client))
            {
                return Some(r);
            }
            if !self.wildcards.is_empty() {
                // Longest suffix first: a.b.example.com tries .b.example.com,
                // then .example.com, then .com.
                for (i, _) in host.match_indices('.') {
                    if let Some(r) = self
                        .wildcards
                        .get(&host[i..])
                        .and_then(|t| t.find(path, method, client))
                    {
                        return Some(r);
                    }
                }
            }
            if let Some(r) = self.any_host.find(path, method, client) {
                return Some(r);
            }
        }
        self.hostless.find(path, method, client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, prio: i64, methods: &[&str]) -> RouteMatch<()> {
        RouteMatch::new(
            id.into(),
            prio,
            &methods.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            vec![],
            (),
        )
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn find<'a>(router: &'a Router<()>, host: &str, path: &str) -> Option<&'a str> {
        router
            .find(host, path, &Method::GET, "127.0.0.1".parse().unwrap())
            .map(|r| r.id.as_str())
    }

    #[test]
    fn apisix_docs_precedence_table() {
        let router = Router::build(vec![
            (vec![], s(&["/blog/foo/*"]), r("foo", 0, &[])),
            (vec![], s(&["/blog/foo/a/*"]), r("a", 0, &[])),
            (vec![], s(&["/blog/foo/c/*"]), r("c", 0, &[])),
            (vec![], s(&["/blog/foo/bar"]), r("bar", 0, &[])),
        ]);
        assert_eq!(find(&router, "", "/blog/foo/a/b/c"), Some("a"));
        assert_eq!(find(&router, "", "/blog/foo/gloo"), Some("foo"));
        assert_eq!(find(&router, "", "/blog/foo/bar"), Some("bar"));
        assert_eq!(find(&router, "", "/blog/bar"), None);
    }

    #[test]
    fn hosts_before_hostless_and_priority_then_id() {
        let build = |order: &[usize]| {
            let all = [
                (s(&["a.example.test"]), s(&["/api/*"]), "open", 0),
                (s(&["a.example.test"]), s(&["/api/*"]), "guarded", 10),
                (vec![], s(&["/api/x"]), "hostless", 100),
                (s(&["*.example.test"]), s(&["/*"]), "wild", 0),
            ];
            Router::build(
                order
                    .iter()
                    .map(|&i| {
                        let (h, p, id, prio) = &all[i];
                        (h.clone(), p.clone(), r(id, *prio, &[]))
                    })
                    .collect(),
            )
        };
        for order in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 0, 3, 2]] {
            let router = build(&order);
            assert_eq!(find(&router, "A.Example.Test", "/api/x"), Some("guarded"));
            assert_eq!(find(&router, "b.example.test", "/api/x"), Some("wild"));
            assert_eq!(find(&router, "example.test", "/api/x"), Some("hostless"));
        }
    }

    #[test]
    fn methods_fall_through_to_next_candidate() {
        let router = Router::build(vec![
            (vec![], s(&["/a"]), r("post", 10, &["POST"])),
            (vec![], s(&["/a*"]), r("any", 0, &[])),
        ]);
        assert_eq!(find(&router, "", "/a"), Some("any"));
        assert_eq!(find(&router, "", "/abc"), Some("any"));
        let only_post = Router::build(vec![(vec![], s(&["/a"]), r("post", 0, &["POST"]))]);
        assert_eq!(find(&only_post, "", "/a"), None);
    }

    #[test]
    fn prefix_semantics() {
        let router = Router::build(vec![(vec![], s(&["/foo/*"]), r("slash", 0, &[]))]);
        assert_eq!(find(&router, "", "/foo/x"), Some("slash"));
        assert_eq!(find(&router, "", "/foo"), None);
        let router = Router::build(vec![(vec![], s(&["/foo*"]), r("star", 0, &[]))]);
        assert_eq!(find(&router, "", "/foo"), Some("star"));
        assert_eq!(find(&router, "", "/foobar"), Some("star"));
    }
}
