//! SPDY/3.1 framing (draft 3.1, section 2.2), the session layer kubectl's
//! port-forward speaks: a control frame is `1 | version(15) | type(16)`,
//! `flags(8) | length(24)`, then its fields; a data frame is
//! `0 | stream id(31)`, `flags(8) | length(24)`, then its bytes. Header
//! blocks are compressed with one context per direction
//! ([`header_block`](super::header_block)), so the [`Encoder`] and
//! [`Decoder`] each own one and must see every frame of their direction
//! in order. Pure: bytes in, frames out, and back.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::header_block::{BlockError, Deflater, Headers, Inflater};

/// The only version spoken.
pub const VERSION: u16 = 3;
/// FLAG_FIN on data frames, SYN_STREAM, SYN_REPLY and HEADERS.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// The largest payload a frame's 24-bit length allows.
pub const MAX_PAYLOAD: usize = 0xff_ffff;

/// RST_STREAM status codes (section 2.6.3).
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
}

/// GOAWAY status codes (section 2.6.6).
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
}

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// A frame, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    /// `(flags, id, value)` per entry.
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type this framer does not know: skipped, as
    /// the protocol asks.
    Unknown {
        kind: u16,
    },
}

/// Why bytes are not a valid frame.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("SPDY version {0} is not spoken (only 3)")]
    Version(u16),
    #[error("SPDY frame of type {kind} is too short ({len} bytes)")]
    Short { kind: u16, len: usize },
    #[error("SPDY frame payload of {0} bytes is larger than a frame holds")]
    TooLarge(usize),
    #[error(transparent)]
    Block(#[from] BlockError),
}

fn stream_id(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
}

fn word(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads frames from a session's incoming bytes.
#[derive(Default)]
pub struct Decoder {
    inflater: Inflater,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Takes the next whole frame off the front of `buf`; `None` while
    /// `buf` holds only part of one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = (word(&buf[4..8]) & 0xff_ffff) as usize;
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let first = word(&buf[..4]);
        let flags = buf[4];
        buf.advance(8);
        let p = buf.split_to(len).freeze();
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream: first,
                flags,
                data: p,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        let kind = (first & 0xffff) as u16;
        if version != VERSION {
            return Err(FrameError::Version(version));
        }
        let need = match kind {
            SYN_STREAM => 10,
            SYN_REPLY | HEADERS => 4,
            RST_STREAM | GOAWAY | WINDOW_UPDATE => 8,
            SETTINGS | PING => 4,
            _ => 0,
        };
        if p.len() < need {
            return Err(FrameError::Short { kind, len: p.len() });
        }
        let f = match kind {
            SYN_STREAM => Frame::SynStream {
                stream: stream_id(&p),
                associated: stream_id(&p[4..]),
                priority: p[8] >> 5,
                flags,
                headers: self.inflater.block(&p[10..])?,
            },
            SYN_REPLY => Frame::SynReply {
                stream: stream_id(&p),
                flags,
                headers: self.inflater.block(&p[4..])?,
            },
            HEADERS => Frame::Headers {
                stream: stream_id(&p),
                flags,
                headers: self.inflater.block(&p[4..])?,
            },
            RST_STREAM => Frame::RstStream {
                stream: stream_id(&p),
                status: word(&p[4..]),
            },
            SETTINGS => {
                let n = word(&p) as usize;
                if p.len() < 4 + n * 8 {
                    return Err(FrameError::Short { kind, len: p.len() });
                }
                let entries = (0..n)
                    .map(|i| {
                        let e = &p[4 + i * 8..];
                        (e[0], word(e) & 0xff_ffff, word(&e[4..]))
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            PING => Frame::Ping { id: word(&p) },
            GOAWAY => Frame::GoAway {
                last_good: stream_id(&p),
                status: word(&p[4..]),
            },
            WINDOW_UPDATE => Frame::WindowUpdate {
                stream: stream_id(&p),
                delta: word(&p[4..]) & 0x7fff_ffff,
            },
            _ => Frame::Unknown { kind },
        };
        Ok(Some(f))
    }
}

/// Writes frames into a session's outgoing bytes.
#[derive(Default)]
pub struct Encoder {
    deflater: Deflater,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Appends `f` to `out`.
    pub fn encode(&mut self, f: &Frame, out: &mut BytesMut) -> Result<(), FrameError> {
        let control = |out: &mut BytesMut, kind: u16, flags: u8, p: &[u8]| {
            if p.len() > MAX_PAYLOAD {
                return Err(FrameError::TooLarge(p.len()));
            }
            out.put_u32(0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(kind));
            out.put_u32((u32::from(flags) << 24) | p.len() as u32);
            out.put_slice(p);
            Ok(())
        };
        match f {
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(FrameError::TooLarge(data.len()));
                }
                out.put_u32(stream & 0x7fff_ffff);
                out.put_u32((u32::from(*flags) << 24) | data.len() as u32);
                out.put_slice(data);
                Ok(())
            }
            Frame::SynStream {
                stream,
                associated,
                priority,
                flags,
                headers,
            } => {
                let mut p = Vec::new();
                p.put_u32(*stream);
                p.put_u32(*associated);
                p.put_u8(priority << 5);
                p.put_u8(0);
                p.extend_from_slice(&self.deflater.block(headers)?);
                control(out, SYN_STREAM, *flags, &p)
            }
            Frame::SynReply {
                stream,
                flags,
                headers,
            }
            | Frame::Headers {
                stream,
                flags,
                headers,
            } => {
                let kind = match f {
                    Frame::SynReply { .. } => SYN_REPLY,
                    _ => HEADERS,
                };
                let mut p = stream.to_be_bytes().to_vec();
                p.extend_from_slice(&self.deflater.block(headers)?);
                control(out, kind, *flags, &p)
            }
            Frame::RstStream { stream, status } => control(
                out,
                RST_STREAM,
                0,
                &[stream.to_be_bytes(), status.to_be_bytes()].concat(),
            ),
            Frame::Settings { flags, entries } => {
                let mut p = (entries.len() as u32).to_be_bytes().to_vec();
                for (f, id, v) in entries {
                    p.put_u32((u32::from(*f) << 24) | (id & 0xff_ffff));
                    p.put_u32(*v);
                }
                control(out, SETTINGS, *flags, &p)
            }
            Frame::Ping { id } => control(out, PING, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good, status } => control(
                out,
                GOAWAY,
                0,
                &[last_good.to_be_bytes(), status.to_be_bytes()].concat(),
            ),
            Frame::WindowUpdate { stream, delta } => control(
                out,
                WINDOW_UPDATE,
                0,
                &[stream.to_be_bytes(), delta.to_be_bytes()].concat(),
            ),
            Frame::Unknown { kind } => control(out, *kind, 0, &[]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = vec![
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: headers(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynReply {
                stream: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::Data {
                stream: 3,
                flags: FLAG_FIN,
                data: Bytes::from(vec![7u8; 70_000]),
            },
            Frame::Data {
                stream: 3,
                flags: 0,
                data: Bytes::new(),
            },
            Frame::RstStream {
                stream: 3,
                status: rst::CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(1, 7, 65536)],
            },
            Frame::Ping { id: 1 },
            Frame::GoAway {
                last_good: 5,
                status: goaway::OK,
            },
            Frame::Headers {
                stream: 5,
                flags: FLAG_FIN,
                headers: headers(&[("a", "b")]),
            },
            Frame::WindowUpdate {
                stream: 5,
                delta: 1 << 20,
            },
        ];
        let (mut enc, mut dec) = (Encoder::new(), Decoder::new());
        let mut wire = BytesMut::new();
        for f in &frames {
            enc.encode(f, &mut wire).unwrap();
        }
        // Fed in small pieces, as WebSocket messages may cut the stream.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(1000) {
            buf.extend_from_slice(chunk);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got, frames);
    }

    #[test]
    fn control_frame_layout_is_the_drafts() {
        let mut out = BytesMut::new();
        Encoder::new()
            .encode(&Frame::Ping { id: 0x0102_0304 }, &mut out)
            .unwrap();
        assert_eq!(&out[..], [0x80, 3, 0, 6, 0, 0, 0, 4, 1, 2, 3, 4]);
        out.clear();
        let data = Frame::Data {
            stream: 5,
            flags: FLAG_FIN,
            data: Bytes::from_static(b"hi"),
        };
        Encoder::new().encode(&data, &mut out).unwrap();
        assert_eq!(&out[..], [0, 0, 0, 5, 1, 0, 0, 2, b'h', b'i']);
    }

    #[test]
    fn unknown_types_are_skipped_and_other_versions_refused() {
        let mut dec = Decoder::new();
        let mut b = BytesMut::from(&[0x80, 3, 0, 42, 0, 0, 0, 2, 9, 9, 0x80, 3, 0, 6][..]);
        assert_eq!(dec.decode(&mut b), Ok(Some(Frame::Unknown { kind: 42 })));
        assert_eq!(dec.decode(&mut b), Ok(None));
        let mut b = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(dec.decode(&mut b), Err(FrameError::Version(2)));
        let mut b = BytesMut::from(&[0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(dec.decode(&mut b), Err(FrameError::Short { .. })));
    }

    /// The first bytes kubectl 1.31 (its Go SPDY library) sent on a
    /// port-forward session, captured from a real run: the error stream's
    /// SYN_STREAM (the zlib stream's start, naming the dictionary), that
    /// stream's FIN, the data stream's SYN_STREAM (compressed against the
    /// first block) and its first bytes.
    const KUBECTL_OPENING: [u8; 147] = [
        0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3e, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x78, 0xf9, 0xe3, 0xc6, 0xa7, 0xc2, 0x02, 0x25, 0x3a, 0x70, 0x3a, 0x2b,
        0x29, 0x4a, 0x4d, 0xcc, 0x85, 0x16, 0x25, 0xac, 0xa9, 0xa0, 0x80, 0x86, 0x14, 0xcb, 0x45,
        0xe0, 0x1c, 0x60, 0x61, 0x60, 0x60, 0xc0, 0xc0, 0xc0, 0xc0, 0x59, 0x04, 0x89, 0xc6, 0x4c,
        0x50, 0xf2, 0x66, 0x34, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x01,
        0x00, 0x00, 0x00, 0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x03,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc2, 0xaa, 0x19, 0x54, 0x0e, 0x25, 0x12, 0xd6, 0x0b,
        0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x1d, 0x47, 0x45,
        0x54, 0x20, 0x2f, 0x20, 0x48, 0x54, 0x54, 0x50, 0x2f, 0x31, 0x2e, 0x30, 0x0d, 0x0a, 0x48,
        0x6f, 0x73, 0x74, 0x3a, 0x20, 0x70, 0x6f, 0x64, 0x0d, 0x0a, 0x0d, 0x0a,
    ];

    #[test]
    fn a_real_kubectl_opening_decodes() {
        let mut dec = Decoder::new();
        let mut b = BytesMut::from(&KUBECTL_OPENING[..]);
        let mut frames = Vec::new();
        while let Some(f) = dec.decode(&mut b).unwrap() {
            frames.push(f);
        }
        assert!(b.is_empty());
        let syn = |stream, kind: &str| Frame::SynStream {
            stream,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: headers(&[("streamtype", kind), ("port", "8000"), ("requestid", "0")]),
        };
        assert_eq!(
            frames,
            [
                syn(1, "error"),
                Frame::Data {
                    stream: 1,
                    flags: FLAG_FIN,
                    data: Bytes::new(),
                },
                syn(3, "data"),
                Frame::Data {
                    stream: 3,
                    flags: 0,
                    data: Bytes::from_static(b"GET / HTTP/1.0\r\nHost: pod\r\n\r\n"),
                },
            ]
        );
    }
}
