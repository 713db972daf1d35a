//! Path and method → endpoint. The fixed names under `/api/v2/cache/`
//! (`batch`, `flush`, `stats`, `reload`, `health`, `pattern/`) are matched
//! on the raw path, before percent-decoding: a key with such a name is
//! reached by escaping a letter (`/api/v2/cache/%73tats` is the key
//! `stats`).

use crate::protocol::http::{percent_decode, Method};

/// One endpoint of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/api/v2/cache/{key}`: the decoded key bytes.
    Key(Vec<u8>),
    Batch,
    /// `/api/v2/cache/pattern/{pattern}`: the decoded glob.
    Pattern(Vec<u8>),
    Flush,
    Stats,
    Reload,
    CacheHealth,
    Live,
    Ready,
    Metrics,
}

/// Why a request matches no endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No endpoint has this path (404).
    NotFound,
    /// The path exists; the method is not one of `allow` (405).
    MethodNotAllowed { allow: &'static str },
    /// The path is not valid percent-encoding (400).
    BadEncoding(String),
}

/// A served path (OpenAPI template form) and its methods, for the OpenAPI
/// test and docs. `HEAD` is served wherever `GET` is and is not listed.
pub struct RouteSpec {
    pub path: &'static str,
    pub methods: &'static [&'static str],
}

/// Every route served.
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        path: "/api/v2/cache/{key}",
        methods: &["get", "put", "delete"],
    },
    RouteSpec {
        path: "/api/v2/cache/batch",
        methods: &["post"],
    },
    RouteSpec {
        path: "/api/v2/cache/pattern/{pattern}",
        methods: &["get"],
    },
    RouteSpec {
        path: "/api/v2/cache/flush",
        methods: &["post"],
    },
    RouteSpec {
        path: "/api/v2/cache/stats",
        methods: &["get"],
    },
    RouteSpec {
        path: "/api/v2/cache/reload",
        methods: &["post"],
    },
    RouteSpec {
        path: "/api/v2/cache/health",
        methods: &["get"],
    },
    RouteSpec {
        path: "/health/live",
        methods: &["get"],
    },
    RouteSpec {
        path: "/health/ready",
        methods: &["get"],
    },
    RouteSpec {
        path: "/health/metrics",
        methods: &["get"],
    },
];

const CACHE_PREFIX: &str = "/api/v2/cache/";

/// Finds the endpoint of `method` on `path` (still percent-encoded).
pub fn resolve(method: &Method, path: &str) -> Result<Route, RouteError> {
    let (route, allow) = match path {
        "/health/live" => (Route::Live, "GET, HEAD"),
        "/health/ready" => (Route::Ready, "GET, HEAD"),
        "/health/metrics" => (Route::Metrics, "GET, HEAD"),
        "/api/v2/cache/batch" => (Route::Batch, "POST"),
        "/api/v2/cache/flush" => (Route::Flush, "POST"),
        "/api/v2/cache/reload" => (Route::Reload, "POST"),
        "/api/v2/cache/stats" => (Route::Stats, "GET, HEAD"),
        "/api/v2/cache/health" => (Route::CacheHealth, "GET, HEAD"),
        _ => match path.strip_prefix(CACHE_PREFIX) {
            Some(rest) => match rest.strip_prefix("pattern/") {
                Some(pattern) => (Route::Pattern(decode(pattern)?), "GET, HEAD"),
                None => (Route::Key(decode(rest)?), "GET, HEAD, PUT, DELETE"),
            },
            None => return Err(RouteError::NotFound),
        },
    };
    let allowed = match method {
        Method::Get | Method::Head => allow.starts_with("GET"),
        Method::Put => allow.contains("PUT"),
        Method::Post => allow == "POST",
        Method::Delete => allow.contains("DELETE"),
        Method::Other(_) => false,
    };
    if allowed {
        Ok(route)
    } else {
        Err(RouteError::MethodNotAllowed { allow })
    }
}

fn decode(text: &str) -> Result<Vec<u8>, RouteError> {
    percent_decode(text).map_err(|e| RouteError::BadEncoding(e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_methods() {
        assert_eq!(
            resolve(&Method::Get, "/api/v2/cache/character%3A1"),
            Ok(Route::Key(b"character:1".to_vec()))
        );
        assert_eq!(
            resolve(&Method::Put, "/api/v2/cache/a/b%ff"),
            Ok(Route::Key(b"a/b\xff".to_vec()))
        );
        assert_eq!(resolve(&Method::Get, "/api/v2/cache/stats"), Ok(Route::Stats));
        assert_eq!(
            resolve(&Method::Get, "/api/v2/cache/%73tats"),
            Ok(Route::Key(b"stats".to_vec()))
        );
        assert_eq!(
            resolve(&Method::Put, "/api/v2/cache/stats"),
            Err(RouteError::MethodNotAllowed { allow: "GET, HEAD" })
        );
        assert_eq!(
            resolve(&Method::Get, "/api/v2/cache/pattern/char*"),
            Ok(Route::Pattern(b"char*".to_vec()))
        );
        assert_eq!(
            resolve(&Method::Post, "/api/v2/cache/k"),
            Err(RouteError::MethodNotAllowed {
                allow: "GET, HEAD, PUT, DELETE"
            })
        );
        assert_eq!(
            resolve(&Method::Other("PATCH".into()), "/health/live"),
            Err(RouteError::MethodNotAllowed { allow: "GET, HEAD" })
        );
        assert_eq!(resolve(&Method::Get, "/nope"), Err(RouteError::NotFound));
        assert_eq!(resolve(&Method::Get, "/api/v2/cache"), Err(RouteError::NotFound));
        assert!(matches!(
            resolve(&Method::Get, "/api/v2/cache/%g1"),
            Err(RouteError::BadEncoding(_))
        ));
        assert_eq!(resolve(&Method::Head, "/health/ready"), Ok(Route::Ready));
        assert_eq!(resolve(&Method::Post, "/api/v2/cache/batch"), Ok(Route::Batch));
    }
}
