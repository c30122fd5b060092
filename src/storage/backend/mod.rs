//! The thin storage trait the commit log is written against, and its three
//! implementations: real O_DIRECT files through glommio ([`DmaStorage`]),
//! memory ([`MemoryStorage`]) and seeded fault injection ([`FaultyStorage`]).
//!
//! Contract of a [`StorageFile`]:
//! - `write_at` takes a block-aligned position and a block-multiple length; it
//!   resolves once the device accepted the bytes, which does NOT make them
//!   durable.
//! - `fdatasync` resolves Ok only once every write that resolved before it was
//!   called is durable. After an error nothing is known about those writes.

mod dma;
mod faulty;
mod memory;

pub use dma::{DmaSegmentFile, DmaStorage};
pub use faulty::{FaultPlan, FaultyFile, FaultyStorage, Operation, TargetedFault};
pub use memory::{MemoryFile, MemoryStorage, SectorFate};

use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// How fast zero-filling a new file may write, and what the file's user
/// and the fill tell each other while it runs.
#[derive(Clone, Debug, Default)]
pub struct ZeroFillPace {
    /// Zero means no limit.
    pub bytes_per_second: u64,
    pub progress: Rc<ZeroFillProgress>,
}

/// Shared by the log and the fill of its next segment.
#[derive(Debug, Default)]
pub struct ZeroFillProgress {
    /// Lifts the limit: the file is needed soon (or already).
    pub urgent: Cell<bool>,
    /// At its pace so far the fill would end after the appends need the
    /// file: it must take more of the disk.
    pub behind: Cell<bool>,
    /// Bytes the fill has still to write.
    pub left_bytes: Cell<u64>,
    /// How much of the active segment was used when the fill started: with
    /// `left_bytes`, how fast each side went since.
    pub segment_used_at_start: Cell<u64>,
}

impl ZeroFillPace {
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// Nothing limits the fill now: no limit set, or the file is needed.
    pub fn is_unpaced(&self) -> bool {
        self.bytes_per_second == 0 || self.progress.urgent.get()
    }

    /// The fill should take all the disk it can: nothing else is written
    /// (no limit set), or the appends would otherwise wait for it.
    pub fn is_pressed(&self) -> bool {
        self.bytes_per_second == 0 || (self.progress.urgent.get() && self.progress.behind.get())
    }
}

/// Why creating a zeroed file failed, split by what it means for the log.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The file could not be created or its space reserved; nothing was
    /// written to it, so nothing about the disk is in doubt (a full disk:
    /// the log refuses appends until there is room).
    #[error("reserving the file failed: {0}")]
    Reserve(io::Error),
    /// Writing the zeros or syncing the file or its directory failed: what
    /// reached the disk is unknown, so the log must stop (fail-stop).
    #[error("zero-filling the file failed: {0}")]
    Fill(io::Error),
}

impl CreateError {
    pub fn io_error(&self) -> &io::Error {
        match self {
            CreateError::Reserve(error) | CreateError::Fill(error) => error,
        }
    }
}

impl From<CreateError> for io::Error {
    fn from(error: CreateError) -> Self {
        match error {
            CreateError::Reserve(error) | CreateError::Fill(error) => error,
        }
    }
}

/// One file of a storage backend.
#[allow(async_fn_in_trait)]
pub trait StorageFile: 'static {
    async fn write_at(&self, data: &[u8], position: u64) -> io::Result<()>;
    /// `write_at` followed by what `fdatasync` promises, for this write and
    /// every earlier one to this file. A backend may do it in one operation
    /// (an O_DSYNC write: one trip to the device's queue instead of two).
    async fn write_durable_at(&self, data: &[u8], position: u64) -> io::Result<()> {
        self.write_at(data, position).await?;
        self.fdatasync().await
    }
    /// Reads exactly `length` bytes at `position` (any alignment); fewer only
    /// at the end of the file.
    async fn read_at(&self, position: u64, length: usize) -> io::Result<Vec<u8>>;
    async fn fdatasync(&self) -> io::Result<()>;
    async fn size_bytes(&self) -> io::Result<u64>;
    /// Punches a hole: `[position, position + length)` (block-aligned) reads
    /// as zeros after and its blocks go back to the filesystem; the file's
    /// size stays. `ErrorKind::Unsupported` where the filesystem cannot.
    async fn deallocate(&self, position: u64, length: u64) -> io::Result<()>;
}

/// A directory tree of files, as the commit log needs it.
#[allow(async_fn_in_trait)]
pub trait Storage: Clone + 'static {
    type File: StorageFile;

    /// Creates `path` with `size_bytes` of zeros written and synced, then syncs
    /// the parent directory. An existing file at `path` is replaced. Real
    /// disks write the zeros at `pace`, so the fill does not crowd out the
    /// log's own writes and fdatasyncs.
    async fn create_zeroed(&self, path: &Path, size_bytes: u64, pace: &ZeroFillPace)
        -> Result<Self::File, CreateError>;
    /// Opens an existing file for reading and writing.
    async fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Creates an empty file (or opens it if it exists) for appending blocks.
    /// A new file's name survives a crash only once `sync_dir` of its
    /// directory returned: a caller that creates many syncs it once.
    async fn open_or_create(&self, path: &Path) -> io::Result<Self::File>;
    async fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// File names directly inside `dir`, sorted.
    async fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    async fn remove(&self, path: &Path) -> io::Result<()>;
    async fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Write-temp, fsync, rename, fsync-dir: after it resolves `path` holds
    /// `bytes` or (after a crash before that) its previous content.
    async fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// The whole content of a small file, or `None` if it does not exist.
    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

fn is_block_aligned(position: u64, length: usize) -> bool {
    let block = crate::constants::BLOCK_SIZE_BYTES;
    position % block as u64 == 0 && length % block == 0
}
