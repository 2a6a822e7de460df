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

/// A body as received: hyper's pieces, not joined (joining is a large allocation, made only on a
/// decoding thread; see [`super::budget`]).
#[derive(Default)]
pub struct Raw {
    pieces: Vec<bytes::Bytes>,
    len: usize,
}

impl Raw {
    /// Bytes received.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was received.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces as one reader.
    fn reader(&self) -> impl Read + '_ {
        self.pieces.iter().fold(Box::new(std::io::empty()) as Box<dyn Read>, |r, p| Box::new(r.chain(&p[..])))
    }

    /// The pieces as one buffer: the only piece as it is, else a copy accounted in `ticket`.
    fn join(self, ticket: &mut Ticket) -> Result<bytes::Bytes, ApiError> {
        let mut pieces = self.pieces;
        if pieces.len() <= 1 {
            return Ok(pieces.pop().unwrap_or_default());
        }
        ticket.grow(self.len)?;
        let mut out = Vec::with_capacity(self.len);
        for piece in pieces {
            out.extend_from_slice(&piece);
        }
        Ok(out.into())
    }
}

/// The body as sent, at most `max_bytes`, each piece accounted in `ticket` before it is kept.
pub async fn read_raw(body: Body, max_bytes: usize, ticket: &mut Ticket) -> Result<Raw, ApiError> {
    if hyper::body::Body::size_hint(&body).lower() > max_bytes as u64 {
        return Err(too_large(max_bytes));
    }
    let mut body = http_body_util::Limited::new(body, max_bytes);
    let mut raw = Raw::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large(max_bytes)
            } else {
                ApiError::bad_request("invalid_body", format!("could not read the request body: {e}"))
            }
        })?;
        if let Ok(data) = frame.into_data() {
            ticket.grow(data.len())?;
            raw.len += data.len();
            raw.pieces.push(data);
        }
    }
    Ok(raw)
}

/// The decoded body, at most `max_bytes`; the output is accounted in `ticket` as it grows.
pub fn decode(encoding: Encoding, raw: Raw, max_bytes: usize, ticket: &mut Ticket) -> Result<bytes::Bytes, ApiError> {
    let out = match encoding {
        Encoding::Identity => return raw.join(ticket),
        Encoding::Gzip => inflate(flate2::read::GzDecoder::new(raw.reader()), max_bytes, Some(ticket))?,
        Encoding::Deflate => inflate(flate2::read::ZlibDecoder::new(raw.reader()), max_bytes, Some(ticket))?,
    };
    Ok(out.into())
}

/// At most the first `n` bytes of the decoded body (fewer when it is shorter).
pub fn decode_prefix(encoding: Encoding, raw: &Raw, n: usize) -> Vec<u8> {
    let out = match encoding {
        Encoding::Identity => {
            let mut prefix = Vec::with_capacity(n.min(raw.len));
            let _ = raw.reader().take(n as u64).read_to_end(&mut prefix);
            return prefix;
        }
        Encoding::Gzip => inflate(flate2::read::GzDecoder::new(raw.reader()), n, None),
        Encoding::Deflate => inflate(flate2::read::ZlibDecoder::new(raw.reader()), n, None),
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

    #[tokio::test]
    async fn chunks_are_sent_in_order_with_their_exact_length() {
        let pieces = ["{\"a\":", "", "[1,2]", "}"].map(|p| bytes::Bytes::from_static(p.as_bytes()));
        let body = Chunks::new(pieces);
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(11));
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"{\"a\":[1,2]}");
    }
}
