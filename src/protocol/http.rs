//! HTTP/1.1 messages ↔ bytes for the REST front end: request heads parsed
//! with httparse under size limits, message body framing (RFC 9112 §6,
//! including chunked decoding), percent-decoding, and response heads. No
//! storage knowledge and no I/O: bytes in, requests out; responses in,
//! bytes out. Every function returns an error for bad input, never panics.
//!
//! Smuggling defence: a request whose body length is ambiguous (both
//! `Content-Length` and `Transfer-Encoding`, several or malformed
//! `Content-Length`s, a transfer coding other than a lone `chunked`) is
//! refused and the connection closed, never guessed at.

use thiserror::Error;

/// Largest request head (request line and headers), and largest chunked
/// trailer section. Beyond it: 431 (or 414 when the request line alone is
/// longer).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Most header fields in one request.
pub const MAX_HEADERS: usize = 64;

/// Longest chunk-size line (size and extensions) of a chunked body.
const MAX_CHUNK_LINE_BYTES: usize = 1024;

/// A request the connection cannot go on from: answered with `status`, then
/// the connection is closed (the stream cannot be resynchronised).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{status}: {message}")]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
}

/// Request methods the API knows; anything else is kept by name (and gets
/// 405 from the router).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
    Other(String),
}

impl Method {
    fn parse(name: &str) -> Method {
        match name {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            other => Method::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
            Method::Other(name) => name,
        }
    }
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (neither `Content-Length` nor `Transfer-Encoding`).
    None,
    /// `Content-Length: n`, already checked against the body limit.
    Length(usize),
    /// `Transfer-Encoding: chunked`: decode with [`ChunkedDecoder`].
    Chunked,
}

/// The parts of a request head the API uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    /// The path of the request target, still percent-encoded (ASCII).
    pub path: String,
    /// The query string without `?`, still percent-encoded.
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub body: BodyFraming,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// Media type of `Content-Type`, lower case, without parameters.
    pub content_type: Option<String>,
    /// `Accept`, lower case.
    pub accept: Option<String>,
    /// The credentials of `Authorization: Bearer <token>` (the token only;
    /// an empty string for any other scheme).
    pub bearer: Option<String>,
    /// `X-Correlation-ID` (ICD 1.1): 1 to [`MAX_CORRELATION_ID_BYTES`]
    /// visible ASCII characters.
    pub correlation_id: Option<String>,
}

/// Longest `X-Correlation-ID` accepted (the binary protocol keeps as many
/// bytes of a correlation id).
pub const MAX_CORRELATION_ID_BYTES: usize = 64;

/// Finds and parses request heads in a connection's buffered bytes.
///
/// httparse re-parses from the start on every call, so this only calls it
/// once the bytes hold an empty line (a possible end of head), scanning each
/// byte for that once; the head size is capped at [`MAX_HEAD_BYTES`].
#[derive(Debug, Default)]
pub struct HeadReader {
    scanned: usize,
}

impl HeadReader {
    pub fn new() -> Self {
        HeadReader::default()
    }

    /// Looks for a whole head at the start of `buf` (the same buffer as the
    /// last call, possibly with more bytes appended). Returns the head and
    /// its length in bytes, `None` when more bytes are needed, or an error.
    /// After a head is returned the reader is ready for the next request.
    pub fn poll(&mut self, buf: &[u8], max_body: usize) -> Result<Option<(RequestHead, usize)>, HttpError> {
        let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
        let from = self.scanned.min(window.len()).saturating_sub(2);
        let has_end = window_ends_head(window, from);
        self.scanned = window.len();
        if has_end {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(window) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = interpret(&req, max_body)?;
                    self.scanned = 0;
                    return Ok(Some((head, len)));
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(HttpError::new(
                        431,
                        format!("more than {MAX_HEADERS} header fields"),
                    ))
                }
                Err(httparse::Error::Version) => {
                    return Err(HttpError::new(505, "only HTTP/1.0 and HTTP/1.1 are served"))
                }
                Err(e) => return Err(HttpError::bad(format!("malformed request head: {e}"))),
            }
        }
        if buf.len() >= MAX_HEAD_BYTES {
            if !window.contains(&b'\n') {
                return Err(HttpError::new(414, "request line longer than 16 KiB"));
            }
            return Err(HttpError::new(431, "request head longer than 16 KiB"));
        }
        Ok(None)
    }
}

/// Whether `buf[from..]` holds an empty line: `\n\n` or `\n\r\n`. One pass,
/// stopping at the first: two whole-buffer searches per request were
/// quadratic in the requests buffered (8.9% of the profile at pipeline 16).
fn window_ends_head(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from..];
    let mut next = 0;
    while let Some(at) = tail[next..].iter().position(|&b| b == b'\n') {
        let lf = next + at;
        match tail.get(lf + 1) {
            Some(b'\n') => return true,
            Some(b'\r') if tail.get(lf + 2) == Some(&b'\n') => return true,
            _ => next = lf + 1,
        }
    }
    false
}

/// Checks the head's framing headers and extracts what the API needs.
fn interpret(req: &httparse::Request<'_, '_>, max_body: usize) -> Result<RequestHead, HttpError> {
    let method = Method::parse(req.method.unwrap_or_default());
    let minor_version = req.version.unwrap_or(1);
    let (path, query) = split_target(req.path.unwrap_or_default())?;
    let mut hosts = 0;
    let mut content_length: Option<usize> = None;
    let mut transfer_codings: Vec<String> = Vec::new();
    let mut saw_transfer_encoding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut content_type = None;
    let mut accept = None;
    let mut bearer = None;
    let mut correlation_id = None;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = || {
            std::str::from_utf8(h.value)
                .map(str::trim)
                .map_err(|_| HttpError::bad(format!("header {} is not ASCII", h.name)))
        };
        match name.as_str() {
            "host" => hosts += 1,
            "content-length" => {
                if content_length.is_some() {
                    return Err(HttpError::bad("more than one Content-Length"));
                }
                content_length = Some(parse_content_length(value()?, max_body)?);
            }
            "transfer-encoding" => {
                saw_transfer_encoding = true;
                for coding in value()?.split(',') {
                    transfer_codings.push(coding.trim().to_ascii_lowercase());
                }
            }
            "connection" => {
                for token in value()?.split(',') {
                    match token.trim().to_ascii_lowercase().as_str() {
                        "close" => close = true,
                        "keep-alive" => keep_alive_token = true,
                        _ => {}
                    }
                }
            }
            "expect" => {
                if !value()?.eq_ignore_ascii_case("100-continue") {
                    return Err(HttpError::new(417, "only Expect: 100-continue is supported"));
                }
                expect_continue = true;
            }
            "content-type" => {
                let media = value()?.split(';').next().unwrap_or_default();
                content_type = Some(media.trim().to_ascii_lowercase());
            }
            "accept" => accept = Some(value()?.to_ascii_lowercase()),
            "authorization" => {
                if bearer.is_some() {
                    return Err(HttpError::bad("more than one Authorization"));
                }
                bearer = Some(bearer_token(value()?).to_string());
            }
            "x-correlation-id" => {
                if correlation_id.is_some() {
                    return Err(HttpError::bad("more than one X-Correlation-ID"));
                }
                let id = value()?;
                if id.is_empty()
                    || id.len() > MAX_CORRELATION_ID_BYTES
                    || !id.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(HttpError::bad(format!(
                        "X-Correlation-ID must be 1 to {MAX_CORRELATION_ID_BYTES} visible ASCII characters"
                    )));
                }
                correlation_id = Some(id.to_string());
            }
            _ => {}
        }
    }
    if hosts > 1 || (minor_version == 1 && hosts == 0) {
        return Err(HttpError::bad(
            "an HTTP/1.1 request needs exactly one Host header",
        ));
    }
    let body = match (saw_transfer_encoding, content_length) {
        (true, Some(_)) => return Err(HttpError::bad("both Content-Length and Transfer-Encoding")),
        (true, None) => {
            if minor_version == 0 {
                return Err(HttpError::bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            match transfer_codings.last().map(String::as_str) {
                Some("chunked") if transfer_codings.len() == 1 => BodyFraming::Chunked,
                Some("chunked") if !transfer_codings.iter().any(String::is_empty) => {
                    return Err(HttpError::new(
                        501,
                        "only Transfer-Encoding: chunked is supported",
                    ))
                }
                _ => return Err(HttpError::bad("Transfer-Encoding must end with chunked")),
            }
        }
        (false, Some(0)) | (false, None) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    let keep_alive = !close && (minor_version == 1 || keep_alive_token);
    Ok(RequestHead {
        method,
        path,
        query,
        minor_version,
        body,
        keep_alive,
        expect_continue,
        content_type,
        accept,
        bearer,
        correlation_id,
    })
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 6750); ""
/// for any other scheme.
fn bearer_token(value: &str) -> &str {
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => "",
    }
}

/// `Content-Length`: one or more digits and nothing else (no sign, no list).
fn parse_content_length(value: &str, max_body: usize) -> Result<usize, HttpError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::bad("Content-Length is not a number"));
    }
    let too_large = || HttpError::new(413, format!("body larger than {max_body} bytes"));
    let n: usize = value.parse().map_err(|_| too_large())?;
    if n > max_body {
        return Err(too_large());
    }
    Ok(n)
}

/// Splits the request target into path and query. Origin form (`/path?q`)
/// and absolute form (`http://host/path?q`) are accepted; the target must
/// be ASCII (other bytes are to be percent-encoded).
fn split_target(target: &str) -> Result<(String, Option<String>), HttpError> {
    if !target.is_ascii() {
        return Err(HttpError::bad(
            "the request target must be ASCII (percent-encode other bytes)",
        ));
    }
    let origin = if target.starts_with('/') {
        target
    } else if let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        match rest.find('/') {
            Some(i) => &rest[i..],
            None => "/",
        }
    } else {
        return Err(HttpError::bad("the request target must be a path"));
    };
    let without_fragment = origin.split('#').next().unwrap_or_default();
    Ok(match without_fragment.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (without_fragment.to_string(), None),
    })
}

/// Decodes `%XX` escapes. Any `%` not followed by two hex digits is an
/// error. The result is bytes: it need not be UTF-8.
pub fn percent_decode(text: &str) -> Result<Vec<u8>, HttpError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
            match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(HttpError::bad("invalid percent-encoding in the request target")),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Decodes a chunked body incrementally, so that each byte received is
/// looked at a bounded number of times however the body is split.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    max_body: usize,
    trailer_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data { remaining: usize },
    DataEnd,
    Trailer,
    Done,
}

impl ChunkedDecoder {
    pub fn new(max_body: usize) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            max_body,
            trailer_bytes: 0,
        }
    }

    /// Whether the whole body (and its trailer section) has been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input`, appending chunk data to `body`; returns the
    /// bytes of `input` consumed. Call again with more input until
    /// [`ChunkedDecoder::is_done`].
    pub fn decode(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<usize, HttpError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                ChunkState::Done => return Ok(pos),
                ChunkState::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        pos += used;
                        if size == 0 {
                            self.state = ChunkState::Trailer;
                            continue;
                        }
                        let size = usize::try_from(size).unwrap_or(usize::MAX);
                        if size > self.max_body.saturating_sub(body.len()) {
                            return Err(HttpError::new(
                                413,
                                format!("body larger than {} bytes", self.max_body),
                            ));
                        }
                        self.state = ChunkState::Data { remaining: size };
                    }
                    Ok(httparse::Status::Partial) => {
                        if rest.len() > MAX_CHUNK_LINE_BYTES {
                            return Err(HttpError::bad("chunk size line too long"));
                        }
                        return Ok(pos);
                    }
                    Err(_) => return Err(HttpError::bad("invalid chunk size")),
                },
                ChunkState::Data { remaining } => {
                    let take = remaining.min(rest.len());
                    body.extend_from_slice(&rest[..take]);
                    pos += take;
                    if take == remaining {
                        self.state = ChunkState::DataEnd;
                    } else {
                        self.state = ChunkState::Data {
                            remaining: remaining - take,
                        };
                        return Ok(pos);
                    }
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(pos);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(HttpError::bad("chunk data not followed by CRLF"));
                    }
                    pos += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if self.trailer_bytes + rest.len() > MAX_HEAD_BYTES {
                            return Err(HttpError::new(431, "trailer section longer than 16 KiB"));
                        }
                        return Ok(pos);
                    };
                    pos += line_end + 2;
                    self.trailer_bytes += line_end + 2;
                    if self.trailer_bytes > MAX_HEAD_BYTES {
                        return Err(HttpError::new(431, "trailer section longer than 16 KiB"));
                    }
                    if line_end == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// The reason phrase of a status code the server sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseLength {
    /// `Content-Length: n` (also sent, without the body, for HEAD).
    Known(usize),
    /// `Transfer-Encoding: chunked` (HTTP/1.1 only).
    Chunked,
    /// Delimited by closing the connection (HTTP/1.0 streaming).
    UntilClose,
}

/// Appends a response head. `extra` are further header fields.
pub fn write_response_head(
    out: &mut Vec<u8>,
    minor_version: u8,
    status: u16,
    content_type: Option<&str>,
    length: ResponseLength,
    keep_alive: bool,
    extra: &[(&str, &str)],
) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.{} {} {}\r\n",
        minor_version.min(1),
        status,
        reason_phrase(status)
    );
    if let Some(ct) = content_type {
        let _ = write!(out, "Content-Type: {ct}\r\n");
    }
    match length {
        ResponseLength::Known(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        ResponseLength::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ResponseLength::UntilClose => {}
    }
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if minor_version == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `data` as one chunk of a chunked body (nothing for empty data:
/// an empty chunk would end the body).
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    use std::io::Write;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests;
