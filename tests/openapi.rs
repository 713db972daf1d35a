//! docs/openapi.yaml tells the truth: every documented path and method is
//! served (and answers with a documented status), every served route is
//! documented, and every documented status is one the server can send.

mod common;

use std::collections::BTreeSet;

use common::http::HttpConn;
use common::TestServer;
use dnd_cache::protocol::rest::response::http_status;
use dnd_cache::protocol::rest::ROUTES;
use dnd_cache::Status;
use serde_json::Value;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "head", "patch", "options", "trace",
];

/// (path, method) → documented status codes.
fn documented() -> Vec<(String, String, BTreeSet<u16>)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml")).unwrap();
    let doc: Value = serde_saphyr::from_str(&text).expect("docs/openapi.yaml parses");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let codes: BTreeSet<u16> = op["responses"]
                .as_object()
                .expect("responses")
                .keys()
                .map(|c| {
                    c.parse()
                        .unwrap_or_else(|_| panic!("{path} {method}: status {c}"))
                })
                .collect();
            out.push((path.clone(), method.to_string(), codes));
        }
    }
    out
}

#[test]
fn documented_routes_are_exactly_the_served_routes() {
    let doc: BTreeSet<(String, String)> = documented().into_iter().map(|(p, m, _)| (p, m)).collect();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .flat_map(|r| r.methods.iter().map(|m| (r.path.to_string(), m.to_string())))
        .collect();
    let undocumented: Vec<_> = served.difference(&doc).collect();
    let unserved: Vec<_> = doc.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in docs/openapi.yaml: {undocumented:?}"
    );
    assert!(unserved.is_empty(), "documented but not served: {unserved:?}");
}

#[test]
fn documented_statuses_are_ones_the_server_sends() {
    let mut possible: BTreeSet<u16> = Status::ALL.iter().map(|s| http_status(*s)).collect();
    possible.extend([200, 400, 404, 405, 408, 413, 414, 417, 431, 501, 505]);
    for (path, method, codes) in documented() {
        assert!(codes.contains(&200), "{method} {path}: no 200");
        for c in codes {
            assert!(possible.contains(&c), "{method} {path}: {c} is never sent");
        }
    }
}

#[test]
fn every_documented_operation_answers_with_a_documented_status() {
    let server = TestServer::start(&[]);
    let mut c = HttpConn::open(server.http);
    for (path, method, codes) in documented() {
        // (Re)store the sample key: a flush may have run before.
        let put = c.put_json("/api/v2/cache/openapi:k", r#"{"cache_request": {"value": 1}}"#);
        assert_eq!(put.status, 200);
        let target = path
            .replace("{key}", "openapi:k")
            .replace("{pattern}", "openapi:*");
        let body: &[u8] = match (method.as_str(), path.as_str()) {
            ("put", _) => br#"{"cache_request": {"value": 2}}"#,
            ("post", "/api/v2/cache/batch") => br#"{"operations": [{"op": "get", "key": "openapi:k"}]}"#,
            _ => b"",
        };
        let r = c.request(
            &method.to_uppercase(),
            &target,
            &[("Content-Type", "application/json")],
            body,
        );
        assert!(
            codes.contains(&r.status),
            "{method} {path} answered {} (documented: {codes:?}): {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.status, 200, "{method} {target} succeeds on a healthy server");
        // Errors documented for the key path are actually produced.
        if path == "/api/v2/cache/{key}" {
            let bad = c.request(&method.to_uppercase(), "/api/v2/cache/a%20b", &[], body);
            assert!(
                codes.contains(&bad.status) && bad.status == 400,
                "{method}: {}",
                bad.status
            );
        }
    }
}
