//! Reading request bodies: a byte limit applied before and after decompression (gzip and deflate
//! accepted), every buffer accounted against the in-flight [`Ticket`] before it is held, and a
//! bounded prefix decoded on its own (to find a body `apiKey` before the whole body is paid for).
//! Each failure is a specific 4xx.

use std::io::Read;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;

use super::budget::Ticket;
use super::error::ApiError;

/// Decompression output is produced (and accounted) in steps of this many bytes.
const INFLATE_STEP: usize = 64 * 1024;

/// How a body is encoded (`Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As sent.
    Identity,
    /// gzip (RFC 1952).
    Gzip,
    /// zlib-wrapped deflate (RFC 1950), as HTTP's `deflate` means.
    Deflate,
}

impl Encoding {
    /// The request's encoding, or 415 naming the supported ones.
    pub fn of(headers: &HeaderMap) -> Result<Encoding, ApiError> {
        let value =
            headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("invalid").trim().to_ascii_lowercase());
        match value.as_deref() {
            None | Some("") | Some("identity") => Ok(Encoding::Identity),
            Some("gzip") | Some("x-gzip") => Ok(Encoding::Gzip),
            Some("deflate") => Ok(Encoding::Deflate),
            Some(other) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding {other:?} is not supported; use gzip, deflate or identity"),
            )),
        }
    }
}

/// A body as received, in one buffer. Each piece hyper hands over is copied in at once: a piece
/// kept as it is would pin the whole read buffer it was cut from, unaccounted. With a
/// `Content-Length` the buffer is sized (and accounted) once, before any byte is read, so a body the
/// budget cannot hold is refused without reading it.
#[derive(Default)]
pub struct Raw {
    buf: Vec<u8>,
}

impl Raw {
    /// Bytes received.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// The body as sent, at most `max_bytes`, its buffer accounted in `ticket` before it is held.
pub async fn read_raw(body: Body, max_bytes: usize, ticket: &mut Ticket) -> Result<Raw, ApiError> {
    let hint = hyper::body::Body::size_hint(&body);
    if hint.lower() > max_bytes as u64 {
        return Err(too_large(max_bytes));
    }
    let mut buf = Vec::new();
    if let Some(n) = hint.exact() {
        let n = n as usize; // at most max_bytes, checked above
        ticket.grow(n)?;
        buf.reserve_exact(n);
    }
    let mut body = http_body_util::Limited::new(body, max_bytes);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large(max_bytes)
            } else {
                ApiError::bad_request("invalid_body", format!("could not read the request body: {e}"))
            }
        })?;
        if let Ok(data) = frame.into_data() {
            let needed = buf.len() + data.len();
            if needed > buf.capacity() {
                // Without a length (chunked), or past it: double, never beyond the limit.
                let target = needed.max(buf.capacity() * 2).min(max_bytes).max(needed);
                ticket.grow(target - buf.capacity())?;
                buf.reserve_exact(target - buf.len());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Raw { buf })
}

/// The decoded body, at most `max_bytes`; the output is accounted in `ticket` as it grows.
pub fn decode(encoding: Encoding, raw: Raw, max_bytes: usize, ticket: &mut Ticket) -> Result<bytes::Bytes, ApiError> {
    let out = match encoding {
        Encoding::Identity => return Ok(raw.buf.into()),
        Encoding::Gzip => inflate(flate2::read::GzDecoder::new(&raw.buf[..]), max_bytes, Some(ticket))?,
        Encoding::Deflate => inflate(flate2::read::ZlibDecoder::new(&raw.buf[..]), max_bytes, Some(ticket))?,
    };
    Ok(out.into())
}

/// At most the first `n` bytes of the decoded body (fewer when it is shorter).
pub fn decode_prefix(encoding: Encoding, raw: &Raw, n: usize) -> Vec<u8> {
    let out = match encoding {
        Encoding::Identity => return raw.buf[..n.min(raw.len())].to_vec(),
        Encoding::Gzip => inflate(flate2::read::GzDecoder::new(&raw.buf[..]), n, None),
        Encoding::Deflate => inflate(flate2::read::ZlibDecoder::new(&raw.buf[..]), n, None),
    };
    // A prefix past the limit, or one that does not decode to the end, is still a prefix.
    out.unwrap_or_else(|partial| partial.prefix)
}

/// Whether `bytes` is only whitespace (an empty body).
pub fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

fn too_large(max_bytes: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body is larger than {max_bytes} bytes"),
    )
}

/// A decompression that stopped early: why, and what it had produced.
struct Partial {
    error: ApiError,
    prefix: Vec<u8>,
}

impl From<Partial> for ApiError {
    fn from(p: Partial) -> ApiError {
        p.error
    }
}

/// Inflates at most `max_bytes` (one byte more tells "too large" from "exactly at the limit"),
/// accounting each step in `ticket` when given.
fn inflate(mut decoder: impl Read, max_bytes: usize, mut ticket: Option<&mut Ticket>) -> Result<Vec<u8>, Partial> {
    let mut out = Vec::new();
    let mut step = vec![0u8; INFLATE_STEP.min(max_bytes + 1)];
    loop {
        let room = (max_bytes + 1 - out.len()).min(step.len());
        let n = match decoder.read(&mut step[..room]) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) => {
                let message = format!("request body could not be decompressed: {e}");
                return Err(Partial { error: ApiError::bad_request("invalid_encoding", message), prefix: out });
            }
        };
        if out.len() + n > max_bytes {
            let keep = max_bytes - out.len();
            out.extend_from_slice(&step[..keep]);
            return Err(Partial { error: too_large(max_bytes), prefix: out });
        }
        if let Some(t) = ticket.as_deref_mut() {
            let before = out.capacity();
            out.reserve(n);
            if let Err(error) = t.grow(out.capacity() - before) {
                return Err(Partial { error, prefix: Vec::new() });
            }
        }
        out.extend_from_slice(&step[..n]);
    }
}

/// A response body sent as the given pieces, in order, without joining them first (a cached answer
/// is written around the stored bytes instead of copying them). Its exact length is known, so it
/// goes out with a `Content-Length`, not chunked.
pub struct Chunks {
    pieces: std::collections::VecDeque<bytes::Bytes>,
    remaining: u64,
}

impl Chunks {
    /// The body of `pieces` (empty ones are skipped).
    pub fn new(pieces: impl IntoIterator<Item = bytes::Bytes>) -> Chunks {
        let pieces: std::collections::VecDeque<bytes::Bytes> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        let remaining = pieces.iter().map(|p| p.len() as u64).sum();
        Chunks { pieces, remaining }
    }
}

impl hyper::body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let next = self.pieces.pop_front();
        if let Some(piece) = &next {
            self.remaining -= piece.len() as u64;
        }
        std::task::Poll::Ready(next.map(|piece| Ok(hyper::body::Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::budget::Budget;

    /// A body that announces `len` bytes and never sends any.
    struct Announced {
        len: u64,
    }

    impl hyper::body::Body for Announced {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
            std::task::Poll::Pending
        }

        fn size_hint(&self) -> hyper::body::SizeHint {
            hyper::body::SizeHint::with_exact(self.len)
        }
    }

    #[tokio::test]
    async fn a_body_the_budget_cannot_hold_is_refused_before_a_byte_is_read() {
        let budget = Budget::new(1024 * 1024, 1);
        let mut other = budget.ticket();
        other.grow(1000 * 1024).unwrap();
        let mut ticket = budget.ticket();
        // Never sends a byte: only a refusal made from the announced length returns.
        let e = read_raw(Body::new(Announced { len: 100 * 1024 }), 1 << 20, &mut ticket).await.err().unwrap();
        assert_eq!((e.status.as_u16(), e.code), (503, "overloaded"));
        assert_eq!(ticket.bytes(), 0);
        let e = read_raw(Body::new(Announced { len: 2 << 20 }), 1 << 20, &mut ticket).await.err().unwrap();
        assert_eq!((e.status.as_u16(), e.code), (413, "payload_too_large"));
    }

    #[tokio::test]
    async fn a_body_is_read_into_one_buffer_accounted_at_its_length() {
        let budget = Budget::new(1024 * 1024, 1);
        let mut ticket = budget.ticket();
        let raw = read_raw(Body::from("{\"events\":[]}"), 1 << 20, &mut ticket).await.unwrap();
        assert_eq!((raw.len(), ticket.bytes()), (13, 13));
        let body = decode(Encoding::Identity, raw, 1 << 20, &mut ticket).unwrap();
        assert_eq!(&body[..], b"{\"events\":[]}");
    }

    #[tokio::test]
    async fn chunks_are_sent_in_order_with_their_exact_length() {
        let pieces = ["{\"a\":", "", "[1,2]", "}"].map(|p| bytes::Bytes::from_static(p.as_bytes()));
        let body = Chunks::new(pieces);
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(11));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"{\"a\":[1,2]}");
    }
}
