//! SPDY/3 header blocks: the name/value pairs of SYN_STREAM, SYN_REPLY and
//! HEADERS frames (a 32-bit count, then each name and value with a 32-bit
//! length; a value holding several values separates them with NUL), and
//! their compression: one zlib stream per direction for the whole session,
//! primed with SPDY/3's preset dictionary (draft 3, section 2.6.10.1), each
//! block ending at a sync flush. `flate2` (its pure-Rust `zlib-rs` backend,
//! the one with preset dictionaries) does the deflating.

use std::sync::OnceLock;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The most a header block may inflate to: kubectl's blocks are tiny, and
/// a session must not be made to hold an unbounded one.
pub const MAX_BLOCK: usize = 256 * 1024;

/// Why a header block could not be read or written.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BlockError {
    #[error("header block: zlib: {0}")]
    Zlib(String),
    #[error("header block: the compressed block is incomplete")]
    Truncated,
    #[error("header block: inflates to more than {MAX_BLOCK} bytes")]
    TooLarge,
    #[error("header block: malformed name/value pairs")]
    Malformed,
}

/// The words of SPDY/3's dictionary, each stored with its 32-bit length.
const WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The dictionary's tail: status codes and phrases, dates, content types.
const TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413",
    "414415416417502504505203 Non-Authoritative Information204 No Content",
    "301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 ",
    "Not Found500 Internal Server Error501 Not Implemented503 Service ",
    "UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
    "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8",
    "charset=iso-8859-1,utf-,*,enq=0.",
);

/// SPDY/3's preset zlib dictionary (1423 bytes).
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// Header names and values in order (names lowercase, as SPDY/3 wants).
pub type Headers = Vec<(String, String)>;

/// The value of header `name` (its first, when it has several).
pub fn get<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

/// The uncompressed form of `h`.
pub fn serialize(h: &Headers) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    for (k, v) in h {
        for s in [k.to_ascii_lowercase().as_bytes(), v.as_bytes()] {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s);
        }
    }
    out
}

/// Reads the pairs of an uncompressed block.
pub fn parse(b: &[u8]) -> Result<Headers, BlockError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], BlockError> {
        if b.len() < n {
            return Err(BlockError::Malformed);
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    fn u32_of(b: &mut &[u8]) -> Result<usize, BlockError> {
        let w = take(b, 4)?;
        Ok(u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as usize)
    }
    let mut b = b;
    let n = u32_of(&mut b)?;
    let mut h = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let len = u32_of(&mut b)?;
        let k = take(&mut b, len)?;
        let len = u32_of(&mut b)?;
        let v = take(&mut b, len)?;
        h.push((
            String::from_utf8_lossy(k).to_ascii_lowercase(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    Ok(h)
}

/// The sending side's compression context.
pub struct Deflater {
    z: Compress,
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    pub fn new() -> Deflater {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(dictionary())
            .expect("a fresh deflater takes a dictionary");
        Deflater { z }
    }

    /// `h` compressed, continuing this session's stream.
    pub fn block(&mut self, h: &Headers) -> Result<Vec<u8>, BlockError> {
        let input = serialize(h);
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut used = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.z.total_in();
            self.z
                .compress_vec(&input[used..], &mut out, FlushCompress::Sync)
                .map_err(|e| BlockError::Zlib(e.to_string()))?;
            used += (self.z.total_in() - before) as usize;
            // Done once all input is in and the flush left room to spare.
            if used == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The receiving side's decompression context.
pub struct Inflater {
    z: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    pub fn new() -> Inflater {
        Inflater {
            z: Decompress::new(true),
        }
    }

    /// The pairs of compressed block `b`, continuing this session's stream.
    pub fn block(&mut self, b: &[u8]) -> Result<Headers, BlockError> {
        let mut out = Vec::with_capacity(b.len() * 4 + 64);
        let mut used = 0;
        loop {
            if out.capacity() - out.len() < 256 {
                if out.len() >= MAX_BLOCK {
                    return Err(BlockError::TooLarge);
                }
                out.reserve(out.capacity().max(1024));
            }
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let r = self
                .z
                .decompress_vec(&b[used..], &mut out, FlushDecompress::Sync);
            used += (self.z.total_in() - in0) as usize;
            match r {
                Ok(Status::StreamEnd) => return parse(&out),
                Ok(_) => {}
                // The stream's first block names the dictionary.
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(dictionary())
                        .map_err(|e| BlockError::Zlib(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(BlockError::Zlib(e.to_string())),
            }
            if used == b.len() && out.len() < out.capacity() {
                return parse(&out);
            }
            if self.z.total_in() == in0 && self.z.total_out() == out0 {
                return Err(BlockError::Truncated);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        // Its Adler-32 is what a SPDY/3 peer's zlib header names.
        let mut z = Compress::new(Compression::default(), true);
        assert_eq!(z.set_dictionary(d).ok(), Some(0xe3c6_a7c2));
    }

    #[test]
    fn blocks_round_trip_through_one_context_per_direction() {
        let (mut tx, mut rx) = (Deflater::new(), Inflater::new());
        let blocks = [
            h(&[
                ("streamtype", "error"),
                ("port", "8000"),
                ("requestid", "0"),
            ]),
            h(&[("streamtype", "data"), ("port", "8000"), ("requestid", "0")]),
            h(&[]),
            h(&[("x-many", "a\0b"), ("user-agent", &"k".repeat(5000))]),
        ];
        for b in &blocks {
            let c = tx.block(b).unwrap();
            assert_eq!(&rx.block(&c).unwrap(), b);
        }
        // The context carries over: a repeat compresses to a few bytes.
        let again = tx.block(&blocks[0]).unwrap();
        assert!(again.len() < 16, "{}", again.len());
        assert_eq!(rx.block(&again).unwrap(), blocks[0]);
        assert_eq!(get(&blocks[3], "X-Many"), Some("a"));
    }

    #[test]
    fn bad_blocks_are_errors() {
        assert_eq!(parse(b"\0\0\0\x01\0\0\0\x09ab"), Err(BlockError::Malformed));
        assert!(Inflater::new().block(b"not zlib at all").is_err());
        // The first block of a stream cut short.
        let c = Deflater::new().block(&h(&[("port", "1")])).unwrap();
        assert!(Inflater::new().block(&c[..4]).is_err());
    }
}
