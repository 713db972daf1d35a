//! A REST `pattern` that spans the cluster (issue 17: "fan-out operations
//! span the cluster as they span shards"; docs/cluster.md, "Routing").
//!
//! Each node answers `pattern` with the keys of its own primary slots. A
//! REST `pattern` through any node asks every other node of its map for
//! theirs, over their REST ports (`?scope=node`, with the caller's bearer
//! token), at once, and merges the answers: a gateway gets the whole
//! cluster from one node. A node that does not answer within
//! [`PEER_TIMEOUT`] fails the request (503, CACHE_011, naming it) rather
//! than returning a silently partial list.

use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use serde_json::Value;

/// How long a peer has to answer its part.
pub(super) const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest answer read from a peer.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// The query parameter that asks a node for its own part only.
pub(super) const NODE_SCOPE: &str = "scope=node";

/// `GET path_and_query` on a peer's REST port: the `data` of its ICD 8.1
/// answer, or why not.
pub(super) async fn get_data(
    addr: &str,
    path_and_query: &str,
    bearer: Option<&str>,
) -> Result<Value, String> {
    let ask = ask(addr, path_and_query, bearer);
    match glommio::timer::timeout(PEER_TIMEOUT, async { Ok(ask.await) }).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("node {addr} did not answer within {PEER_TIMEOUT:?}")),
    }
}

async fn ask(addr: &str, path_and_query: &str, bearer: Option<&str>) -> Result<Value, String> {
    let fail = |e: &dyn std::fmt::Display| format!("node {addr}: {e}");
    let mut stream = glommio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| fail(&e))?;
    let mut request = format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = bearer {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| fail(&e))?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(body) = complete_body(&buf).map_err(|e| fail(&e))? {
            let v: Value = serde_json::from_slice(body).map_err(|e| fail(&e))?;
            return Ok(v["cache_response"]["data"].clone());
        }
        let n = stream.read(&mut chunk).await.map_err(|e| fail(&e))?;
        if n == 0 {
            return Err(fail(&"closed the connection before its answer was complete"));
        }
        if buf.len() + n > MAX_ANSWER_BYTES {
            return Err(fail(&format!("answer larger than {MAX_ANSWER_BYTES} bytes")));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The body of a complete `200` answer in `buf`; `None` while incomplete.
fn complete_body(buf: &[u8]) -> Result<Option<&[u8]>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf).map_err(|e| e.to_string())? {
        httparse::Status::Partial => return Ok(None),
        httparse::Status::Complete(n) => n,
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok())
        .ok_or("answer without Content-Length")?;
    if buf.len() < head_len + length {
        return Ok(None);
    }
    let body = &buf[head_len..head_len + length];
    match response.code {
        Some(200) => Ok(Some(body)),
        code => Err(format!(
            "answered {}: {}",
            code.unwrap_or(0),
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )),
    }
}

/// Merges the `pattern` data of the other nodes into this node's: their
/// items appended (a key named twice while the map moves kept once), at
/// most `limit` in all, `truncated` if any part was or the limit cut.
pub(super) fn merge(mine: &mut Value, theirs: Vec<Value>, limit: usize) {
    let mut truncated = mine["truncated"].as_bool().unwrap_or(false);
    let mut items: Vec<Value> = mine["items"].as_array().cloned().unwrap_or_default();
    let mut seen: std::collections::HashSet<String> = items.iter().map(|i| i["key"].to_string()).collect();
    for part in theirs {
        truncated |= part["truncated"].as_bool().unwrap_or(false);
        for item in part["items"].as_array().into_iter().flatten() {
            if !seen.insert(item["key"].to_string()) {
                continue;
            }
            if items.len() == limit {
                truncated = true;
                break;
            }
            items.push(item.clone());
        }
    }
    mine["count"] = items.len().into();
    mine["truncated"] = truncated.into();
    mine["items"] = Value::Array(items);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_is_complete_at_its_content_length_and_errors_are_named() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n";
        let mut buf = head.to_vec();
        assert_eq!(complete_body(&buf).unwrap(), None);
        buf.extend_from_slice(b"{}");
        assert_eq!(complete_body(&buf).unwrap(), None);
        buf.extend_from_slice(b"  ");
        assert_eq!(complete_body(&buf).unwrap(), Some(&b"{}  "[..]));
        let refused = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno";
        assert!(complete_body(refused).unwrap_err().contains("401"));
        assert!(complete_body(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn parts_merge_once_each_up_to_the_limit() {
        let item = |k: &str| json!({ "key": k });
        let mut mine = json!({ "count": 2, "truncated": false, "items": [item("a"), item("b")] });
        let theirs = vec![
            json!({ "count": 2, "truncated": false, "items": [item("b"), item("c")] }),
            json!({ "count": 1, "truncated": false, "items": [item("d")] }),
        ];
        merge(&mut mine, theirs.clone(), 10);
        assert_eq!(mine["count"], 4);
        assert_eq!(mine["truncated"], false);
        let mut small = json!({ "count": 2, "truncated": false, "items": [item("a"), item("b")] });
        merge(&mut small, theirs, 3);
        assert_eq!(small["count"], 3);
        assert_eq!(small["truncated"], true);
    }
}
