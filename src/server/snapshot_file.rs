//! What every state snapshot of a shard (producer table, transaction table)
//! shares: an 8-byte magic, little-endian fields, a CRC32 of everything
//! before it, the file written atomically, and a damaged or unreadable file
//! ignored (its owner then replays the log).

use crate::storage::backend::Storage;
use crate::storage::LogError;
use std::path::Path;

/// The start of a snapshot's bytes.
pub fn start(magic: &[u8; 8], capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity + magic.len() + 4);
    out.extend_from_slice(magic);
    out
}

/// Closes a snapshot's bytes with the CRC32 of everything before it.
pub fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Reads the fields of a snapshot whose CRC and magic matched.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// The fields after the magic, once the CRC matches; `what` names the
    /// snapshot in errors.
    pub fn open(bytes: &'a [u8], magic: &[u8; 8], what: &str) -> Result<Self, String> {
        let (body, crc) = bytes.split_last_chunk::<4>().ok_or("the snapshot is too short")?;
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err("the snapshot's checksum does not match".into());
        }
        let body = body.strip_prefix(magic.as_slice()).ok_or_else(|| format!("not a {what} snapshot"))?;
        Ok(Self { bytes: body })
    }

    /// Refuses bytes left after the last `item`.
    pub fn finish(self, item: &str) -> Result<(), String> {
        match self.bytes.len() {
            0 => Ok(()),
            left => Err(format!("{left} bytes after the last {item}")),
        }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (head, rest) = self.bytes.split_first_chunk::<N>().ok_or("the snapshot ends early")?;
        self.bytes = rest;
        Ok(*head)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        self.take::<1>().map(|[byte]| byte)
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        self.take().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        self.take().map(u64::from_le_bytes)
    }

    /// A u64 count of items of `item_bytes` each (see `fitting`).
    pub fn count_u64(&mut self, item_bytes: usize) -> Result<usize, String> {
        let count = self.u64()?;
        self.fitting(count, item_bytes)
    }

    /// A u32 count of items of `item_bytes` each (see `fitting`).
    pub fn count_u32(&mut self, item_bytes: usize) -> Result<usize, String> {
        let count = u64::from(self.u32()?);
        self.fitting(count, item_bytes)
    }

    /// `count`, refused if the rest cannot hold that many items (a damaged
    /// count must not allocate gigabytes).
    fn fitting(&self, count: u64, item_bytes: usize) -> Result<usize, String> {
        match usize::try_from(count) {
            Ok(count) if count.saturating_mul(item_bytes) <= self.bytes.len() => Ok(count),
            _ => Err(format!("a count of {count} does not fit the snapshot")),
        }
    }

    pub fn string(&mut self) -> Result<String, String> {
        let length = self.count_u32(1)?;
        let (text, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        String::from_utf8(text.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
}

/// The snapshot file `path` holds, decoded; `None` (logged) when there is
/// none, it cannot be read or it is damaged: its owner replays the log.
pub async fn load<S: Storage, T>(
    storage: &S,
    path: &Path,
    what: &str,
    decode: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Option<T> {
    match storage.read_file(path).await {
        Ok(Some(bytes)) => decode(&bytes)
            .inspect_err(|error| {
                tracing::warn!(%error, path = %path.display(), "ignoring a damaged {what} snapshot; replaying the whole log");
            })
            .ok(),
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot read the {what} snapshot; replaying the whole log");
            None
        }
    }
}

/// Writes a snapshot file atomically (write-temp, fsync, rename, fsync dir);
/// `operation` names it in the error.
pub async fn write<S: Storage>(
    storage: &S,
    path: &Path,
    bytes: &[u8],
    operation: &'static str,
) -> Result<(), LogError> {
    storage.write_file_atomic(path, bytes).await.map_err(|error| LogError::io(operation, path, 0, error))
}
