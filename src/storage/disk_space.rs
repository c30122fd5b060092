//! How much room the filesystem under a path has left: the disk guard
//! refuses produce by it (`server::disk_guard`), and a new segment is not
//! attempted without room for it (`backend::dma`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How full the filesystem holding a path is for this process: as `df`
/// counts it (blocks reserved for root are not available) for an ordinary
/// user such as the packaged unit's `ringmq`; a broker running as root can
/// write into the reserve, so for it they count as available.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FilesystemUsage {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_percent: f64,
}

pub fn filesystem_usage(path: &Path) -> io::Result<FilesystemUsage> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a NUL-terminated string alive for the call and
    // `stat` points at writable memory of the struct's size.
    let status = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    // The fields are u64 on the 64-bit Linux targets glommio runs on.
    let block = stat.f_frsize;
    let total = stat.f_blocks * block;
    let used = stat.f_blocks.saturating_sub(stat.f_bfree) * block;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let available = if root { stat.f_bfree } else { stat.f_bavail } * block;
    let usable = used + available;
    let used_percent = if usable == 0 { 100.0 } else { used as f64 * 100.0 / usable as f64 };
    Ok(FilesystemUsage { total_bytes: total, available_bytes: available, used_percent })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_of_a_real_filesystem_is_a_percentage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let usage = filesystem_usage(dir.path()).expect("statvfs");
        assert!((0.0..=100.0).contains(&usage.used_percent), "{usage:?}");
        assert!(usage.total_bytes >= usage.available_bytes, "{usage:?}");
    }
}
