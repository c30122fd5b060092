//! One "boot" of the simulated machine: the disk as the log of one process
//! sees it. Every operation yields to the executor before and after it runs,
//! so a crash can fall between a write and its fdatasync, or in the middle
//! of a checkpoint. Once the power is cut, every operation of this boot
//! fails: a task of the dead process that was cancelled late (a background
//! segment preparation) cannot touch the disk of the next one.

use crate::storage::backend::{CreateError, Storage, StorageFile, ZeroFillPace};
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

#[derive(Clone)]
pub struct Boot<S> {
    disk: S,
    powered: Rc<Cell<bool>>,
    unsynced_index: Rc<RefCell<BTreeSet<PathBuf>>>,
}

pub struct BootFile<F> {
    file: F,
    path: PathBuf,
    powered: Rc<Cell<bool>>,
    unsynced_index: Rc<RefCell<BTreeSet<PathBuf>>>,
}

fn is_index(path: &Path) -> bool {
    path.extension().is_some_and(|extension| extension == "idx")
}

fn power_lost() -> io::Error {
    io::Error::other("simulated power cut: this process is gone")
}

async fn step(powered: &Cell<bool>) -> io::Result<()> {
    glommio::executor().yield_now().await;
    if powered.get() {
        Ok(())
    } else {
        Err(power_lost())
    }
}

/// Runs `operation` between two yields, unless the power went in between.
async fn guarded<T>(
    powered: &Cell<bool>,
    operation: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    step(powered).await?;
    let result = operation.await;
    glommio::executor().yield_now().await;
    result
}

impl<S: Storage> Boot<S> {
    pub fn new(disk: S) -> Self {
        Self { disk, powered: Rc::new(Cell::new(true)), unsynced_index: Rc::default() }
    }

    /// Whether an index file write was issued and not synced since (it
    /// reaches the disk one executor turn after it is issued).
    pub fn index_in_flight(&self) -> bool {
        !self.unsynced_index.borrow().is_empty()
    }

    /// From now on nothing of this boot reaches the disk.
    pub fn cut_power(&self) {
        self.powered.set(false);
    }

    fn wrap(&self, file: S::File, path: &Path) -> BootFile<S::File> {
        let (powered, unsynced_index) = (self.powered.clone(), self.unsynced_index.clone());
        BootFile { file, path: path.to_path_buf(), powered, unsynced_index }
    }
}

impl<F: StorageFile> StorageFile for BootFile<F> {
    async fn write_at(&self, data: &[u8], position: u64) -> io::Result<()> {
        if is_index(&self.path) {
            self.unsynced_index.borrow_mut().insert(self.path.clone());
        }
        guarded(&self.powered, self.file.write_at(data, position)).await
    }

    async fn read_at(&self, position: u64, length: usize) -> io::Result<Vec<u8>> {
        guarded(&self.powered, self.file.read_at(position, length)).await
    }

    async fn fdatasync(&self) -> io::Result<()> {
        guarded(&self.powered, self.file.fdatasync()).await?;
        self.unsynced_index.borrow_mut().remove(&self.path);
        Ok(())
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        guarded(&self.powered, self.file.size_bytes()).await
    }

    async fn deallocate(&self, position: u64, length: u64) -> io::Result<()> {
        guarded(&self.powered, self.file.deallocate(position, length)).await
    }
}

impl<S: Storage> Storage for Boot<S> {
    type File = BootFile<S::File>;

    async fn create_zeroed(
        &self,
        path: &Path,
        size_bytes: u64,
        pace: &ZeroFillPace,
    ) -> Result<Self::File, CreateError> {
        step(&self.powered).await.map_err(CreateError::Reserve)?;
        let created = self.disk.create_zeroed(path, size_bytes, pace).await;
        glommio::executor().yield_now().await;
        Ok(self.wrap(created?, path))
    }

    async fn open(&self, path: &Path) -> io::Result<Self::File> {
        Ok(self.wrap(guarded(&self.powered, self.disk.open(path)).await?, path))
    }

    async fn open_or_create(&self, path: &Path) -> io::Result<Self::File> {
        Ok(self.wrap(guarded(&self.powered, self.disk.open_or_create(path)).await?, path))
    }

    async fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        guarded(&self.powered, self.disk.create_dir_all(path)).await
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        guarded(&self.powered, self.disk.list(dir)).await
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        guarded(&self.powered, self.disk.remove(path)).await
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        guarded(&self.powered, self.disk.sync_dir(dir)).await
    }

    async fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        guarded(&self.powered, self.disk.write_file_atomic(path, bytes)).await
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        guarded(&self.powered, self.disk.read_file(path)).await
    }
}
