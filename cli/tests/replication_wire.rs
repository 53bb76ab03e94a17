//! The framed wires on the peer port (replication, `raft::framed`, and
//! forwarded leader requests, `node::forward_framed`), against real
//! 3-master clusters of `keel` processes with mutual TLS: only master
//! certificates may open either, garbage closes the connection and changes
//! nothing, a forwarded request is served only by the leader, pings are
//! answered, and the gRPC wires kept for benchmarks still replicate and
//! forward.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keel_proto::pki::{self, Ca, Pair, TlsBundle, Usage};
use keel_store::node::forward_framed;
use keel_store::node::forward_stream::{AnswerBatch, RequestBatch};
use keel_store::node::{LeaderError, LeaderRequest, LeaderResponse};
use keel_store::raft::types::TypeConfig;
use keel_store::raft::{codec, framed};
use openraft::alias::VoteOf;
use openraft::raft::{AppendEntriesRequest, StreamAppendError, StreamAppendResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type C = TypeConfig;

fn cluster_ca() -> Ca {
    pki::PkiDir(common::shared_pki()).load_ca().unwrap()
}

/// A client configuration for the framed wire presenting `me`.
fn framed_tls(me: Pair) -> Arc<rustls::ClientConfig> {
    let mut cfg = TlsBundle {
        ca_pem: common::ca_pem(),
        me: Some(me),
    }
    .rustls_client()
    .unwrap();
    cfg.alpn_protocols = vec![framed::ALPN.to_vec()];
    Arc::new(cfg)
}

/// A heartbeat from a leader of term 0, which every member has passed.
fn stale_heartbeat() -> Vec<u8> {
    codec::encode(&AppendEntriesRequest::<C> {
        vote: VoteOf::<C>::new_committed(0, 1),
        prev_log_id: None,
        leader_commit: None,
        entries: vec![],
    })
}

/// Sends one stale heartbeat over the framed wire with `tls` and returns
/// the member's answer, or the error that ended the stream first.
async fn heartbeat(addr: &str, tls: Arc<rustls::ClientConfig>) -> std::io::Result<Vec<u8>> {
    let idle = framed::Idle::default();
    let requests = futures::stream::iter([stale_heartbeat()]);
    let mut answers = framed::open(addr, Some(tls), &idle, requests).await?;
    tokio::time::timeout(Duration::from_secs(10), answers.next())
        .await
        .expect("an answer or the end of the stream within 10 s")
        .unwrap_or_else(|| Err(std::io::Error::other("the stream ended without an answer")))
}

/// Opens a TLS connection to the peer port at `addr` with `tls` and sends
/// `bytes` on it.
async fn send_raw(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    bytes: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    s.write_all(bytes).await?;
    s.flush().await?;
    Ok(s)
}

/// [`send_raw`], then reads frames until `frames` have come: an error if
/// the connection ends or 10 s pass before they have.
async fn exchange(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    bytes: &[u8],
    frames: usize,
) -> std::io::Result<Vec<Vec<u8>>> {
    let mut s = send_raw(addr, tls, bytes).await?;
    let mut got = Vec::new();
    let read = async {
        while got.len() < frames {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await?;
            let mut f = vec![0; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut f).await?;
            got.push(f);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
    Ok(got)
}

/// A frame: its 4-byte big-endian length, then `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    [&(payload.len() as u32).to_be_bytes()[..], payload].concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_masters_may_open_a_replication_stream() {
    let tc = common::start(3, &[]).await;
    let peer = tc.c.members[0].peer_addr();
    let ca = cluster_ca();

    // A master's certificate gets the member's answer: the stale leader is
    // told of a higher vote, and the connection stays open for the next
    // stream (the heartbeat path reuses it).
    let master = ca
        .issue("m-test", Some(pki::ORG_MASTERS), &[], Usage::Client)
        .unwrap();
    let tls = framed_tls(master);
    let idle = framed::Idle::default();
    for round in 0..2 {
        let requests = futures::stream::iter([stale_heartbeat()]);
        let mut answers = framed::open(&peer, Some(tls.clone()), &idle, requests)
            .await
            .unwrap();
        let answer = answers.next().await.expect("an answer").unwrap();
        let result: StreamAppendResult<C> = codec::decode(&answer).unwrap();
        assert!(
            matches!(result, Err(StreamAppendError::HigherVote(_))),
            "round {round}: {result:?}"
        );
        assert!(answers.next().await.is_none(), "round {round}: one answer");
        drop(answers);
        assert!(
            idle.lock().unwrap().is_some(),
            "round {round}: the connection is kept for the next stream"
        );
    }

    // An admin's certificate is the cluster's but not a master's: the
    // connection closes without an answer.
    let admin = ca
        .issue("admin-test", Some(pki::ORG_ADMIN), &[], Usage::Client)
        .unwrap();
    let r = heartbeat(&peer, framed_tls(admin.clone())).await;
    assert!(r.is_err(), "an admin certificate got an answer: {r:?}");
    // Nor may it open a forwarding connection: a ping goes unanswered.
    let ping = [&forward_framed::MAGIC[..], &frame(&[])].concat();
    let r = exchange(&peer, framed_tls(admin), &ping, 1).await;
    assert!(
        r.is_err(),
        "an admin certificate got a forwarding answer: {r:?}"
    );

    // A certificate from another CA fails the handshake.
    let stranger = Ca::generate("stranger")
        .unwrap()
        .issue("m-x", Some(pki::ORG_MASTERS), &[], Usage::Client)
        .unwrap();
    let r = heartbeat(&peer, framed_tls(stranger)).await;
    assert!(r.is_err(), "a stranger's certificate got an answer: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_replication_wire_closes_the_connection_and_changes_nothing() {
    let tc = common::start(3, &[]).await;
    let eps = tc.c.endpoints();
    let rev = common::put(&eps[0], "before", "1").await.unwrap();
    let before = common::equal_hash_kv(&eps, rev).await;
    let master = cluster_ca()
        .issue("m-test", Some(pki::ORG_MASTERS), &[], Usage::Client)
        .unwrap();
    let tls = framed_tls(master);

    let huge = (u32::MAX).to_be_bytes().to_vec();
    let mut undecodable = 8u32.to_be_bytes().to_vec();
    undecodable.extend_from_slice(&[0xff; 8]);
    let cases: [(&str, Vec<u8>); 5] = [
        ("a wrong magic", b"NOTKEEL!".to_vec()),
        (
            "a frame over the size limit",
            [&framed::MAGIC[..], &huge].concat(),
        ),
        (
            "an undecodable request",
            [&framed::MAGIC[..], &undecodable].concat(),
        ),
        (
            "a forwarding frame over the size limit",
            [&forward_framed::MAGIC[..], &huge].concat(),
        ),
        (
            "an undecodable forwarded batch",
            [&forward_framed::MAGIC[..], &undecodable].concat(),
        ),
    ];
    for m in &tc.c.members {
        for (what, bytes) in &cases {
            let mut s = send_raw(&m.peer_addr(), tls.clone(), bytes).await.unwrap();
            let mut buf = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("{what}: the connection stayed open"));
            // Closed, cleanly or not, without an answer.
            assert!(read.is_err() || buf.is_empty(), "{what}: answered {buf:?}");
        }
    }

    // Every member still serves, and nothing changed but the next write.
    assert_eq!(common::equal_hash_kv(&eps, rev).await, before);
    for ep in &eps {
        let r = common::put(ep, "after", ep).await.unwrap();
        assert!(r > rev, "{ep}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_are_served_only_by_the_leader_and_pings_answered() {
    let tc = common::start(3, &[]).await;
    let eps = tc.c.endpoints();
    common::put(&eps[0], "settled", "1").await.unwrap();
    let master = cluster_ca()
        .issue("m-test", Some(pki::ORG_MASTERS), &[], Usage::Client)
        .unwrap();
    let tls = framed_tls(master);
    // A ping, then a batch of one request, on the same connection.
    let batch: RequestBatch = vec![(7, LeaderRequest::TimeToLive(424242))];
    let bytes = [
        &forward_framed::MAGIC[..],
        &frame(&[]),
        &frame(&codec::encode(&batch)),
    ]
    .concat();
    let mut leaders = 0;
    for m in &tc.c.members {
        let got = exchange(&m.peer_addr(), tls.clone(), &bytes, 2)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", m.name));
        assert!(got[0].is_empty(), "{}: the ping's answer is a ping", m.name);
        let answers: AnswerBatch = codec::decode(&got[1]).unwrap();
        match answers.as_slice() {
            [(7, Ok(LeaderResponse::Ttl(..)))] => leaders += 1,
            [(7, Err(LeaderError::NotLeader))] => {}
            other => panic!("{}: {other:?}", m.name),
        }
    }
    assert_eq!(
        leaders, 1,
        "exactly one member served the forwarded requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_wires_still_replicate_and_forward() {
    let tc = common::start(3, &["--replication-wire", "grpc", "--forward-wire", "grpc"]).await;
    let eps = tc.c.endpoints();
    let mut rev = 0;
    for i in 0..20 {
        rev = common::put(&eps[i % eps.len()], &format!("k{i}"), "v")
            .await
            .unwrap();
    }
    let hashes = common::equal_hash_kv(&eps, rev).await;
    assert_eq!(hashes.len(), 3);
    for ep in &eps {
        assert_eq!(
            common::get(ep, "k19", true).await.unwrap().as_deref(),
            Some("v")
        );
    }
}
