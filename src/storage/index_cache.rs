//! The shard's index-page cache: pages of the queues' index files, decoded,
//! least recently used first out, bounded in bytes by
//! `LogConfig::index_cache_bytes`. A page is `INDEX_PAGE_ENTRIES` offsets
//! of one queue (fewer at the queue's ends); its entries passed their CRCs
//! when it was read.
//!
//! Pages come from reads that miss (`PageLoad`) and from the checkpointer:
//! entries it writes extend a cached page, or start the next page of a queue
//! whose previous page is cached (a reader follows that queue), so a reader
//! close behind the head does not read back what was just written.

use super::backend::StorageFile;
use super::index::{IndexEntry, IndexHandle, INDEX_PAGE_ENTRIES};
use super::LogError;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::rc::Rc;

/// Estimated bytes of the two maps' bookkeeping per page.
const PAGE_BOOKKEEPING_BYTES: usize = 64;

/// (queue id, page number): page `n` holds offsets `n * INDEX_PAGE_ENTRIES..`.
pub type PageKey = (u32, u64);

pub fn page_key(queue_id: u32, offset: u64) -> PageKey {
    (queue_id, offset / INDEX_PAGE_ENTRIES)
}

/// Consecutive entries of one page, from `first_offset`.
pub struct IndexPage {
    first_offset: u64,
    entries: Vec<IndexEntry>,
}

impl IndexPage {
    fn new(first_offset: u64, entries: &[IndexEntry]) -> Self {
        let mut kept = Vec::with_capacity(INDEX_PAGE_ENTRIES as usize);
        kept.extend_from_slice(entries);
        Self { first_offset, entries: kept }
    }

    pub fn end_offset(&self) -> u64 {
        self.first_offset + self.entries.len() as u64
    }

    pub fn get(&self, offset: u64) -> Option<&IndexEntry> {
        let index = offset.checked_sub(self.first_offset)?;
        self.entries.get(usize::try_from(index).ok()?)
    }
}

struct CachedPage {
    page: IndexPage,
    last_use: u64,
}

/// Hits and misses since the log opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexCacheStats {
    pub hits: u64,
    pub loads: u64,
    pub evictions: u64,
}

pub struct IndexCache {
    bytes_max: usize,
    pages: HashMap<PageKey, CachedPage>,
    by_use: BTreeMap<u64, PageKey>,
    uses: u64,
    pub stats: IndexCacheStats,
}

impl IndexCache {
    pub fn new(bytes_max: usize) -> Self {
        Self { bytes_max, pages: HashMap::new(), by_use: BTreeMap::new(), uses: 0, stats: IndexCacheStats::default() }
    }

    /// What one page costs in memory: its entries (allocated for a whole
    /// page) and its place in both maps.
    pub const fn page_cost_bytes() -> usize {
        INDEX_PAGE_ENTRIES as usize * std::mem::size_of::<IndexEntry>()
            + std::mem::size_of::<(PageKey, CachedPage)>()
            + std::mem::size_of::<(u64, PageKey)>()
            + PAGE_BOOKKEEPING_BYTES
    }

    pub fn resident_bytes(&self) -> usize {
        self.pages.len() * Self::page_cost_bytes()
    }

    pub fn page_count(&self) -> usize {
        self.pages.len()
    }

    /// The page `key`, if cached and holding `offset`; counts as a use.
    pub fn get(&mut self, key: PageKey, offset: u64) -> Option<&IndexPage> {
        self.uses += 1;
        let uses = self.uses;
        let cached = self.pages.get_mut(&key).filter(|cached| cached.page.get(offset).is_some())?;
        self.by_use.remove(&cached.last_use);
        self.by_use.insert(uses, key);
        cached.last_use = uses;
        self.stats.hits += 1;
        Some(&cached.page)
    }

    /// Caches `page` as `key` (replacing what was there) and evicts the
    /// least recently used pages past the bound; the new page stays.
    pub fn insert(&mut self, key: PageKey, page: IndexPage) {
        self.uses += 1;
        if let Some(replaced) = self.pages.insert(key, CachedPage { page, last_use: self.uses }) {
            self.by_use.remove(&replaced.last_use);
        }
        self.by_use.insert(self.uses, key);
        while self.resident_bytes() > self.bytes_max && self.pages.len() > 1 {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            self.pages.remove(&oldest);
            self.stats.evictions += 1;
        }
    }

    /// Entries `from..` of `queue_id` were just written to its index file.
    pub fn absorb(&mut self, queue_id: u32, from: u64, entries: &[IndexEntry]) {
        let end = from + entries.len() as u64;
        let mut offset = from;
        while offset < end {
            let key = page_key(queue_id, offset);
            let page_end = (key.1 + 1) * INDEX_PAGE_ENTRIES;
            let chunk = &entries[(offset - from) as usize..(page_end.min(end) - from) as usize];
            self.absorb_page(key, offset, chunk);
            offset = page_end.min(end);
        }
    }

    fn absorb_page(&mut self, key: PageKey, offset: u64, entries: &[IndexEntry]) {
        if let Some(cached) = self.pages.get_mut(&key) {
            if cached.page.end_offset() == offset {
                cached.page.entries.extend_from_slice(entries);
                return;
            }
        }
        let followed = key.1.checked_sub(1).is_some_and(|previous| self.pages.contains_key(&(key.0, previous)));
        let starts_page = offset % INDEX_PAGE_ENTRIES == 0;
        if starts_page && followed {
            self.insert(key, IndexPage::new(offset, entries));
        }
    }
}

/// A page a read needs from an index file: offsets `offsets` of one queue.
pub struct PageLoad<F> {
    pub key: PageKey,
    pub offsets: Range<u64>,
    pub handle: Rc<IndexHandle<F>>,
}

impl<F: StorageFile> PageLoad<F> {
    /// Reads the page; a bad CRC fails this read (`LogError::Corrupt`).
    pub async fn read(&self) -> Result<IndexPage, LogError> {
        let entries = self.handle.read_entries(self.offsets.clone()).await.inspect_err(|error| {
            if matches!(error, LogError::Corrupt { .. }) {
                tracing::error!(%error, path = %self.handle.path().display(), "damaged index file: reads of these offsets fail; stop the broker and delete the file to rebuild it from the log");
            }
        })?;
        Ok(IndexPage::new(self.offsets.start, &entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(position: u64) -> IndexEntry {
        IndexEntry { position, size_bytes: 10, tag_hash: 0, store_timestamp_us: 0 }
    }

    fn page(first: u64, count: u64) -> IndexPage {
        let entries: Vec<IndexEntry> = (first..first + count).map(entry).collect();
        IndexPage::new(first, &entries)
    }

    #[test]
    fn the_least_recently_used_page_goes_first_and_the_bound_holds() {
        let mut cache = IndexCache::new(3 * IndexCache::page_cost_bytes());
        for number in 0..3 {
            cache.insert((1, number), page(number * INDEX_PAGE_ENTRIES, 4));
        }
        assert!(cache.get((1, 0), 0).is_some());
        cache.insert((1, 3), page(3 * INDEX_PAGE_ENTRIES, 4));
        assert_eq!(cache.page_count(), 3);
        assert!(cache.get((1, 1), INDEX_PAGE_ENTRIES).is_none(), "page 1 was the least recently used");
        assert!(cache.get((1, 0), 0).is_some());
        assert!(cache.resident_bytes() <= 3 * IndexCache::page_cost_bytes());
    }

    #[test]
    fn a_page_holds_only_its_offsets() {
        let mut cache = IndexCache::new(4 * IndexCache::page_cost_bytes());
        cache.insert((1, 0), page(10, 5));
        assert!(cache.get((1, 0), 9).is_none());
        assert_eq!(cache.get((1, 0), 14).and_then(|page| page.get(14)).map(|entry| entry.position), Some(14));
        assert!(cache.get((1, 0), 15).is_none());
    }

    #[test]
    fn written_entries_extend_cached_pages_and_follow_a_reader() {
        let mut cache = IndexCache::new(8 * IndexCache::page_cost_bytes());
        let entries: Vec<IndexEntry> = (0..3 * INDEX_PAGE_ENTRIES).map(entry).collect();
        cache.absorb(7, 0, &entries[..10]);
        assert_eq!(cache.page_count(), 0, "nobody reads queue 7: nothing cached");
        cache.insert((7, 0), page(0, 10));
        cache.absorb(7, 10, &entries[10..]);
        assert_eq!(cache.page_count(), 3);
        let last = 3 * INDEX_PAGE_ENTRIES - 1;
        assert_eq!(cache.get((7, 2), last).and_then(|page| page.get(last)).map(|entry| entry.position), Some(last));
    }
}
