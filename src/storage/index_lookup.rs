//! Finding index entries: the ones not yet written are in memory (no I/O),
//! older ones are in the shard's page cache or, on a miss, read from the
//! queue's index file one page at a time. Every lookup works in passes over
//! the state that never hold a borrow across an await: a pass takes what
//! memory and the cache hold and names the page it misses; the page is read
//! and cached; the next pass goes on from there.

use super::backend::{Storage, StorageFile};
use super::index::{page_range, IndexEntry, IndexFile, QueueIndex, Slot};
use super::index_cache::{page_key, IndexCache, PageLoad};
use super::log::LogShared;
use super::{LogError, ReadLimits};
use std::collections::BTreeMap;

/// A read's visible slots, gathered over passes.
struct Gathering {
    queue_id: u32,
    requested: u64,
    next: u64,
    count_max: usize,
    bytes_max: usize,
    /// The reader's own limit on the visible position (`ReadLimits::cap`).
    cap: u64,
    bytes: usize,
    full: bool,
    slots: Vec<Slot>,
}

impl Gathering {
    /// Takes `slot` as the next one unless the batch is full.
    fn offer(&mut self, slot: Slot) {
        let bytes = self.bytes + slot.entry.size_bytes as usize;
        if self.slots.len() == self.count_max || (bytes > self.bytes_max && !self.slots.is_empty()) {
            self.full = true;
            return;
        }
        self.bytes = bytes;
        self.slots.push(slot);
        self.next += 1;
    }
}

enum Pass<F> {
    Done { visible_end: u64 },
    Load { load: PageLoad<F>, visible_end: u64 },
}

enum Found<F> {
    Entry(IndexEntry),
    Absent,
    Load(PageLoad<F>),
}

/// The page of `offset` (in `queue`'s index file) to read.
fn page_load<F: StorageFile>(
    files: &BTreeMap<u32, IndexFile<F>>,
    queue_id: u32,
    queue: &QueueIndex,
    offset: u64,
) -> Result<PageLoad<F>, LogError> {
    let Some(file) = files.get(&queue_id) else {
        return Err(LogError::Corrupt {
            path: Default::default(),
            position: offset,
            detail: format!("queue {queue_id} has no index file, yet offset {offset} should be in it"),
        });
    };
    let offsets = page_range(offset, &(queue.base_offset()..queue.file_end()));
    Ok(PageLoad { key: page_key(queue_id, offset), offsets, handle: file.handle() })
}

impl<S: Storage> LogShared<S> {
    /// Up to `limits.count_max` slots of `queue_id` from `offset` below the
    /// visible position (and `limits.cap`), stopping before
    /// `limits.bytes_max` is passed (the first always comes), and the
    /// queue's visible end offset under the same cap.
    pub async fn visible_slots(
        &self,
        queue_id: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<(Vec<Slot>, u64), LogError> {
        let mut gathering = Gathering {
            queue_id,
            requested: offset,
            next: offset,
            count_max: limits.count_max,
            bytes_max: limits.bytes_max,
            cap: limits.cap,
            bytes: 0,
            full: false,
            slots: Vec::new(),
        };
        loop {
            match self.gather(&mut gathering)? {
                Pass::Done { visible_end } => return Ok((gathering.slots, visible_end)),
                // A page that fails to load fails the read that starts in
                // it; a batch that only reaches it ends before it.
                Pass::Load { load, visible_end } => match self.load_page(load).await {
                    Err(_) if !gathering.slots.is_empty() => return Ok((gathering.slots, visible_end)),
                    loaded => loaded?,
                },
            }
        }
    }

    /// The entry of `offset` of `queue_id`, if the index keeps it.
    pub async fn index_entry(&self, queue_id: u32, offset: u64) -> Result<Option<IndexEntry>, LogError> {
        loop {
            match self.find_entry(queue_id, offset)? {
                Found::Entry(entry) => return Ok(Some(entry)),
                Found::Absent => return Ok(None),
                Found::Load(load) => self.load_page(load).await?,
            }
        }
    }

    async fn load_page(&self, load: PageLoad<S::File>) -> Result<(), LogError> {
        let page = load.read().await?;
        let mut cache = self.index_cache.borrow_mut();
        cache.stats.loads += 1;
        cache.insert(load.key, page);
        Ok(())
    }

    fn gather(&self, gathering: &mut Gathering) -> Result<Pass<S::File>, LogError> {
        let visible = self.visible_mark().get().min(gathering.cap);
        let state = self.state.borrow();
        let mut cache = self.index_cache.borrow_mut();
        let queue_id = gathering.queue_id;
        let Some(queue) = state.queues.get(&queue_id) else { return Ok(Pass::Done { visible_end: 0 }) };
        if gathering.next < queue.base_offset() {
            let earliest = queue.base_offset();
            return Err(LogError::OffsetTruncated { queue_id, requested: gathering.requested, earliest });
        }
        let visible_end = queue.visible_end_offset(visible);
        while gathering.next < visible_end && !gathering.full {
            if let Some(slot) = queue.unwritten_slot(gathering.next) {
                gathering.offer(*slot);
                continue;
            }
            if !take_from_page(&mut cache, gathering, visible_end) {
                let load = page_load(&state.index_files, queue_id, queue, gathering.next)?;
                return Ok(Pass::Load { load, visible_end });
            }
        }
        Ok(Pass::Done { visible_end })
    }

    fn find_entry(&self, queue_id: u32, offset: u64) -> Result<Found<S::File>, LogError> {
        let state = self.state.borrow();
        let Some(queue) = state.queues.get(&queue_id) else { return Ok(Found::Absent) };
        if offset < queue.base_offset() || offset >= queue.next_offset() {
            return Ok(Found::Absent);
        }
        if let Some(slot) = queue.unwritten_slot(offset) {
            return Ok(Found::Entry(slot.entry));
        }
        match self.index_cache.borrow_mut().get(page_key(queue_id, offset), offset) {
            Some(page) => Ok(page.get(offset).map_or(Found::Absent, |entry| Found::Entry(*entry))),
            None => Ok(Found::Load(page_load(&state.index_files, queue_id, queue, offset)?)),
        }
    }
}

/// Offers the cached entries from `gathering.next` on, up to the end of
/// their page or `visible_end`; false if the page is not cached.
fn take_from_page(cache: &mut IndexCache, gathering: &mut Gathering, visible_end: u64) -> bool {
    let offset = gathering.next;
    let Some(page) = cache.get(page_key(gathering.queue_id, offset), offset) else { return false };
    let end = page.end_offset().min(visible_end);
    while gathering.next < end && !gathering.full {
        match page.get(gathering.next) {
            Some(entry) => gathering.offer(Slot::from_file(*entry)),
            None => break,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_stops_at_its_count_or_bytes_but_takes_the_first() {
        let slot =
            |size_bytes| Slot::from_file(IndexEntry { position: 0, size_bytes, tag_hash: 0, store_timestamp_us: 0 });
        let mut gathering = Gathering {
            queue_id: 0,
            requested: 0,
            next: 0,
            count_max: 3,
            bytes_max: 100,
            cap: u64::MAX,
            bytes: 0,
            full: false,
            slots: Vec::new(),
        };
        gathering.offer(slot(150));
        assert_eq!((gathering.slots.len(), gathering.full), (1, false), "the first comes past bytes_max");
        gathering.offer(slot(1));
        assert!(gathering.full);
        assert_eq!(gathering.next, 1);
    }
}
