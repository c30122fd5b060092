//! How a commit-log error is told to a client.

use crate::protocol::{fb, Failure};
use crate::storage::LogError;

/// The failure a client gets for `error`: its own code where the client
/// can act on it (retry a full disk, move past a truncated offset), else
/// `Internal`.
pub fn log_failure(error: LogError) -> Failure {
    let code = match &error {
        LogError::Stopped { .. } => fb::ErrorCode::StoreStopped,
        LogError::NoSpace { .. } => fb::ErrorCode::DiskFull,
        LogError::RecordTooLarge { .. } => fb::ErrorCode::MessageTooLarge,
        LogError::OffsetTruncated { .. } | LogError::PositionTruncated { .. } => fb::ErrorCode::OffsetTruncated,
        _ => fb::ErrorCode::Internal,
    };
    Failure::new(code, error.to_string())
}
