//! The session end to end over in-memory connections: a client speaking
//! SPDY through this crate's framer, a pod that is a local TCP listener.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::session::{Target, run};
use super::spdy::{Decoder, Encoder, FLAG_FIN, Frame, goaway, rst};
use futures::channel::mpsc as fmpsc;
use tokio::net::TcpListener;

/// The client's side of a session under test.
struct Client {
    enc: Encoder,
    dec: Decoder,
    tx: fmpsc::UnboundedSender<io::Result<Bytes>>,
    rx: fmpsc::UnboundedReceiver<Bytes>,
    buf: BytesMut,
}

impl Client {
    fn send(&mut self, f: Frame) {
        let mut b = BytesMut::new();
        self.enc.encode(&f, &mut b).unwrap();
        self.tx.unbounded_send(Ok(b.freeze())).unwrap();
    }

    fn open(&mut self, stream: u32, kind: &str, port: u16, request: u32) {
        let headers = [
            ("streamtype", kind),
            ("port", &port.to_string()),
            ("requestid", &request.to_string()),
        ];
        self.send(Frame::SynStream {
            stream,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
    }

    async fn next(&mut self) -> Frame {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                return f;
            }
            let b = tokio::time::timeout(Duration::from_secs(10), self.rx.next())
                .await
                .expect("a frame in time")
                .expect("the session is still there");
            self.buf.extend_from_slice(&b);
        }
    }

    /// Frames until stream `until` ends, the data of `stream` gathered.
    async fn read_until_fin(&mut self, stream: u32, until: u32) -> (Vec<u8>, Vec<Frame>) {
        let (mut data, mut other) = (Vec::new(), Vec::new());
        loop {
            match self.next().await {
                Frame::Data {
                    stream: s,
                    flags,
                    data: d,
                } if s == stream || s == until => {
                    if s == stream {
                        data.extend_from_slice(&d);
                    }
                    if s == until && flags & FLAG_FIN != 0 {
                        return (data, other);
                    }
                }
                f => other.push(f),
            }
        }
    }
}

fn start() -> (Client, tokio::task::JoinHandle<()>) {
    let (tx, inbound) = fmpsc::unbounded();
    let (outbound, rx) = fmpsc::unbounded::<Bytes>();
    let target = Target {
        pod: "default/web".into(),
        uid: "u1".into(),
        ip: Ipv4Addr::LOCALHOST,
    };
    let outbound = outbound.sink_map_err(io::Error::other);
    let s = tokio::spawn(run(inbound, outbound, target));
    let c = Client {
        enc: Encoder::new(),
        dec: Decoder::new(),
        tx,
        rx,
        buf: BytesMut::new(),
    };
    (c, s)
}

#[tokio::test]
async fn a_connection_is_forwarded_both_ways_and_a_dead_port_is_reported() {
    // A pod that sends 3 MiB, then everything it was sent, then closes.
    let pod = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = pod.local_addr().unwrap().port();
    let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
    let served = big.clone();
    tokio::spawn(async move {
        let (mut c, _) = pod.accept().await.unwrap();
        c.write_all(&served).await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        c.write_all(&got).await.unwrap();
    });
    let (mut c, session) = start();
    c.open(1, "error", port, 0);
    c.open(3, "data", port, 0);
    c.send(Frame::Ping { id: 1 });
    let upload: Vec<u8> = (0..2 << 20).map(|i| (i % 241) as u8).collect();
    for piece in upload.chunks(100_000) {
        c.send(Frame::Data {
            stream: 3,
            flags: 0,
            data: Bytes::copy_from_slice(piece),
        });
    }
    c.send(Frame::Data {
        stream: 3,
        flags: FLAG_FIN,
        data: Bytes::new(),
    });
    let (got, other) = c.read_until_fin(3, 3).await;
    assert_eq!(got.len(), big.len() + upload.len());
    assert!(got[..big.len()] == big[..] && got[big.len()..] == upload[..]);
    for f in [
        Frame::SynReply {
            stream: 1,
            flags: 0,
            headers: vec![],
        },
        Frame::SynReply {
            stream: 3,
            flags: 0,
            headers: vec![],
        },
        Frame::Ping { id: 1 },
    ] {
        assert!(other.contains(&f), "{f:?} in {other:?}");
    }
    // kubectl resets the data stream; the error stream ends empty.
    c.send(Frame::RstStream {
        stream: 3,
        status: rst::CANCEL,
    });
    let (text, _) = c.read_until_fin(1, 1).await;
    assert!(text.is_empty(), "{}", String::from_utf8_lossy(&text));

    // Nothing listens: the error stream says why, the session goes on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap().port();
    drop(closed);
    c.open(5, "error", dead, 1);
    c.open(7, "data", dead, 1);
    let (text, _) = c.read_until_fin(5, 5).await;
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.starts_with(&format!(
            "error forwarding port {dead} to pod default/web, uid u1: "
        )) && text.contains("connect: connection refused"),
        "{text}"
    );
    c.send(Frame::Ping { id: 3 });
    loop {
        if c.next().await == (Frame::Ping { id: 3 }) {
            break;
        }
    }
    c.send(Frame::GoAway {
        last_good: 0,
        status: goaway::OK,
    });
    tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_stream_ends_after_the_pod_closes_even_if_the_client_never_does() {
    // kubectl after the pod's FIN: neither FIN nor RST, only a wait for
    // the error stream to end (an HTTP/1.0 client keeps its side open).
    let pod = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = pod.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut c, _) = pod.accept().await.unwrap();
        c.write_all(b"bye").await.unwrap();
    });
    let (mut c, _session) = start();
    c.open(1, "error", port, 0);
    c.open(3, "data", port, 0);
    let (got, _) = c.read_until_fin(3, 3).await;
    assert_eq!(got, b"bye");
    let (text, _) = c.read_until_fin(1, 1).await;
    assert!(text.is_empty(), "{}", String::from_utf8_lossy(&text));
}
