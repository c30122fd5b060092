//! `ringmq doctor [--data-dir DIR] [--json]`: whether this host can run the
//! broker, one line per check, `ok` or what to do; exits non-zero if any
//! check fails. With `--json`, one object per line: `check`, `ok`, `detail`
//! and, when not ok, `advice`.

use crate::constants::DISK_MAX_USED_PERCENT_DEFAULT;
use crate::storage::disk_space::filesystem_usage;
use serde::Serialize;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// glommio refuses to start an executor below this (`MIN_MEMLOCK_LIMIT` in
/// its io_uring setup).
const MEMLOCK_MIN_BYTES: u64 = 512 * 1024;
/// The unit of O_DIRECT on every disk the broker supports.
const BLOCK_BYTES: usize = 4096;
const PROBE_FILE: &str = "ringmq-doctor-probe";
const PROBE_FILE_BYTES: u64 = 64 * 1024;
const FDATASYNC_SAMPLES: usize = 16;
/// A sync produce waits for at least one fdatasync: past this the disk
/// (or a cache without power-loss protection turned write-through) makes
/// every acknowledgement slow.
const FDATASYNC_P50_SLOW: Duration = Duration::from_millis(20);

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The data directory the broker would use (created if missing).
    #[arg(long, default_value = "ringmq-data")]
    data_dir: PathBuf,
    /// One JSON object per check.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    ok: bool,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    advice: Option<String>,
}

impl Check {
    fn ok(check: &'static str, detail: String) -> Self {
        Self { check, ok: true, detail, advice: None }
    }

    fn failed(check: &'static str, detail: String, advice: impl Into<String>) -> Self {
        Self { check, ok: false, detail, advice: Some(advice.into()) }
    }

    fn line(&self) -> String {
        match &self.advice {
            None => format!("{:<10} ok    {}", self.check, self.detail),
            Some(advice) => format!("{:<10} FAIL  {}: {advice}", self.check, self.detail),
        }
    }
}

pub fn run(args: DoctorArgs) -> Result<ExitCode, String> {
    std::fs::create_dir_all(&args.data_dir).map_err(|error| format!("{}: {error}", args.data_dir.display()))?;
    let checks =
        [io_uring(), memlock(), o_direct(&args.data_dir), fdatasync(&args.data_dir), free_space(&args.data_dir)];
    // The probe file outlives a failed write; nothing else of ours is there.
    let _ = std::fs::remove_file(args.data_dir.join(PROBE_FILE));
    for check in &checks {
        if args.json {
            println!("{}", serde_json::to_string(check).map_err(|error| error.to_string())?);
        } else {
            println!("{}", check.line());
        }
    }
    Ok(if checks.iter().all(|check| check.ok) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The broker's own way in: a glommio executor (an io_uring ring) that
/// runs a timer through the ring.
fn io_uring() -> Check {
    let started = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("ringmq-doctor")
        .spawn(|| async { glommio::timer::sleep(Duration::from_millis(1)).await })
        .map_err(|error| error.to_string())
        .and_then(|handle| handle.join().map_err(|error| error.to_string()));
    match started {
        Ok(()) => Check::ok("io_uring", "a glommio executor started and ran a timer through io_uring".into()),
        Err(error) => Check::failed(
            "io_uring",
            format!("cannot start a glommio executor: {error}"),
            "run on Linux 5.8 or later with io_uring enabled (sysctl kernel.io_uring_disabled=0, \
             no seccomp profile blocking io_uring_setup) and a memlock limit of at least 512 KiB",
        ),
    }
}

fn memlock() -> Check {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable rlimit for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Check::failed(
            "memlock",
            format!("getrlimit(RLIMIT_MEMLOCK): {}", std::io::Error::last_os_error()),
            "check the process limits (ulimit -l)",
        );
    }
    let describe = |bytes: u64| {
        if bytes == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{} KiB", bytes / 1024)
        }
    };
    let detail = format!("RLIMIT_MEMLOCK soft {}, hard {}", describe(limit.rlim_cur), describe(limit.rlim_max));
    if limit.rlim_cur >= MEMLOCK_MIN_BYTES {
        Check::ok("memlock", detail)
    } else {
        Check::failed(
            "memlock",
            detail,
            "glommio needs at least 512 KiB of locked memory: LimitMEMLOCK=infinity in the systemd unit \
             (deploy/ringmq.service has it), or memlock in /etc/security/limits.conf, or ulimit -l",
        )
    }
}

/// A 4 KiB block aligned to 4 KiB, as O_DIRECT requires, without unsafe
/// allocation: the aligned window of a buffer twice as large.
fn aligned_block(fill: u8) -> (Vec<u8>, usize) {
    let buffer = vec![fill; 2 * BLOCK_BYTES];
    let start = buffer.as_ptr().align_offset(BLOCK_BYTES);
    (buffer, start)
}

fn open_direct(dir: &Path) -> std::io::Result<std::fs::File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(dir.join(PROBE_FILE))?;
    file.set_len(PROBE_FILE_BYTES)?;
    Ok(file)
}

fn o_direct(dir: &Path) -> Check {
    let written = open_direct(dir).and_then(|file| {
        let (buffer, start) = aligned_block(0xA5);
        file.write_all_at(&buffer[start..start + BLOCK_BYTES], 0)
    });
    match written {
        Ok(()) => Check::ok("o_direct", format!("wrote 4 KiB with O_DIRECT in {}", dir.display())),
        Err(error) => Check::failed(
            "o_direct",
            format!("O_DIRECT write in {}: {error}", dir.display()),
            "put the data directory on a local filesystem that supports O_DIRECT (ext4, xfs), not tmpfs or overlayfs",
        ),
    }
}

/// What each sync produce waits for: a 4 KiB O_DIRECT overwrite and its
/// fdatasync, as the commit log's flusher does.
fn fdatasync(dir: &Path) -> Check {
    let measured = open_direct(dir).and_then(|file| {
        // Written and synced before measuring, as the log preallocates and
        // zero-fills its segments: the first write into a hole also commits
        // the filesystem's extent change and measures that instead.
        for block in 0..PROBE_FILE_BYTES / BLOCK_BYTES as u64 {
            let (buffer, start) = aligned_block(0);
            file.write_all_at(&buffer[start..start + BLOCK_BYTES], block * BLOCK_BYTES as u64)?;
        }
        file.sync_all()?;
        let mut samples = Vec::with_capacity(FDATASYNC_SAMPLES);
        for sample in 0..FDATASYNC_SAMPLES {
            let (buffer, start) = aligned_block(sample as u8);
            let position = (sample * BLOCK_BYTES) as u64 % PROBE_FILE_BYTES;
            let started = Instant::now();
            file.write_all_at(&buffer[start..start + BLOCK_BYTES], position)?;
            file.sync_data()?;
            samples.push(started.elapsed());
        }
        samples.sort();
        Ok(samples)
    });
    let samples = match measured {
        Ok(samples) => samples,
        Err(error) => {
            return Check::failed(
                "fdatasync",
                format!("4 KiB O_DIRECT write + fdatasync in {}: {error}", dir.display()),
                "put the data directory on a local filesystem that supports O_DIRECT and fdatasync (ext4, xfs)",
            )
        }
    };
    let p50 = samples[samples.len() / 2];
    let max = samples[samples.len() - 1];
    let detail = format!("p50 {} us, max {} us over {FDATASYNC_SAMPLES} samples", p50.as_micros(), max.as_micros());
    if p50 <= FDATASYNC_P50_SLOW {
        Check::ok("fdatasync", detail)
    } else {
        Check::failed(
            "fdatasync",
            detail,
            format!(
                "every sync produce waits for one fdatasync: above {} ms, use a faster disk (NVMe with power-loss \
                 protection) or flush = \"async\" if losing the last flush interval on a crash is acceptable",
                FDATASYNC_P50_SLOW.as_millis()
            ),
        )
    }
}

fn free_space(dir: &Path) -> Check {
    match filesystem_usage(dir) {
        Ok(usage) => {
            let detail = format!(
                "{:.1}% used, {} MiB available of {} MiB",
                usage.used_percent,
                usage.available_bytes >> 20,
                usage.total_bytes >> 20
            );
            if usage.used_percent <= f64::from(DISK_MAX_USED_PERCENT_DEFAULT) {
                Check::ok("disk_space", detail)
            } else {
                Check::failed(
                    "disk_space",
                    detail,
                    format!(
                        "above {DISK_MAX_USED_PERCENT_DEFAULT}% used the broker refuses produce \
                         (disk_max_used_percent): free space, or set retention_hours / retention_bytes"
                    ),
                )
            }
        }
        Err(error) => Check::failed(
            "disk_space",
            format!("statvfs {}: {error}", dir.display()),
            "check that the data directory exists and is readable",
        ),
    }
}
