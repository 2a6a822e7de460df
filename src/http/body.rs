//! Reading request bodies: a byte limit applied before and after decompression (gzip and deflate
//! accepted), then JSON parsing whatever the content type says (`navigator.sendBeacon` sends
//! `text/plain`). Each failure is a specific 4xx.

use std::io::Read;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use super::error::ApiError;

/// Reads and parses the body as JSON, allowing at most `max_bytes` before and after decompression.
pub async fn read_json(headers: &HeaderMap, body: Body, max_bytes: usize) -> Result<Value, ApiError> {
    let raw = read_limited(body, max_bytes).await?;
    let encoding =
        headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("invalid").trim().to_ascii_lowercase());
    let bytes = match encoding.as_deref() {
        None | Some("") | Some("identity") => raw,
        Some("gzip") | Some("x-gzip") => inflate(flate2::read::GzDecoder::new(&raw[..]), max_bytes)?,
        Some("deflate") => inflate(flate2::read::ZlibDecoder::new(&raw[..]), max_bytes)?,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding {other:?} is not supported; use gzip, deflate or identity"),
            ))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("invalid_json", "request body is empty; expected a JSON object"));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("request body is not valid JSON: {e}")))
}

fn too_large(max_bytes: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body is larger than {max_bytes} bytes"),
    )
}

async fn read_limited(body: Body, max_bytes: usize) -> Result<bytes::Bytes, ApiError> {
    match http_body_util::Limited::new(body, max_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large(max_bytes)),
        Err(e) => Err(ApiError::bad_request("invalid_body", format!("could not read the request body: {e}"))),
    }
}

fn inflate(decoder: impl Read, max_bytes: usize) -> Result<bytes::Bytes, ApiError> {
    let mut out = Vec::new();
    // One byte past the limit tells "too large" from "exactly at the limit".
    decoder.take(max_bytes as u64 + 1).read_to_end(&mut out).map_err(|e| {
        ApiError::bad_request("invalid_encoding", format!("request body could not be decompressed: {e}"))
    })?;
    if out.len() > max_bytes {
        return Err(too_large(max_bytes));
    }
    Ok(out.into())
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
