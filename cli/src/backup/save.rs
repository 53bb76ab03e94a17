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

pub(super) async fn save(
    creds: &Credentials,
    endpoints: &[String],
    out: &Path,
    sign_key: Option<&ed25519_dalek::SigningKey>,
    seal_with: Option<&Secret>,
) -> anyhow::Result<()> {
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
    let mut stream = MaintenanceClient::new(ch)
        .snapshot(SnapshotRequest {})
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if data.is_empty() {
            // The first answer says how much follows: one allocation
            // instead of doubling (capped, as the number is the server's).
            // The slack lets the written file, a little longer, be read
            // back into this same memory.
            let total = (chunk.blob.len() as u64).saturating_add(chunk.remaining_bytes);
            data.reserve(total.min(4 << 30) as usize + (1 << 20));
        }
        data.extend_from_slice(&chunk.blob);
    }
    if data.len() < 32 {
        bail!("snapshot stream too short ({} bytes)", data.len());
    }
    let sum = data.split_off(data.len() - 32);
    if Sha256::digest(&data).as_slice() != sum.as_slice() {
        bail!("snapshot stream checksum mismatch: transfer corrupted");
    }
    let (header, mut file) = backup::build(
        &data,
        &backup::Source {
            member: name,
            member_id: me,
            raft_term: status.raft_term,
            raft_index: status.raft_applied_index,
        },
    )?;
    // Sign the plain file, then seal it: the signature is checked after
    // opening, so an auditor with the public key and the passphrase can
    // tell who made the backup, and it reveals nothing without them.
    if let Some(k) = sign_key {
        backup::sign(&mut file.tail, k);
    }
    // Sealed if asked, written atomically, then read back (into the memory
    // of the dump, done with once written), opened and verified before
    // claiming success.
    let context = || format!("writing {}", out.display());
    backup::write_file(out, &file, seal_with).with_context(context)?;
    drop(file);
    let written = backup::read_verified(out, seal_with, data).with_context(context)?;
    print_header(&header, written.encryption);
    println!("saved {} ({} bytes)", out.display(), written.len);
    Ok(())
}
