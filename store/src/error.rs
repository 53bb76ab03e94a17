//! Errors of the store, each mapped to the gRPC code and message etcd returns
//! for the same failure, so etcd clients recognise them.

use tonic::Code;

/// A failure that the etcd API reports to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: invalid compare: {0}")]
    InvalidCompare(String),
    #[error("etcdserver: {0}")]
    InvalidArgument(String),
    #[error("etcdserver: {0}")]
    Unavailable(String),
    #[error("etcdserver: {0}")]
    Internal(String),
    /// An error relayed from another member with its original code.
    #[error("{message}")]
    Relayed { code: i32, message: String },
}

impl EtcdError {
    /// The gRPC code etcd uses for this error.
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | DuplicateKey | TooManyOps | RequestTooLarge
            | ValueProvided | LeaseProvided | InvalidSortOption | InvalidCompare(_)
            | InvalidArgument(_) => Code::InvalidArgument,
            Compacted | FutureRevision => Code::OutOfRange,
            LeaseNotFound | MemberNotFound => Code::NotFound,
            LeaseExists
            | NotEnoughStartedMembers
            | BadLeaderTransferee
            | NotLeader
            | PeerUrlExists => Code::FailedPrecondition,
            NoLeader | Unavailable(_) | Timeout => Code::Unavailable,
            Internal(_) => Code::Internal,
            Relayed { code, .. } => Code::from(*code),
        }
    }

    /// Rebuilds an error from a code and message carried through the Raft
    /// log or relayed by the leader: the known error when the message is
    /// one, otherwise the same code and message.
    pub fn from_parts(code: i32, message: &str) -> Self {
        use EtcdError::*;
        let known = [
            EmptyKey,
            KeyNotFound,
            DuplicateKey,
            TooManyOps,
            RequestTooLarge,
            ValueProvided,
            LeaseProvided,
            InvalidSortOption,
            Compacted,
            FutureRevision,
            LeaseNotFound,
            LeaseExists,
            MemberNotFound,
            PeerUrlExists,
            NotEnoughStartedMembers,
            BadLeaderTransferee,
            NoLeader,
            NotLeader,
            Timeout,
        ];
        known
            .into_iter()
            .find(|e| e.to_string() == message && e.code() as i32 == code)
            .unwrap_or_else(|| Relayed {
                code,
                message: message.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_errors_keep_their_code_and_message() {
        for e in [
            EtcdError::NotEnoughStartedMembers,
            EtcdError::MemberNotFound,
            EtcdError::LeaseNotFound,
            EtcdError::InvalidCompare("x".into()),
            EtcdError::Unavailable("y".into()),
        ] {
            let back = EtcdError::from_parts(e.code() as i32, &e.to_string());
            assert_eq!(back.code(), e.code(), "{e}");
            assert_eq!(back.to_string(), e.to_string());
        }
        assert_eq!(
            EtcdError::from_parts(
                Code::NotFound as i32,
                "etcdserver: requested lease not found"
            ),
            EtcdError::LeaseNotFound
        );
    }
}

impl From<EtcdError> for tonic::Status {
    fn from(e: EtcdError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// Errors opening or running a store node.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("sled error: {0}")]
    Sled(#[from] sled::Error),
    #[error("raft error: {0}")]
    Raft(String),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("transport error: {0}")]
    Transport(String),
    /// The key space could not be read while applying committed entries:
    /// the member must stop rather than apply them differently from others.
    #[error("storage failure while applying committed entries: {0}")]
    Apply(String),
}
