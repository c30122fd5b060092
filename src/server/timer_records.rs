//! The records of the timers (`timers`): what identifies an entry, the
//! entry op record's body, the intent record, and how a delivery names its
//! entry. See `timers` for how they fit together.

use super::offsets::{DELAY_QUEUE_ID, TIMER_QUEUE_ID};
use crate::storage::record::{flags, NO_POSITION};
use crate::storage::{AppendRequest, FarCopy, StoredRecord};

/// What makes two timer entries the same (a resend is answered, not stored
/// twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKey {
    Delayed {
        msg_id: (u64, u64),
    },
    /// A retry or a dead letter of the delivery the consumer got at
    /// `from_position` (the record it fetched, or the op record it was read
    /// through): each delivery is sent back once, and a resent dead letter
    /// is a new delivery.
    SendBack {
        target_queue_id: u32,
        from_position: u64,
    },
    /// The `round`-th resend (from 0) of a dead letter.
    Resend {
        dead_letter_queue_id: u32,
        offset: u64,
        round: u32,
    },
}

/// One pending timer entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerEntry {
    pub key: TimerKey,
    /// Position of the entry's record (its identity in the log).
    pub position: u64,
    /// Where the entry's record ends.
    pub end: u64,
    pub due_ms: u64,
    pub target_queue_id: u32,
    /// The message record the delivery points at.
    pub message_position: u64,
    pub message_size: u32,
    /// The message's tag hash, for the target queue's index.
    pub tag_hash: u32,
    pub reconsume_times: u32,
    /// `DELAYED`, `RETRY` or `DEAD_LETTER`: the delivery record's flag.
    pub delivery_flag: u16,
}

impl TimerEntry {
    /// The lowest log position the entry needs kept.
    pub fn floor(&self) -> u64 {
        self.position.min(self.message_position)
    }
}

/// The body of an entry op record (a send-back, a resend, or any entry
/// rolled forward): when it is due, where it goes, and its key, kept so a
/// rolled entry is still the same entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryBody {
    pub due_ms: u64,
    pub target_queue_id: u32,
    pub delivery_flag: u16,
    pub key: TimerKey,
}

const ENTRY_BODY_VERSION: u8 = 3;
const KEY_DELAYED: u8 = 0;
const KEY_SEND_BACK: u8 = 1;
const KEY_RESEND: u8 = 2;

impl EntryBody {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        out.push(ENTRY_BODY_VERSION);
        out.extend_from_slice(&self.due_ms.to_le_bytes());
        out.extend_from_slice(&self.target_queue_id.to_le_bytes());
        out.extend_from_slice(&self.delivery_flag.to_le_bytes());
        match self.key {
            TimerKey::Delayed { msg_id: (hi, lo) } => {
                out.push(KEY_DELAYED);
                out.extend_from_slice(&hi.to_le_bytes());
                out.extend_from_slice(&lo.to_le_bytes());
            }
            TimerKey::SendBack { target_queue_id, from_position } => {
                out.push(KEY_SEND_BACK);
                out.extend_from_slice(&target_queue_id.to_le_bytes());
                out.extend_from_slice(&from_position.to_le_bytes());
            }
            TimerKey::Resend { dead_letter_queue_id, offset, round } => {
                out.push(KEY_RESEND);
                out.extend_from_slice(&dead_letter_queue_id.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&round.to_le_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Fields(bytes);
        if reader.take::<1>()?[0] != ENTRY_BODY_VERSION {
            return None;
        }
        let due_ms = u64::from_le_bytes(reader.take()?);
        let target_queue_id = u32::from_le_bytes(reader.take()?);
        let delivery_flag = u16::from_le_bytes(reader.take()?);
        let key = match reader.take::<1>()?[0] {
            KEY_DELAYED => {
                TimerKey::Delayed { msg_id: (u64::from_le_bytes(reader.take()?), u64::from_le_bytes(reader.take()?)) }
            }
            KEY_SEND_BACK => TimerKey::SendBack {
                target_queue_id: u32::from_le_bytes(reader.take()?),
                from_position: u64::from_le_bytes(reader.take()?),
            },
            KEY_RESEND => TimerKey::Resend {
                dead_letter_queue_id: u32::from_le_bytes(reader.take()?),
                offset: u64::from_le_bytes(reader.take()?),
                round: u32::from_le_bytes(reader.take()?),
            },
            _ => return None,
        };
        Some(Self { due_ms, target_queue_id, delivery_flag, key })
    }
}

/// The entry op record of `body`, pointing at the message record at
/// `message` (position, size).
pub fn entry_request<'a>(
    body: &'a [u8],
    message: (u64, u32),
    tag_hash: u32,
    reconsume_times: u32,
) -> AppendRequest<'a> {
    AppendRequest {
        queue_id: DELAY_QUEUE_ID,
        flags: flags::RETRY | flags::INTERNAL,
        indexed: true,
        tag_hash,
        reference: Some(message),
        reconsume_times,
        message: body,
        copy_if_far: None,
        key_hashes: &[],
        clock_us: None,
    }
}

/// An intent record's body: the delivery of the entry at `entry_position`
/// into `target_queue_id` is about to be appended at `expected_offset` or
/// later; every intent before `confirmed` has its delivery durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intent {
    pub entry_position: u64,
    pub target_queue_id: u32,
    pub expected_offset: u64,
    pub confirmed: u64,
}

impl Intent {
    pub fn encode(&self) -> [u8; 28] {
        let mut out = [0; 28];
        out[0..8].copy_from_slice(&self.entry_position.to_le_bytes());
        out[8..12].copy_from_slice(&self.target_queue_id.to_le_bytes());
        out[12..20].copy_from_slice(&self.expected_offset.to_le_bytes());
        out[20..28].copy_from_slice(&self.confirmed.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut reader = Fields(bytes);
        Some(Self {
            entry_position: u64::from_le_bytes(reader.take()?),
            target_queue_id: u32::from_le_bytes(reader.take()?),
            expected_offset: u64::from_le_bytes(reader.take()?),
            confirmed: u64::from_le_bytes(reader.take()?),
        })
    }
}

/// The intent record of `intent` (its encoded body).
pub fn intent_request(body: &[u8; 28]) -> AppendRequest<'_> {
    AppendRequest {
        queue_id: TIMER_QUEUE_ID,
        flags: flags::INTERNAL,
        indexed: true,
        message: body,
        ..AppendRequest::default()
    }
}

/// The delivery record of `entry`: indexed in its target queue, pointing at
/// its message, its body the entry's position (`body`); or, when the
/// message lies in an earlier segment than the delivery lands in, a copy of
/// `message` with the entry's position as its back-pointer (`FarCopy`), so
/// retention never leaves a delivery pointing at nothing. Without `message`
/// that case fails with `LogError::FarReference`.
pub fn delivery_request<'a>(entry: &TimerEntry, body: &'a [u8; 8], message: Option<&'a [u8]>) -> AppendRequest<'a> {
    debug_assert_eq!(*body, entry.position.to_le_bytes());
    AppendRequest {
        queue_id: entry.target_queue_id,
        flags: entry.delivery_flag | flags::INTERNAL,
        indexed: true,
        tag_hash: entry.tag_hash,
        reference: Some((entry.message_position, entry.message_size)),
        reconsume_times: entry.reconsume_times,
        message: body,
        copy_if_far: Some(FarCopy { message, flags: entry.delivery_flag, back_pointer: entry.position }),
        key_hashes: &[],
        clock_us: None,
    }
}

struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
}

const DELIVERY_FLAGS: u16 = flags::DELAYED | flags::RETRY | flags::DEAD_LETTER;

/// The entry position a delivery names: a reference's body, or a copy's
/// back-pointer.
pub fn delivered_entry(record: &StoredRecord) -> Option<u64> {
    if let Some(via) = &record.via {
        if via.header.flags & DELIVERY_FLAGS == 0 {
            return None;
        }
        return Some(u64::from_le_bytes(*via.body.first_chunk::<8>()?));
    }
    let header = &record.header;
    let copy = header.flags & DELIVERY_FLAGS != 0 && header.ref_size == 0 && header.ref_position != NO_POSITION;
    copy.then_some(header.ref_position)
}

/// How many times the message of `record` (as a fetch read it) was
/// delivered before: what its retry or dead-letter delivery says, else 0 (a
/// first delivery, a delayed one, a resent dead letter).
pub fn deliveries_before(record: &StoredRecord) -> u32 {
    let counted = flags::RETRY | flags::DEAD_LETTER;
    match &record.via {
        Some(via) if via.header.flags & counted != 0 => via.header.reconsume_times,
        Some(_) => 0,
        None if delivered_entry(record).is_some() && record.header.flags & counted != 0 => {
            record.header.reconsume_times
        }
        None => 0,
    }
}

/// Where the delivery the consumer got at this record is in the log: the op
/// record it was read through, else the record itself.
pub fn delivery_position(record: &StoredRecord) -> u64 {
    record.via.as_ref().map_or(record.position, |via| via.position)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_intents_round_trip() {
        let keys = [
            TimerKey::Delayed { msg_id: (1, 2) },
            TimerKey::SendBack { target_queue_id: 3, from_position: 4 },
            TimerKey::Resend { dead_letter_queue_id: 5, offset: 6, round: 7 },
        ];
        for key in keys {
            let body = EntryBody { due_ms: 123, target_queue_id: 4000, delivery_flag: flags::RETRY, key };
            assert_eq!(EntryBody::decode(&body.encode()), Some(body));
        }
        assert_eq!(EntryBody::decode(&[3, 0, 0]), None);
        let intent = Intent { entry_position: 1, target_queue_id: 2, expected_offset: 3, confirmed: 4 };
        assert_eq!(Intent::decode(&intent.encode()), Some(intent));
        assert_eq!(Intent::decode(&[0; 10]), None);
    }
}
