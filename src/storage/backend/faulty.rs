//! Fault injection on top of [`MemoryStorage`], driven by a [`FaultPlan`] and
//! a seed: EIO on the n-th write or fdatasync, ENOSPC on the n-th file
//! creation, torn writes at a simulated crash, and bit flips. A failing test
//! prints the seed so the same faults can be replayed.

use super::{MemoryFile, MemoryStorage, Storage, StorageFile, ZeroFillPace};
use std::cell::RefCell;
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
}

#[derive(Default)]
struct Counters {
    writes: u64,
    fdatasyncs: u64,
    creates: u64,
}

struct FaultState {
    plan: FaultPlan,
    counters: Counters,
    rng: fastrand::Rng,
}

impl FaultState {
    fn should_fail(from: Option<u64>, counter: &mut u64) -> bool {
        let number = *counter;
        *counter += 1;
        from.is_some_and(|first| number >= first)
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
    let raw = io::Error::from_raw_os_error(libc::EIO);
    injected(raw.kind(), &format!("{what}: {raw}"))
}

impl FaultyStorage {
    pub fn new(plan: FaultPlan) -> Self {
        let rng = fastrand::Rng::with_seed(plan.seed);
        let state = FaultState { plan, counters: Counters::default(), rng };
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

    fn wrap(&self, file: MemoryFile) -> FaultyFile {
        FaultyFile { file, state: self.state.clone() }
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

impl StorageFile for FaultyFile {
    async fn write_at(&self, data: &[u8], position: u64) -> io::Result<()> {
        {
            let mut state = self.state.borrow_mut();
            let from = state.plan.write_error_from;
            if FaultState::should_fail(from, &mut state.counters.writes) {
                return Err(eio("write"));
            }
        }
        self.file.write_at(data, position).await
    }

    async fn read_at(&self, position: u64, length: usize) -> io::Result<Vec<u8>> {
        self.file.read_at(position, length).await
    }

    async fn fdatasync(&self) -> io::Result<()> {
        {
            let mut state = self.state.borrow_mut();
            let from = state.plan.fdatasync_error_from;
            if FaultState::should_fail(from, &mut state.counters.fdatasyncs) {
                return Err(eio("fdatasync"));
            }
        }
        self.file.fdatasync().await
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        self.file.size_bytes().await
    }
}

impl Storage for FaultyStorage {
    type File = FaultyFile;

    async fn create_zeroed(&self, path: &Path, size_bytes: u64, pace: &ZeroFillPace) -> io::Result<Self::File> {
        self.check_create()?;
        Ok(self.wrap(self.memory.create_zeroed(path, size_bytes, pace).await?))
    }

    async fn open(&self, path: &Path) -> io::Result<Self::File> {
        Ok(self.wrap(self.memory.open(path).await?))
    }

    async fn open_or_create(&self, path: &Path) -> io::Result<Self::File> {
        Ok(self.wrap(self.memory.open_or_create(path).await?))
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.memory.create_dir_all(path).await
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        self.memory.list(dir).await
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.memory.remove(path).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.memory.sync_dir(dir).await
    }

    async fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.memory.write_file_atomic(path, bytes).await
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        self.memory.read_file(path).await
    }
}
