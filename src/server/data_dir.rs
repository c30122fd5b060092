//! The data directory: created durably, and locked for the life of the
//! process so that two brokers never write the same logs.
//!
//! The lock is an exclusive `flock` on `<data dir>/LOCK`, which holds the
//! holder's pid for the operator (and for the error a second broker prints).
//! The kernel drops it when the process dies, however it dies.

use super::ServerError;
use crate::constants::{DATA_DIR_LOCK_WAIT_MS, STARTUP_RETRY_PAUSE_MS};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const LOCK_FILE: &str = "LOCK";

/// Creates `path` and every missing parent, fsyncing the directory that
/// gains each new entry, so a crash cannot forget a directory we wrote into.
pub fn create_dir_durably(path: &Path) -> std::io::Result<()> {
    // A relative path's last ancestor is the empty path: the working folder.
    let missing: Vec<&Path> =
        path.ancestors().take_while(|ancestor| !ancestor.as_os_str().is_empty() && !ancestor.exists()).collect();
    for directory in missing.into_iter().rev() {
        match std::fs::create_dir(directory) {
            Ok(()) => sync_dir(parent_of(directory))?,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The exclusive lock on a data directory; released when dropped (or when
/// the process dies).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

enum Attempt {
    Locked(File),
    HeldByAnother,
}

impl DataDirLock {
    /// Locks `data_dir`, creating it if missing. A lock still held after
    /// `DATA_DIR_LOCK_WAIT_MS` (a dying predecessor releases it within
    /// milliseconds) is another broker: refused, naming its pid.
    pub fn acquire(data_dir: &Path) -> Result<Self, ServerError> {
        let data_error = |detail: String| ServerError::DataDir { path: data_dir.to_path_buf(), detail };
        create_dir_durably(data_dir).map_err(|error| data_error(format!("creating it: {error}")))?;
        let path = data_dir.join(LOCK_FILE);
        let deadline = Instant::now() + Duration::from_millis(DATA_DIR_LOCK_WAIT_MS);
        loop {
            match try_lock(&path).map_err(|error| data_error(format!("{LOCK_FILE}: {error}")))? {
                Attempt::Locked(file) => {
                    record_holder(&file).map_err(|error| data_error(format!("{LOCK_FILE}: {error}")))?;
                    return Ok(Self { _file: file });
                }
                Attempt::HeldByAnother if Instant::now() >= deadline => {
                    return Err(ServerError::DataDirLocked { path: data_dir.to_path_buf(), holder: holder_pid(&path) });
                }
                Attempt::HeldByAnother => std::thread::sleep(Duration::from_millis(STARTUP_RETRY_PAUSE_MS)),
            }
        }
    }
}

fn try_lock(path: &PathBuf) -> std::io::Result<Attempt> {
    let existed = path.exists();
    let file = File::options().read(true).write(true).create(true).truncate(false).open(path)?;
    if !existed {
        sync_dir(parent_of(path))?;
    }
    // SAFETY: flock only reads the descriptor number, which `file` owns and
    // keeps open for the duration of the call.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result == 0 {
        return Ok(Attempt::Locked(file));
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(Attempt::HeldByAnother),
        _ => Err(error),
    }
}

/// Writes our pid into the lock file, for whoever finds the lock held.
fn record_holder(mut file: &File) -> std::io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_data()
}

/// The pid the holder wrote, if it has written it yet.
pub fn holder_pid(path: &Path) -> Option<u32> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The `shard-N` directories of `data_dir` (only shard `only`'s, if given), by shard.
pub fn shard_dirs(data_dir: &Path, only: Option<u32>) -> Result<Vec<(u32, PathBuf)>, String> {
    let entries = std::fs::read_dir(data_dir).map_err(|error| format!("{}: {error}", data_dir.display()))?;
    let mut shards = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(shard) = name.to_str().and_then(|name| name.strip_prefix("shard-")).and_then(|id| id.parse().ok())
        else {
            continue;
        };
        if only.is_none_or(|only| only == shard) {
            shards.push((shard, entry.path()));
        }
    }
    shards.sort();
    match only {
        Some(shard) if shards.is_empty() => Err(format!("no shard {shard} in {}", data_dir.display())),
        _ => Ok(shards),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_data_directory_is_refused_naming_the_holder() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().join("data");
        let held = DataDirLock::acquire(&dir).expect("first lock");
        assert_eq!(holder_pid(&dir.join(LOCK_FILE)), Some(std::process::id()));
        // flock locks belong to the open file description: a second open in
        // the same process conflicts just as another process would.
        match DataDirLock::acquire(&dir) {
            Err(ServerError::DataDirLocked { holder, .. }) => assert_eq!(holder, Some(std::process::id())),
            other => panic!("expected DataDirLocked, got {other:?}"),
        }
        drop(held);
        DataDirLock::acquire(&dir).expect("the lock is free again once dropped");
    }

    #[test]
    fn nested_directories_are_all_created() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().join("a/b/c");
        create_dir_durably(&dir).expect("create");
        assert!(dir.is_dir());
        create_dir_durably(&dir).expect("creating an existing directory is fine");
    }
}
