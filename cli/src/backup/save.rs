//! `keel backup save`: a verified backup of a running cluster, read from
//! one member over the etcd API, signed and sealed when asked.

use std::path::Path;

use anyhow::{Context, bail};
use futures::StreamExt;
use keel_proto::etcdserverpb::cluster_client::ClusterClient;
use keel_proto::etcdserverpb::kv_client::KvClient;
use keel_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use keel_proto::etcdserverpb::{MemberListRequest, RangeRequest, SnapshotRequest, StatusRequest};
use keel_proto::pki::Credentials;
use keel_store::backup;
use keel_store::sealed::Secret;
use sha2::{Digest, Sha256};

use super::file::print_header;
use crate::client::connect_any;

fn context(out: &Path) -> String {
    format!("writing {}", out.display())
}

pub(super) async fn save(
    creds: &Credentials,
    endpoints: &[String],
    out: &Path,
    sign_key: Option<&ed25519_dalek::SigningKey>,
    seal_with: Option<&Secret>,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let ms = || started.elapsed().as_millis() as u64;
    let ch = connect_any(creds, endpoints).await?;
    // A linearizable read first: the member has applied everything
    // committed before the backup started. One key (no user key is the
    // single byte 0), not a count of the whole key space, which took 0.3-0.8 s
    // at 100,000 keys.
    KvClient::new(ch.clone())
        .range(RangeRequest {
            key: vec![0],
            count_only: true,
            ..Default::default()
        })
        .await
        .context("read barrier")?;
    let status = MaintenanceClient::new(ch.clone())
        .status(StatusRequest {})
        .await?
        .into_inner();
    let me = status.header.map(|h| h.member_id).unwrap_or(0);
    let name = ClusterClient::new(ch.clone())
        .member_list(MemberListRequest {
            linearizable: false,
        })
        .await?
        .into_inner()
        .members
        .into_iter()
        .find(|m| m.id == me)
        .map(|m| m.name)
        .unwrap_or_default();
    tracing::debug!(ms = ms(), "read barrier passed");
    let mut stream = MaintenanceClient::new(ch)
        .snapshot(SnapshotRequest {})
        .await?
        .into_inner();
    // A plain file is written as the dump streams in (after room for the
    // head, filled in once the header is known) and never held in this
    // process's memory; a sealed one is encrypted whole, so it is collected
    // and written at the end.
    let mut streamed = match seal_with {
        None => Some(backup::StreamedFile::create(out).with_context(|| context(out))?),
        Some(_) => None,
    };
    let mut data = Vec::new();
    let mut transfer = StreamSum::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if transfer.len == 0 {
            tracing::debug!(ms = ms(), "dump started");
        }
        transfer.push(&chunk.blob);
        match streamed.as_mut() {
            Some(f) => f.append(&chunk.blob).with_context(|| context(out))?,
            None => {
                if data.is_empty() {
                    // The first answer says how much follows: one
                    // allocation instead of doubling (capped, as the
                    // number is the server's).
                    let total = (chunk.blob.len() as u64).saturating_add(chunk.remaining_bytes);
                    data.reserve(total.min(4 << 30) as usize);
                }
                data.extend_from_slice(&chunk.blob);
            }
        }
    }
    let dump_len = transfer.check()?;
    tracing::debug!(bytes = dump_len, ms = ms(), "dump received");
    let source = backup::Source {
        member: name,
        member_id: me,
        raft_term: status.raft_term,
        raft_index: status.raft_applied_index,
    };
    let header = match streamed {
        Some(f) => {
            let map = f.map_dump().with_context(|| context(out))?;
            // The streamed bytes go to disk while the header is computed.
            let (built, synced) = std::thread::scope(|s| {
                let sync = s.spawn(|| f.sync_data());
                let built = backup::build(&map[..dump_len], &source, backup::STREAMED_HEAD);
                (built, sync.join().expect("the fsync thread does not panic"))
            });
            let (header, mut file) = built?;
            synced.with_context(|| context(out))?;
            if let Some(k) = sign_key {
                backup::sign(&mut file.tail, k);
            }
            f.finish(&file).with_context(|| context(out))?;
            header
        }
        None => {
            let (header, mut file) = backup::build(&data[..dump_len], &source, 0)?;
            // Sign the plain file, then seal it: the signature is checked
            // after opening, so an auditor with the public key and the
            // passphrase can tell who made the backup, and it reveals
            // nothing without them.
            if let Some(k) = sign_key {
                backup::sign(&mut file.tail, k);
            }
            backup::write_file(out, &file, seal_with).with_context(|| context(out))?;
            header
        }
    };
    drop(data);
    tracing::debug!(ms = ms(), "backup written and synced");
    // Published atomically; read back, opened and verified before claiming
    // success.
    let written = backup::read_verified(out, seal_with, true).with_context(|| context(out))?;
    tracing::debug!(ms = ms(), "backup read back and verified");
    print_header(&header, written.encryption);
    println!("saved {} ({} bytes)", out.display(), written.len);
    Ok(())
}

/// The SHA-256 of a snapshot stream, whose last 32 bytes are the checksum
/// of everything before them: hashed as it arrives, 32 bytes behind.
#[derive(Default)]
struct StreamSum {
    sum: Sha256,
    /// The last bytes seen, not hashed yet (at most 32 once past a chunk).
    last: Vec<u8>,
    len: usize,
}

impl StreamSum {
    fn push(&mut self, b: &[u8]) {
        self.len += b.len();
        if b.len() >= 32 {
            self.sum.update(&self.last);
            self.last.clear();
            let (body, tail) = b.split_at(b.len() - 32);
            self.sum.update(body);
            self.last.extend_from_slice(tail);
        } else {
            self.last.extend_from_slice(b);
            let extra = self.last.len().saturating_sub(32);
            self.sum.update(&self.last[..extra]);
            self.last.drain(..extra);
        }
    }

    /// Checks the stream's checksum; the length of what it covers.
    fn check(self) -> anyhow::Result<usize> {
        if self.len < 32 {
            bail!("snapshot stream too short ({} bytes)", self.len);
        }
        if self.sum.finalize().as_slice() != self.last.as_slice() {
            bail!("snapshot stream checksum mismatch: transfer corrupted");
        }
        Ok(self.len - 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum_of(chunks: &[&[u8]]) -> anyhow::Result<usize> {
        let mut s = StreamSum::default();
        for c in chunks {
            s.push(c);
        }
        s.check()
    }

    #[test]
    fn the_stream_checksum_is_found_however_the_stream_is_cut() {
        let body: Vec<u8> = (0..200u8).collect();
        let mut stream = body.clone();
        stream.extend_from_slice(&Sha256::digest(&body));
        for cut in [1, 5, 31, 32, 33, 64, 150, 199, 200, 231] {
            let (a, b) = stream.split_at(cut);
            let pieces: Vec<&[u8]> = a.chunks(7).chain(b.chunks(40)).collect();
            assert_eq!(sum_of(&pieces).unwrap(), 200, "cut at {cut}");
        }
        let mut bad = stream.clone();
        bad[10] ^= 1;
        assert!(
            sum_of(&[&bad])
                .unwrap_err()
                .to_string()
                .contains("mismatch")
        );
        assert!(
            sum_of(&[&stream[..20]])
                .unwrap_err()
                .to_string()
                .contains("too short")
        );
    }
}
