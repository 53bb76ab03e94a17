//! The backup file format: a good file decodes with a header matching its
//! data; truncation, a flipped byte, a bad magic, an unknown version and a
//! header that lies are each refused with their own reason.

use keel_proto::etcdserverpb::PutRequest;
use keel_proto::keelraft::{Command, command};
use keel_store::backup::{self, BackupError, BackupHeader, FORMAT_VERSION};
use keel_store::mvcc::KvStore;
use keel_store::mvcc::apply::BatchMeta;
use sha2::{Digest, Sha256};

fn sample() -> (BackupHeader, Vec<u8>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kv = KvStore::open(dir.path()).unwrap();
    let keys = [
        "/registry/pods/default/a",
        "/registry/pods/default/b",
        "/registry/services/default/web",
        "plain",
    ];
    let cmds: Vec<Command> = keys
        .iter()
        .map(|k| Command {
            op: Some(command::Op::Put(PutRequest {
                key: k.as_bytes().to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        })
        .collect();
    let refs: Vec<Option<&Command>> = cmds.iter().map(Some).collect();
    kv.apply_batch(
        &refs,
        BatchMeta {
            applied: b"null".to_vec(),
            membership: None,
            cluster_id: Some(42),
        },
    )
    .unwrap();
    let (dump, _, _) = kv.dump();
    let s = backup::summarize(&keel_store::mvcc::snapshot::parse(&dump).unwrap()).unwrap();
    assert_eq!(s.key_count, 4);
    assert_eq!(s.counts_by_kind["pods"], 2);
    assert_eq!(s.counts_by_kind["services"], 1);
    assert_eq!(s.counts_by_kind["(other)"], 1);
    assert_eq!(s.content_hash, kv.hash_kv(0).unwrap().0);
    let header = BackupHeader {
        format_version: FORMAT_VERSION,
        keel_version: "test".into(),
        cluster_id: s.cluster_id,
        source_member: "m1".into(),
        source_member_id: 1,
        revision: s.revision,
        compact_revision: s.compact_revision,
        raft_term: 1,
        raft_index: 9,
        created_at_unix: 0,
        key_count: s.key_count,
        counts_by_kind: s.counts_by_kind,
        content_hash: s.content_hash,
    };
    (header, dump, dir)
}

/// Re-seals a file whose body was edited, so only the edit is wrong.
fn reseal(mut body: Vec<u8>) -> Vec<u8> {
    body.truncate(body.len() - 32);
    let sum = Sha256::digest(&body);
    body.extend_from_slice(&sum);
    body
}

#[test]
fn a_good_backup_decodes_with_its_header() {
    let (h, dump, _d) = sample();
    let b = backup::decode(&backup::encode(&h, &dump)).unwrap();
    assert_eq!(b.header, h);
    assert_eq!(b.header.revision, 5);
    assert_eq!(b.header.cluster_id, 42);
}

#[test]
fn a_header_padded_for_streaming_decodes_and_its_padding_is_checked() {
    let (h, dump, _d) = sample();
    let parts = backup::encode_parts_padded(&h, &dump, backup::STREAMED_HEAD);
    assert_eq!(parts.head.len(), backup::STREAMED_HEAD);
    let file = parts.concat();
    assert_eq!(backup::decode(&file).unwrap().header, h);
    // The padding is part of the header text: not spaces, it is refused.
    let mut bad = file.clone();
    bad[backup::STREAMED_HEAD - 9] = b'x';
    let e = backup::decode(&reseal(bad)).unwrap_err();
    assert!(matches!(e, BackupError::Header(_)), "{e}");
}

#[test]
fn truncation_is_refused_wherever_it_cuts() {
    let (h, dump, _d) = sample();
    let file = backup::encode(&h, &dump);
    for cut in [3, 12, 40, file.len() - 100, file.len() - 1] {
        let e = backup::decode(&file[..cut]).unwrap_err();
        assert!(matches!(e, BackupError::Truncated(_)), "cut at {cut}: {e}");
    }
}

#[test]
fn a_flipped_byte_is_refused_by_the_checksum() {
    let (h, dump, _d) = sample();
    let file = backup::encode(&h, &dump);
    for at in [20, file.len() / 2, file.len() - 40, file.len() - 1] {
        let mut bad = file.clone();
        bad[at] ^= 0x01;
        let e = backup::decode(&bad).unwrap_err();
        assert!(
            matches!(e, BackupError::Checksum { .. }),
            "flip at {at}: {e}"
        );
    }
}

#[test]
fn bad_magic_unknown_version_and_lying_header_are_refused() {
    let (h, dump, _d) = sample();
    let mut file = backup::encode(&h, &dump);
    file[0] = b'X';
    assert_eq!(backup::decode(&file).unwrap_err(), BackupError::BadMagic);

    let mut v2 = h.clone();
    v2.format_version = 2;
    let e = backup::decode(&backup::encode(&v2, &dump)).unwrap_err();
    assert_eq!(e, BackupError::UnknownVersion(2));

    let mut lying = h.clone();
    lying.key_count = 5;
    let e = backup::decode(&backup::encode(&lying, &dump)).unwrap_err();
    assert!(
        matches!(e, BackupError::Mismatch(ref m) if m.contains("key_count")),
        "{e}"
    );

    // A data record that does not decode, sealed with a valid checksum.
    let good = backup::encode(&h, &dump);
    let pos = good.windows(5).position(|w| w == b"plain").unwrap();
    let mut bad = good.clone();
    bad[pos + 6] ^= 0xff; // inside the value record of `plain`
    let e = backup::decode(&reseal(bad)).unwrap_err();
    assert!(
        matches!(e, BackupError::Data(_) | BackupError::Mismatch(_)),
        "{e}"
    );
}

#[test]
fn signatures_are_checked_against_the_key() {
    let (h, dump, _d) = sample();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let other = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
    let mut file = backup::encode(&h, &dump);
    let unsigned = backup::decode(&file).unwrap();
    assert_eq!(
        backup::check_signer(&unsigned, &key.verifying_key()).unwrap_err(),
        BackupError::NotSigned
    );
    backup::sign(&mut file, &key);
    let b = backup::decode(&file).unwrap();
    backup::check_signer(&b, &key.verifying_key()).unwrap();
    assert!(matches!(
        backup::check_signer(&b, &other.verifying_key()).unwrap_err(),
        BackupError::WrongKey(_)
    ));
    let mut forged = file.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x01;
    assert!(matches!(
        backup::decode(&forged).unwrap_err(),
        BackupError::BadSignature(_)
    ));
    let e = backup::decode(&file[..file.len() - 10]).unwrap_err();
    assert!(matches!(e, BackupError::Truncated(_)), "{e}");
}
