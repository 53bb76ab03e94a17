//! The cluster's credentials in the replicated store, so that a backup
//! carries them and a restored cluster keeps working credentials: the CA
//! (certificate and signing key) under `/keel/pki/ca` and every token's
//! record (a hash, never the secret) under `/keel/tokens/<id>`.

use keel_proto::pki::Ca;
use serde::{Deserialize, Serialize};

use super::rbac::Role;
use super::tokens::{self, TokenError, TokenRecord};
use crate::auth::throttle::Bucket;
use crate::error::ApiError;
use crate::registry::Registry;

/// Where the CA lives in the store.
pub const CA_KEY: &str = "/keel/pki/ca";
/// Prefix of every token record.
pub const TOKENS_PREFIX: &str = "/keel/tokens/";

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredCa {
    cert_pem: String,
    key_pem: String,
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Writes the CA into the store unless one is there already (any master may
/// call this; the first write wins). Warns if the stored CA differs.
pub async fn ensure_ca(reg: &Registry, ca: &Ca) -> Result<(), ApiError> {
    let v = serde_json::to_vec(&StoredCa {
        cert_pem: ca.cert_pem.clone(),
        key_pem: ca.key_pem.clone(),
    })
    .map_err(|e| ApiError::internal(e.to_string()))?;
    if !reg.raw_create(CA_KEY, v).await? {
        match stored_ca(reg).await? {
            Some(s) if s.cert_pem != ca.cert_pem => tracing::warn!(
                "the CA in this master's --pki-dir differs from the cluster's stored CA; \
                 clients trusting the stored CA will refuse this master"
            ),
            _ => {}
        }
    }
    Ok(())
}

/// The CA as this member last applied it (a local read).
async fn stored_ca(reg: &Registry) -> Result<Option<Ca>, ApiError> {
    let Some((v, _)) = reg.raw_get(CA_KEY, true).await? else {
        return Ok(None);
    };
    decode_ca(&v)
        .map(Some)
        .ok_or_else(|| ApiError::internal("the stored CA does not decode"))
}

/// The CA in a stored value (as a backup holds it).
pub fn decode_ca(v: &[u8]) -> Option<Ca> {
    let s: StoredCa = serde_json::from_slice(v).ok()?;
    Some(Ca {
        cert_pem: s.cert_pem,
        key_pem: s.key_pem,
    })
}

fn encode(rec: &TokenRecord) -> Vec<u8> {
    serde_json::to_vec(rec).expect("a token record serialises")
}

fn decode(v: &[u8]) -> Result<TokenRecord, ApiError> {
    serde_json::from_slice(v).map_err(|e| ApiError::internal(format!("token record: {e}")))
}

/// Stores `rec` unless a record with its id exists (revoked ones included,
/// so a revoked bootstrap admin token is never brought back).
pub async fn ensure_token(reg: &Registry, rec: &TokenRecord) -> Result<bool, ApiError> {
    reg.raw_create(&tokens::key(&rec.id), encode(rec)).await
}

/// Creates a token; returns the secret (shown once) and the stored record.
pub async fn create_token(
    reg: &Registry,
    user: &str,
    role: Role,
    ttl_secs: i64,
    bootstrap: bool,
    node: &str,
) -> Result<(String, TokenRecord), ApiError> {
    let (secret, mut rec) = tokens::generate(user, role, ttl_secs, bootstrap, now());
    rec.node = node.to_string();
    if !ensure_token(reg, &rec).await? {
        return Err(ApiError::internal("token id collision; try again"));
    }
    Ok((secret, rec))
}

/// Checks a bearer token against its record as this master has applied it
/// (a local read: a revocation takes effect once this master applied it,
/// within a heartbeat of the commit). A token this master does not know yet
/// is looked up again after a linearizable barrier, so a token works on
/// every master as soon as its creation was acknowledged.
///
/// A token this master does not know yet is read again after a read barrier
/// (a token created a moment ago works everywhere at once), but only while
/// `lookups` has tokens: a flood of made-up tokens is refused locally
/// instead of becoming a flood of quorum reads.
pub async fn authenticate(
    reg: &Registry,
    token: &str,
    lookups: &Bucket,
) -> Result<TokenRecord, TokenError> {
    let (id, secret) = tokens::parse(token)?;
    let key = tokens::key(id);
    let found = match reg.raw_get(&key, true).await {
        Ok(Some(v)) => Some(v),
        _ if lookups.try_take() => reg.raw_get(&key, false).await.ok().flatten(),
        _ => None,
    };
    let rec = match found {
        Some((v, _)) => decode(&v).map_err(|_| TokenError::Unknown)?,
        None => return Err(TokenError::Unknown),
    };
    tokens::verify(&rec, secret, now())?;
    Ok(rec)
}

/// Where the revocation of node `name`'s certificates is recorded.
pub fn node_revocation_key(name: &str) -> String {
    format!("/keel/revoked-nodes/{name}")
}

/// A node's revocation: certificates issued before `revoked_at` are refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRevocation {
    pub node: String,
    pub revoked_at: i64,
}

/// Revokes every certificate issued to node `name` until now.
pub async fn revoke_node(reg: &Registry, name: &str) -> Result<NodeRevocation, ApiError> {
    let rec = NodeRevocation {
        node: name.to_string(),
        revoked_at: now(),
    };
    let key = node_revocation_key(name);
    let value = serde_json::to_vec(&rec).expect("a revocation serialises");
    for _ in 0..5 {
        let done = match reg.raw_get(&key, false).await? {
            None => reg.raw_create(&key, value.clone()).await?,
            Some((_, rev)) => reg.raw_swap(&key, value.clone(), rev).await?,
        };
        if done {
            return Ok(rec);
        }
    }
    Err(ApiError::conflict("revoked-nodes", name))
}

/// When node `name`'s certificates were last revoked, as this master has
/// applied it (a local read, so every request by a node can afford it).
pub async fn node_revoked_at(reg: &Registry, name: &str) -> Option<i64> {
    let (v, _) = reg
        .raw_get(&node_revocation_key(name), true)
        .await
        .ok()
        .flatten()?;
    serde_json::from_slice::<NodeRevocation>(&v)
        .ok()
        .map(|r| r.revoked_at)
}

/// Every token record (linearizable).
pub async fn list_tokens(reg: &Registry) -> Result<Vec<TokenRecord>, ApiError> {
    reg.raw_list(TOKENS_PREFIX)
        .await?
        .iter()
        .map(|v| decode(v))
        .collect()
}

/// Changes one token record with `f`, conditional on the version read
/// (retried on conflict); 404 if there is no such token.
async fn modify(
    reg: &Registry,
    id: &str,
    f: impl Fn(&mut TokenRecord) -> Result<(), ApiError>,
) -> Result<TokenRecord, ApiError> {
    let key = tokens::key(id);
    for _ in 0..5 {
        let Some((v, rev)) = reg.raw_get(&key, false).await? else {
            return Err(ApiError::not_found("tokens", id));
        };
        let mut rec = decode(&v)?;
        f(&mut rec)?;
        if reg.raw_swap(&key, encode(&rec), rev).await? {
            return Ok(rec);
        }
    }
    Err(ApiError::conflict("tokens", id))
}

/// Revokes a token: every master refuses it once it has applied this write.
pub async fn revoke(reg: &Registry, id: &str) -> Result<TokenRecord, ApiError> {
    modify(reg, id, |r| {
        r.revoked = true;
        Ok(())
    })
    .await
}

/// Spends a bootstrap token on `node`: one Raft transaction conditional on
/// the record being unchanged since it was checked, so of two concurrent
/// uses exactly one succeeds.
pub async fn spend_bootstrap(reg: &Registry, token: &str, node: &str) -> Result<(), ApiError> {
    let unauthorized = |e: TokenError| ApiError::new(401, "Unauthorized", e.to_string());
    let (id, secret) = tokens::parse(token).map_err(unauthorized)?;
    let key = tokens::key(id);
    let Some((v, rev)) = reg.raw_get(&key, false).await? else {
        return Err(unauthorized(TokenError::Unknown));
    };
    let mut rec = decode(&v)?;
    tokens::verify(&rec, secret, now()).map_err(unauthorized)?;
    if !rec.bootstrap {
        return Err(ApiError::new(
            403,
            "Forbidden",
            "this is not a bootstrap token (create one with `keel token create --bootstrap`)",
        ));
    }
    if rec.node != node {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "this bootstrap token is for node {:?}, not {node:?}",
                rec.node
            ),
        ));
    }
    rec.used_by = node.to_string();
    if !reg.raw_swap(&key, encode(&rec), rev).await? {
        return Err(unauthorized(TokenError::Used("another node".into())));
    }
    Ok(())
}
