//! The disk reads of one queue read, a few started ahead. A queue whose
//! records interleave with many other queues' needs one read per record
//! (`contiguous_run` coalesces only close neighbours); one after another,
//! a start's replay of 5,000 such queues per shard waited 8-9 s on
//! them (docs/PERFORMANCE.md). Results are taken in order: the records, a
//! cut at `bytes_max` and the first error are those of reads one after
//! another, but for retention: a read already started when retention
//! unlinks its segment completes on the open file, where a read started
//! after it finds no segment (`OffsetTruncated`).

use super::index::Slot;
use super::segment::Segment;
use super::LogError;
use bytes::Bytes;
use std::collections::VecDeque;
use std::rc::Rc;

/// Reads in flight, the awaited one included, at most.
pub(super) const READS_IN_FLIGHT_MAX: usize = 16;

/// Another read starts only while less than this is in flight (the first
/// always starts); a read of adjacent records is up to 1 MiB, so about
/// 2 MiB can be in flight for one reader.
pub(super) const READ_AHEAD_BYTES_MAX: usize = 1024 * 1024;

/// The bytes of adjacent records and how many records they cover; `None`
/// when no segment holds the first one.
pub(super) type RunBytes = Option<(Bytes, usize)>;

/// One run's read, started: how many records it covers, and its bytes.
pub(super) struct RunRead {
    covers: usize,
    source: Source,
}

enum Source {
    /// Found in memory (the recent buffers), or in no segment.
    Ready(Option<Bytes>),
    /// An O_DIRECT read of `length` bytes of a segment, in flight in a task
    /// of its own.
    Reading { task: glommio::Task<Result<Bytes, LogError>>, length: usize },
}

impl RunRead {
    /// A run whose bytes are at hand (`None`: no segment holds it).
    pub fn ready(bytes: Option<Bytes>, covers: usize) -> Self {
        Self { covers, source: Source::Ready(bytes) }
    }

    /// Starts the read of `length` bytes at `first` in `segment`, covering
    /// `covers` records.
    pub fn start<F: super::backend::StorageFile>(
        segment: Rc<Segment<F>>,
        first: u64,
        length: usize,
        covers: usize,
    ) -> Self {
        // `spawn_local` runs the task up to its first await: the read is
        // submitted before this returns.
        let task = glommio::spawn_local(async move {
            let bytes = segment
                .file
                .read_at(first - segment.start, length)
                .await
                .map_err(|error| LogError::io("read", &segment.path, first, error))?;
            if bytes.len() < length {
                return Err(LogError::Corrupt {
                    path: segment.path.clone(),
                    position: first,
                    detail: format!("read {} of {length} bytes: the segment ends early", bytes.len()),
                });
            }
            Ok(Bytes::from(bytes))
        });
        Self { covers, source: Source::Reading { task, length } }
    }

    fn bytes_in_flight(&self) -> usize {
        match self.source {
            Source::Ready(_) => 0,
            Source::Reading { length, .. } => length,
        }
    }

    pub async fn finish(self) -> Result<RunBytes, LogError> {
        let bytes = match self.source {
            Source::Ready(bytes) => bytes,
            Source::Reading { task, .. } => Some(task.await?),
        };
        Ok(bytes.map(|bytes| (bytes, self.covers)))
    }
}

/// The reads of a list of slots, in order, started ahead of the one awaited.
#[derive(Default)]
pub(super) struct ReadAhead {
    /// Started runs: the index of their first slot, and the read.
    started: VecDeque<(usize, RunRead)>,
    /// The first slot no started run covers.
    planned: usize,
}

impl ReadAhead {
    /// The read of the run starting at slot `index`, starting it and the
    /// next ones first with `start(slots from its first)`. Each run starts where the one before it ends, so
    /// the first started run is the one asked for; were it not (a caller
    /// that skipped slots), the reads started are dropped and started
    /// again from `index`.
    pub async fn take(
        &mut self,
        slots: &[Slot],
        index: usize,
        mut start: impl FnMut(&[Slot]) -> RunRead,
    ) -> Result<RunBytes, LogError> {
        if self.started.front().map(|(first, _)| *first) != Some(index) {
            self.started.clear();
            self.planned = index;
        }
        let mut in_flight: usize = self.started.iter().map(|(_, read)| read.bytes_in_flight()).sum();
        while self.planned < slots.len()
            && (self.started.is_empty()
                || (self.started.len() < READS_IN_FLIGHT_MAX && in_flight < READ_AHEAD_BYTES_MAX))
        {
            let read = start(&slots[self.planned..]);
            debug_assert!(read.covers >= 1);
            in_flight += read.bytes_in_flight();
            let next = self.planned + read.covers;
            self.started.push_back((self.planned, read));
            self.planned = next;
        }
        let (first, read) = self.started.pop_front().expect("a run starts at every slot index below the end");
        debug_assert_eq!(first, index);
        read.finish().await
    }
}
