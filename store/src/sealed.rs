//! Passphrase- or key-file encryption of backup files: a backup holds the
//! cluster's CA private key and token hashes, so it must be safe to leave on
//! a shared disk or in a bucket. The byte layout is in
//! `docs/backup-format.md` ("Encrypted files").
//!
//! A sealed file is a small clear header followed by the XChaCha20-Poly1305
//! ciphertext of the whole plain backup file. The header is the AEAD's
//! associated data, so the tag authenticates every byte of the file: a
//! changed KDF id, salt or nonce fails exactly as a changed ciphertext does.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// First bytes of every sealed file (a plain backup starts `KEELBAK1\n`).
pub const MAGIC: &[u8] = b"KEELSEAL1\n";
/// KDF id: Argon2id over a passphrase with [`ARGON2_M_KIB`],
/// [`ARGON2_T`] and [`ARGON2_P`]. The parameters are fixed per id rather
/// than stored, so a tampered header cannot make a reader allocate
/// gigabytes before the tag is checked; stronger parameters get a new id.
pub const KDF_ARGON2ID: u8 = 1;
/// KDF id: a 32-byte key read from a key file, used as the AEAD key as is
/// (it is already uniformly random; the salt is then unused but still
/// authenticated).
pub const KDF_RAW_KEY: u8 = 2;
/// Argon2id memory cost in KiB (64 MiB), RFC 9106's second recommended
/// option; a fraction of a second on one core in a release build.
pub const ARGON2_M_KIB: u32 = 64 * 1024;
/// Argon2id passes over that memory.
pub const ARGON2_T: u32 = 3;
/// Argon2id lanes: one, so the cost is the same on any machine.
pub const ARGON2_P: u32 = 1;
/// Salt length (the Argon2 recommendation).
pub const SALT_LEN: usize = 16;
/// XChaCha20 nonce length: 24 bytes, large enough to draw at random.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length, at the end of the ciphertext.
pub const TAG_LEN: usize = 16;
/// Magic, KDF id, salt, nonce: the clear header, bound as associated data.
pub const HEADER_LEN: usize = MAGIC.len() + 1 + SALT_LEN + NONCE_LEN;

/// What opens (or seals) a file.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Stretched with Argon2id; must not be empty.
    Passphrase(String),
    /// Used directly (a key file from `keel backup keygen --encryption`).
    Key([u8; 32]),
}

impl std::fmt::Debug for Secret {
    // Never print the secret itself, even in a debug log or a panic message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Passphrase(_) => f.write_str("Passphrase(<redacted>)"),
            Secret::Key(_) => f.write_str("Key(<redacted>)"),
        }
    }
}

impl Secret {
    fn kdf_id(&self) -> u8 {
        match self {
            Secret::Passphrase(_) => KDF_ARGON2ID,
            Secret::Key(_) => KDF_RAW_KEY,
        }
    }
}

/// Why a sealed file cannot be opened (or a file cannot be sealed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("not an encrypted Keel backup (bad magic bytes)")]
    NotSealed,
    #[error("malformed encrypted backup: {0}")]
    Malformed(String),
    #[error("wrong passphrase or key, or the file is corrupt")]
    WrongSecretOrCorrupt,
    #[error("this file was encrypted with {sealed_with}, but {given} was given")]
    WrongKind {
        sealed_with: &'static str,
        given: &'static str,
    },
    #[error("a passphrase is required: the given one is empty")]
    PassphraseRequired,
    #[error("key derivation failed: {0}")]
    Kdf(String),
}

fn kdf_name(id: u8) -> &'static str {
    match id {
        KDF_ARGON2ID => "a passphrase",
        _ => "a key file",
    }
}

/// True if `file` starts like a sealed file (its content is not checked).
pub fn is_sealed(file: &[u8]) -> bool {
    file.starts_with(MAGIC)
}

/// How a sealed file's key is derived, for reports (`None` if not sealed
/// or the KDF id is unknown). Reads only the clear header.
pub fn describe(file: &[u8]) -> Option<&'static str> {
    if !is_sealed(file) {
        return None;
    }
    match file.get(MAGIC.len()) {
        Some(&KDF_ARGON2ID) => Some("XChaCha20-Poly1305, key from a passphrase (Argon2id)"),
        Some(&KDF_RAW_KEY) => Some("XChaCha20-Poly1305, key from a key file"),
        _ => None,
    }
}

/// The AEAD key for `secret` under KDF `id` and `salt`.
fn derive(id: u8, salt: &[u8], secret: &Secret) -> Result<[u8; 32], SealError> {
    match (id, secret) {
        (KDF_ARGON2ID, Secret::Passphrase(p)) => {
            if p.is_empty() {
                return Err(SealError::PassphraseRequired);
            }
            let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32))
                .map_err(|e| SealError::Kdf(e.to_string()))?;
            let mut key = [0u8; 32];
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password_into(p.as_bytes(), salt, &mut key)
                .map_err(|e| SealError::Kdf(e.to_string()))?;
            Ok(key)
        }
        (KDF_RAW_KEY, Secret::Key(k)) => Ok(*k),
        (id, s) => Err(SealError::WrongKind {
            sealed_with: kdf_name(id),
            given: kdf_name(s.kdf_id()),
        }),
    }
}

/// Encrypts a whole plain backup file under `secret`, with a fresh random
/// salt and nonce.
pub fn seal(plain: &[u8], secret: &Secret) -> Result<Vec<u8>, SealError> {
    let salt: [u8; SALT_LEN] = rand::random();
    let nonce: [u8; NONCE_LEN] = rand::random();
    let id = secret.kdf_id();
    let key = derive(id, &salt, secret)?;
    let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(id);
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let ct = XChaCha20Poly1305::new(&key.into())
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plain,
                aad: &out,
            },
        )
        // Only a message beyond ChaCha20's 256 GiB limit fails here.
        .map_err(|_| SealError::Malformed("backup too large to encrypt".into()))?;
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Decrypts a sealed file, checking with its tag that no byte of it has
/// changed, and returns the plain backup file inside.
pub fn open(file: &[u8], secret: &Secret) -> Result<Vec<u8>, SealError> {
    if !is_sealed(file) {
        return Err(if MAGIC.starts_with(file) && !file.is_empty() {
            SealError::Malformed(format!(
                "truncated: {} bytes, not even the magic",
                file.len()
            ))
        } else {
            SealError::NotSealed
        });
    }
    if file.len() < HEADER_LEN + TAG_LEN {
        return Err(SealError::Malformed(format!(
            "truncated: {} bytes, at least {} needed",
            file.len(),
            HEADER_LEN + TAG_LEN
        )));
    }
    let (header, ct) = file.split_at(HEADER_LEN);
    let id = header[MAGIC.len()];
    if id != KDF_ARGON2ID && id != KDF_RAW_KEY {
        return Err(SealError::Malformed(format!("unknown KDF id {id}")));
    }
    let salt = &header[MAGIC.len() + 1..MAGIC.len() + 1 + SALT_LEN];
    let nonce: [u8; NONCE_LEN] = header[HEADER_LEN - NONCE_LEN..]
        .try_into()
        .expect("nonce length");
    let key = derive(id, salt, secret)?;
    XChaCha20Poly1305::new(&key.into())
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: ct,
                aad: header,
            },
        )
        .map_err(|_| SealError::WrongSecretOrCorrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: &[u8] = b"KEELBAK1\nnot really a backup, but any bytes will do";

    fn key() -> Secret {
        Secret::Key([7; 32])
    }

    #[test]
    fn sealed_round_trip_with_a_key() {
        let f = seal(PLAIN, &key()).unwrap();
        assert!(is_sealed(&f));
        assert_eq!(f.len(), HEADER_LEN + PLAIN.len() + TAG_LEN);
        assert!(!f.windows(8).any(|w| w == b"KEELBAK1"), "plain text leaked");
        assert_eq!(open(&f, &key()).unwrap(), PLAIN);
        // Fresh salt and nonce each time.
        assert_ne!(seal(PLAIN, &key()).unwrap(), f);
    }

    #[test]
    fn sealed_round_trip_with_a_passphrase_and_wrong_ones_refused() {
        let pass = Secret::Passphrase("correct horse battery staple".into());
        let f = seal(PLAIN, &pass).unwrap();
        assert_eq!(f[MAGIC.len()], KDF_ARGON2ID);
        assert_eq!(open(&f, &pass).unwrap(), PLAIN);
        assert_eq!(
            open(
                &f,
                &Secret::Passphrase("correct horse battery stapler".into())
            ),
            Err(SealError::WrongSecretOrCorrupt)
        );
        assert_eq!(
            open(&f, &key()),
            Err(SealError::WrongKind {
                sealed_with: "a passphrase",
                given: "a key file"
            })
        );
        assert_eq!(
            open(&f, &Secret::Passphrase(String::new())),
            Err(SealError::PassphraseRequired)
        );
        assert_eq!(
            SealError::WrongSecretOrCorrupt.to_string(),
            "wrong passphrase or key, or the file is corrupt"
        );
    }

    #[test]
    fn sealed_wrong_key_refused() {
        let f = seal(PLAIN, &key()).unwrap();
        assert_eq!(
            open(&f, &Secret::Key([8; 32])),
            Err(SealError::WrongSecretOrCorrupt)
        );
    }

    #[test]
    fn sealed_empty_passphrase_refused() {
        assert_eq!(
            seal(PLAIN, &Secret::Passphrase(String::new())),
            Err(SealError::PassphraseRequired)
        );
    }

    #[test]
    fn sealed_any_flipped_byte_refused() {
        let f = seal(PLAIN, &key()).unwrap();
        for i in 0..f.len() {
            let mut bad = f.clone();
            bad[i] ^= 0x01;
            let got = open(&bad, &key());
            let region = match i {
                _ if i < MAGIC.len() => "magic",
                _ if i == MAGIC.len() => "kdf id",
                _ if i < MAGIC.len() + 1 + SALT_LEN => "salt",
                _ if i < HEADER_LEN => "nonce",
                _ if i < f.len() - TAG_LEN => "ciphertext",
                _ => "tag",
            };
            assert!(got.is_err(), "flipped byte {i} ({region}) accepted");
            // Outside magic and KDF id, it is the tag that catches it.
            if i > MAGIC.len() {
                assert_eq!(got, Err(SealError::WrongSecretOrCorrupt), "byte {i}");
            }
        }
    }

    #[test]
    fn sealed_truncated_refused() {
        let f = seal(PLAIN, &key()).unwrap();
        for n in [
            1,
            MAGIC.len() - 1,
            MAGIC.len(),
            HEADER_LEN,
            HEADER_LEN + TAG_LEN - 1,
        ] {
            assert!(
                matches!(open(&f[..n], &key()), Err(SealError::Malformed(_))),
                "{n} bytes"
            );
        }
        for n in [HEADER_LEN + TAG_LEN, f.len() - 1] {
            assert_eq!(
                open(&f[..n], &key()),
                Err(SealError::WrongSecretOrCorrupt),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn sealed_plain_files_detected() {
        assert!(!is_sealed(PLAIN));
        assert!(!is_sealed(b""));
        assert_eq!(describe(PLAIN), None);
        assert_eq!(
            describe(&seal(PLAIN, &key()).unwrap()),
            Some("XChaCha20-Poly1305, key from a key file")
        );
        assert_eq!(open(PLAIN, &key()), Err(SealError::NotSealed));
        assert_eq!(open(b"", &key()), Err(SealError::NotSealed));
    }
}
