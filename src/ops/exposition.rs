//! How the stats server (`:15020`) answers: the content type and the compression negotiated
//! as ztunnel's stats server does (its hyper service behind tower-http's compression layer).
//!
//! - Content type: `application/openmetrics-text;charset=utf-8;version=1.0.0` when an
//!   `Accept` element's media type (the part before any `;`, compared lowercased and
//!   untrimmed, as ztunnel compares it) is `application/openmetrics-text`, else
//!   `text/plain; charset=utf-8`. The body is the same OpenMetrics text either way.
//! - Compression: `Accept-Encoding` read as tower-http reads it: codings with optional
//!   `q=` weights (at most three decimals; an element with a malformed weight is ignored),
//!   unknown codings ignored, `*` standing for every coding not listed. The highest weight
//!   above 0 wins, ties going to the stronger coding (identity < deflate < gzip). No element
//!   at all, or none acceptable while identity is not refused, means identity; when nothing
//!   is acceptable and identity is refused (`identity;q=0`, or `*;q=0` without identity
//!   listed), the answer is 406 with the uncompressed body. A body of at least 32 bytes is
//!   compressed (gzip, or deflate in its zlib framing) and carries `Vary: accept-encoding`,
//!   even when identity was chosen.
//!
//! ztunnel also offers `br` and `zstd`; ztun does not (see docs/compat.md), so those
//! codings are unknown here: a client asking for them alone gets identity.

use std::io::Write;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, ACCEPT, ACCEPT_ENCODING, CONTENT_ENCODING, VARY};
use http::{Response, StatusCode};
use http_body_util::Full;

/// The content type of an OpenMetrics answer.
pub const OPENMETRICS: &str = "application/openmetrics-text;charset=utf-8;version=1.0.0";
/// The content type of a plain-text answer (the default).
pub const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// Bodies smaller than this are never compressed.
const MIN_COMPRESSED_SIZE: usize = 32;

/// A content coding the stats server can answer with, weakest first (the order breaks
/// ties between equal weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Coding {
    /// No compression.
    Identity,
    /// zlib-framed deflate.
    Deflate,
    /// gzip.
    Gzip,
}

impl Coding {
    const ALL: [Coding; 3] = [Coding::Identity, Coding::Deflate, Coding::Gzip];

    fn parse(token: &str) -> Option<Coding> {
        if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Some(Coding::Gzip)
        } else if token.eq_ignore_ascii_case("deflate") {
            Some(Coding::Deflate)
        } else if token.eq_ignore_ascii_case("identity") {
            Some(Coding::Identity)
        } else {
            None
        }
    }

    fn header_value(self) -> Option<HeaderValue> {
        match self {
            Coding::Identity => None,
            Coding::Deflate => Some(HeaderValue::from_static("deflate")),
            Coding::Gzip => Some(HeaderValue::from_static("gzip")),
        }
    }
}

/// The content type answered to a request with `headers`.
pub fn content_type(headers: &HeaderMap) -> &'static str {
    let openmetrics = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|element| {
            let media = element.split(';').next().unwrap_or_default();
            media.eq_ignore_ascii_case("application/openmetrics-text")
        });
    if openmetrics {
        OPENMETRICS
    } else {
        PLAIN_TEXT
    }
}

/// The coding answered to a request with `headers`; `None` when nothing acceptable is left
/// (406).
pub fn coding(headers: &HeaderMap) -> Option<Coding> {
    let elements = || {
        headers
            .get_all(ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|element| {
                let mut parts = element.splitn(2, ';');
                let token = parts.next().unwrap_or_default().trim();
                (token, parts.next().map(str::trim))
            })
    };
    let weight = |q: Option<&str>| match q {
        None => Some(1000),
        Some(q) => parse_qvalue(q),
    };
    let listed: Vec<(Coding, u16)> = elements()
        .filter_map(|(token, q)| Some((Coding::parse(token)?, weight(q)?)))
        .collect();
    // The first `*` with a well-formed weight.
    let wildcard = elements()
        .filter(|(token, _)| *token == "*")
        .find_map(|(_, q)| weight(q));
    let best = |candidates: &mut dyn Iterator<Item = (Coding, u16)>| {
        candidates
            .filter(|&(_, q)| q > 0)
            .max_by_key(|&(c, q)| (q, c))
            .map(|(c, _)| c)
    };
    match wildcard {
        None => {
            if let Some(c) = best(&mut listed.iter().copied()) {
                return Some(c);
            }
            let identity_refused = listed.iter().any(|&(c, q)| c == Coding::Identity && q == 0);
            (!identity_refused).then_some(Coding::Identity)
        }
        Some(any) => best(&mut Coding::ALL.into_iter().map(|c| {
            let q = listed
                .iter()
                .find(|(l, _)| *l == c)
                .map_or(any, |&(_, q)| q);
            (c, q)
        })),
    }
}

/// A `q=` weight as thousandths (0..=1000): `q=` or `Q=`, then `0` or `1`, then optionally
/// a point and at most three digits; `None` when malformed or above 1.
fn parse_qvalue(s: &str) -> Option<u16> {
    let rest = s.strip_prefix("q=").or_else(|| s.strip_prefix("Q="))?;
    let mut chars = rest.chars();
    let mut value: u16 = match chars.next()? {
        '0' => 0,
        '1' => 1000,
        _ => return None,
    };
    match chars.next() {
        None => return Some(value),
        Some('.') => {}
        Some(_) => return None,
    }
    let mut factor = 100;
    for c in chars {
        let digit = c.to_digit(10)? as u16;
        if factor == 0 {
            return None;
        }
        value += factor * digit;
        factor /= 10;
    }
    (value <= 1000).then_some(value)
}

/// The stats server's answer carrying `body` with `status` to a request with `headers`:
/// compressed as negotiated (406 when nothing is acceptable). `content_type` is set as is.
pub fn respond(
    headers: &HeaderMap,
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let coding = coding(headers);
    let compress = coding.is_some() && body.len() >= MIN_COMPRESSED_SIZE;
    let (status, coding) = match coding {
        Some(c) => (status, c),
        None => (StatusCode::NOT_ACCEPTABLE, Coding::Identity),
    };
    let encoded = if compress && coding != Coding::Identity {
        match encode(coding, &body) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::debug!(error = %e, "compressing a stats answer failed; sending it as is");
                None
            }
        }
    } else {
        None
    };
    let encoded_as = encoded.as_ref().and_then(|_| coding.header_value());
    let mut r = Response::new(Full::new(encoded.unwrap_or(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if compress || status == StatusCode::NOT_ACCEPTABLE {
        h.append(VARY, HeaderValue::from_static("accept-encoding"));
    }
    if let Some(v) = encoded_as {
        h.insert(CONTENT_ENCODING, v);
    }
    r
}

/// `body` in `coding`, at the default compression level (6, as tower-http's default).
fn encode(coding: Coding, body: &[u8]) -> std::io::Result<Bytes> {
    let level = flate2::Compression::default();
    let out = match coding {
        Coding::Identity => return Ok(Bytes::copy_from_slice(body)),
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), level);
            e.write_all(body)?;
            e.finish()?
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::with_capacity(body.len() / 4), level);
            e.write_all(body)?;
            e.finish()?
        }
    };
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests;
