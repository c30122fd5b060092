//! A segment: one preallocated, zero-filled file of the commit log, named by
//! the log position of its first byte.

use super::backend::{CreateError, Storage, StorageFile, ZeroFillPace};
use super::LogError;
use crate::constants::BLOCK_SIZE_BYTES;
use std::cell::Cell;
use std::path::{Path, PathBuf};

pub const SEGMENT_EXTENSION: &str = "log";

pub struct Segment<F> {
    pub start: u64,
    pub size_bytes: u64,
    pub path: PathBuf,
    pub file: F,
    /// Newest store timestamp of a record in this segment, for retention.
    pub last_store_timestamp_us: Cell<u64>,
}

impl<F> Segment<F> {
    pub fn end(&self) -> u64 {
        self.start + self.size_bytes
    }

    pub fn contains(&self, position: u64) -> bool {
        (self.start..self.end()).contains(&position)
    }
}

impl<F: StorageFile> Segment<F> {
    /// Bytes at `offset` (segment-relative), up to `length`; fewer at the
    /// end of the file. The error names the segment and the log position.
    pub async fn read(&self, offset: u64, length: usize) -> Result<Vec<u8>, LogError> {
        self.file
            .read_at(offset, length)
            .await
            .map_err(|error| LogError::io("read segment", &self.path, self.start + offset, error))
    }
}

pub fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.{SEGMENT_EXTENSION}"))
}

/// The start position a segment file name encodes, if it is one.
pub fn parse_segment_start(path: &Path) -> Option<u64> {
    if path.extension()?.to_str()? != SEGMENT_EXTENSION {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
}

/// Why a segment could not be created.
#[derive(Debug)]
pub enum SegmentCreation {
    /// Nothing was written: the disk is full or the file could not be made.
    /// The log can go on and try again later.
    Refused(LogError),
    /// Writing or syncing the new file failed: the log must stop.
    Failed(LogError),
}

impl SegmentCreation {
    pub fn into_error(self) -> LogError {
        match self {
            SegmentCreation::Refused(error) | SegmentCreation::Failed(error) => error,
        }
    }
}

/// Creates and zero-fills the segment starting at `start`.
pub async fn create_segment<S: Storage>(
    storage: &S,
    dir: &Path,
    start: u64,
    size_bytes: u64,
    pace: &ZeroFillPace,
) -> Result<Segment<S::File>, LogError> {
    create_segment_classified(storage, dir, start, size_bytes, pace).await.map_err(SegmentCreation::into_error)
}

/// [`create_segment`], saying whether a failure must stop the log.
pub async fn create_segment_classified<S: Storage>(
    storage: &S,
    dir: &Path,
    start: u64,
    size_bytes: u64,
    pace: &ZeroFillPace,
) -> Result<Segment<S::File>, SegmentCreation> {
    let path = segment_path(dir, start);
    let file = storage.create_zeroed(&path, size_bytes, pace).await.map_err(|error| match error {
        CreateError::Reserve(error) => SegmentCreation::Refused(LogError::io("create segment", &path, start, error)),
        CreateError::Fill(error) => SegmentCreation::Failed(LogError::io("zero-fill segment", &path, start, error)),
    })?;
    Ok(Segment { start, size_bytes, path, file, last_store_timestamp_us: Cell::new(0) })
}

/// Opens an existing segment; its size is the file's size.
pub async fn open_segment<S: Storage>(storage: &S, path: &Path, start: u64) -> Result<Segment<S::File>, LogError> {
    let file = storage.open(path).await.map_err(|error| LogError::io("open segment", path, start, error))?;
    let file_size = file.size_bytes().await.map_err(|error| LogError::io("stat segment", path, start, error))?;
    // Everything reads and writes whole blocks: a tail shorter than a block
    // (a file cut short outside the broker) is not part of the segment.
    let block = BLOCK_SIZE_BYTES as u64;
    let size_bytes = file_size / block * block;
    if size_bytes != file_size {
        tracing::warn!(path = %path.display(), file_size, size_bytes, "segment size is not a whole number of blocks; ignoring its last partial block");
    }
    Ok(Segment { start, size_bytes, path: path.to_path_buf(), file, last_store_timestamp_us: Cell::new(0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_name_round_trips_and_other_names_are_ignored() {
        let path = segment_path(Path::new("/data"), 1 << 30);
        assert_eq!(path, Path::new("/data/00000000001073741824.log"));
        assert_eq!(parse_segment_start(&path), Some(1 << 30));
        assert_eq!(parse_segment_start(Path::new("/data/1.log")), None);
        assert_eq!(parse_segment_start(Path::new("/data/00000000001073741824.idx")), None);
    }
}
