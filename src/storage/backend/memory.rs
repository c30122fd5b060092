//! Files in memory that remember what was synced, so a test can simulate a
//! crash: `crash` drops every write that no fdatasync covered, and
//! `crash_tearing` keeps a seeded random subset of their 512-byte sectors,
//! which is what a power cut in the middle of an O_DIRECT write can leave.

use super::{is_block_aligned, CreateError, Storage, StorageFile, ZeroFillPace};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Sector size a torn write is made of.
const SECTOR_SIZE_BYTES: u64 = 512;

#[derive(Default)]
struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<(u64, usize)>,
}

impl FileData {
    fn write(&mut self, data: &[u8], position: u64) {
        let start = position as usize;
        let end = start + data.len();
        if self.current.len() < end {
            self.current.resize(end, 0);
        }
        self.current[start..end].copy_from_slice(data);
        self.unsynced.push((position, data.len()));
    }

    fn sync(&mut self) {
        for (position, length) in std::mem::take(&mut self.unsynced) {
            self.persist_range(position, length);
        }
        self.durable.truncate(self.current.len());
    }

    fn persist_range(&mut self, position: u64, length: usize) {
        let start = position as usize;
        let end = (start + length).min(self.current.len());
        if start >= end {
            return;
        }
        if self.durable.len() < end {
            self.durable.resize(end, 0);
        }
        self.durable[start..end].copy_from_slice(&self.current[start..end]);
    }

    fn crash(&mut self, mut rng: Option<&mut fastrand::Rng>) {
        for (position, length) in std::mem::take(&mut self.unsynced) {
            let Some(rng) = rng.as_deref_mut() else { continue };
            let mut sector = position;
            while sector < position + length as u64 {
                let sector_length = SECTOR_SIZE_BYTES.min(position + length as u64 - sector);
                if rng.bool() {
                    self.persist_range(sector, sector_length as usize);
                }
                sector += sector_length;
            }
        }
        self.current = self.durable.clone();
    }
}

#[derive(Default)]
struct Tree {
    files: BTreeMap<PathBuf, Rc<RefCell<FileData>>>,
}

/// A filesystem in memory, shared by every clone.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    tree: Rc<RefCell<Tree>>,
}

/// A file of a [`MemoryStorage`].
pub struct MemoryFile {
    data: Rc<RefCell<FileData>>,
}

impl StorageFile for MemoryFile {
    async fn write_at(&self, data: &[u8], position: u64) -> io::Result<()> {
        debug_assert!(is_block_aligned(position, data.len()));
        self.data.borrow_mut().write(data, position);
        Ok(())
    }

    async fn read_at(&self, position: u64, length: usize) -> io::Result<Vec<u8>> {
        let data = self.data.borrow();
        let start = (position as usize).min(data.current.len());
        let end = (start + length).min(data.current.len());
        Ok(data.current[start..end].to_vec())
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.data.borrow_mut().sync();
        Ok(())
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.data.borrow().current.len() as u64)
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", path.display()))
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a crash: every write that no fdatasync covered is lost.
    pub fn crash(&self) {
        for file in self.tree.borrow().files.values() {
            file.borrow_mut().crash(None);
        }
    }

    /// Simulates a crash in the middle of writes: each unsynced 512-byte
    /// sector survives or not, as the seeded generator decides.
    pub fn crash_tearing(&self, rng: &mut fastrand::Rng) {
        for file in self.tree.borrow().files.values() {
            file.borrow_mut().crash(Some(rng));
        }
    }

    /// Flips one bit of a file, in its durable and its current content.
    pub fn flip_bit(&self, path: &Path, position: u64, bit: u8) -> io::Result<()> {
        let tree = self.tree.borrow();
        let file = tree.files.get(path).ok_or_else(|| not_found(path))?;
        let mut data = file.borrow_mut();
        let index = position as usize;
        if index >= data.current.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bit flip past the end"));
        }
        data.current[index] ^= 1 << bit;
        if index < data.durable.len() {
            data.durable[index] ^= 1 << bit;
        }
        Ok(())
    }

    fn file(&self, path: &Path) -> Option<Rc<RefCell<FileData>>> {
        self.tree.borrow().files.get(path).cloned()
    }

    fn insert(&self, path: &Path, data: FileData) -> Rc<RefCell<FileData>> {
        let data = Rc::new(RefCell::new(data));
        self.tree.borrow_mut().files.insert(path.to_path_buf(), data.clone());
        data
    }
}

impl Storage for MemoryStorage {
    type File = MemoryFile;

    async fn create_zeroed(
        &self,
        path: &Path,
        size_bytes: u64,
        _pace: &ZeroFillPace,
    ) -> Result<Self::File, CreateError> {
        let zeros = vec![0; size_bytes as usize];
        let data = FileData { current: zeros.clone(), durable: zeros, unsynced: Vec::new() };
        Ok(MemoryFile { data: self.insert(path, data) })
    }

    async fn open(&self, path: &Path) -> io::Result<Self::File> {
        let data = self.file(path).ok_or_else(|| not_found(path))?;
        Ok(MemoryFile { data })
    }

    async fn open_or_create(&self, path: &Path) -> io::Result<Self::File> {
        let data = match self.file(path) {
            Some(data) => data,
            None => self.insert(path, FileData::default()),
        };
        Ok(MemoryFile { data })
    }

    async fn create_dir_all(&self, _path: &Path) -> io::Result<()> {
        Ok(())
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let tree = self.tree.borrow();
        let names = tree.files.keys().filter(|path| path.parent() == Some(dir)).cloned().collect();
        Ok(names)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        match self.tree.borrow_mut().files.remove(path) {
            Some(_) => Ok(()),
            None => Err(not_found(path)),
        }
    }

    async fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    async fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let data = FileData { current: bytes.to_vec(), durable: bytes.to_vec(), unsynced: Vec::new() };
        self.insert(path, data);
        Ok(())
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        Ok(self.file(path).map(|data| data.borrow().current.clone()))
    }
}
