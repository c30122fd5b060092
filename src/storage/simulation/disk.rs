//! The simulated disks and the faults done to them: power cuts that tear
//! the writes in flight, I/O errors while the log runs, and damage to
//! durable bytes behind the log's back (bit flips, zeroed blocks,
//! misdirected blocks).

use super::oracle::{Damage, Placed};
use crate::constants::{BLOCK_SIZE_BYTES, RECORD_HEADER_SIZE_BYTES};
use crate::storage::backend::{FaultPlan, FaultyStorage, MemoryStorage, SectorFate, Storage, StorageFile};
use crate::storage::checkpoint::{Checkpoint, CHECKPOINT_FILE};
use crate::storage::record::{self, Decoded};
use crate::storage::segment::parse_segment_start;
use crate::storage::{LogConfig, SEGMENTS_DIR};
use std::io;
use std::path::{Path, PathBuf};

const SECTOR_BYTES: usize = 512;

/// What the power cut does to writes no fdatasync covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerCut {
    /// Every unsynced write is lost whole.
    LoseUnsynced,
    /// Each unsynced 512-byte sector is lost or written.
    Torn,
    /// Each unsynced sector is lost, written or garbled.
    TornGarbled,
}

/// Damage to durable bytes after the power cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Harm {
    BitFlip,
    ZeroBlock,
    /// A copy of one durable block written over another.
    Misdirect,
}

/// A disk the simulation can cut the power of and damage.
pub trait SimDisk: Storage {
    const NAME: &'static str;
    const POWER_CUTS: &'static [PowerCut];
    const HARMS: &'static [Harm];

    fn fresh(seed: u64) -> Self;
    /// Arms I/O errors for the coming run; describes them.
    fn arm(&self, seed: u64, rng: &mut fastrand::Rng) -> Option<String>;
    fn disarm(&self, seed: u64);
    fn cut_power(&self, cut: PowerCut, rng: &mut fastrand::Rng);
    fn flip_bit(&self, path: &Path, position: u64, bit: u8) -> io::Result<()>;
    fn overwrite(&self, path: &Path, position: u64, bytes: &[u8]) -> io::Result<()>;
}

impl SimDisk for MemoryStorage {
    const NAME: &'static str = "memory";
    const POWER_CUTS: &'static [PowerCut] = &[PowerCut::LoseUnsynced, PowerCut::Torn, PowerCut::TornGarbled];
    const HARMS: &'static [Harm] = &[Harm::BitFlip, Harm::ZeroBlock, Harm::Misdirect];

    fn fresh(_seed: u64) -> Self {
        MemoryStorage::new()
    }

    fn arm(&self, _seed: u64, _rng: &mut fastrand::Rng) -> Option<String> {
        None
    }

    fn disarm(&self, _seed: u64) {}

    fn cut_power(&self, cut: PowerCut, rng: &mut fastrand::Rng) {
        let fates: &[SectorFate] = match cut {
            PowerCut::LoseUnsynced => &[SectorFate::Lost],
            PowerCut::Torn => &[SectorFate::Lost, SectorFate::Written],
            PowerCut::TornGarbled => &[SectorFate::Lost, SectorFate::Written, SectorFate::Garbled],
        };
        self.crash_with(&mut || fates[rng.usize(0..fates.len())]);
    }

    fn flip_bit(&self, path: &Path, position: u64, bit: u8) -> io::Result<()> {
        MemoryStorage::flip_bit(self, path, position, bit)
    }

    fn overwrite(&self, path: &Path, position: u64, bytes: &[u8]) -> io::Result<()> {
        MemoryStorage::overwrite(self, path, position, bytes)
    }
}

impl SimDisk for FaultyStorage {
    const NAME: &'static str = "faulty";
    const POWER_CUTS: &'static [PowerCut] = &[PowerCut::LoseUnsynced, PowerCut::Torn];
    const HARMS: &'static [Harm] = &[Harm::BitFlip];

    fn fresh(seed: u64) -> Self {
        FaultyStorage::new(FaultPlan { seed, ..FaultPlan::default() })
    }

    fn arm(&self, seed: u64, rng: &mut fastrand::Rng) -> Option<String> {
        let from = Some(rng.u64(0..80));
        let plan = match rng.u8(0..4) {
            0 => FaultPlan { seed, write_error_from: from, ..FaultPlan::default() },
            1 => FaultPlan { seed, fdatasync_error_from: from, ..FaultPlan::default() },
            2 => FaultPlan { seed, create_no_space_from: Some(rng.u64(0..3)), ..FaultPlan::default() },
            _ => return None,
        };
        let description = format!("{plan:?}");
        self.set_plan(plan);
        Some(description)
    }

    fn disarm(&self, seed: u64) {
        self.set_plan(FaultPlan { seed, ..FaultPlan::default() });
    }

    fn cut_power(&self, cut: PowerCut, _rng: &mut fastrand::Rng) {
        match cut {
            PowerCut::LoseUnsynced => self.crash_losing_unsynced(),
            _ => self.crash(),
        }
    }

    fn flip_bit(&self, path: &Path, position: u64, bit: u8) -> io::Result<()> {
        FaultyStorage::flip_bit(self, path, position, bit)
    }

    fn overwrite(&self, _path: &Path, _position: u64, _bytes: &[u8]) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "the faulty disk only flips bits"))
    }
}

/// Segment files by start position.
async fn segments<S: Storage>(disk: &S, config: &LogConfig) -> Vec<(u64, PathBuf)> {
    let names = disk.list(&config.dir.join(SEGMENTS_DIR)).await.unwrap_or_default();
    names.into_iter().filter_map(|path| parse_segment_start(&path).map(|start| (start, path))).collect()
}

/// The segment file holding log position `position`, and the offset in it.
async fn locate<S: Storage>(disk: &S, config: &LogConfig, position: u64) -> Option<(PathBuf, u64)> {
    let all = segments(disk, config).await;
    let (start, path) = all.into_iter().filter(|(start, _)| *start <= position).max_by_key(|(start, _)| *start)?;
    Some((path, position - start))
}

async fn read_bytes<S: Storage>(disk: &S, path: &Path, offset: u64, length: usize) -> io::Result<Vec<u8>> {
    disk.open(path).await?.read_at(offset, length).await
}

/// The largest durable position the disk vouches for: the checkpoint's
/// position, or a batch marker's claim, whichever is larger.
pub async fn vouched_position<S: Storage>(disk: &S, config: &LogConfig) -> u64 {
    let checkpoint = disk.read_file(&config.dir.join(CHECKPOINT_FILE)).await.ok().flatten();
    let mut vouched = checkpoint.and_then(|bytes| Checkpoint::decode(&bytes).ok()).map_or(0, |c| c.position);
    for (start, path) in segments(disk, config).await {
        let Ok(file) = disk.open(&path).await else { continue };
        let size = file.size_bytes().await.unwrap_or(0);
        let bytes = file.read_at(0, size as usize).await.unwrap_or_default();
        for (index, block) in bytes.chunks(BLOCK_SIZE_BYTES).enumerate() {
            let header = &block[..RECORD_HEADER_SIZE_BYTES.min(block.len())];
            let position = start + (index * BLOCK_SIZE_BYTES) as u64;
            // A copy of a marker at another place (a misdirected block
            // below a truncation) vouches for nothing there.
            if let Decoded::Valid(header) = record::decode(header) {
                if header.misplaced_at(position).is_none() {
                    vouched = vouched.max(header.batch_durable_position().unwrap_or(0));
                }
            }
        }
    }
    vouched
}

/// Harms one durable record (and what shares its block); returns what
/// changed, or `None` when there was nothing durable to harm.
pub async fn harm<D: SimDisk>(
    disk: &D,
    config: &LogConfig,
    durable: &[(u32, u64, Placed)],
    harm: Harm,
    rng: &mut fastrand::Rng,
) -> io::Result<Option<Damage>> {
    if durable.is_empty() {
        return Ok(None);
    }
    let (_, _, target) = durable[rng.usize(0..durable.len())];
    let extent = (RECORD_HEADER_SIZE_BYTES + target.length) as u64;
    let position = target.position + rng.u64(0..extent);
    let Some((path, offset)) = locate(disk, config, position).await else { return Ok(None) };
    match harm {
        Harm::BitFlip => {
            disk.flip_bit(&path, offset, rng.u8(0..8))?;
            Ok(Some(Damage { from: position, to: position + 1, zeros: false }))
        }
        Harm::ZeroBlock => {
            let replacement = vec![0; BLOCK_SIZE_BYTES];
            replace_block(disk, &path, position, offset, &replacement).await
        }
        Harm::Misdirect => {
            let (_, _, source) = durable[rng.usize(0..durable.len())];
            let Some((source_path, source_offset)) = locate(disk, config, source.position).await else {
                return Ok(None);
            };
            let source_block = block_start(source_offset);
            let replacement = read_bytes(disk, &source_path, source_block, BLOCK_SIZE_BYTES).await?;
            replace_block(disk, &path, position, offset, &replacement).await
        }
    }
}

fn block_start(offset: u64) -> u64 {
    offset / BLOCK_SIZE_BYTES as u64 * BLOCK_SIZE_BYTES as u64
}

/// Writes `replacement` over the block holding `offset` of `path` (log
/// position `position`); the damage is the range of bytes that changed.
async fn replace_block<D: SimDisk>(
    disk: &D,
    path: &Path,
    position: u64,
    offset: u64,
    replacement: &[u8],
) -> io::Result<Option<Damage>> {
    let block = block_start(offset);
    let before = read_bytes(disk, path, block, BLOCK_SIZE_BYTES).await?;
    if before.len() != replacement.len() {
        return Ok(None);
    }
    disk.overwrite(path, block, replacement)?;
    let changed = |(index, (old, new)): (usize, (&u8, &u8))| (old != new).then_some(index as u64);
    let first = before.iter().zip(replacement).enumerate().find_map(changed);
    let last = before.iter().zip(replacement).enumerate().rev().find_map(changed);
    let (Some(first), Some(last)) = (first, last) else { return Ok(None) };
    let block_position = position - (offset - block);
    let zeros = replacement.chunks(SECTOR_BYTES).any(|sector| sector.iter().all(|byte| *byte == 0));
    Ok(Some(Damage { from: block_position + first, to: block_position + last + 1, zeros }))
}
