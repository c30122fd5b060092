//! Real files: O_DIRECT through glommio's `DmaFile` (io_uring), fdatasync
//! through io_uring. Directory listing and small-file reads use blocking std
//! calls; they run only at start-up and retention, never on the append path.

use super::{is_block_aligned, parent_dir, temp_path, CreateError, Storage, StorageFile, ZeroFillPace};
use crate::constants::{BACKGROUND_WRITE_PIECE_BYTES, BLOCK_SIZE_BYTES, SEGMENT_ZERO_FILL_CHUNK_BYTES};
use glommio::io::{Directory, DmaFile, OpenOptions};
use glommio::GlommioError;
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
    path: PathBuf,
    /// The same file opened O_DIRECT | O_DSYNC, for `write_durable_at`;
    /// opened on its first use (only the segment being appended to needs it).
    durable: RefCell<Option<Rc<DmaFile>>>,
}

impl DmaSegmentFile {
    fn new(file: DmaFile, path: &Path) -> Self {
        Self { file, path: path.to_path_buf(), durable: RefCell::new(None) }
    }

    async fn durable_handle(&self) -> io::Result<Rc<DmaFile>> {
        if let Some(file) = self.durable.borrow().as_ref() {
            return Ok(file.clone());
        }
        let mut options = direct_options(false, false);
        options.custom_flags(libc::O_DSYNC);
        let file = Rc::new(options.dma_open(&self.path).await.map_err(os_error)?);
        // Another write may have opened one meanwhile: keep the first.
        let kept = self.durable.borrow_mut().get_or_insert(file).clone();
        Ok(kept)
    }
}

/// One O_DIRECT write of `data` (block-aligned) at `position` of `file`.
/// A short write (a full disk or a quota: the kernel returns what landed)
/// goes on with what is left, so that the reason comes back as the next
/// write's error, with its errno; a short write that ends inside a block
/// cannot go on with O_DIRECT and is an error of its own.
async fn write_direct(file: &DmaFile, data: &[u8], position: u64) -> io::Result<()> {
    debug_assert!(is_block_aligned(position, data.len()));
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        let mut buffer = file.alloc_dma_buffer(rest.len());
        buffer.as_bytes_mut().copy_from_slice(rest);
        let at = position + done as u64;
        let written = file.write_at(buffer, at).await.map_err(os_error)?;
        if written == 0 || !is_block_aligned(0, written) {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short O_DIRECT write at {at}: {written} of {} bytes", rest.len()),
            ));
        }
        done += written;
    }
    Ok(())
}

impl StorageFile for DmaSegmentFile {
    async fn write_at(&self, data: &[u8], position: u64) -> io::Result<()> {
        write_direct(&self.file, data, position).await
    }

    /// An O_DSYNC write: the kernel makes it durable before it completes,
    /// flushing the device's cache as fdatasync does (which covers every
    /// earlier write to the file too), so the executor is woken once
    /// instead of once for the write and once for the fdatasync.
    async fn write_durable_at(&self, data: &[u8], position: u64) -> io::Result<()> {
        let durable = self.durable_handle().await?;
        write_direct(&durable, data, position).await
    }

    async fn read_at(&self, position: u64, length: usize) -> io::Result<Vec<u8>> {
        if length == 0 {
            return Ok(Vec::new());
        }
        let read = self.file.read_at(position, length).await.map_err(os_error)?;
        Ok(read.to_vec())
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(os_error)
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(os_error)
    }

    async fn deallocate(&self, position: u64, length: u64) -> io::Result<()> {
        debug_assert!(is_block_aligned(position, length as usize));
        self.file.deallocate(position, length).await.map_err(os_error).map_err(|error| {
            if error.raw_os_error() == Some(libc::EOPNOTSUPP) {
                io::Error::new(io::ErrorKind::Unsupported, error)
            } else {
                error
            }
        })
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

/// A file `write_file_atomic` writes larger than this goes to the disk in
/// O_DIRECT pieces of this size, one after another: written whole
/// (buffered, then fdatasync), a 50 MB producer snapshot held the log's
/// durable writes behind it for 100-170 ms every checkpoint at 10,000
/// queues.
const ATOMIC_FILE_PIECE_BYTES: usize = BACKGROUND_WRITE_PIECE_BYTES;

/// Writes `bytes` to a new file at `temp` in `ATOMIC_FILE_PIECE_BYTES`
/// O_DIRECT pieces (the last one padded, then the file cut to its length),
/// then fdatasyncs it.
async fn write_in_pieces(temp: &Path, bytes: &[u8]) -> io::Result<()> {
    let file = direct_options(true, true).dma_open(temp).await.map_err(os_error)?;
    let written = async {
        for (index, piece) in bytes.chunks(ATOMIC_FILE_PIECE_BYTES).enumerate() {
            let at = (index * ATOMIC_FILE_PIECE_BYTES) as u64;
            if piece.len() % BLOCK_SIZE_BYTES == 0 {
                write_direct(&file, piece, at).await?;
            } else {
                let mut padded = piece.to_vec();
                padded.resize(piece.len().next_multiple_of(BLOCK_SIZE_BYTES), 0);
                write_direct(&file, &padded, at).await?;
            }
        }
        file.truncate(bytes.len() as u64).await.map_err(os_error)?;
        file.fdatasync().await.map_err(os_error)
    }
    .await;
    let closed = file.close().await.map_err(os_error);
    written.and(closed)
}

/// Writes `bytes` to a new file at `temp` through the page cache and
/// fdatasyncs it. A short write (a full disk takes what fits) goes on with
/// the rest, so the reason comes back with its errno.
async fn write_buffered(temp: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    let file = options.buffered_open(temp).await.map_err(os_error)?;
    let written = async {
        let mut done = 0;
        while done < bytes.len() {
            let written = file.write_at(bytes[done..].to_vec(), done as u64).await.map_err(os_error)?;
            if written == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "a metadata file's write took nothing"));
            }
            done += written;
        }
        file.fdatasync().await.map_err(os_error)
    }
    .await;
    let closed = file.close().await.map_err(os_error);
    written.and(closed)
}

/// glommio's conversion to `io::Error` keeps only the kind of an errno, and
/// the errno itself (ENOSPC, EOPNOTSUPP) decides what the log does.
fn os_error<T>(error: GlommioError<T>) -> io::Error {
    match error {
        GlommioError::EnhancedIoError { source, .. } => source,
        other => other.into(),
    }
}

/// What fallocate's answer means for a new file.
#[derive(Debug, PartialEq, Eq)]
enum Reservation {
    /// The extents are reserved: a full disk already failed here.
    Reserved,
    /// The filesystem has no fallocate (some FUSE and network filesystems):
    /// writing the zeros is the preallocation.
    Unsupported,
}

fn reservation(fallocated: io::Result<()>) -> io::Result<Reservation> {
    match fallocated {
        Ok(()) => Ok(Reservation::Reserved),
        Err(error) if is_unsupported(&error) => Ok(Reservation::Unsupported),
        Err(error) => Err(error),
    }
}

fn is_unsupported(error: &io::Error) -> bool {
    let errno = error.raw_os_error();
    errno == Some(libc::EOPNOTSUPP) || errno == Some(libc::ENOTSUP)
}

/// Creates a zero-filled file; `fallocate_outcome` sees (and may replace,
/// in tests) what fallocate answered.
async fn create_zeroed_file(
    path: &Path,
    size_bytes: u64,
    pace: &ZeroFillPace,
    fallocate_outcome: fn(io::Result<()>) -> io::Result<()>,
) -> Result<DmaSegmentFile, CreateError> {
    debug_assert!(size_bytes % BLOCK_SIZE_BYTES as u64 == 0);
    refuse_without_room(parent_dir(path), size_bytes)?;
    probe_device_with_data(parent_dir(path)).await.map_err(CreateError::Reserve)?;
    let file =
        direct_options(true, true).dma_open(path).await.map_err(|error| CreateError::Reserve(os_error(error)))?;
    // Reserve the extents first so a full disk fails here, before any
    // write, with ENOSPC.
    let fallocated = file.pre_allocate(size_bytes, false).await.map_err(os_error);
    let reserved = match reservation(fallocate_outcome(fallocated)) {
        Ok(reserved) => reserved,
        Err(error) => return Err(CreateError::Reserve(give_back(file, path, error).await)),
    };
    if reserved == Reservation::Unsupported {
        tracing::warn!(
            path = %path.display(),
            size_bytes,
            "the filesystem does not support fallocate; preallocating by writing zeros"
        );
    }
    zero_fill(&file, size_bytes, pace).await.map_err(CreateError::Fill)?;
    DmaStorage.sync_dir(parent_dir(path)).await.map_err(CreateError::Fill)?;
    Ok(DmaSegmentFile::new(file, path))
}

/// What a new file must leave free on its filesystem, as a share of its
/// size: the log's index files, checkpoint and snapshots go on writing
/// while appends wait for room, and their ENOSPC would stop the log. An
/// index entry takes 32 bytes, so a segment of messages of 512 bytes or
/// more indexes into a sixteenth of its size.
const ROOM_LEFT_AFTER_CREATE_DIVISOR: u64 = 16;

/// A file the disk has no room for is refused before it exists (ENOSPC):
/// a fallocate would first take what is left of the disk, and the log
/// retries the creation often while appends wait for it. When the room
/// cannot be read, fallocate decides.
fn refuse_without_room(dir: &Path, size_bytes: u64) -> Result<(), CreateError> {
    match crate::storage::disk_space::filesystem_usage(dir) {
        Ok(usage) if usage.available_bytes < size_bytes.saturating_add(size_bytes / ROOM_LEFT_AFTER_CREATE_DIVISOR) => {
            Err(CreateError::Reserve(io::Error::from_raw_os_error(libc::ENOSPC)))
        }
        _ => Ok(()),
    }
}

/// A refused reservation gives its room back: a fallocate that fails with
/// ENOSPC keeps the extents it got, the rest of the disk, and the log
/// retries the creation while appends wait for it. Its index files,
/// checkpoint and snapshots must still find room meanwhile, or their
/// ENOSPC stops the log. Returns `error` (the reason to report); a failure
/// to remove is only logged, the next attempt truncates the file anyway.
async fn give_back(file: DmaFile, path: &Path, error: io::Error) -> io::Error {
    let _ = file.close().await;
    if let Err(removing) = DmaStorage.remove(path).await {
        tracing::warn!(path = %path.display(), error = %removing, "could not remove a file whose reservation failed");
    }
    error
}

/// Writes `size_bytes` of zeros at `pace` and fdatasyncs. Writing real zeros
/// converts the unwritten extents now, in the background, instead of on the
/// first append's fdatasync (and allocates them where fallocate cannot).
///
/// One chunk is on the disk at a time, beside the log's own writes, unless
/// the fill is pressed (`ZeroFillPace::is_pressed`): then
/// `ZERO_FILL_WRITES_IN_FLIGHT_PRESSED` are. One at a time, a fill reached
/// about 410 MB/s beside a shard appending 300 MB/s, whose appends then
/// waited 400 ms at every segment roll (docs/PERFORMANCE.md, "A hot shard
/// outran its zero fill").
async fn zero_fill(file: &DmaFile, size_bytes: u64, pace: &ZeroFillPace) -> io::Result<()> {
    let mut chunk = file.alloc_dma_buffer(SEGMENT_ZERO_FILL_CHUNK_BYTES);
    chunk.as_bytes_mut().fill(0);
    let chunk = Rc::new(chunk);
    let chunk_bytes = SEGMENT_ZERO_FILL_CHUNK_BYTES as u64;
    let whole_chunks_end = size_bytes - size_bytes % chunk_bytes;
    let mut position = 0;
    while position < whole_chunks_end {
        let started = std::time::Instant::now();
        pace.progress.left_bytes.set(size_bytes - position);
        let in_flight = if pace.is_pressed() { ZERO_FILL_WRITES_IN_FLIGHT_PRESSED } else { 1 };
        let writes: Vec<_> = (position..whole_chunks_end)
            .step_by(SEGMENT_ZERO_FILL_CHUNK_BYTES)
            .take(in_flight)
            .map(|at| file.write_rc_at(chunk.clone(), at))
            .collect();
        position += writes.len() as u64 * chunk_bytes;
        for written in all(writes).await {
            written.map_err(os_error)?;
        }
        pace_zero_fill(pace, started).await;
    }
    if position < size_bytes {
        let mut tail = file.alloc_dma_buffer((size_bytes - position) as usize);
        tail.as_bytes_mut().fill(0);
        file.write_at(tail, position).await.map_err(os_error)?;
    }
    pace.progress.left_bytes.set(0);
    file.fdatasync().await.map_err(os_error)
}

/// Zero-fill chunk writes on the disk at once when the fill is pressed.
const ZERO_FILL_WRITES_IN_FLIGHT_PRESSED: usize = 4;

/// Runs `futures` together; their outputs in their order.
async fn all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut running: Vec<_> = futures.into_iter().map(|future| Some(Box::pin(future))).collect();
    let mut outputs: Vec<Option<F::Output>> = running.iter().map(|_| None).collect();
    futures_lite::future::poll_fn(|context| {
        for (slot, output) in running.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                if let std::task::Poll::Ready(done) = future.as_mut().poll(context) {
                    *output = Some(done);
                    *slot = None;
                }
            }
        }
        if running.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Sleeps what is left of one chunk's time budget, unless someone waits.
async fn pace_zero_fill(pace: &ZeroFillPace, chunk_started: std::time::Instant) {
    if pace.is_unpaced() {
        return;
    }
    let budget =
        std::time::Duration::from_secs_f64(SEGMENT_ZERO_FILL_CHUNK_BYTES as f64 / pace.bytes_per_second as f64);
    if let Some(rest) = budget.checked_sub(chunk_started.elapsed()) {
        glommio::timer::sleep(rest).await;
    }
}

impl Storage for DmaStorage {
    type File = DmaSegmentFile;

    async fn create_zeroed(
        &self,
        path: &Path,
        size_bytes: u64,
        pace: &ZeroFillPace,
    ) -> Result<Self::File, CreateError> {
        create_zeroed_file(path, size_bytes, pace, std::convert::identity).await
    }

    async fn open(&self, path: &Path) -> io::Result<Self::File> {
        probe_device_with_data(parent_dir(path)).await?;
        let file = direct_options(false, false).dma_open(path).await.map_err(os_error)?;
        Ok(DmaSegmentFile::new(file, path))
    }

    async fn open_or_create(&self, path: &Path) -> io::Result<Self::File> {
        probe_device_with_data(parent_dir(path)).await?;
        let file = direct_options(true, false).dma_open(path).await.map_err(os_error)?;
        Ok(DmaSegmentFile::new(file, path))
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
        glommio::io::remove(path).await.map_err(os_error)?;
        self.sync_dir(parent_dir(path)).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // glommio's Directory::open refuses relative paths (EBADF).
        let directory = Directory::open(std::path::absolute(dir)?).await.map_err(os_error)?;
        directory.sync().await.map_err(os_error)?;
        directory.close().await.map_err(os_error)?;
        Ok(())
    }

    async fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let temp = temp_path(path);
        let written = match bytes.len() > ATOMIC_FILE_PIECE_BYTES {
            true => write_in_pieces(&temp, bytes).await,
            false => write_buffered(&temp, bytes).await,
        };
        if let Err(error) = written {
            // Best effort: on a full disk the temp file holds room the
            // next attempt needs (it would replace it anyway).
            let _ = glommio::io::remove(&temp).await;
            return Err(error);
        }
        glommio::io::rename(&temp, path).await.map_err(os_error)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn unsupported(_: io::Result<()>) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }

    fn failing(_: io::Result<()>) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EIO))
    }

    #[test]
    fn a_large_file_written_atomically_in_pieces_reads_back_whole_and_replaces_the_old() {
        crate::storage::tests::run(async {
            let temp = tempfile::tempdir().expect("temp dir");
            let path = temp.path().join("producers.snapshot");
            let storage = DmaStorage;
            storage.write_file_atomic(&path, b"the previous one").await.expect("small write");
            // Whole pieces, then a last one that ends inside a block.
            let length = 3 * ATOMIC_FILE_PIECE_BYTES + BLOCK_SIZE_BYTES + 123;
            let bytes: Vec<u8> = (0..length).map(|index| (index * 7 + index / 4096) as u8).collect();
            storage.write_file_atomic(&path, &bytes).await.expect("large write");
            assert_eq!(storage.read_file(&path).await.expect("read"), Some(bytes));
            assert!(!temp_path(&path).exists(), "the temp file was renamed");
            let shorter = vec![9u8; ATOMIC_FILE_PIECE_BYTES + 1];
            storage.write_file_atomic(&path, &shorter).await.expect("shorter large write");
            assert_eq!(
                storage.read_file(&path).await.expect("read"),
                Some(shorter),
                "nothing of the longer one is left"
            );
        });
    }

    #[test]
    fn fallocate_answers_are_classified() {
        assert_eq!(reservation(Ok(())).ok(), Some(Reservation::Reserved));
        assert_eq!(reservation(unsupported(Ok(()))).ok(), Some(Reservation::Unsupported));
        let no_space = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(reservation(Err(no_space)).map_err(|error| error.raw_os_error()), Err(Some(libc::ENOSPC)));
    }

    #[test]
    fn without_fallocate_the_file_is_preallocated_with_zeros() {
        crate::storage::tests::run(async {
            let temp = tempfile::tempdir().expect("temp dir");
            let path = temp.path().join("00000000000000000000.log");
            let size = 2 * SEGMENT_ZERO_FILL_CHUNK_BYTES as u64 + 3 * BLOCK_SIZE_BYTES as u64;
            let file = create_zeroed_file(&path, size, &ZeroFillPace::unlimited(), unsupported)
                .await
                .expect("created by writing zeros");
            assert_eq!(file.size_bytes().await.expect("size"), size);
            let bytes = file.read_at(0, size as usize).await.expect("read");
            assert!(bytes.len() as u64 == size && bytes.iter().all(|byte| *byte == 0));
            let block = vec![7u8; BLOCK_SIZE_BYTES];
            file.write_at(&block, size - BLOCK_SIZE_BYTES as u64).await.expect("write");
            file.fdatasync().await.expect("fdatasync");
            let read = file.read_at(size - BLOCK_SIZE_BYTES as u64, BLOCK_SIZE_BYTES).await.expect("read");
            assert_eq!(read, block);
        });
    }

    #[test]
    fn a_pressed_fill_of_chunks_not_a_multiple_of_its_writes_in_flight_is_all_zeros() {
        crate::storage::tests::run(async {
            let temp = tempfile::tempdir().expect("temp dir");
            let path = temp.path().join("00000000000000000000.log");
            let chunks = 2 * ZERO_FILL_WRITES_IN_FLIGHT_PRESSED as u64 + 2;
            let size = chunks * SEGMENT_ZERO_FILL_CHUNK_BYTES as u64 + BLOCK_SIZE_BYTES as u64;
            let pace = ZeroFillPace { bytes_per_second: 1, ..ZeroFillPace::default() };
            pace.progress.urgent.set(true);
            pace.progress.behind.set(true);
            assert!(pace.is_pressed());
            let file = create_zeroed_file(&path, size, &pace, unsupported).await.expect("created by writing zeros");
            assert_eq!(file.size_bytes().await.expect("size"), size);
            assert_eq!(pace.progress.left_bytes.get(), 0, "all written");
            let bytes = file.read_at(0, size as usize).await.expect("read");
            assert!(bytes.len() as u64 == size && bytes.iter().all(|byte| *byte == 0));
        });
    }

    #[test]
    fn all_runs_its_futures_together_and_keeps_their_order() {
        crate::storage::tests::run(async {
            let running = Rc::new(std::cell::Cell::new(0));
            let most = Rc::new(std::cell::Cell::new(0));
            let futures: Vec<_> = (0..5)
                .map(|index| {
                    let (running, most) = (running.clone(), most.clone());
                    async move {
                        running.set(running.get() + 1);
                        most.set(most.get().max(running.get()));
                        futures_lite::future::yield_now().await;
                        running.set(running.get() - 1);
                        index * 10
                    }
                })
                .collect();
            assert_eq!(all(futures).await, vec![0, 10, 20, 30, 40]);
            assert_eq!(most.get(), 5, "one at a time is not together");
        });
    }

    #[test]
    fn a_durable_write_goes_through_an_o_dsync_descriptor_of_the_same_file() {
        crate::storage::tests::run(async {
            let temp = tempfile::tempdir().expect("temp dir");
            let path = temp.path().join("00000000000000000000.log");
            let size = 4 * BLOCK_SIZE_BYTES as u64;
            let file = DmaStorage.create_zeroed(&path, size, &ZeroFillPace::unlimited()).await.expect("created");
            let block = vec![9u8; BLOCK_SIZE_BYTES];
            file.write_durable_at(&block, BLOCK_SIZE_BYTES as u64).await.expect("durable write");
            // Read back through the plain descriptor: one file, two handles.
            let read = file.read_at(BLOCK_SIZE_BYTES as u64, BLOCK_SIZE_BYTES).await.expect("read");
            assert_eq!(read, block);
            let durable = file.durable.borrow().clone().expect("the O_DSYNC handle is open");
            // SAFETY: F_GETFL on a descriptor this test owns (through
            // `durable`, alive until the end of the block) reads its flags
            // and changes nothing.
            let flags = unsafe { libc::fcntl(durable.as_raw_fd(), libc::F_GETFL) };
            assert!(flags >= 0, "F_GETFL failed");
            assert_eq!(flags & libc::O_DSYNC, libc::O_DSYNC, "the durable handle lacks O_DSYNC");
            // SAFETY: as above, on the plain descriptor.
            let plain_flags = unsafe { libc::fcntl(file.file.as_raw_fd(), libc::F_GETFL) };
            assert_eq!(plain_flags & libc::O_DSYNC, 0, "the plain handle must not sync every write");
            // The second durable write reuses the handle.
            file.write_durable_at(&block, 2 * BLOCK_SIZE_BYTES as u64).await.expect("durable write");
            let again = file.durable.borrow().clone().expect("still open");
            assert!(Rc::ptr_eq(&durable, &again));
        });
    }

    /// Creates a file of `size` whose fallocate answers `outcome`; the
    /// creation must fail to reserve with `errno` and leave no file behind.
    fn refused_creation_leaves_no_file(size: u64, outcome: fn(io::Result<()>) -> io::Result<()>, errno: i32) {
        crate::storage::tests::run(async move {
            let temp = tempfile::tempdir().expect("temp dir");
            let path = temp.path().join("00000000000000000000.log");
            match create_zeroed_file(&path, size, &ZeroFillPace::unlimited(), outcome).await {
                Err(CreateError::Reserve(error)) => assert_eq!(error.raw_os_error(), Some(errno)),
                Err(other) => panic!("expected a reservation failure, got {other}"),
                Ok(_) => panic!("a file of {size} bytes was created"),
            }
            assert!(!path.exists(), "a refused creation leaves no file");
        });
    }

    #[test]
    fn another_fallocate_failure_still_fails_the_creation() {
        refused_creation_leaves_no_file(1 << 20, failing, libc::EIO);
    }

    /// A file larger than the room left is refused before it exists.
    #[test]
    fn a_file_the_disk_has_no_room_for_is_refused_before_it_exists() {
        refused_creation_leaves_no_file(1 << 60, std::convert::identity, libc::ENOSPC);
    }

    /// A full disk's ENOSPC leaves no file behind, so no extents a partial
    /// fallocate took stay taken while the log retries.
    #[test]
    fn a_reservation_refused_for_space_leaves_no_file() {
        fn no_space(_: io::Result<()>) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        refused_creation_leaves_no_file(1 << 20, no_space, libc::ENOSPC);
    }
}
