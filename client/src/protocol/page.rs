//! Pages of the answers that list what may grow without bound (topics,
//! groups, a group's queues, transactions): each answer stays under
//! `RESPONSE_BYTES_MAX` (estimated) and `RESPONSE_TABLES_MAX`, and one that
//! leaves entries out carries a cursor (`next`) the client hands back as
//! `after` for the page that follows. Cursors are keys, not positions: an
//! entry added or removed between two pages moves no other entry.

use super::{fb, Failure, GroupSummary, QueueOffsets, TopicLayout, TransactionSummary};
use crate::constants::{PAGE_CURSOR_BYTES_MAX, RESPONSE_BYTES_MAX, RESPONSE_TABLES_MAX};

/// What a flatbuffer table costs beyond its strings and vectors (vtable,
/// offsets, padding), rounded up.
pub const TABLE_OVERHEAD_BYTES: usize = 64;

/// The room left in one answer.
#[derive(Clone, Copy, Debug)]
pub struct PageBudget {
    bytes_left: usize,
    tables_left: usize,
    taken: usize,
}

impl Default for PageBudget {
    fn default() -> Self {
        Self::new(RESPONSE_BYTES_MAX, RESPONSE_TABLES_MAX)
    }
}

impl PageBudget {
    pub fn new(bytes: usize, tables: usize) -> Self {
        Self { bytes_left: bytes, tables_left: tables, taken: 0 }
    }

    /// Takes room for one entry of about `bytes` in `tables` tables; false
    /// when it does not fit. The first entry always fits, so every page
    /// moves the list on (the constants check one largest entry fits).
    pub fn take(&mut self, bytes: usize, tables: usize) -> bool {
        let fits = bytes <= self.bytes_left && tables <= self.tables_left;
        if !fits && self.taken > 0 {
            return false;
        }
        self.bytes_left = self.bytes_left.saturating_sub(bytes);
        self.tables_left = self.tables_left.saturating_sub(tables);
        self.taken += 1;
        true
    }
}

/// About what a string costs in an answer: its bytes, length and NUL.
pub fn string_bytes(text: &str) -> usize {
    text.len() + 8
}

/// An entry of a listing answer: what it costs there, in bytes (about) and
/// tables.
pub trait Listed {
    fn page_cost(&self) -> (usize, usize);
}

impl Listed for TopicLayout {
    fn page_cost(&self) -> (usize, usize) {
        (TABLE_OVERHEAD_BYTES + string_bytes(&self.name) + 8 + 4 * self.queue_shards.len(), 1)
    }
}

impl Listed for GroupSummary {
    fn page_cost(&self) -> (usize, usize) {
        let members: usize = self
            .members
            .iter()
            .map(|(member, queues)| TABLE_OVERHEAD_BYTES + string_bytes(member) + 8 + 4 * queues.len())
            .sum();
        let bytes = TABLE_OVERHEAD_BYTES + string_bytes(&self.group) + string_bytes(&self.topic) + 8 + members;
        (bytes, 1 + self.members.len())
    }
}

impl Listed for QueueOffsets {
    fn page_cost(&self) -> (usize, usize) {
        (TABLE_OVERHEAD_BYTES + string_bytes(&self.topic) + 32, 1)
    }
}

impl Listed for TransactionSummary {
    fn page_cost(&self) -> (usize, usize) {
        let strings = [&self.transaction_id, &self.topic, &self.producer_group];
        (TABLE_OVERHEAD_BYTES + 48 + strings.iter().map(|text| string_bytes(text)).sum::<usize>(), 1)
    }
}

/// The entries of `entries` (in cursor order) that fit one page, and whether
/// some were left out.
pub fn fill_page<T: Listed>(entries: impl IntoIterator<Item = T>) -> (Vec<T>, bool) {
    let mut budget = PageBudget::default();
    let mut page = Vec::new();
    for entry in entries {
        let (bytes, tables) = entry.page_cost();
        if !budget.take(bytes, tables) {
            return (page, true);
        }
        page.push(entry);
    }
    (page, false)
}

fn bad_cursor(what: &str) -> Failure {
    Failure::new(fb::ErrorCode::InvalidRequest, format!("invalid request body: a bad page cursor ({what})"))
}

/// The request's `after`, refused when longer than any cursor the broker
/// hands out.
pub fn cursor_of<'a>(after: Option<flatbuffers::Vector<'a, u8>>) -> Result<Option<&'a [u8]>, Failure> {
    let Some(after) = after.map(|after| after.bytes()).filter(|after| !after.is_empty()) else {
        return Ok(None);
    };
    if after.len() > PAGE_CURSOR_BYTES_MAX {
        return Err(bad_cursor("too long"));
    }
    Ok(Some(after))
}

/// A cursor after a name (a topic of the metadata).
pub fn name_cursor(name: &str) -> Vec<u8> {
    name.as_bytes().to_vec()
}

pub fn read_name_cursor(cursor: &[u8]) -> Result<&str, Failure> {
    std::str::from_utf8(cursor).map_err(|_| bad_cursor("not a name"))
}

/// A cursor after two names (a group and its topic). Names hold no NUL.
pub fn pair_cursor(first: &str, second: &str) -> Vec<u8> {
    [first.as_bytes(), &[0], second.as_bytes()].concat()
}

pub fn read_pair_cursor(cursor: &[u8]) -> Result<(&str, &str), Failure> {
    let at = cursor.iter().position(|byte| *byte == 0).ok_or_else(|| bad_cursor("not two names"))?;
    let first = std::str::from_utf8(&cursor[..at]).map_err(|_| bad_cursor("not a name"))?;
    let second = std::str::from_utf8(&cursor[at + 1..]).map_err(|_| bad_cursor("not a name"))?;
    Ok((first, second))
}

/// A cursor after a name and a number (a topic and its queue; a state rank
/// and a log position).
pub fn keyed_cursor(name: &str, number: u64) -> Vec<u8> {
    [name.as_bytes(), &[0], &number.to_le_bytes()].concat()
}

pub fn read_keyed_cursor(cursor: &[u8]) -> Result<(&str, u64), Failure> {
    let split = cursor.len().checked_sub(9).filter(|at| cursor[*at] == 0).ok_or_else(|| bad_cursor("not a key"))?;
    let name = std::str::from_utf8(&cursor[..split]).map_err(|_| bad_cursor("not a name"))?;
    let mut number = [0; 8];
    number.copy_from_slice(&cursor[split + 1..]);
    Ok((name, u64::from_le_bytes(number)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_entry_always_fits_and_then_the_budget_holds() {
        let mut budget = PageBudget::new(100, 3);
        assert!(budget.take(500, 1), "a page always carries one entry");
        assert!(!budget.take(1, 1), "then nothing past the bytes");
        let mut budget = PageBudget::new(100, 3);
        assert!(budget.take(40, 1));
        assert!(budget.take(40, 2));
        assert!(!budget.take(10, 1), "no table left");
    }

    /// The metadata answer of a broker with the most shards: every page of
    /// its largest topics verifies with the reader's limits and stays under
    /// the byte budget.
    #[test]
    fn metadata_pages_of_the_largest_topics_stay_readable() {
        use crate::constants::{SHARDS_MAX, TOPIC_NAME_BYTES_MAX, TOPIC_QUEUES_MAX};
        use crate::protocol::{metadata_response, verify, ShardEndpoint};
        let shards: Vec<_> =
            (0..SHARDS_MAX).map(|shard| ShardEndpoint { shard, host: "127.0.0.1".into(), port: 9876 }).collect();
        let topics = (0..600).map(|index| TopicLayout {
            name: format!("{index:05}{}", "t".repeat(TOPIC_NAME_BYTES_MAX - 5)),
            queue_shards: vec![1; TOPIC_QUEUES_MAX as usize],
        });
        let (page, more) = fill_page(topics.clone());
        assert!(more && !page.is_empty());
        let body = metadata_response(None, &shards, &page, Some(&name_cursor(&page[page.len() - 1].name)));
        assert!(body.len() <= RESPONSE_BYTES_MAX + 64 * 1024, "{} bytes", body.len());
        assert!(verify::<fb::MetadataResponse>(&body).is_ok());
        let small = (0..10_000).map(|index| TopicLayout { name: format!("t{index}"), queue_shards: vec![0] });
        let (page, more) = fill_page(small);
        assert!(more, "tables bound a page of small topics");
        let body = metadata_response(None, &shards, &page, None);
        assert!(verify::<fb::MetadataResponse>(&body).is_ok(), "{} topics", page.len());
    }

    #[test]
    fn cursors_read_back_what_they_were_made_of() {
        assert_eq!(read_name_cursor(&name_cursor("orders")).expect("a name"), "orders");
        assert_eq!(read_pair_cursor(&pair_cursor("g", "%RETRY%g")).expect("two names"), ("g", "%RETRY%g"));
        assert_eq!(read_keyed_cursor(&keyed_cursor("t", 1 << 40)).expect("a key"), ("t", 1 << 40));
        assert_eq!(read_keyed_cursor(&keyed_cursor("", 7)).expect("a key"), ("", 7));
        assert!(read_pair_cursor(b"no-separator").is_err());
        assert!(read_keyed_cursor(b"short").is_err());
        assert!(read_name_cursor(&[0xff, 0xfe]).is_err());
    }
}
