//! Bearer tokens: `keel.<id>.<secret>`, stored only as a SHA-256 hash of the
//! secret with the role, user, expiry and revocation; bootstrap tokens can be
//! used once.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::rbac::Role;

/// A token as stored (never the secret itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub user: String,
    pub role: Role,
    /// Seconds since the epoch after which the token is refused (0: never).
    #[serde(default)]
    pub expires_at: i64,
    #[serde(default)]
    pub revoked: bool,
    /// A node bootstrap token: good for one certificate request.
    #[serde(default)]
    pub bootstrap: bool,
    /// The one node a bootstrap token may join as (bound at creation).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// The node a bootstrap token was spent on (empty: not used yet).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub used_by: String,
    pub created_at: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("token has expired")]
    Expired,
    #[error("token has been revoked")]
    Revoked,
    #[error("bootstrap token was already used by node {0}")]
    Used(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

fn random_hex(n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    hex(&bytes)
}

/// Creates a token; returns the secret token string (shown once) and its record.
pub fn generate(
    user: &str,
    role: Role,
    ttl_secs: i64,
    bootstrap: bool,
    now: i64,
) -> (String, TokenRecord) {
    let id = random_hex(6);
    let secret = random_hex(24);
    let rec = TokenRecord {
        id: id.clone(),
        secret_sha256: sha256_hex(&secret),
        user: user.to_string(),
        role,
        expires_at: if ttl_secs > 0 { now + ttl_secs } else { 0 },
        revoked: false,
        bootstrap,
        node: String::new(),
        used_by: String::new(),
        created_at: now,
    };
    (format!("keel.{id}.{secret}"), rec)
}

/// The record of an existing token string (e.g. the admin token written at
/// bootstrap), never expiring.
pub fn record_for(
    token: &str,
    user: &str,
    role: Role,
    now: i64,
) -> Result<TokenRecord, TokenError> {
    let (id, secret) = parse(token)?;
    Ok(TokenRecord {
        id: id.to_string(),
        secret_sha256: sha256_hex(secret),
        user: user.to_string(),
        role,
        expires_at: 0,
        revoked: false,
        bootstrap: false,
        node: String::new(),
        used_by: String::new(),
        created_at: now,
    })
}

/// Splits a token into its id and secret.
pub fn parse(token: &str) -> Result<(&str, &str), TokenError> {
    let rest = token.strip_prefix("keel.").ok_or(TokenError::Malformed)?;
    let (id, secret) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !ok(id, 12) || !ok(secret, 48) {
        return Err(TokenError::Malformed);
    }
    Ok((id, secret))
}

/// Checks a secret against its record at time `now`, in constant time.
pub fn verify(rec: &TokenRecord, secret: &str, now: i64) -> Result<(), TokenError> {
    let got = sha256_hex(secret);
    let same = got.len() == rec.secret_sha256.len()
        && got
            .bytes()
            .zip(rec.secret_sha256.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(TokenError::Unknown);
    }
    if rec.revoked {
        return Err(TokenError::Revoked);
    }
    if rec.expires_at > 0 && now >= rec.expires_at {
        return Err(TokenError::Expired);
    }
    if !rec.used_by.is_empty() {
        return Err(TokenError::Used(rec.used_by.clone()));
    }
    Ok(())
}

/// Where a token record lives in the store.
pub fn key(id: &str) -> String {
    format!("/keel/tokens/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_expire_and_revoke() {
        let (tok, mut rec) = generate("alice", Role::View, 60, false, 1000);
        let (id, secret) = parse(&tok).unwrap();
        assert_eq!(id, rec.id);
        assert!(!tok.contains(&rec.secret_sha256));
        assert_eq!(verify(&rec, secret, 1059), Ok(()));
        assert_eq!(verify(&rec, secret, 1060), Err(TokenError::Expired));
        assert_eq!(
            verify(&rec, &"0".repeat(48), 1001),
            Err(TokenError::Unknown)
        );
        rec.used_by = "n1".into();
        assert_eq!(
            verify(&rec, secret, 1001),
            Err(TokenError::Used("n1".into()))
        );
        rec.revoked = true;
        assert_eq!(verify(&rec, secret, 1001), Err(TokenError::Revoked));
        for bad in [
            "",
            "keel.",
            "bearer",
            "keel.zz.zz",
            &tok.replace("keel.", "keal."),
        ] {
            assert_eq!(parse(bad), Err(TokenError::Malformed), "{bad}");
        }
    }
}
