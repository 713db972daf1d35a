//! The REST API and health endpoints over real TCP against the real server:
//! every endpoint and status, value interchange with the binary protocol,
//! malformed HTTP, keep-alive, pipelining, limits and deadlines.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::http::{HttpConn, HttpResponse};
use common::*;
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn is_rfc3339_ms(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    s.len() == 24 && s.ends_with('Z') && &s[4..5] == "-" && &s[10..11] == "T" && &s[19..20] == "."
}

/// The server still answers on a fresh connection, and `key` still holds `value`.
fn still_serving(server: &TestServer) {
    let mut c = HttpConn::open(server.http);
    assert_eq!(c.get("/health/live").status, 200, "server keeps serving");
}

#[test]
fn listening_line_names_the_http_port_and_keeps_the_other_keys() {
    let server = TestServer::start(&[]);
    for key in ["binary=", "shards=2", "shard_ports=", "http=127.0.0.1:"] {
        assert!(server.line.contains(key), "{key} in {}", server.line);
    }
    assert_ne!(server.http.port(), 0);
}

#[test]
fn put_get_delete_with_statuses_and_metadata() {
    let server = TestServer::start(&[]);
    let mut c = HttpConn::open(server.http);
    let put = c.put_json(
        "/api/v2/cache/character:1234",
        r#"{"cache_request": {"key": "character:1234", "value": {"hp": 12, "name": "Éowyn"}, "ttl": 60, "options": {"consistency": "strong"}}}"#,
    );
    assert_eq!(put.status, 200, "{:?}", String::from_utf8_lossy(&put.body));
    let meta = put.json()["cache_response"]["metadata"].clone();
    assert!(
        is_rfc3339_ms(&meta["created_at"]) && is_rfc3339_ms(&meta["expires_at"]),
        "{meta}"
    );
    assert!(meta["version"].as_str().unwrap().parse::<u64>().unwrap() > 0);

    let got = c.get("/api/v2/cache/character%3A1234");
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("application/json"));
    let body = got.json();
    assert_eq!(body["cache_response"]["status"], "OK");
    assert_eq!(body["cache_response"]["data"], json!({"hp": 12, "name": "Éowyn"}));
    assert_eq!(body["cache_response"]["data_encoding"], "json");
    assert_eq!(body["cache_response"]["metadata"], meta);
    let text = String::from_utf8(got.body.clone()).unwrap();
    assert!(
        text.contains(r#""data":{"hp": 12, "name": "Éowyn"}"#),
        "value embedded verbatim: {text}"
    );

    let head = c.request("HEAD", "/api/v2/cache/character:1234", &[], b"");
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(got.body.len().to_string().as_str())
    );
    assert!(head.body.is_empty());

    assert_eq!(
        c.request("DELETE", "/api/v2/cache/character:1234", &[], b"")
            .status,
        200
    );
    let again = c.request("DELETE", "/api/v2/cache/character:1234", &[], b"");
    assert_eq!((again.status, again.error_code()), (404, "CACHE_001".into()));
    let miss = c.get("/api/v2/cache/character:1234");
    assert_eq!(miss.status, 404);
    let err = miss.json();
    assert_eq!(err["error"]["code"], "CACHE_001");
    assert_eq!(err["error"]["details"]["key"], "character:1234");
    assert_eq!(err["error"]["details"]["operation"], "get");
    assert!(is_rfc3339_ms(&err["error"]["details"]["timestamp"]));

    // Default TTL: a bare JSON value with no ttl.
    assert_eq!(c.put_json("/api/v2/cache/plain", "[1, 2]").status, 200);
    let m = c.get("/api/v2/cache/plain").json()["cache_response"]["metadata"].clone();
    assert!(is_rfc3339_ms(&m["expires_at"]));
}

#[test]
fn core_statuses_map_to_http_statuses() {
    let server = TestServer::start(&["--max-item-bytes", "4KiB", "--shards", "1"]);
    let mut c = HttpConn::open(server.http);
    // CACHE_002: an expired item still indexed → 410. The background sweep
    // removes about 200,000 expired entries a second, so write many and
    // read some back at once (pipelined) right after they expire; under a
    // heavy machine load the sweep may win a round, so try a few rounds.
    let mut bin = server.connect();
    let mut gone = 0;
    for round in 0..4 {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..100_000)
            .map(|i| (format!("ttl{round}:{i}").into_bytes(), b"x".to_vec()))
            .collect();
        for chunk in entries.chunks(10_000) {
            assert_eq!(bin.call(&set_many(chunk, 1)).status, 0);
        }
        // Versions run up to 1 µs per write ahead of the wall clock in a
        // burst (a hybrid clock): 100 ms for these 100,000 writes.
        std::thread::sleep(Duration::from_millis(1150));
        let mut burst = Vec::new();
        for i in 99_700..100_000 {
            burst.extend(HttpConn::encode(
                "GET",
                &format!("/api/v2/cache/ttl{round}:{i}"),
                &[],
                b"",
            ));
        }
        c.send_raw(&burst);
        for _ in 0..300 {
            let r = c.read_response().unwrap();
            match r.status {
                410 => {
                    assert_eq!(r.error_code(), "CACHE_002");
                    gone += 1;
                }
                404 => assert_eq!(r.error_code(), "CACHE_001"),
                other => panic!("status {other} for an expired item"),
            }
        }
        if gone > 0 {
            break;
        }
    }
    assert!(gone > 0, "some expired items are still found: 410");
    // CACHE_003: larger than max_item_bytes → 507.
    let big = vec![b'x'; 5000];
    let r = c.request(
        "PUT",
        "/api/v2/cache/big",
        &[("Content-Type", "application/octet-stream")],
        &big,
    );
    assert_eq!((r.status, r.error_code()), (507, "CACHE_003".into()));
    // CACHE_004: key rules → 400.
    for path in ["/api/v2/cache/a%20b", "/api/v2/cache/", "/api/v2/cache/a%0Ab"] {
        let r = c.get(path);
        assert_eq!((r.status, r.error_code()), (400, "CACHE_004".into()), "{path}");
    }
    let long_key = "k".repeat(251);
    assert_eq!(c.put_json(&format!("/api/v2/cache/{long_key}"), "1").status, 400);
    // Bad options → 400 CACHE_006.
    let r = c.put_json(
        "/api/v2/cache/k",
        r#"{"cache_request": {"value": 1, "options": {"consistency": "psychic"}}}"#,
    );
    assert_eq!((r.status, r.error_code()), (400, "CACHE_006".into()));
    still_serving(&server);
}

#[test]
fn values_interchange_byte_for_byte_with_the_binary_protocol() {
    let server = TestServer::start(&[]);
    let mut bin = server.connect();
    let mut c = HttpConn::open(server.http);
    let cases: Vec<(&[u8], &[u8])> = vec![
        (b"bin:raw", b"\x00\x01\xfe\xff not utf8 \x80"),
        (b"bin:json", br#"{"a" :  [1,2.50, "x"]}"#),
        (b"bin:text", "plain ünïcode text".as_bytes()),
        (b"bin:padded-json", b" 42 "),
        (b"bin:empty", b""),
        (b"\xff\xfekey", b"value of a non-UTF-8 key"),
    ];
    for (key, value) in &cases {
        assert_eq!(bin.call(&set(key, value, 0)).status, 0);
        let path = format!("/api/v2/cache/{}", percent(key));
        // As JSON, decoded per data_encoding.
        let body = c.get(&path).json();
        let r = &body["cache_response"];
        let shown = match r["data_encoding"].as_str().unwrap() {
            "json" => serde_json::to_vec(&r["data"]).unwrap(),
            "utf8" => r["data"].as_str().unwrap().as_bytes().to_vec(),
            "base64" => B64.decode(r["data"].as_str().unwrap()).unwrap(),
            other => panic!("encoding {other}"),
        };
        if r["data_encoding"] == "json" {
            let text = String::from_utf8(c.get(&path).body).unwrap();
            assert!(
                text.contains(std::str::from_utf8(value).unwrap()),
                "verbatim json"
            );
        } else {
            assert_eq!(&shown, value, "{}", String::from_utf8_lossy(key));
        }
        // Forced base64 and raw octets are always exact.
        let b64 = c.get(&format!("{path}?encoding=base64")).json();
        assert_eq!(b64["cache_response"]["data_encoding"], "base64");
        assert_eq!(
            &B64.decode(b64["cache_response"]["data"].as_str().unwrap())
                .unwrap(),
            value
        );
        let raw = c.request("GET", &path, &[("Accept", "application/octet-stream")], b"");
        assert_eq!(raw.header("content-type"), Some("application/octet-stream"));
        assert_eq!(&raw.body, value);
    }
    // The reverse: written over REST, read over binary.
    let writes: Vec<(&str, Vec<u8>, &[u8])> = vec![
        ("rest:octets", b"\x00\xffraw".to_vec(), b"\x00\xffraw"),
        (
            "rest:b64",
            br#"{"cache_request": {"value": "AAH+/w==", "value_encoding": "base64"}}"#.to_vec(),
            b"\x00\x01\xfe\xff",
        ),
        (
            "rest:utf8",
            r#"{"cache_request": {"value": "tëxt", "value_encoding": "utf8"}}"#
                .as_bytes()
                .to_vec(),
            "tëxt".as_bytes(),
        ),
        ("rest:bare", b"  {\"x\" : 1}\n".to_vec(), b"{\"x\" : 1}"),
    ];
    for (key, body, stored) in &writes {
        let ct = if *key == "rest:octets" {
            "application/octet-stream"
        } else {
            "application/json"
        };
        let r = c.request(
            "PUT",
            &format!("/api/v2/cache/{key}"),
            &[("Content-Type", ct)],
            body,
        );
        assert_eq!(r.status, 200, "{key}: {}", String::from_utf8_lossy(&r.body));
        let got = bin.call(&get(key.as_bytes()));
        assert_eq!((got.status, &got.data[..]), (0, *stored), "{key}");
    }
    let r = c.request(
        "PUT",
        "/api/v2/cache/%C0%80bin",
        &[("Content-Type", "application/octet-stream")],
        b"k",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        &bin.call(&get(b"\xc0\x80bin")).data[..],
        b"k",
        "non-UTF-8 key from a path"
    );
}

fn percent(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

#[test]
fn batch_mixes_operations_in_order() {
    let server = TestServer::start(&["--shards", "3"]);
    let mut c = HttpConn::open(server.http);
    let mut ops = vec![
        json!({"op": "set", "key": "b:1", "value": {"hp": 1}, "ttl": 30}),
        json!({"op": "set", "key_base64": B64.encode(b"\xffb"), "value": "AP8=", "value_encoding": "base64"}),
        json!({"op": "get", "key": "b:1"}),
        json!({"op": "get", "key_base64": B64.encode(b"\xffb")}),
        json!({"op": "delete", "key": "b:1"}),
        json!({"op": "get", "key": "b:1"}),
        json!({"op": "get", "key": "bad key"}),
    ];
    for i in 0..300 {
        ops.push(json!({"op": "set", "key": format!("b:n{i}"), "value": i}));
    }
    let r = c.post("/api/v2/cache/batch", &json!({ "operations": ops }).to_string());
    assert_eq!(r.status, 200);
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), ops.len());
    assert_eq!(results[0]["status"], "OK");
    assert!(is_rfc3339_ms(&results[0]["metadata"]["expires_at"]));
    assert_eq!(results[2]["data"], json!({"hp": 1}));
    assert_eq!(results[3]["key_base64"], B64.encode(b"\xffb"));
    assert_eq!(
        (&results[3]["data"], &results[3]["data_encoding"]),
        (&json!("AP8="), &json!("base64"))
    );
    assert_eq!(results[4]["status"], "OK");
    assert_eq!(results[5]["status"], "CACHE_001");
    assert_eq!(results[6]["error"]["code"], "CACHE_004");
    for (i, res) in results[7..].iter().enumerate() {
        assert_eq!(res["key"], format!("b:n{i}"));
        assert_eq!(res["status"], "OK");
    }
    let mut bin = server.connect();
    assert_eq!(&bin.call(&get(b"b:n299")).data[..], b"299");

    // Malformed batches are refused whole, and nothing runs.
    let r = c.post(
        "/api/v2/cache/batch",
        r#"{"operations": [{"op": "set", "key": "b:x", "value": 1}, {"op": "bogus", "key": "k"}]}"#,
    );
    assert_eq!((r.status, r.error_code()), (400, "CACHE_006".into()));
    assert_eq!(bin.call(&get(b"b:x")).status, 1);
    let too_many: Vec<Value> = (0..10_001).map(|_| json!({"op": "get", "key": "k"})).collect();
    let r = c.post(
        "/api/v2/cache/batch",
        &json!({ "operations": too_many }).to_string(),
    );
    assert_eq!((r.status, r.error_code()), (413, "CACHE_012".into()));
    assert_eq!(
        c.post("/api/v2/cache/batch", r#"{"operations": []}"#).json()["results"],
        json!([])
    );
}

#[test]
fn pattern_flush_stats_reload_and_health() {
    let server = TestServer::start(&[]);
    let mut c = HttpConn::open(server.http);
    for i in 0..20 {
        assert_eq!(c.put_json(&format!("/api/v2/cache/hero:{i}"), "1").status, 200);
    }
    assert_eq!(c.put_json("/api/v2/cache/villain:1", "1").status, 200);
    let all = c.get("/api/v2/cache/pattern/hero:*").json();
    assert_eq!(all["cache_response"]["data"]["count"], 20);
    assert_eq!(all["cache_response"]["data"]["truncated"], false);
    let few = c.get("/api/v2/cache/pattern/hero:*?limit=5").json();
    assert_eq!(
        few["cache_response"]["data"]["items"].as_array().unwrap().len(),
        5
    );
    assert_eq!(few["cache_response"]["data"]["truncated"], true);
    let item = &few["cache_response"]["data"]["items"][0];
    assert!(item["key"].as_str().unwrap().starts_with("hero:"));
    assert!(is_rfc3339_ms(&item["metadata"]["created_at"]));
    assert_eq!(
        c.get("/api/v2/cache/pattern/hero:?").json()["cache_response"]["data"]["count"],
        0
    );
    assert_eq!(
        c.get("/api/v2/cache/pattern/hero:%3F").json()["cache_response"]["data"]["count"],
        10
    );
    let bad = c.get(&format!("/api/v2/cache/pattern/{}", "x".repeat(1025)));
    assert_eq!((bad.status, bad.error_code()), (400, "CACHE_004".into()));
    assert_eq!(c.get("/api/v2/cache/pattern/*?limit=ten").status, 400);
    // `scope` is `node` or absent; a node alone is its whole cluster.
    let scoped = c.get("/api/v2/cache/pattern/hero:*?scope=node").json();
    assert_eq!(scoped["cache_response"]["data"]["count"], 20);
    let bad_scope = c.get("/api/v2/cache/pattern/hero:*?scope=AAA");
    assert_eq!(
        (bad_scope.status, bad_scope.error_code()),
        (400, "CACHE_006".into())
    );

    let stats = c.get("/api/v2/cache/stats");
    assert_eq!(stats.status, 200);
    let data = &stats.json()["cache_response"]["data"];
    assert_eq!(data["shard_count"], 2);
    assert_eq!(data["total"]["items"], 21);

    let metrics = c.get("/health/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains("# TYPE cache_items gauge\n"), "{text}");
    let items: f64 = text
        .lines()
        .filter(|l| l.starts_with("cache_items{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(items, 21.0, "{text}");
    assert!(text.contains("# TYPE cache_hits_total counter\n"));

    let flushed = c.post("/api/v2/cache/flush", "");
    assert_eq!(flushed.json()["cache_response"]["data"]["flushed"], 21);
    assert_eq!(c.get("/api/v2/cache/hero:1").status, 404);

    // Nothing changed since the start: a reload applies the same settings
    // on every shard and asks for no restart.
    let reload = c.post("/api/v2/cache/reload", "");
    assert_eq!(reload.status, 200);
    let data = &reload.json()["cache_response"]["data"];
    assert_eq!(data["reloaded"], json!([]), "{data}");
    assert_eq!(data["requires_restart"], json!([]), "{data}");
    assert_eq!(data["shards_applied"], 2, "{data}");

    let health = c.get("/api/v2/cache/health").json();
    assert_eq!(health["cache_response"]["data"]["status"], "ok");
    assert_eq!(health["cache_response"]["data"]["shards"], 2);
    assert_eq!(c.get("/health/live").status, 200);
    let ready = c.get("/health/ready");
    assert_eq!(
        (ready.status, ready.json()["status"].clone()),
        (200, json!("ready"))
    );
    // A key with a reserved name is reachable by escaping a letter.
    assert_eq!(c.put_json("/api/v2/cache/%73tats", "\"mine\"").status, 200);
    assert_eq!(
        c.get("/api/v2/cache/%73tats").json()["cache_response"]["data"],
        "mine"
    );
}

#[test]
fn routing_errors_leave_the_connection_usable() {
    let server = TestServer::start(&[]);
    let mut c = HttpConn::open(server.http);
    let r = c.get("/nowhere");
    assert_eq!((r.status, r.error_code()), (404, "CACHE_007".into()));
    let r = c.request("POST", "/api/v2/cache/k", &[], b"{}");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, PUT, DELETE"));
    let r = c.request("DELETE", "/api/v2/cache/stats", &[], b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    let r = c.request("PATCH", "/health/live", &[], b"");
    assert_eq!(r.status, 405);
    for body in [
        "",
        "{",
        "not json",
        r#"{"cache_request": {"value": 1, "bogus": 2}}"#,
    ] {
        let r = c.put_json("/api/v2/cache/k", body);
        assert_eq!((r.status, r.error_code()), (400, "CACHE_006".into()), "{body:?}");
    }
    let r = c.get("/api/v2/cache/bad%zzkey");
    assert_eq!((r.status, r.error_code()), (400, "CACHE_006".into()));
    let r = c.get("/api/v2/cache/k?encoding=rot13");
    assert_eq!(r.status, 400);
    assert_eq!(c.get("/health/live").status, 200, "same connection still serves");
}

/// Sends raw bytes on a fresh connection; returns the answer and whether
/// the server then closed the connection.
fn raw_exchange(server: &TestServer, bytes: &[u8]) -> (HttpResponse, bool) {
    let mut c = HttpConn::open(server.http);
    c.send_raw(bytes);
    let r = c.read_response().expect("an answer");
    let closed = c.is_closed_within(Duration::from_secs(3));
    (r, closed)
}

#[test]
fn malformed_http_gets_its_status_and_a_close() {
    let server = TestServer::start(&["--max-frame-bytes", "64KiB", "--max-item-bytes", "32KiB"]);
    let huge_headers = {
        let mut h = b"GET /health/live HTTP/1.1\r\nHost: t\r\n".to_vec();
        for i in 0..400 {
            h.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(60)).as_bytes());
        }
        h.extend_from_slice(b"\r\n");
        h
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("bad request line", b"HELLO\r\n\r\n".to_vec(), 400),
        ("no host", b"GET /health/live HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("huge headers", huge_headers, 431),
        (
            "CL and TE",
            b"PUT /api/v2/cache/k HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
        (
            "duplicate CL",
            b"PUT /api/v2/cache/k HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n1".to_vec(),
            400,
        ),
        (
            "conflicting CL",
            b"PUT /api/v2/cache/k HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\n1".to_vec(),
            400,
        ),
        (
            "TE gzip",
            b"PUT /api/v2/cache/k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec(),
            501,
        ),
        (
            "declared body over the limit",
            b"PUT /api/v2/cache/k HTTP/1.1\r\nHost: t\r\nContent-Length: 70000\r\n\r\n".to_vec(),
            413,
        ),
        ("raw non-ASCII path", b"GET /api/v2/cache/\xff\xfe HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 505),
        (
            "bad chunk",
            b"PUT /api/v2/cache/k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n".to_vec(),
            400,
        ),
    ];
    for (name, bytes, status) in cases {
        let (r, closed) = raw_exchange(&server, &bytes);
        assert_eq!(r.status, status, "{name}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.json()["error"]["code"].is_string(), "{name}: ICD error body");
        assert_eq!(r.header("connection"), Some("close"), "{name}");
        assert!(closed, "{name}: connection closed");
        still_serving(&server);
    }
}

#[test]
fn body_framing_is_never_misread() {
    let server = TestServer::start(&["--http-request-timeout-ms", "800"]);
    // Longer than Content-Length: the rest is read as the next request.
    let mut c = HttpConn::open(server.http);
    c.send_raw(
        b"PUT /api/v2/cache/f HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\n12SMUGGLED / HTTP/1.1\r\n\r\n",
    );
    assert_eq!(c.read_response().unwrap().status, 200);
    assert_eq!(c.read_response().unwrap().status, 400);
    assert!(c.is_closed_within(Duration::from_secs(3)));
    let mut bin = server.connect();
    assert_eq!(&bin.call(&get(b"f")).data[..], b"1");

    // Shorter than Content-Length: 408 once the request deadline passes.
    let mut c = HttpConn::open(server.http);
    c.send_raw(b"PUT /api/v2/cache/g HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n12");
    let started = Instant::now();
    let r = c.read_response().expect("408");
    assert_eq!((r.status, r.error_code()), (408, "CACHE_005".into()));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(bin.call(&get(b"g")).status, 1, "nothing stored");

    // Chunked bodies are decoded.
    let mut c = HttpConn::open(server.http);
    c.send_raw(
        b"PUT /api/v2/cache/ch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n4;x=y\r\nabcd\r\n3\r\n\x00\xff!\r\n0\r\nX-T: 1\r\n\r\n",
    );
    assert_eq!(c.read_response().unwrap().status, 200);
    assert_eq!(&bin.call(&get(b"ch")).data[..], b"abcd\x00\xff!");
    assert_eq!(
        c.get("/health/live").status,
        200,
        "keep-alive after a chunked body"
    );

    // Expect: 100-continue gets an interim answer before the body is sent.
    let mut c = HttpConn::open(server.http);
    c.send_raw(
        b"PUT /api/v2/cache/e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    );
    c.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut interim = [0u8; 25];
    std::io::Read::read_exact(&mut c.stream, &mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    c.send_raw(b"42");
    assert_eq!(c.read_response().unwrap().status, 200);
    assert_eq!(&bin.call(&get(b"e")).data[..], b"42");
}

#[test]
fn keep_alive_pipelining_and_connection_close() {
    let server = TestServer::start(&[]);
    let mut c = HttpConn::open(server.http);
    let mut burst = Vec::new();
    for i in 0..20 {
        burst.extend(HttpConn::encode(
            "PUT",
            &format!("/api/v2/cache/p{i}"),
            &[],
            i.to_string().as_bytes(),
        ));
        burst.extend(HttpConn::encode("GET", &format!("/api/v2/cache/p{i}"), &[], b""));
    }
    burst.extend(HttpConn::encode("GET", "/nowhere", &[], b""));
    burst.extend(HttpConn::encode("GET", "/api/v2/cache/p3", &[], b""));
    c.send_raw(&burst);
    for i in 0..20 {
        assert_eq!(c.read_response().unwrap().status, 200);
        let got = c.read_response().unwrap().json();
        assert_eq!(
            got["cache_response"]["data"],
            json!(i),
            "answers in request order"
        );
    }
    assert_eq!(c.read_response().unwrap().status, 404);
    assert_eq!(
        c.read_response().unwrap().json()["cache_response"]["data"],
        json!(3)
    );

    let r = c.request("GET", "/health/live", &[("Connection", "close")], b"");
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(c.is_closed_within(Duration::from_secs(3)));

    // HTTP/1.0: one request per connection unless keep-alive is asked for.
    let mut c = HttpConn::open(server.http);
    c.send_raw(b"GET /health/live HTTP/1.0\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert!(c.is_closed_within(Duration::from_secs(3)));
    let mut c = HttpConn::open(server.http);
    c.send_raw(b"GET /health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(
        c.read_response().unwrap().header("connection"),
        Some("keep-alive")
    );
    c.send_raw(b"GET /health/ready HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response().unwrap().status, 200);
    // HTTP/1.0 batch: streamed until close.
    let mut c = HttpConn::open(server.http);
    let body = r#"{"operations": [{"op": "get", "key": "p1"}]}"#;
    c.send_raw(
        format!(
            "POST /api/v2/cache/batch HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let r = c.read_response().unwrap();
    assert_eq!(r.json()["results"][0]["data"], json!(1));
}

/// One request of a pipelined burst and the answer it must get.
struct Expected {
    status: u16,
    /// `cache_response.data` of a hit, or `error.code` of an error.
    data: Option<Value>,
    code: Option<&'static str>,
}

#[test]
fn one_write_of_many_pipelined_requests_is_answered_in_order() {
    // Two shards: a read's keys are partly forwarded to the other shard
    // within the same cycle, and the answers must still come in order.
    let server = TestServer::start(&[]);
    let mut c = HttpConn::open(server.http);
    let mut burst = Vec::new();
    let mut expected: Vec<Expected> = Vec::new();
    let mut push = |method: &str, path: &str, body: &[u8], headers: &[(&str, &str)], want: Expected| {
        let id = format!("burst-{}", expected.len());
        let mut all = vec![("X-Correlation-ID", id.as_str())];
        all.extend_from_slice(headers);
        burst.extend(HttpConn::encode(method, path, &all, body));
        expected.push(want);
    };
    let json = [("Content-Type", "application/json")];
    let ok = |data: Option<Value>| Expected {
        status: 200,
        data,
        code: None,
    };
    let error = |status: u16, code: &'static str| Expected {
        status,
        data: None,
        code: Some(code),
    };
    // 279 requests: more than one cycle takes (256), so the burst spans
    // cycles too.
    for i in 0..120 {
        let path = format!("/api/v2/cache/burst:{i}");
        push(
            "PUT",
            &path,
            format!(r#"{{"n": {i}}}"#).as_bytes(),
            &json,
            ok(None),
        );
        push("GET", &path, b"", &[], ok(Some(json!({ "n": i }))));
        if i % 7 == 3 {
            push("DELETE", &path, b"", &[], ok(None));
            push("GET", &path, b"", &[], error(404, "CACHE_001"));
        }
        if i == 50 {
            // Errors in the middle leave the rest of the burst answered.
            push("PUT", &path, b"{\"n\":", &json, error(400, "CACHE_006"));
            push("GET", "/nowhere", b"", &[], error(404, "CACHE_007"));
            push("GET", "/health/live", b"", &[], ok(None));
            push("GET", &path, b"", &[], ok(Some(json!({ "n": 50 }))));
        }
    }
    push(
        "GET",
        "/api/v2/cache/burst:1",
        b"",
        &[("Connection", "close")],
        ok(Some(json!({ "n": 1 }))),
    );
    // After `Connection: close`: never answered.
    burst.extend(HttpConn::encode("GET", "/api/v2/cache/burst:2", &[], b""));
    assert!(expected.len() > 256, "{} requests", expected.len());
    c.send_raw(&burst);
    for (n, want) in expected.iter().enumerate() {
        let r = c.read_response().unwrap_or_else(|| panic!("answer {n} missing"));
        let id = format!("burst-{n}");
        assert_eq!(
            r.header("x-correlation-id"),
            Some(id.as_str()),
            "answer {n} in order"
        );
        assert_eq!(r.status, want.status, "answer {n}: {}", r.text());
        if let Some(data) = &want.data {
            assert_eq!(&r.json()["cache_response"]["data"], data, "answer {n}");
        }
        if let Some(code) = want.code {
            assert_eq!(r.error_code(), code, "answer {n}");
        }
        let close = (n == expected.len() - 1).then_some("close");
        assert_eq!(r.header("connection"), close, "answer {n}");
    }
    let last = expected.len() - 1;
    assert!(
        c.read_response().is_none(),
        "nothing after the close (request {last})"
    );
    assert!(c.is_closed_within(Duration::from_secs(3)));
    still_serving(&server);
}

#[test]
fn slow_and_idle_clients_are_cut_off() {
    let server = TestServer::start(&[
        "--http-request-timeout-ms",
        "600",
        "--http-idle-timeout-ms",
        "400",
    ]);
    // A head dribbled a byte at a time never completes: 408 and close.
    let mut c = HttpConn::open(server.http);
    let started = Instant::now();
    let mut answer = None;
    for b in b"GET /health/live HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if std::io::Write::write_all(&mut c.stream, &[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_millis(900) {
            answer = c.read_response();
            break;
        }
    }
    let r = answer.expect("a 408 answer");
    assert_eq!(r.status, 408);
    assert!(c.is_closed_within(Duration::from_secs(3)));

    // An idle keep-alive connection closes after the idle timeout.
    let mut c = HttpConn::open(server.http);
    assert_eq!(c.get("/health/live").status, 200);
    let idle = Instant::now();
    assert!(c.is_closed_within(Duration::from_secs(5)));
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    still_serving(&server);
}

#[test]
fn connections_count_against_the_shared_limit() {
    let server = TestServer::start(&["--max-connections", "2"]);
    let _a = server.connect();
    let _b = HttpConn::open(server.http);
    std::thread::sleep(Duration::from_millis(100));
    let mut c = HttpConn::open(server.http);
    c.send_raw(&HttpConn::encode("GET", "/health/live", &[], b""));
    let r = c.read_response().expect("a refusal");
    assert_eq!((r.status, r.error_code()), (503, "CACHE_009".into()));
    drop(_b);
    std::thread::sleep(Duration::from_millis(200));
    let mut d = HttpConn::open(server.http);
    assert_eq!(
        d.get("/health/live").status,
        200,
        "a slot frees when a connection closes"
    );
}

#[test]
fn bodies_larger_than_a_frame_are_refused_before_reading() {
    let server = TestServer::start(&["--max-frame-bytes", "64KiB", "--max-item-bytes", "32KiB"]);
    let mut c = HttpConn::open(server.http);
    // Declared too large: 413 without sending the body.
    c.send_raw(b"PUT /api/v2/cache/k HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n");
    let r = c.read_response().unwrap();
    assert_eq!((r.status, r.error_code()), (413, "CACHE_008".into()));
    // A chunked body growing past the limit.
    let mut c = HttpConn::open(server.http);
    let mut req = b"PUT /api/v2/cache/k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(format!("{:x}\r\n", 30_000).as_bytes());
        req.extend_from_slice(&vec![b'a'; 30_000]);
        req.extend_from_slice(b"\r\n");
    }
    let _ = std::io::Write::write_all(&mut c.stream, &req);
    assert_eq!(c.read_response().unwrap().status, 413);
    still_serving(&server);
}

/// ICD 1.1 over REST: `X-Correlation-ID` is read (or generated), returned
/// on every answer and carried by the request's operations.
#[test]
fn correlation_ids_are_read_returned_and_generated() {
    let server = TestServer::start(&[]);
    let mut c = HttpConn::open(server.http);
    let r = c.request(
        "PUT",
        "/api/v2/cache/corr:1",
        &[
            ("Content-Type", "application/json"),
            ("X-Correlation-ID", "rest-7"),
        ],
        br#"{"cache_request": {"value": 1}}"#,
    );
    assert_eq!((r.status, r.header("x-correlation-id")), (200, Some("rest-7")));
    let r = c.request(
        "GET",
        "/api/v2/cache/absent:1",
        &[("X-Correlation-ID", "rest-8")],
        b"",
    );
    assert_eq!((r.status, r.header("x-correlation-id")), (404, Some("rest-8")));
    let r = c.request(
        "POST",
        "/api/v2/cache/batch",
        &[
            ("Content-Type", "application/json"),
            ("X-Correlation-ID", "rest-9"),
        ],
        br#"{"operations": [{"op": "get", "key": "corr:1"}]}"#,
    );
    assert_eq!((r.status, r.header("x-correlation-id")), (200, Some("rest-9")));
    let generated: Vec<String> = (0..2)
        .map(|_| {
            c.get("/health/live")
                .header("x-correlation-id")
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        generated
            .iter()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())),
        "{generated:?}"
    );
    assert_ne!(generated[0], generated[1]);
    let r = c.request(
        "GET",
        "/api/v2/cache/corr:1",
        &[("X-Correlation-ID", "bad id")],
        b"",
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "CACHE_006");
}
