//! HTTP/1.1 as the gateway speaks it to its upstream, without I/O: the request
//! head it writes, the response head it parses (with `httparse`, hyper's own
//! parser), and the body framing it decodes (RFC 9112, sections 6 and 7).
//!
//! Why not hyper's client connection: an open stream is mostly buffers, and
//! hyper's client keeps for each connection an 8 KiB read buffer, an 8 KiB
//! header write buffer and a request channel whose first block holds 32
//! requests (about 9 KiB), for as long as the connection lives. Of keyward's
//! 47 KiB of heap per open stream, those were 25 (massif, docs/BENCHMARKS.md).
//! Here a connection holds no buffer while it waits: the request head is
//! written from a buffer sized to it and freed, and a response body keeps only
//! bytes it has read but not yet handed on.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// The largest response head accepted (status line and headers).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// The most response headers accepted (hyper's default is 100).
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// The most trailer bytes accepted after a chunked body (they are dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// A response the upstream sent that HTTP/1.1 does not allow, or that is over
/// one of the limits above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Appends the head of a request to `out`. `Content-Length` is written for a
/// body, and for methods that carry one even when it is empty; the proxy never
/// forwards the client's own framing headers.
pub(super) fn encode_request(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body_len: usize,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if body_len > 0 || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The size of a request head, for [`encode_request`]'s buffer.
pub(super) fn request_head_len(target: &str, headers: &HeaderMap) -> usize {
    let fields: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    // Method, spaces, version, the length header and the blank line.
    target.len() + fields + 64
}

/// A parsed response head.
pub(super) struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    /// How the body is delimited.
    pub framing: Framing,
    /// The connection may carry another request once this body has ended.
    pub reusable: bool,
}

/// Parses the response head at the start of `buf`, after any informational
/// (1xx) responses, which are skipped. `Ok(None)`: the head is not complete
/// yet. On success, the bytes of the head are removed from `buf`.
pub(super) fn parse_response(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<Head>, Malformed> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut fields);
        let len = match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(Malformed("the response head is too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Malformed("the response has too many headers"))
            }
            Err(_) => return Err(Malformed("the response head is not valid HTTP/1.1")),
        };
        let code = parsed.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| Malformed("the response status is not valid"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Malformed("the upstream switched protocols unasked"));
            }
            buf.advance(len);
            continue;
        }
        let version = match parsed.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let mut headers = HeaderMap::with_capacity(parsed.headers.len());
        for field in parsed.headers.iter() {
            let name = HeaderName::from_bytes(field.name.as_bytes())
                .map_err(|_| Malformed("a response header name is not valid"))?;
            let value = HeaderValue::from_bytes(field.value)
                .map_err(|_| Malformed("a response header value is not valid"))?;
            headers.append(name, value);
        }
        buf.advance(len);
        let framing = framing(method, status, &headers)?;
        let reusable = !matches!(framing, Framing::UntilClose) && keeps_alive(version, &headers);
        return Ok(Some(Head {
            status,
            version,
            headers,
            framing,
            reusable,
        }));
    }
}

/// How a response's body ends (RFC 9112, section 6.3).
fn framing(method: &Method, status: StatusCode, headers: &HeaderMap) -> Result<Framing, Malformed> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Length(0));
    }
    if let Some(last) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        let chunked = last
            .as_bytes()
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = parse_decimal(part.trim_ascii())
                .ok_or(Malformed("the response's Content-Length is not valid"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Malformed(
                    "the response has differing Content-Length values",
                ));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether the connection stays open after this response.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &str| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    };
    match version {
        Version::HTTP_10 => has("keep-alive"),
        _ => !has("close"),
    }
}

/// How a body is delimited, and how far it has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// `Content-Length`: this many bytes are still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`, at this point of the framing.
    Chunked(Chunk),
    /// Neither: the body ends when the connection closes.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data, before its line end.
    DataEnd,
    /// After the last chunk, in the trailer section, with this many bytes seen.
    Trailers(usize),
    /// The body has ended.
    Done,
}

impl Framing {
    /// The body has been read to its end.
    pub(super) fn is_done(&self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunk::Done))
    }

    /// The next piece of body data in `buf`, removed from it; `Ok(None)` when
    /// `buf` holds none (more must be read, or the body has ended: see
    /// [`Framing::is_done`]). Data comes out as it arrives: a chunk split
    /// across reads comes out in parts, never held back for its end.
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Malformed> {
        loop {
            match self {
                Framing::Length(0) | Framing::Chunked(Chunk::Done) => return Ok(None),
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = (*left).min(buf.len() as u64);
                    *left -= take;
                    if *self == Framing::Chunked(Chunk::Data(0)) {
                        *self = Framing::Chunked(Chunk::DataEnd);
                    }
                    return Ok(Some(buf.split_to(take as usize).freeze()));
                }
                Framing::UntilClose => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(buf.split().freeze()));
                }
                Framing::Chunked(Chunk::Size) => {
                    let Some(end) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(Malformed("a chunk-size line is too long"));
                        }
                        return Ok(None);
                    };
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 1);
                    *self = Framing::Chunked(match size {
                        0 => Chunk::Trailers(0),
                        n => Chunk::Data(n),
                    });
                }
                Framing::Chunked(Chunk::DataEnd) => match buf.first() {
                    None => return Ok(None),
                    Some(b'\n') => {
                        buf.advance(1);
                        *self = Framing::Chunked(Chunk::Size);
                    }
                    Some(b'\r') if buf.len() < 2 => return Ok(None),
                    Some(b'\r') if buf[1] == b'\n' => {
                        buf.advance(2);
                        *self = Framing::Chunked(Chunk::Size);
                    }
                    Some(_) => return Err(Malformed("a chunk is longer than its size")),
                },
                Framing::Chunked(Chunk::Trailers(seen)) => {
                    let Some(end) = memchr::memchr(b'\n', buf) else {
                        if *seen + buf.len() > MAX_TRAILERS {
                            return Err(Malformed("the trailers are too large"));
                        }
                        return Ok(None);
                    };
                    let blank = buf[..end].iter().all(|&b| b == b'\r');
                    *seen += end + 1;
                    buf.advance(end + 1);
                    if blank {
                        *self = Framing::Chunked(Chunk::Done);
                    } else if *seen > MAX_TRAILERS {
                        return Err(Malformed("the trailers are too large"));
                    }
                }
            }
        }
    }

    /// The connection closed: whether that is the body's end, or cut it short.
    pub(super) fn at_close(&self) -> Result<(), Malformed> {
        match self {
            Framing::UntilClose => Ok(()),
            f if f.is_done() => Ok(()),
            _ => Err(Malformed(
                "the upstream closed the connection before the body's end",
            )),
        }
    }

    /// Bytes still to come, when the body's length is known.
    pub(super) fn remaining(&self) -> Option<u64> {
        match self {
            Framing::Length(n) => Some(*n),
            _ => None,
        }
    }
}

/// The size on a chunk-size line (extensions after `;` are ignored).
fn chunk_size(line: &[u8]) -> Result<u64, Malformed> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let invalid = Malformed("a chunk size is not valid");
    if digits.is_empty() || digits.len() > 15 {
        return Err(invalid);
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(16).ok_or(invalid)?;
        Ok(n << 4 | u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, Malformed> {
        parse_response(&mut BytesMut::from(text), &Method::POST)
    }

    /// Decodes `wire` fed in pieces of `step` bytes: the data, and whether the
    /// body ended.
    fn decode_in_steps(mut framing: Framing, wire: &[u8], step: usize) -> (Vec<u8>, bool) {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            while let Some(data) = framing.decode(&mut buf).unwrap() {
                assert!(!data.is_empty());
                out.extend_from_slice(&data);
            }
        }
        (out, framing.is_done())
    }

    #[test]
    fn chunked_body_decodes_whatever_the_reads_split() {
        let wire =
            b"5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: t\r\n\r\n";
        for step in 1..wire.len() {
            let (data, done) = decode_in_steps(Framing::Chunked(Chunk::Size), wire, step);
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert!(done, "step {step}");
        }
    }

    #[test]
    fn a_chunk_split_across_reads_comes_out_at_once_in_parts() {
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut buf = BytesMut::from(&b"a\r\nhello"[..]);
        assert_eq!(framing.decode(&mut buf).unwrap().unwrap(), "hello");
        assert_eq!(framing.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"world\r\n0\r\n\r\n");
        assert_eq!(framing.decode(&mut buf).unwrap().unwrap(), "world");
        assert_eq!(framing.decode(&mut buf).unwrap(), None);
        assert!(framing.is_done());
    }

    #[test]
    fn length_body_stops_at_its_length() {
        let mut framing = Framing::Length(5);
        let mut buf = BytesMut::from(&b"hello, extra"[..]);
        assert_eq!(framing.decode(&mut buf).unwrap().unwrap(), "hello");
        assert!(framing.is_done());
        assert_eq!(&buf[..], b", extra");
    }

    #[test]
    fn smuggled_or_broken_chunks_are_refused() {
        for wire in [
            &b"zz\r\nhello\r\n"[..],
            b"5\r\nhelloX\r\n",
            b"\r\n",
            b"fffffffffffffffff\r\n",
            b"-1\r\n",
        ] {
            let mut framing = Framing::Chunked(Chunk::Size);
            let mut buf = BytesMut::from(wire);
            let result = (|| {
                while framing.decode(&mut buf)?.is_some() {}
                Ok::<_, Malformed>(())
            })();
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn endless_chunk_size_line_or_trailers_are_refused() {
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut buf = BytesMut::from(&vec![b'0'; MAX_CHUNK_LINE + 1][..]);
        assert!(framing.decode(&mut buf).is_err());
        let mut framing = Framing::Chunked(Chunk::Trailers(0));
        let mut buf = BytesMut::new();
        let mut refused = false;
        for _ in 0..MAX_TRAILERS {
            buf.extend_from_slice(b"x-t: 1\r\n");
            if framing.decode(&mut buf).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }

    #[test]
    fn close_before_the_end_is_an_error_except_for_close_delimited_bodies() {
        assert!(Framing::Length(3).at_close().is_err());
        assert!(Framing::Chunked(Chunk::Data(1)).at_close().is_err());
        assert!(Framing::Chunked(Chunk::Done).at_close().is_ok());
        assert!(Framing::UntilClose.at_close().is_ok());
    }

    #[test]
    fn head_framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(12));
        assert!(h.reusable);
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Chunked(Chunk::Size));
        let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.reusable);
        let h = head("HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, Framing::UntilClose);
        let h = head("HTTP/1.1 204 No Content\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.framing, Framing::Length(0));
        let h = head("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.reusable);
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.reusable);
        let h = head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.reusable);
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n");
        let h = parse_response(&mut buf, &Method::HEAD).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Length(0));
    }

    #[test]
    fn informational_responses_are_skipped() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        );
        let h = parse_response(&mut buf, &Method::POST).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn request_smuggling_through_the_response_head_is_refused() {
        for text in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(head(text).is_err(), "{text:?}");
        }
        let same = head("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(same.framing, Framing::Length(5));
    }

    #[test]
    fn an_endless_head_is_refused_and_a_partial_one_waits() {
        assert!(head("HTTP/1.1 200 OK\r\ncontent-le").unwrap().is_none());
        let endless = format!("HTTP/1.1 200 OK\r\nx-a: {}", "a".repeat(MAX_HEAD));
        assert!(head(&endless).is_err());
    }

    #[test]
    fn request_head_has_the_length_and_its_estimate_is_large_enough() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("api.example:8443"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer up"));
        let mut out = Vec::new();
        encode_request(
            &Method::POST,
            "/v1/chat/completions?x=1",
            &headers,
            17,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: api.example:8443\r\n\
             authorization: Bearer up\r\ncontent-length: 17\r\n\r\n"
        );
        assert!(request_head_len("/v1/chat/completions?x=1", &headers) >= out.len());
        let mut out = Vec::new();
        encode_request(&Method::GET, "/v1/models", &HeaderMap::new(), 0, &mut out);
        assert_eq!(out, b"GET /v1/models HTTP/1.1\r\n\r\n");
    }
}
