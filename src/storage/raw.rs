//! The log's durable bytes exactly as they lie in the segment files (batch
//! markers, records, padding), for a standby that keeps a byte-for-byte
//! copy (issue 13). Only what an fdatasync covered is ever handed out: a
//! standby must never hold a byte the primary could still lose.

use super::backend::Storage;
use super::{CommitLog, LogError};

/// Durable log bytes from `position` on, all in one segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawBytes {
    pub position: u64,
    pub bytes: Vec<u8>,
    /// The end they were read up to (the durable end, or for a sync
    /// primary's standby the taken end) when they were read.
    pub durable: u64,
    pub segment_start: u64,
    pub segment_size_bytes: u64,
}

impl<S: Storage> CommitLog<S> {
    /// Up to `max_bytes` of the durable bytes from `position`, never past
    /// the end of the segment holding it (a standby creates its segment
    /// files with the same starts and sizes). No bytes when nothing durable
    /// lies there yet; `PositionTruncated` when retention deleted it.
    pub async fn read_durable_bytes(&self, position: u64, max_bytes: usize) -> Result<RawBytes, LogError> {
        self.read_replicable_bytes(position, max_bytes, false).await
    }

    /// `read_durable_bytes`, or with `taken`, the bytes taken for writing
    /// and not yet durable too (from the recent buffers; the disk holds only
    /// what was written): a sync primary ships a write to its standby while
    /// its own write and fdatasync run, and answers its producer once both
    /// are durable. Such bytes are lost here by a crash before they are;
    /// the primary then starts a new epoch where its log ends, which tells
    /// its standby where to cut (`replication::rejoin`).
    pub async fn read_replicable_bytes(
        &self,
        position: u64,
        max_bytes: usize,
        taken: bool,
    ) -> Result<RawBytes, LogError> {
        let shared = self.shared();
        let end_mark = self.replicable_mark(taken).get();
        let segment = {
            let state = shared.state.borrow();
            if let Some(earliest) = state.segments.keys().next().copied().filter(|earliest| position < *earliest) {
                return Err(LogError::PositionTruncated { requested: position, earliest });
            }
            state.segments.range(..=position).next_back().map(|(_, segment)| segment.clone())
        };
        let Some(segment) = segment.filter(|segment| segment.contains(position)) else {
            // Past every segment: the log has not reached `position` yet.
            return Ok(RawBytes { position, durable: end_mark, ..RawBytes::default() });
        };
        let (segment_start, segment_size_bytes) = (segment.start, segment.size_bytes);
        // A caught-up standby asks for the write just made: still in
        // memory, no need to read it back from the disk.
        let limit = segment.end().min(position.saturating_add(max_bytes as u64));
        let recent = shared.state.borrow().recent.written_from(position, end_mark, limit);
        if let Some(bytes) = recent {
            return Ok(RawBytes { position, bytes, durable: end_mark, segment_start, segment_size_bytes });
        }
        let end = end_mark.min(shared.written.get()).min(limit);
        let bytes = if end > position {
            let length = usize::try_from(end - position).unwrap_or(max_bytes);
            let bytes = segment.read(position - segment.start, length).await?;
            if bytes.len() != length {
                return Err(LogError::Corrupt {
                    path: segment.path.clone(),
                    position,
                    detail: format!("read {} of {length} replicable bytes: the segment file is shorter", bytes.len()),
                });
            }
            bytes
        } else {
            Vec::new()
        };
        Ok(RawBytes { position, bytes, durable: end_mark, segment_start, segment_size_bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::super::backend::DmaStorage;
    use super::super::tests::{config, run};
    use super::super::{AppendRequest, SEGMENTS_DIR};
    use super::*;

    #[test]
    fn the_durable_bytes_are_the_segment_file_up_to_the_durable_end() {
        let temp = tempfile::tempdir().expect("temp dir");
        let config = config(temp.path());
        let segment_size = config.segment_size_bytes;
        run(async move {
            let log = CommitLog::open(DmaStorage, config).await.expect("open");
            // Each append is a write of its own (sync flush): a block each.
            for index in 0..40u32 {
                let message = format!("message {index}").into_bytes();
                log.append(AppendRequest {
                    queue_id: index % 3,
                    indexed: true,
                    message: &message,
                    ..Default::default()
                })
                .await
                .expect("append");
            }
            let durable = log.positions().flushed;
            assert!(durable > 0 && durable < segment_size);
            let mut copied = Vec::new();
            let mut position = 0;
            // Small answers, so that several are needed.
            loop {
                let raw = log.read_durable_bytes(position, 1000).await.expect("read");
                assert_eq!((raw.position, raw.segment_start, raw.segment_size_bytes), (position, 0, segment_size));
                if raw.bytes.is_empty() {
                    break;
                }
                position += raw.bytes.len() as u64;
                copied.extend_from_slice(&raw.bytes);
            }
            assert_eq!(position, durable);
            let file = temp.path().join(SEGMENTS_DIR).join(format!("{:020}.log", 0));
            let on_disk = std::fs::read(file).expect("segment file");
            assert_eq!(&on_disk[..durable as usize], &copied[..]);
            log.close().await.expect("close");
        });
    }
}
