//! Real files: O_DIRECT through glommio's `DmaFile` (io_uring), fdatasync
//! through io_uring. Directory listing and small-file reads use blocking std
//! calls; they run only at start-up and retention, never on the append path.

use super::{is_block_aligned, parent_dir, temp_path, Storage, StorageFile, ZeroFillPace};
use crate::constants::{BLOCK_SIZE_BYTES, SEGMENT_ZERO_FILL_CHUNK_BYTES};
use glommio::io::{Directory, DmaFile, OpenOptions};
use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Storage on a real filesystem with O_DIRECT files.
#[derive(Clone, Debug, Default)]
pub struct DmaStorage;

/// An O_DIRECT file.
pub struct DmaSegmentFile {
    file: DmaFile,
}

impl StorageFile for DmaSegmentFile {
    async fn write_at(&self, data: &[u8], position: u64) -> io::Result<()> {
        debug_assert!(is_block_aligned(position, data.len()));
        let mut buffer = self.file.alloc_dma_buffer(data.len());
        buffer.as_bytes_mut().copy_from_slice(data);
        let written = self.file.write_at(buffer, position).await?;
        if written != data.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short O_DIRECT write at {position}: {written} of {} bytes", data.len()),
            ));
        }
        Ok(())
    }

    async fn read_at(&self, position: u64, length: usize) -> io::Result<Vec<u8>> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let read = self.file.read_at(position, length).await?;
        Ok(read.to_vec())
    }

    async fn fdatasync(&self) -> io::Result<()> {
        Ok(self.file.fdatasync().await?)
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.file.file_size().await?)
    }
}

thread_local! {
    /// Devices (st_dev) whose io_uring poll support glommio has probed on
    /// this thread.
    static PROBED_DEVICES: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// glommio decides once per thread and device whether reads may use the
/// io_uring poll ring, by reading the first block of the first DmaFile
/// opened. When that file is empty the read succeeds at end-of-file and
/// glommio wrongly enables polling, and every later read fails with
/// EOPNOTSUPP on devices without it (virtio, most SATA). Opening a file that
/// holds a block first makes the probe meaningful.
async fn probe_device_with_data(dir: &Path) -> io::Result<()> {
    let device = std::fs::metadata(dir)?.dev();
    if PROBED_DEVICES.with(|probed| probed.borrow().contains(&device)) {
        return Ok(());
    }
    let path = dir.join(".ringmq-iopoll-probe");
    std::fs::write(&path, vec![0u8; BLOCK_SIZE_BYTES])?;
    let opened = direct_options(false, false).dma_open(&path).await;
    std::fs::remove_file(&path)?;
    opened?.close().await?;
    PROBED_DEVICES.with(|probed| probed.borrow_mut().insert(device));
    Ok(())
}

fn direct_options(create: bool, truncate: bool) -> OpenOptions {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(create).truncate(truncate);
    options
}

impl Storage for DmaStorage {
    type File = DmaSegmentFile;

    async fn create_zeroed(&self, path: &Path, size_bytes: u64, pace: &ZeroFillPace) -> io::Result<Self::File> {
        debug_assert!(size_bytes % BLOCK_SIZE_BYTES as u64 == 0);
        probe_device_with_data(parent_dir(path)).await?;
        let file = direct_options(true, true).dma_open(path).await?;
        // Reserve the extents first so a full disk fails here, before any
        // write, with ENOSPC.
        file.pre_allocate(size_bytes, false).await?;
        // Writing real zeros converts the unwritten extents now, in the
        // background, instead of on the first append's fdatasync.
        let mut chunk = file.alloc_dma_buffer(SEGMENT_ZERO_FILL_CHUNK_BYTES);
        chunk.as_bytes_mut().fill(0);
        let chunk = Rc::new(chunk);
        let mut position = 0;
        while position < size_bytes {
            let remaining = size_bytes - position;
            if remaining >= SEGMENT_ZERO_FILL_CHUNK_BYTES as u64 {
                let started = std::time::Instant::now();
                file.write_rc_at(chunk.clone(), position).await?;
                position += SEGMENT_ZERO_FILL_CHUNK_BYTES as u64;
                if pace.bytes_per_second > 0 && !pace.urgent.get() {
                    let budget = std::time::Duration::from_secs_f64(
                        SEGMENT_ZERO_FILL_CHUNK_BYTES as f64 / pace.bytes_per_second as f64,
                    );
                    if let Some(rest) = budget.checked_sub(started.elapsed()) {
                        glommio::timer::sleep(rest).await;
                    }
                }
            } else {
                let mut tail = file.alloc_dma_buffer(remaining as usize);
                tail.as_bytes_mut().fill(0);
                file.write_at(tail, position).await?;
                position = size_bytes;
            }
        }
        file.fdatasync().await?;
        self.sync_dir(parent_dir(path)).await?;
        Ok(DmaSegmentFile { file })
    }

    async fn open(&self, path: &Path) -> io::Result<Self::File> {
        probe_device_with_data(parent_dir(path)).await?;
        let file = direct_options(false, false).dma_open(path).await?;
        Ok(DmaSegmentFile { file })
    }

    async fn open_or_create(&self, path: &Path) -> io::Result<Self::File> {
        probe_device_with_data(parent_dir(path)).await?;
        let existed = path.exists();
        let file = direct_options(true, false).dma_open(path).await?;
        if !existed {
            self.sync_dir(parent_dir(path)).await?;
        }
        Ok(DmaSegmentFile { file })
    }

    /// Creates every missing directory of `path`, fsyncing the parent of
    /// each new one so that the new entry survives a crash.
    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let missing: Vec<&Path> = path.ancestors().take_while(|ancestor| !ancestor.exists()).collect();
        for directory in missing.into_iter().rev() {
            match std::fs::create_dir(directory) {
                Ok(()) => self.sync_dir(parent_dir(directory)).await?,
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.path());
        }
        names.sort();
        Ok(names)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        glommio::io::remove(path).await?;
        self.sync_dir(parent_dir(path)).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // glommio's Directory::open refuses relative paths (EBADF).
        let directory = Directory::open(std::path::absolute(dir)?).await?;
        directory.sync().await?;
        directory.close().await?;
        Ok(())
    }

    async fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let temp = temp_path(path);
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        let file = options.buffered_open(&temp).await?;
        let written = file.write_at(bytes.to_vec(), 0).await?;
        if written != bytes.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write of a metadata file"));
        }
        file.fdatasync().await?;
        file.close().await?;
        glommio::io::rename(&temp, path).await?;
        self.sync_dir(parent_dir(path)).await
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }
}
