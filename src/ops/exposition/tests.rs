use std::io::Read;

use super::*;

fn headers(name: http::HeaderName, values: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(
            name.clone(),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    h
}

/// What Prometheus sends (no space after the commas).
const PROMETHEUS_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

/// ztunnel's stats server: OpenMetrics when an `Accept` element's media type is
/// `application/openmetrics-text` (lowercased, not trimmed), plain text otherwise.
#[test]
fn content_type_is_ztunnels() {
    let cases: &[(&[&str], &str)] = &[
        (&[], PLAIN_TEXT),
        (&["application/json"], PLAIN_TEXT),
        (
            &[
                "application/json",
                "application/openmetrics-text; other stuff",
            ],
            OPENMETRICS,
        ),
        (&[PROMETHEUS_ACCEPT], OPENMETRICS),
        (&["Application/OpenMetrics-Text;version=1.0.0"], OPENMETRICS),
        (&["text/plain,application/openmetrics-text"], OPENMETRICS),
        // ztunnel does not trim: after ", " the media type starts with a space.
        (&["text/plain, application/openmetrics-text"], PLAIN_TEXT),
        (&["*/*"], PLAIN_TEXT),
    ];
    for (accept, want) in cases {
        assert_eq!(content_type(&headers(ACCEPT, accept)), *want, "{accept:?}");
    }
}

/// tower-http's negotiation over the codings ztun offers.
#[test]
fn coding_is_negotiated_as_tower_http_does() {
    use Coding::*;
    let cases: &[(&[&str], Option<Coding>)] = &[
        (&[], Some(Identity)),
        (&["gzip"], Some(Gzip)),
        (&["x-gzip"], Some(Gzip)),
        (&["GZIP"], Some(Gzip)),
        (&["deflate"], Some(Deflate)),
        (&["gzip, deflate, br"], Some(Gzip)),
        (&["deflate", "gzip"], Some(Gzip)),
        (&["deflate;q=1, gzip;q=0.5"], Some(Deflate)),
        (&["gzip;q=0.001"], Some(Gzip)),
        (&["gzip;q=0"], Some(Identity)),
        (&["identity;q=0"], None),
        (&["identity;q=0, deflate"], Some(Deflate)),
        (&["*"], Some(Gzip)),
        (&["*;q=0"], None),
        (&["*;q=0, identity"], Some(Identity)),
        (&["*;q=0.5, gzip;q=0"], Some(Deflate)),
        (&["*;q=0.5, identity;q=0.9"], Some(Identity)),
        // A malformed weight drops its element.
        (&["gzip;q=2"], Some(Identity)),
        (&["gzip;q=0.1234"], Some(Identity)),
        (&["gzip;level=1"], Some(Identity)),
        (&["*;q=x, *;q=0"], None),
        // Codings ztun does not offer are unknown (ztunnel would answer br and zstd).
        (&["br"], Some(Identity)),
        (&["zstd;q=1, deflate;q=0.2"], Some(Deflate)),
    ];
    for (accept, want) in cases {
        assert_eq!(
            coding(&headers(ACCEPT_ENCODING, accept)),
            *want,
            "{accept:?}"
        );
    }
}

fn body() -> Bytes {
    Bytes::from("# HELP istio_build Build information.\n".repeat(50))
}

fn collect(r: Response<Full<Bytes>>) -> (http::response::Parts, Vec<u8>) {
    let (parts, body) = r.into_parts();
    let bytes = block_on_body(body);
    (parts, bytes)
}

fn block_on_body(body: Full<Bytes>) -> Vec<u8> {
    use http_body_util::BodyExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(body.collect())
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default()
}

#[test]
fn gzip_and_deflate_answers_decode_to_the_body() {
    let h = headers(ACCEPT_ENCODING, &["gzip"]);
    let (parts, raw) = collect(respond(&h, StatusCode::OK, OPENMETRICS, body()));
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
    assert_eq!(parts.headers[VARY], "accept-encoding");
    assert_eq!(parts.headers[http::header::CONTENT_TYPE], OPENMETRICS);
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut plain)
        .expect("gzip");
    assert_eq!(plain, body());
    assert!(raw.len() < body().len());

    let h = headers(ACCEPT_ENCODING, &["deflate"]);
    let (parts, raw) = collect(respond(&h, StatusCode::OK, PLAIN_TEXT, body()));
    assert_eq!(parts.headers[CONTENT_ENCODING], "deflate");
    let mut plain = Vec::new();
    flate2::read::ZlibDecoder::new(&raw[..])
        .read_to_end(&mut plain)
        .expect("zlib");
    assert_eq!(plain, body());
}

#[test]
fn identity_small_bodies_and_refusals() {
    // Identity: as is, but the answer varies with Accept-Encoding.
    let (parts, raw) = collect(respond(
        &HeaderMap::new(),
        StatusCode::OK,
        PLAIN_TEXT,
        body(),
    ));
    assert!(!parts.headers.contains_key(CONTENT_ENCODING));
    assert_eq!(parts.headers[VARY], "accept-encoding");
    assert_eq!(raw, body());
    // Under 32 bytes: never compressed, no Vary.
    let h = headers(ACCEPT_ENCODING, &["gzip"]);
    let small = Bytes::from_static(b"not found\n");
    let (parts, raw) = collect(respond(
        &h,
        StatusCode::NOT_FOUND,
        PLAIN_TEXT,
        small.clone(),
    ));
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    assert!(!parts.headers.contains_key(CONTENT_ENCODING));
    assert!(!parts.headers.contains_key(VARY));
    assert_eq!(raw, small);
    // Nothing acceptable: 406, the body as is.
    let h = headers(ACCEPT_ENCODING, &["identity;q=0"]);
    let (parts, raw) = collect(respond(&h, StatusCode::OK, PLAIN_TEXT, body()));
    assert_eq!(parts.status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(parts.headers[VARY], "accept-encoding");
    assert_eq!(raw, body());
}
