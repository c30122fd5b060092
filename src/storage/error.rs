//! Operating errors of the commit log, with the operation, file and position.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("{operation} of {path} at position {position} failed: {source}")]
    Io { operation: &'static str, path: PathBuf, position: u64, source: Arc<io::Error> },

    #[error("the disk is full: cannot create segment {path}: {source}")]
    NoSpace { path: PathBuf, source: Arc<io::Error> },

    /// A write or fdatasync failed earlier; the log accepts no more appends
    /// because nothing is known about what reached the disk.
    #[error("the log is stopped and accepts no writes: {cause}")]
    Stopped { cause: Arc<LogError> },

    #[error("record of {size_bytes} bytes is larger than the maximum of {max_bytes} bytes")]
    RecordTooLarge { size_bytes: usize, max_bytes: usize },

    #[error("corrupt log in {path} at position {position}: {detail}")]
    Corrupt { path: PathBuf, position: u64, detail: String },

    #[error("queue {queue_id} offset {requested} was deleted by retention; the earliest kept is {earliest}")]
    OffsetTruncated { queue_id: u32, requested: u64, earliest: u64 },

    /// Raw log bytes asked for (by a standby) that retention deleted.
    #[error("log position {requested} was deleted by retention; the earliest kept is {earliest}")]
    PositionTruncated { requested: u64, earliest: u64 },

    /// A cut asked for (`set_aside_after`) where the log cannot be cut:
    /// past its last segment, or inside a record.
    #[error("cannot cut the log at position {position}: {detail}")]
    BadCut { position: u64, detail: String },

    #[error("invalid log configuration: {0}")]
    Config(String),

    /// An op record would reference a record in an earlier segment and no
    /// copy was given (`FarCopy::message`): nothing was appended.
    #[error("the record at {position} lies in an earlier segment: append a copy instead")]
    FarReference { position: u64 },

    #[error("the log is closed")]
    Closed,
}

impl LogError {
    pub fn io(operation: &'static str, path: impl Into<PathBuf>, position: u64, source: io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) && operation == "create segment" {
            return LogError::NoSpace { path: path.into(), source: Arc::new(source) };
        }
        LogError::Io { operation, path: path.into(), position, source: Arc::new(source) }
    }

    pub fn is_stopped(&self) -> bool {
        matches!(self, LogError::Stopped { .. })
    }

    /// The filesystem had no room (ENOSPC, or EDQUOT for a quota).
    pub fn is_no_space(&self) -> bool {
        match self {
            LogError::NoSpace { .. } => true,
            // By errno, or by the kind an error built from ENOSPC carries
            // (`ErrorKind::StorageFull` itself is newer than the MSRV).
            LogError::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
                    || source.kind() == io::Error::from_raw_os_error(libc::ENOSPC).kind()
            }
            _ => false,
        }
    }

    /// A full disk refused a write or a creation, and nothing else failed:
    /// the bytes that did land are rewritten whole by the next attempt,
    /// which starts again from the state held in memory. An fdatasync's
    /// failure never is: it may have dropped dirty pages a retry would
    /// then call durable; nor a directory's sync reported as one ("sync
    /// ..."), for the same reason. (`write_file_atomic` and `remove` sync
    /// their directory inside one operation, reported under its name: a
    /// retry writes and renames a new temp file, or unlinks again, and
    /// syncs again.)
    pub fn is_no_space_before_a_sync(&self) -> bool {
        match self {
            LogError::Io { operation, .. } => {
                self.is_no_space() && !operation.starts_with("fdatasync") && !operation.starts_with("sync")
            }
            other => other.is_no_space(),
        }
    }
}
