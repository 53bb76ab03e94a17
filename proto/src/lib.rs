//! Keel's wire contracts: the etcd v3 client API subset (`etcdserverpb`,
//! `mvccpb`), the masters' internal Raft transport (`keelraft`) and the API
//! resource types served over REST (`api`).

/// etcd's MVCC key-value and event messages.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd v3 client API: KV, Watch, Lease, Cluster, Maintenance.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// The Raft transport between masters.
pub mod keelraft {
    tonic::include_proto!("keelraft");
}

/// The masters' agent-facing gRPC API (the pods bound to a node).
pub mod keelagent {
    tonic::include_proto!("keelagent");
}

/// Percent-encodes a URL path segment or query value (RFC 3986 unreserved
/// characters stay as they are).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The end of the range of every key starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff
/// incremented and what follows dropped; `\0` ("to the end") when every
/// byte is 0xff or the prefix is empty.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Requests larger than this are refused, as etcd's default `--max-request-bytes`.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// The API resources (Kubernetes-shaped objects) the REST API serves.
pub mod api;

/// The typed REST client of the API (feature `client`).
#[cfg(feature = "client")]
pub mod client;

/// Serving axum routers over HTTPS with the client's certificate subject.
#[cfg(feature = "https")]
pub mod https;
/// The cluster PKI: CA, certificates and the rustls configurations.
pub mod pki;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_follow_etcd() {
        assert_eq!(prefix_end(b"a"), b"b");
        assert_eq!(prefix_end(b"kv/"), b"kv0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
