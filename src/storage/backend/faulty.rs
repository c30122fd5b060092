//! Fault injection on top of [`MemoryStorage`], driven by a [`FaultPlan`] and
//! a seed: EIO on the n-th write or fdatasync, ENOSPC on the n-th file
//! creation, errors on chosen operations of chosen files
//! ([`TargetedFault`]; a write refused with ENOSPC lands its first half
//! first, as a full disk's short write does), torn writes at a simulated
//! crash, and bit flips. A
//! failing test prints the seed so the same faults can be replayed. Reads
//! can be held, so a test can run something else while a read is in flight.

use super::{CreateError, MemoryFile, MemoryStorage, Storage, StorageFile, ZeroFillPace};
use std::cell::{Cell, RefCell};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Which operations fail. Counts start at 0; `Some(n)` fails the operation
/// numbered `n` and every later one of the same kind.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    pub seed: u64,
    pub write_error_from: Option<u64>,
    pub fdatasync_error_from: Option<u64>,
    pub create_no_space_from: Option<u64>,
    /// Faults on one operation of the files whose path matches.
    pub targeted: Vec<TargetedFault>,
}

/// An operation a [`TargetedFault`] can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `write_at` of a file.
    Write,
    /// `fdatasync` of a file.
    Fdatasync,
    /// Writing and syncing the zeros of a new file in `create_zeroed` (the
    /// file exists afterwards, as on a real disk).
    ZeroFill,
    /// `write_file_atomic` (the temp file's write, fsync or rename).
    WriteFileAtomic,
    /// `remove` (the unlink or the directory fsync after it).
    Remove,
    /// `sync_dir` of a directory.
    SyncDir,
}

/// Fails `operation` on every file whose path contains `path_contains`,
/// from the `from`-th matching call on (counted from 0), with `errno`.
#[derive(Clone, Debug)]
pub struct TargetedFault {
    pub operation: Operation,
    pub path_contains: String,
    pub from: u64,
    pub errno: i32,
}

impl TargetedFault {
    /// EIO on every matching call.
    pub fn eio(operation: Operation, path_contains: &str) -> Self {
        Self { operation, path_contains: path_contains.to_owned(), from: 0, errno: libc::EIO }
    }

    fn matches(&self, operation: Operation, path: &Path) -> bool {
        self.operation == operation && path.to_string_lossy().contains(&self.path_contains)
    }
}

#[derive(Default)]
struct Counters {
    writes: u64,
    fdatasyncs: u64,
    creates: u64,
    /// One per targeted fault of the plan: its matching calls so far.
    targeted: Vec<u64>,
}

struct FaultState {
    plan: FaultPlan,
    counters: Counters,
    rng: fastrand::Rng,
    /// Set while reads wait: released by `FaultyStorage::release_reads`.
    read_gate: Option<Rc<glommio::sync::Semaphore>>,
    reads_waiting: Rc<Cell<usize>>,
}

impl FaultState {
    fn should_fail(from: Option<u64>, counter: &mut u64) -> bool {
        let number = *counter;
        *counter += 1;
        from.is_some_and(|first| number >= first)
    }

    /// The injected error for `operation` on `path`, if a targeted fault
    /// says so. Every matching fault counts the call.
    fn targeted(&mut self, operation: Operation, path: &Path) -> io::Result<()> {
        let mut failure = None;
        self.counters.targeted.resize(self.plan.targeted.len(), 0);
        for (fault, counter) in self.plan.targeted.iter().zip(self.counters.targeted.iter_mut()) {
            if fault.matches(operation, path) && Self::should_fail(Some(fault.from), counter) {
                failure.get_or_insert(fault.errno);
            }
        }
        match failure {
            Some(errno) => Err(injected_os(errno, &format!("{operation:?} of {}", path.display()))),
            None => Ok(()),
        }
    }
}

/// Memory storage that fails as its plan says.
#[derive(Clone)]
pub struct FaultyStorage {
    memory: MemoryStorage,
    state: Rc<RefCell<FaultState>>,
}

/// A file of a [`FaultyStorage`].
pub struct FaultyFile {
    path: PathBuf,
    file: MemoryFile,
    state: Rc<RefCell<FaultState>>,
}

fn injected(kind: io::ErrorKind, what: &str) -> io::Error {
    io::Error::new(kind, format!("injected fault: {what}"))
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

fn eio(what: &str) -> io::Error {
    injected_os(libc::EIO, what)
}

fn injected_os(errno: i32, what: &str) -> io::Error {
    let raw = io::Error::from_raw_os_error(errno);
    injected(raw.kind(), &format!("{what}: {raw}"))
}

impl FaultyStorage {
    pub fn new(plan: FaultPlan) -> Self {
        let rng = fastrand::Rng::with_seed(plan.seed);
        let state =
            FaultState { plan, counters: Counters::default(), rng, read_gate: None, reads_waiting: Rc::default() };
        Self { memory: MemoryStorage::new(), state: Rc::new(RefCell::new(state)) }
    }

    /// Replaces the plan, keeping the files (a "new process" on the same disk).
    pub fn set_plan(&self, plan: FaultPlan) {
        let mut state = self.state.borrow_mut();
        state.rng = fastrand::Rng::with_seed(plan.seed);
        state.plan = plan;
        state.counters = Counters::default();
    }

    /// Simulated power cut: unsynced writes survive sector by sector, at random.
    pub fn crash(&self) {
        let mut state = self.state.borrow_mut();
        self.memory.crash_tearing(&mut state.rng);
    }

    /// Simulated crash that loses every unsynced write, whole.
    pub fn crash_losing_unsynced(&self) {
        self.memory.crash();
    }

    pub fn flip_bit(&self, path: &Path, position: u64, bit: u8) -> io::Result<()> {
        self.memory.flip_bit(path, position, bit)
    }

    /// From now on every read waits until `release_reads`.
    pub fn hold_reads(&self) {
        let mut state = self.state.borrow_mut();
        state.read_gate.get_or_insert_with(|| Rc::new(glommio::sync::Semaphore::new(0)));
    }

    /// Lets every held read (and every later one) go on.
    pub fn release_reads(&self) {
        if let Some(gate) = self.state.borrow_mut().read_gate.take() {
            gate.close();
        }
    }

    /// How many calls the plan's targeted fault number `fault` has seen.
    pub fn targeted_calls(&self, fault: usize) -> u64 {
        self.state.borrow().counters.targeted.get(fault).copied().unwrap_or(0)
    }

    /// How many reads are waiting for `release_reads`.
    pub fn reads_waiting(&self) -> usize {
        self.state.borrow().reads_waiting.get()
    }

    fn wrap(&self, file: MemoryFile, path: &Path) -> FaultyFile {
        FaultyFile { path: path.to_path_buf(), file, state: self.state.clone() }
    }

    fn check_targeted(&self, operation: Operation, path: &Path) -> io::Result<()> {
        self.state.borrow_mut().targeted(operation, path)
    }

    fn check_create(&self) -> io::Result<()> {
        let mut state = self.state.borrow_mut();
        let from = state.plan.create_no_space_from;
        if FaultState::should_fail(from, &mut state.counters.creates) {
            return Err(no_space());
        }
        Ok(())
    }
}

/// What of a write a full disk takes before it refuses the rest: the
/// first half of its blocks (none of a one-block write).
fn landed_before_no_space(data: &[u8]) -> &[u8] {
    let block = crate::constants::BLOCK_SIZE_BYTES;
    &data[..data.len() / block / 2 * block]
}

impl StorageFile for FaultyFile {
    async fn write_at(&self, data: &[u8], position: u64) -> io::Result<()> {
        let targeted = {
            let mut state = self.state.borrow_mut();
            let from = state.plan.write_error_from;
            if FaultState::should_fail(from, &mut state.counters.writes) {
                return Err(eio("write"));
            }
            state.targeted(Operation::Write, &self.path)
        };
        if let Err(error) = targeted {
            if error.kind() == no_space().kind() {
                self.file.write_at(landed_before_no_space(data), position).await?;
            }
            return Err(error);
        }
        self.file.write_at(data, position).await
    }

    async fn read_at(&self, position: u64, length: usize) -> io::Result<Vec<u8>> {
        self.wait_for_read_release().await;
        self.file.read_at(position, length).await
    }

    async fn fdatasync(&self) -> io::Result<()> {
        {
            let mut state = self.state.borrow_mut();
            let from = state.plan.fdatasync_error_from;
            if FaultState::should_fail(from, &mut state.counters.fdatasyncs) {
                return Err(eio("fdatasync"));
            }
            state.targeted(Operation::Fdatasync, &self.path)?;
        }
        self.file.fdatasync().await
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        self.file.size_bytes().await
    }

    async fn deallocate(&self, position: u64, length: u64) -> io::Result<()> {
        self.file.deallocate(position, length).await
    }
}

impl FaultyFile {
    async fn wait_for_read_release(&self) {
        let (gate, waiting) = {
            let state = self.state.borrow();
            (state.read_gate.clone(), state.reads_waiting.clone())
        };
        if let Some(gate) = gate {
            waiting.set(waiting.get() + 1);
            // The gate is closed to release: the error is the release.
            let _released = gate.acquire(1).await;
            waiting.set(waiting.get() - 1);
        }
    }
}

impl Storage for FaultyStorage {
    type File = FaultyFile;

    async fn create_zeroed(
        &self,
        path: &Path,
        size_bytes: u64,
        pace: &ZeroFillPace,
    ) -> Result<Self::File, CreateError> {
        self.check_create().map_err(CreateError::Reserve)?;
        let file = self.memory.create_zeroed(path, size_bytes, pace).await?;
        self.check_targeted(Operation::ZeroFill, path).map_err(CreateError::Fill)?;
        Ok(self.wrap(file, path))
    }

    async fn open(&self, path: &Path) -> io::Result<Self::File> {
        Ok(self.wrap(self.memory.open(path).await?, path))
    }

    async fn open_or_create(&self, path: &Path) -> io::Result<Self::File> {
        Ok(self.wrap(self.memory.open_or_create(path).await?, path))
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.memory.create_dir_all(path).await
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.memory.list(dir).await
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.check_targeted(Operation::Remove, path)?;
        self.memory.remove(path).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.check_targeted(Operation::SyncDir, dir)?;
        self.memory.sync_dir(dir).await
    }

    async fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.check_targeted(Operation::WriteFileAtomic, path)?;
        self.memory.write_file_atomic(path, bytes).await
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        self.memory.read_file(path).await
    }
}
