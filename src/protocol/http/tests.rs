use super::*;
use proptest::prelude::*;

const MAX_BODY: usize = 1 << 20;

fn parse(bytes: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
    HeadReader::new().poll(bytes, MAX_BODY)
}

fn head(bytes: &[u8]) -> RequestHead {
    parse(bytes).expect("valid").expect("complete").0
}

fn status_of(bytes: &[u8]) -> u16 {
    parse(bytes).expect_err("refused").status
}

#[test]
fn a_simple_request_is_parsed() {
    let raw = b"GET /api/v2/cache/k%20x?limit=5 HTTP/1.1\r\nHost: h\r\nAccept: Application/Octet-Stream\r\n\r\nNEXT";
    let (h, len) = parse(raw).unwrap().unwrap();
    assert_eq!(len, raw.len() - 4);
    assert_eq!(h.method, Method::Get);
    assert_eq!(h.path, "/api/v2/cache/k%20x");
    assert_eq!(h.query.as_deref(), Some("limit=5"));
    assert_eq!(h.body, BodyFraming::None);
    assert!(h.keep_alive);
    assert_eq!(h.accept.as_deref(), Some("application/octet-stream"));
}

#[test]
fn framing_headers() {
    let h = head(b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\nContent-Type: application/json; charset=utf-8\r\n\r\n");
    assert_eq!(h.body, BodyFraming::Length(12));
    assert_eq!(h.content_type.as_deref(), Some("application/json"));
    let h = head(b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n");
    assert_eq!(h.body, BodyFraming::Chunked);
    // Ambiguous or unsupported framing is refused, never guessed.
    for (raw, status) in [
        (
            &b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            400,
        ),
        (
            b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            400,
        ),
        (b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n", 400),
        (b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n", 400),
        (
            b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n",
            413,
        ),
        (
            b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            413,
        ),
        (
            b"PUT /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        (
            b"PUT /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
            400,
        ),
        (b"PUT /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHost: a\r\nExpect: bananas\r\n\r\n", 417),
        (b"GET /x HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"GET x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nHo st: a\r\n\r\n", 400),
        (b"G(T /x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ] {
        assert_eq!(status_of(raw), status, "{}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn connection_persistence() {
    assert!(!head(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").keep_alive);
    assert!(!head(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    let h = head(b"GET http://example.com/api?x=1 HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!((h.path.as_str(), h.query.as_deref()), ("/api", Some("x=1")));
}

#[test]
fn oversized_heads_are_refused() {
    let mut raw = b"GET /x HTTP/1.1\r\nHost: h\r\n".to_vec();
    while raw.len() < MAX_HEAD_BYTES + 10 {
        raw.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let mut reader = HeadReader::new();
    assert_eq!(reader.poll(&raw, MAX_BODY).unwrap_err().status, 431);
    let long_line = [b"GET /".as_slice(), &vec![b'a'; MAX_HEAD_BYTES]].concat();
    assert_eq!(status_of(&long_line), 414);
    let mut many = b"GET /x HTTP/1.1\r\nHost: h\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(status_of(&many), 431);
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("a%2Fb%20c").unwrap(), b"a/b c");
    assert_eq!(percent_decode("%ff%FE").unwrap(), vec![0xff, 0xfe]);
    assert!(percent_decode("%").is_err());
    assert!(percent_decode("%4").is_err());
    assert!(percent_decode("%zz").is_err());
    assert_eq!(percent_decode("").unwrap(), b"");
}

#[test]
fn chunked_bodies_decode_with_extensions_and_trailers() {
    let wire = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
    let mut d = ChunkedDecoder::new(100);
    let mut body = Vec::new();
    let used = d.decode(wire, &mut body).unwrap();
    assert!(d.is_done());
    assert_eq!(body, b"hello world");
    assert_eq!(&wire[used..], b"NEXT");

    let mut d = ChunkedDecoder::new(8);
    assert_eq!(d.decode(b"9\r\n", &mut Vec::new()).unwrap_err().status, 413);
    let mut d = ChunkedDecoder::new(8);
    assert_eq!(d.decode(b"2\r\nabXY", &mut Vec::new()).unwrap_err().status, 400);
    let mut d = ChunkedDecoder::new(8);
    assert_eq!(d.decode(b"zz\r\n", &mut Vec::new()).unwrap_err().status, 400);
    let mut d = ChunkedDecoder::new(8);
    let long = [b"1;".as_slice(), &[b'x'; 2000]].concat();
    assert_eq!(d.decode(&long, &mut Vec::new()).unwrap_err().status, 400);
}

#[test]
fn response_heads() {
    let mut out = Vec::new();
    write_response_head(
        &mut out,
        1,
        405,
        Some("application/json"),
        ResponseLength::Known(2),
        false,
        &[("Allow", "GET")],
    );
    assert_eq!(
        out,
        b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\nContent-Length: 2\r\nAllow: GET\r\nConnection: close\r\n\r\n"
    );
    let mut out = Vec::new();
    write_chunk(&mut out, b"hello");
    write_chunk(&mut out, b"");
    out.extend_from_slice(LAST_CHUNK);
    assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
}

/// Parses `bytes` delivered in the pieces given by `cuts`, as the server
/// would (head, then body), returning what the whole-buffer parse returns.
fn parse_split(bytes: &[u8], cuts: &[usize]) -> Result<Option<(RequestHead, Vec<u8>)>, HttpError> {
    let mut reader = HeadReader::new();
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    ends.push(bytes.len());
    ends.sort_unstable();
    let mut head = None;
    let mut decoder: Option<ChunkedDecoder> = None;
    let mut body = Vec::new();
    let mut pos = 0;
    for end in ends {
        let buf = &bytes[..end];
        if head.is_none() {
            if let Some((h, len)) = reader.poll(buf, 64)? {
                pos = len;
                if h.body == BodyFraming::Chunked {
                    decoder = Some(ChunkedDecoder::new(64));
                }
                head = Some(h);
            }
        }
        if let Some(d) = decoder.as_mut() {
            pos += d.decode(&buf[pos..], &mut body)?;
        }
    }
    Ok(head.map(|h| (h, body)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The one-pass search for an empty line finds what the two whole
    /// searches it replaced found.
    #[test]
    fn empty_line_search_matches_the_plain_one(
        bytes in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'a')], 0..40),
        from in 0usize..40,
    ) {
        let from = from.min(bytes.len());
        let tail = &bytes[from..];
        let plain = tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n");
        prop_assert_eq!(window_ends_head(&bytes, from), plain);
    }

    /// Any bytes at all, in any pieces: an answer, never a panic.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let _ = parse_split(&bytes, &cuts);
    }

    /// Near-valid requests with random damage and random splits: the
    /// outcome does not depend on how the bytes were split.
    #[test]
    fn splits_do_not_change_the_outcome(
        method in prop::sample::select(vec!["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH"]),
        path in "/[a-z0-9%/?=&]{0,20}",
        headers in proptest::collection::vec(
            prop::sample::select(vec![
                "Host: h", "Content-Length: 3", "Content-Length: 70", "Transfer-Encoding: chunked",
                "Connection: close", "Expect: 100-continue", "X-A: b", "Transfer-Encoding: gzip",
            ]), 0..4),
        body in proptest::collection::vec(any::<u8>(), 0..40),
        damage in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut bytes = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
        for h in &headers {
            bytes.extend_from_slice(h.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"\r\n3\r\nabc\r\n0\r\n\r\n");
        bytes.extend_from_slice(&body);
        for (at, byte) in damage {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        let whole = parse_split(&bytes, &[]);
        prop_assert_eq!(parse_split(&bytes, &cuts), whole);
    }
}

#[test]
fn correlation_ids_are_read_and_checked() {
    let h = head(b"GET /x HTTP/1.1\r\nHost: h\r\nx-correlation-id: req-7\r\n\r\n");
    assert_eq!(h.correlation_id.as_deref(), Some("req-7"));
    assert_eq!(head(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").correlation_id, None);
    let long = format!(
        "GET /x HTTP/1.1\r\nHost: h\r\nX-Correlation-ID: {}\r\n\r\n",
        "a".repeat(65)
    );
    for raw in [
        long.as_bytes(),
        b"GET /x HTTP/1.1\r\nHost: h\r\nX-Correlation-ID: a b\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: h\r\nX-Correlation-ID: a\r\nX-Correlation-ID: b\r\n\r\n",
    ] {
        assert_eq!(status_of(raw), 400);
    }
}
