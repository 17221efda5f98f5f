//! HPACK decoding (RFC 7541) for the raw client's reader: static and dynamic tables,
//! every literal representation, Huffman strings. The server's encoder picks the
//! representation (h2 indexes `:status 503` into its dynamic table after the first one, for
//! instance), so a response is only judged right once it is decoded.

use anyhow::Context as _;

/// The response side of a connection's HPACK state: the dynamic table the server's encoder
/// fills, starting at the default 4 096 bytes our empty SETTINGS leaves in place.
#[derive(Debug)]
pub(super) struct Hpack {
    /// Newest first, as indices 62.. count.
    table: std::collections::VecDeque<(String, Vec<u8>)>,
    size: usize,
    max: usize,
}

/// SETTINGS_HEADER_TABLE_SIZE's default, the most the server's encoder may use.
const HPACK_TABLE_SIZE: usize = 4096;

impl Default for Hpack {
    fn default() -> Self {
        Hpack {
            table: Default::default(),
            size: 0,
            max: HPACK_TABLE_SIZE,
        }
    }
}

impl Hpack {
    /// Decodes one complete header block, updating the dynamic table.
    pub(super) fn decode(&mut self, mut b: &[u8]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        while let Some(&first) = b.first() {
            if first & 0x80 != 0 {
                // Indexed field.
                let i = hpack_decode_int(&mut b, 7)?;
                out.push(self.entry(i)?);
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing.
                let field = self.literal(&mut b, 6)?;
                self.insert(field.clone());
                out.push(field);
            } else if first & 0x20 != 0 {
                // Dynamic table size update.
                let max = hpack_decode_int(&mut b, 5)?;
                anyhow::ensure!(max <= HPACK_TABLE_SIZE, "table size {max} over the setting");
                self.max = max;
                self.evict(0);
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                out.push(self.literal(&mut b, 4)?);
            }
        }
        Ok(out)
    }

    fn literal(&self, b: &mut &[u8], prefix: u8) -> anyhow::Result<(String, Vec<u8>)> {
        let name = match hpack_decode_int(b, prefix)? {
            0 => String::from_utf8(hpack_decode_string(b)?).context("header name")?,
            i => self.entry(i)?.0,
        };
        Ok((name, hpack_decode_string(b)?))
    }

    fn entry(&self, i: usize) -> anyhow::Result<(String, Vec<u8>)> {
        if let Some((name, value)) = i.checked_sub(1).and_then(|i| HPACK_STATIC.get(i)) {
            return Ok((name.to_string(), value.as_bytes().to_vec()));
        }
        let dynamic = i.checked_sub(HPACK_STATIC.len() + 1);
        dynamic
            .and_then(|i| self.table.get(i))
            .cloned()
            .with_context(|| format!("HPACK index {i} out of range"))
    }

    fn insert(&mut self, field: (String, Vec<u8>)) {
        let size = field.0.len() + field.1.len() + 32;
        self.evict(size);
        if size <= self.max {
            self.size += size;
            self.table.push_front(field);
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some((n, v)) = self.table.pop_back() else {
                return;
            };
            self.size -= n.len() + v.len() + 32;
        }
    }
}

/// An HPACK integer with a `prefix`-bit prefix.
fn hpack_decode_int(b: &mut &[u8], prefix: u8) -> anyhow::Result<usize> {
    let mask = (1u16 << prefix) as usize - 1;
    let (&first, rest) = b.split_first().context("truncated HPACK integer")?;
    *b = rest;
    let mut v = usize::from(first) & mask;
    if v < mask {
        return Ok(v);
    }
    for shift in (0..35).step_by(7) {
        let (&byte, rest) = b.split_first().context("truncated HPACK integer")?;
        *b = rest;
        v += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    anyhow::bail!("HPACK integer too long")
}

/// An HPACK string literal, Huffman-decoded if flagged so.
fn hpack_decode_string(b: &mut &[u8]) -> anyhow::Result<Vec<u8>> {
    let huffman = b.first().context("truncated HPACK string")? & 0x80 != 0;
    let len = hpack_decode_int(b, 7)?;
    anyhow::ensure!(len <= b.len(), "HPACK string longer than its block");
    let (s, rest) = b.split_at(len);
    *b = rest;
    if !huffman {
        return Ok(s.to_vec());
    }
    static CODES: std::sync::OnceLock<std::collections::HashMap<(u8, u32), u8>> =
        std::sync::OnceLock::new();
    let codes = CODES.get_or_init(|| {
        (0..=255u8)
            .map(|sym| {
                let i = usize::from(sym);
                ((HUFFMAN_LENGTHS[i], HUFFMAN_CODES[i]), sym)
            })
            .collect()
    });
    let (mut out, mut code, mut len) = (Vec::new(), 0u32, 0u8);
    for byte in s {
        for bit in (0..8).rev() {
            code = code << 1 | u32::from(byte >> bit & 1);
            len += 1;
            if let Some(&sym) = codes.get(&(len, code)) {
                out.push(sym);
                (code, len) = (0, 0);
            }
            anyhow::ensure!(len < 30, "EOS or an invalid Huffman code");
        }
    }
    // Padding: under 8 bits, all ones (a prefix of EOS).
    anyhow::ensure!(len < 8 && code == (1 << len) - 1, "bad Huffman padding");
    Ok(out)
}

/// RFC 7541 Appendix A.
const HPACK_STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// RFC 7541 Appendix B, by symbol: (code, length in bits).
const HUFFMAN_CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

const HUFFMAN_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::Hpack;
    use crate::hardening::client::{connect_block, kind, push_frame, raw_over, END_HEADERS};

    /// h2's own encoder against this decoder, on one connection: statuses from the static
    /// table, ones h2 inserts into its dynamic table and then sends as a bare index (the
    /// second 503), Huffman-coded values, a new-name literal.
    #[tokio::test]
    async fn decodes_every_status_h2_sends() {
        let statuses = [200u16, 400, 503, 503, 404, 418, 503, 200, 431, 418];
        let (client, server) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(server).await?;
            for (i, status) in statuses.iter().enumerate() {
                let (_, mut respond) = conn.accept().await.expect("a request")?;
                let resp = http::Response::builder()
                    .status(*status)
                    .header("server", "ztun-hardening")
                    .header("x-n", i.to_string())
                    .body(())?;
                respond.send_response(resp, true)?;
            }
            // Drive the connection until the client goes away.
            while conn.accept().await.is_some() {}
            anyhow::Ok(())
        });
        let (mut w, mut r) = raw_over(client).await.expect("raw connection");
        let mut batch = Vec::new();
        for i in 0..statuses.len() as u32 {
            let head = connect_block("10.0.0.1:80");
            push_frame(&mut batch, kind::HEADERS, END_HEADERS, 1 + 2 * i, &head);
        }
        w.raw(&batch).await.expect("requests");
        let mut got = BTreeMap::new();
        while got.len() < statuses.len() {
            let f = r.next().await.expect("a frame").expect("open");
            if f.kind == kind::HEADERS {
                let n = f.headers.iter().find(|(n, _)| n == "x-n").cloned();
                let server = f.headers.iter().find(|(n, _)| n == "server").cloned();
                assert_eq!(server.map(|s| s.1), Some(b"ztun-hardening".to_vec()));
                got.insert(f.stream, (f.status(), n.map(|n| n.1)));
            }
        }
        for (i, status) in statuses.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            assert_eq!(
                got[&stream],
                (Some(*status), Some(i.to_string().into_bytes())),
                "stream {stream}"
            );
        }
        drop((w, r));
        server.await.expect("server task").expect("server");
    }

    /// Representations h2 happens not to use: a literal `:status 200` without indexing
    /// (name from the static table), a never-indexed one with a new name, a table size
    /// update; and what must fail: an index past the tables, Huffman EOS.
    #[test]
    fn decodes_literal_statuses_and_rejects_garbage() {
        let mut h = Hpack::default();
        let block = [0x08, 0x03, b'2', b'0', b'0'];
        assert_eq!(
            h.decode(&block).unwrap(),
            [(":status".into(), b"200".to_vec())]
        );
        let mut block = vec![0x20, 0x10, 0x07];
        block.extend_from_slice(b":status");
        block.extend_from_slice(&[0x03, b'2', b'0', b'4']);
        assert_eq!(
            h.decode(&block).unwrap(),
            [(":status".into(), b"204".to_vec())]
        );
        assert!(
            Hpack::default().decode(&[0xbe]).is_err(),
            "empty dynamic table"
        );
        // A Huffman string of 30 one-bits (EOS) and padding.
        assert!(Hpack::default()
            .decode(&[0x08, 0x84, 0xff, 0xff, 0xff, 0xff])
            .is_err());
    }
}
