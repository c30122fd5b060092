//! Files in memory that remember what was synced, so a test can simulate a
//! crash: `crash` drops every write that no fdatasync covered, and
//! `crash_tearing` keeps a seeded random subset of their 512-byte sectors,
//! which is what a power cut in the middle of an O_DIRECT write can leave.
//! Files are sparse: only pages holding non-zero bytes take memory.

use super::{is_block_aligned, CreateError, Storage, StorageFile, ZeroFillPace};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Sector size a torn write is made of.
const SECTOR_SIZE_BYTES: u64 = 512;

/// Pages a file is kept in: only pages that hold a non-zero byte ever
/// written take memory, so a 1 GiB zero-filled segment costs nothing.
const PAGE_SIZE_BYTES: u64 = 4096;

type Page = Box<[u8; PAGE_SIZE_BYTES as usize]>;

/// The bytes of a file: a size and its written pages; the rest reads as zeros.
#[derive(Clone, Default)]
struct Sparse {
    size_bytes: u64,
    pages: BTreeMap<u64, Page>,
}

impl Sparse {
    fn zeroed(size_bytes: u64) -> Self {
        Self { size_bytes, pages: BTreeMap::new() }
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        let mut sparse = Self::zeroed(bytes.len() as u64);
        sparse.write(bytes, 0);
        sparse
    }

    fn write(&mut self, data: &[u8], position: u64) {
        self.size_bytes = self.size_bytes.max(position + data.len() as u64);
        let mut done = 0;
        while done < data.len() {
            let at = position + done as u64;
            let (page, offset) = (at / PAGE_SIZE_BYTES, (at % PAGE_SIZE_BYTES) as usize);
            let length = (PAGE_SIZE_BYTES as usize - offset).min(data.len() - done);
            let source = &data[done..done + length];
            let stored = self.pages.entry(page).or_insert_with(|| Box::new([0; PAGE_SIZE_BYTES as usize]));
            stored[offset..offset + length].copy_from_slice(source);
            if stored.iter().all(|byte| *byte == 0) {
                self.pages.remove(&page);
            }
            done += length;
        }
    }

    /// Bytes `[position, position + length)`, fewer past the end.
    fn read(&self, position: u64, length: usize) -> Vec<u8> {
        let end = (position + length as u64).min(self.size_bytes);
        let start = position.min(end);
        let mut bytes = vec![0; (end - start) as usize];
        let first_page = start / PAGE_SIZE_BYTES;
        for (page, stored) in self.pages.range(first_page..end.div_ceil(PAGE_SIZE_BYTES)) {
            let page_start = page * PAGE_SIZE_BYTES;
            let from = page_start.max(start);
            let to = (page_start + PAGE_SIZE_BYTES).min(end);
            let source = &stored[(from - page_start) as usize..(to - page_start) as usize];
            bytes[(from - start) as usize..(to - start) as usize].copy_from_slice(source);
        }
        bytes
    }

    /// Drops the pages of `[start, end)` (page-aligned): they read as zeros.
    fn punch(&mut self, start: u64, end: u64) {
        debug_assert!(start % PAGE_SIZE_BYTES == 0 && end % PAGE_SIZE_BYTES == 0);
        self.pages.retain(|page, _| !(start..end).contains(&(page * PAGE_SIZE_BYTES)));
    }

    fn truncate(&mut self, size_bytes: u64) {
        self.size_bytes = size_bytes;
        self.pages.retain(|page, _| page * PAGE_SIZE_BYTES < size_bytes);
    }
}

/// What happens to an unsynced sector at a simulated crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectorFate {
    /// The sector keeps what it held before the write.
    Lost,
    /// The sector holds the new bytes.
    Written,
    /// The sector holds garbage (a drive without power-loss protection).
    Garbled,
}

#[derive(Default)]
struct FileData {
    current: Sparse,
    durable: Sparse,
    unsynced: Vec<(u64, usize)>,
}

impl FileData {
    fn write(&mut self, data: &[u8], position: u64) {
        self.current.write(data, position);
        self.unsynced.push((position, data.len()));
    }

    fn sync(&mut self) {
        for (position, length) in std::mem::take(&mut self.unsynced) {
            self.persist_range(position, length);
        }
        self.durable.truncate(self.current.size_bytes);
    }

    fn persist_range(&mut self, position: u64, length: usize) {
        let bytes = self.current.read(position, length);
        self.durable.write(&bytes, position);
    }

    /// Each unsynced sector meets the fate `fate` picks for it; then the
    /// file is what the disk holds.
    fn crash(&mut self, fate: &mut dyn FnMut() -> SectorFate) {
        for (position, length) in std::mem::take(&mut self.unsynced) {
            let end = position + length as u64;
            let mut sector = position;
            while sector < end {
                let sector_length = SECTOR_SIZE_BYTES.min(end - sector) as usize;
                match fate() {
                    SectorFate::Lost => {}
                    SectorFate::Written => self.persist_range(sector, sector_length),
                    SectorFate::Garbled => {
                        let garbage: Vec<u8> = (0..sector_length).map(|index| (index as u8) ^ 0xa5).collect();
                        self.durable.write(&garbage, sector);
                    }
                }
                sector += sector_length as u64;
            }
        }
        self.current = self.durable.clone();
    }
}

#[derive(Default)]
struct Tree {
    files: BTreeMap<PathBuf, Rc<RefCell<FileData>>>,
    /// Every write issued, in order: (file, position, length).
    writes: Vec<(PathBuf, u64, usize)>,
}

/// A filesystem in memory, shared by every clone.
#[derive(Clone, Default)]
pub struct MemoryStorage {
    tree: Rc<RefCell<Tree>>,
}

/// A file of a [`MemoryStorage`].
pub struct MemoryFile {
    path: PathBuf,
    data: Rc<RefCell<FileData>>,
    tree: Rc<RefCell<Tree>>,
}

impl StorageFile for MemoryFile {
    async fn write_at(&self, data: &[u8], position: u64) -> io::Result<()> {
        debug_assert!(is_block_aligned(position, data.len()));
        self.data.borrow_mut().write(data, position);
        self.tree.borrow_mut().writes.push((self.path.clone(), position, data.len()));
        Ok(())
    }

    async fn read_at(&self, position: u64, length: usize) -> io::Result<Vec<u8>> {
        Ok(self.data.borrow().current.read(position, length))
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.data.borrow_mut().sync();
        Ok(())
    }

    async fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.data.borrow().current.size_bytes)
    }

    /// A hole is metadata: it holds at once, synced or not (a crash that
    /// undid it would bring back bytes nobody reads).
    async fn deallocate(&self, position: u64, length: u64) -> io::Result<()> {
        let mut data = self.data.borrow_mut();
        data.current.punch(position, position + length);
        data.durable.punch(position, position + length);
        Ok(())
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
        self.crash_with(&mut || SectorFate::Lost);
    }

    /// Simulates a crash in the middle of writes: each unsynced 512-byte
    /// sector survives or not, as the seeded generator decides.
    pub fn crash_tearing(&self, rng: &mut fastrand::Rng) {
        self.crash_with(&mut || if rng.bool() { SectorFate::Written } else { SectorFate::Lost });
    }

    /// Simulates a crash where `fate` decides each unsynced sector.
    pub fn crash_with(&self, fate: &mut dyn FnMut() -> SectorFate) {
        for file in self.tree.borrow().files.values() {
            file.borrow_mut().crash(fate);
        }
    }

    /// Overwrites bytes of a file on the disk (durable and current): damage
    /// that no write of the log made.
    pub fn overwrite(&self, path: &Path, position: u64, bytes: &[u8]) -> io::Result<()> {
        let tree = self.tree.borrow();
        let file = tree.files.get(path).ok_or_else(|| not_found(path))?;
        let mut data = file.borrow_mut();
        if position + bytes.len() as u64 > data.current.size_bytes {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "damage past the end"));
        }
        data.current.write(bytes, position);
        data.durable.write(bytes, position);
        Ok(())
    }

    /// Bytes of a file as the disk holds them now.
    pub fn read_durable(&self, path: &Path, position: u64, length: usize) -> io::Result<Vec<u8>> {
        let file = self.file(path).ok_or_else(|| not_found(path))?;
        let bytes = file.borrow().durable.read(position, length);
        Ok(bytes)
    }

    /// Flips one bit of a file, in its durable and its current content.
    pub fn flip_bit(&self, path: &Path, position: u64, bit: u8) -> io::Result<()> {
        let byte = self.read_durable(path, position, 1)?;
        let Some(byte) = byte.first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bit flip past the end"));
        };
        self.overwrite(path, position, &[byte ^ (1 << bit)])
    }

    /// Every write issued so far, in order: (file, position, length).
    pub fn writes(&self) -> Vec<(PathBuf, u64, usize)> {
        self.tree.borrow().writes.clone()
    }

    fn handle(&self, path: &Path, data: Rc<RefCell<FileData>>) -> MemoryFile {
        MemoryFile { path: path.to_path_buf(), data, tree: self.tree.clone() }
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
        let data =
            FileData { current: Sparse::zeroed(size_bytes), durable: Sparse::zeroed(size_bytes), unsynced: Vec::new() };
        Ok(self.handle(path, self.insert(path, data)))
    }

    async fn open(&self, path: &Path) -> io::Result<Self::File> {
        let data = self.file(path).ok_or_else(|| not_found(path))?;
        Ok(self.handle(path, data))
    }

    async fn open_or_create(&self, path: &Path) -> io::Result<Self::File> {
        let data = match self.file(path) {
            Some(data) => data,
            None => self.insert(path, FileData::default()),
        };
        Ok(self.handle(path, data))
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
        let data =
            FileData { current: Sparse::from_bytes(bytes), durable: Sparse::from_bytes(bytes), unsynced: Vec::new() };
        self.insert(path, data);
        Ok(())
    }

    async fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        Ok(self.file(path).map(|data| {
            let data = data.borrow();
            data.current.read(0, data.current.size_bytes as usize)
        }))
    }
}
