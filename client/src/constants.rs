//! Every limit of the broker, in one place. Where two limits must agree, a
//! `const` assertion says so and the build fails if they drift apart.
//!
//! A `_DEFAULT` is the default of a setting an operator may change
//! (`ringmq serve --foo` / config key `foo`); the others are fixed. Constants
//! that only tune one algorithm inside (a batch size, a poll interval) and
//! are never met as a limit stay beside their code.

use std::time::Duration;

// ===== Log records and segments =====

/// O_DIRECT alignment: every write position and length in a segment is a
/// multiple of this. 4 KiB covers both 512e and 4Kn devices.
pub const BLOCK_SIZE_BYTES: usize = 4096;

/// Largest message flatbuffer the broker accepts (4 MiB body plus room for
/// topic, keys and properties).
pub const MESSAGE_SIZE_BYTES_MAX: usize = 4 * 1024 * 1024 + 64 * 1024;

/// Fixed size of the header that precedes every message in the commit log.
pub const RECORD_HEADER_SIZE_BYTES: usize = 56;

/// Records start on this alignment inside a segment.
pub const RECORD_ALIGNMENT_BYTES: usize = 8;

/// Largest record: header plus the largest message, padded.
pub const RECORD_SIZE_BYTES_MAX: usize = RECORD_HEADER_SIZE_BYTES + MESSAGE_SIZE_BYTES_MAX;

/// Default capacity of one group-commit buffer. One flush writes at most the
/// buffers that filled while the previous flush was in flight.
pub const GROUP_COMMIT_BUFFER_BYTES_DEFAULT: usize = 8 * 1024 * 1024;

/// Default segment size (1 GiB, as RocketMQ's commit log).
pub const SEGMENT_SIZE_BYTES_DEFAULT: u64 = 1024 * 1024 * 1024;

/// Smallest segment size a configuration may ask for (tests use small ones;
/// a record larger than the segment is refused at append).
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 64 * 1024;

/// The largest write the log issues beside its own durable writes: an
/// index file's share of a checkpoint, a piece of a large metadata file.
/// A device finishes the writes queued before a flush first, so one large
/// write holds the log's durable writes behind it (docs/PERFORMANCE.md:
/// 10-20 ms per checkpoint for 3.2 MB of index entries at once, 100-170 ms
/// for a 50 MB producer snapshot).
pub const BACKGROUND_WRITE_PIECE_BYTES: usize = 256 * 1024;
const _: () = assert!(BACKGROUND_WRITE_PIECE_BYTES % BLOCK_SIZE_BYTES == 0);

/// Zero-fill of a new segment is written in chunks of this size.
pub const SEGMENT_ZERO_FILL_CHUNK_BYTES: usize = 1024 * 1024;

/// Background zero-fill of the next segment: fast enough to be ready long
/// before the active segment's second half fills at any rate this disk
/// sustains, slow enough not to stall the log's fdatasyncs behind it.
pub const ZERO_FILL_BYTES_PER_SECOND_DEFAULT: u64 = 512 * 1024 * 1024;

/// Bytes of written buffers kept in memory for fetches of recent records.
pub const RECENT_BUFFERS_BYTES_DEFAULT: usize = 64 * 1024 * 1024;

/// Upper bound of a flush recorded in the latency histogram (60 s in us).
pub const FLUSH_LATENCY_US_MAX: u64 = 60_000_000;

/// Flatbuffer verifier limits for an incoming message.
pub const VERIFIER_DEPTH_MAX: usize = 16;
pub const VERIFIER_TABLES_MAX: usize = 4096;

const _: () = assert!(GROUP_COMMIT_BUFFER_BYTES_DEFAULT >= RECORD_SIZE_BYTES_MAX + 2 * BLOCK_SIZE_BYTES);
const _: () = assert!(RECORD_HEADER_SIZE_BYTES % RECORD_ALIGNMENT_BYTES == 0);
const _: () = assert!(BLOCK_SIZE_BYTES % RECORD_ALIGNMENT_BYTES == 0);
const _: () = assert!(SEGMENT_ZERO_FILL_CHUNK_BYTES % BLOCK_SIZE_BYTES == 0);
const _: () = assert!(SEGMENT_SIZE_BYTES_MIN % BLOCK_SIZE_BYTES as u64 == 0);

// ===== Frames and requests =====

/// Largest frame body the broker reads: the largest message plus room for
/// the request around it. A batch must fit too.
pub const FRAME_BODY_BYTES_MAX: usize = MESSAGE_SIZE_BYTES_MAX + 64 * 1024;

/// Messages one produce request may carry: each is a table of the request,
/// and the request verifier counts tables (`VERIFIER_TABLES_MAX`).
pub const PRODUCE_MESSAGES_MAX: usize = 4000;
/// What a message adds to a produce request beyond its body, key and tag
/// (its table, vectors, alignment), for clients sizing a batch.
pub const PRODUCE_MESSAGE_OVERHEAD_BYTES: usize = 256;

const _: () = assert!(PRODUCE_MESSAGES_MAX + 8 <= VERIFIER_TABLES_MAX);

// ===== Names and ids =====

/// Largest number of queues a topic may have.
pub const TOPIC_QUEUES_MAX: u32 = 1024;

/// Longest topic or group name (consumer or producer group), in bytes.
pub const NAME_BYTES_MAX: usize = 249;

/// Longest topic name a request may name: a group's internal topics
/// (`%RETRY%group`, `%DLQ%group`) add their prefix to a group name.
pub const TOPIC_NAME_BYTES_MAX: usize = NAME_BYTES_MAX + 16;

/// Longest id a client chooses and the broker stores or echoes (member,
/// instance and transaction ids), in bytes.
pub const CLIENT_ID_BYTES_MAX: usize = 255;

/// Longest tag a new message may carry: consumers filter by it, and
/// RocketMQ keeps tags short.
pub const MESSAGE_TAG_BYTES_MAX: usize = 255;
/// Keys a new message may carry, and the longest: they are for lookup.
pub const MESSAGE_KEYS_MAX: usize = 64;
pub const MESSAGE_KEY_BYTES_MAX: usize = 1024;
/// Properties a new message may carry, and the longest property name (the
/// values are payload, bounded by the message size only).
pub const MESSAGE_PROPERTIES_MAX: usize = 256;
pub const MESSAGE_PROPERTY_NAME_BYTES_MAX: usize = 255;

/// Longest long poll a fetch may ask for.
pub const FETCH_WAIT_MS_MAX: u32 = 30_000;

const _: () = assert!(FRAME_BODY_BYTES_MAX > MESSAGE_SIZE_BYTES_MAX);

// ===== Start and stop =====

/// How long a starting broker waits for the data directory's `LOCK` (a
/// predecessor killed a moment ago may still hold it) before it gives up.
pub const DATA_DIR_LOCK_WAIT_MS: u64 = 2_000;

/// How long a starting broker retries binding a port still in use (a
/// predecessor's sockets linger while its io_uring is torn down) before it
/// gives up.
pub const LISTEN_PORT_WAIT_MS: u64 = 10_000;

/// Connections the kernel queues for a shard's listener before it accepts
/// them (as glommio's own `bind` asks for).
pub const LISTEN_BACKLOG: i32 = 1024;

/// Pause between two attempts at the data directory lock or a port.
pub const STARTUP_RETRY_PAUSE_MS: u64 = 100;

// ===== Checkpoints and the index =====

/// Default interval between two checkpoints (index files and positions).
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 2_000;

/// An index-cache page: this many bytes of an index file (32-byte entries),
/// read with one I/O and kept decoded. 16 KiB is 512 entries: a fetch of a
/// few hundred records costs one read, and a small cache still holds many
/// queues' pages.
pub const INDEX_PAGE_BYTES: usize = 16 * 1024;

/// Default bound of a shard's index-page cache.
pub const INDEX_CACHE_BYTES_DEFAULT: usize = 64 * 1024 * 1024;

/// Smallest index-page cache a configuration may ask for: two pages.
pub const INDEX_CACHE_BYTES_MIN: usize = 2 * INDEX_PAGE_BYTES;

/// Default number of index entries not yet in the index files past which the
/// checkpointer is woken early (32 bytes each in memory: 8 MiB).
pub const INDEX_UNWRITTEN_ENTRIES_WAKE_DEFAULT: u64 = 256 * 1024;

const _: () = assert!(INDEX_PAGE_BYTES % BLOCK_SIZE_BYTES == 0);

// ===== Connections =====

/// A connection's first read before a frame's length is known, and the
/// smallest step its buffer grows by: an idle connection holds no more.
pub const CONNECTION_READ_FIRST_BYTES: usize = 4 * 1024;

/// Most bytes one read of a connection asks for; its buffer grows by at
/// most this or what it already holds, whichever is more.
pub const CONNECTION_READ_BYTES_MAX: usize = 64 * 1024;

/// Capacity a connection's buffer keeps after a frame; past it (after a
/// large frame) the buffer is given back.
pub const CONNECTION_BUFFER_RETAINED_BYTES: usize = 2 * CONNECTION_READ_BYTES_MAX;

/// Default: a connection with no complete frame and nothing in flight this
/// long is closed.
pub const CONNECTION_IDLE_TIMEOUT_MS_DEFAULT: u64 = 600_000;

/// Default: a write of answers that does not finish this long (the peer
/// does not read) closes the connection.
pub const CONNECTION_WRITE_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Bytes one frame may make a connection's buffer hold: it grows at most by
/// doubling what arrived, so twice the largest frame.
pub const INCOMPLETE_FRAME_BYTES_MAX: usize = 2 * (FRAME_BODY_BYTES_MAX + 64 * 1024);

/// Smallest per-shard budget for bytes held in incomplete frames: one
/// largest frame must always fit.
pub const INCOMPLETE_FRAMES_BYTES_MIN: usize = INCOMPLETE_FRAME_BYTES_MAX;

/// Default per-shard budget for bytes held in incomplete frames (all its
/// connections' read buffers); a connection that would pass it is closed.
pub const INCOMPLETE_FRAMES_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;

const _: () = assert!(CONNECTION_READ_FIRST_BYTES <= CONNECTION_READ_BYTES_MAX);
const _: () = assert!(CONNECTION_BUFFER_RETAINED_BYTES >= CONNECTION_READ_BYTES_MAX + CONNECTION_READ_FIRST_BYTES);
const _: () = assert!(INCOMPLETE_FRAMES_BYTES_MAX_DEFAULT >= INCOMPLETE_FRAMES_BYTES_MIN);

/// Default: connections one shard accepts at once; more are refused at
/// accept (`connections_max`).
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;

/// Fewest request-body bytes a connection may have in flight (the budget
/// counts whole KiB).
pub const IN_FLIGHT_BYTES_MIN: usize = 1024;

/// Default: requests one connection may have in flight (`in_flight_max`).
pub const IN_FLIGHT_MAX_DEFAULT: usize = 1024;

/// Default: request-body bytes one connection may have in flight
/// (`in_flight_bytes_max`).
pub const IN_FLIGHT_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;

const _: () = assert!(IN_FLIGHT_BYTES_MAX_DEFAULT >= IN_FLIGHT_BYTES_MIN);

/// How long a stopping shard waits for its requests in flight before it
/// flushes and exits anyway.
pub const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(10);

// ===== Fetch =====

/// Records a fetch returns at most: bounds the per-record vectors of the
/// answer (offsets, reconsume times, lost offsets).
pub const FETCH_COUNT_MAX: u32 = 10_000;

/// Tags a fetch may filter by: the filter is a linear scan per record.
pub const FETCH_TAGS_MAX: usize = 64;

/// Record bytes one fetch answer carries at most, whatever the request asks
/// (one record always goes, however large): room is left for the answer's
/// per-record vectors (offsets, lost offsets, reconsume times: 20 bytes a
/// record) and its table.
pub const FETCH_BYTES_MAX: usize = FRAME_BODY_BYTES_MAX - 64 * 1024 - 20 * FETCH_COUNT_MAX as usize;

const _: () = assert!(FETCH_BYTES_MAX + 20 * FETCH_COUNT_MAX as usize + 64 * 1024 <= FRAME_BODY_BYTES_MAX);
// A fetch of one largest record fits a frame.
const _: () = assert!(RECORD_SIZE_BYTES_MAX + 1024 <= FRAME_BODY_BYTES_MAX);

// ===== Topics =====

/// Default (`topics_max`): topics one broker holds, its groups' `%RETRY%`
/// and `%DLQ%` topics included. Creating one rewrites the whole topic table.
pub const TOPICS_MAX_DEFAULT: usize = 10_000;
/// Highest `topics_max`: queue `q` of topic `t` is log queue id
/// `t * TOPIC_QUEUES_MAX + q`, a `u32`.
pub const TOPICS_MAX_LIMIT: usize = 1_000_000;

const _: () = assert!((TOPICS_MAX_LIMIT as u64 + 1) * (TOPIC_QUEUES_MAX as u64) < u32::MAX as u64);
const _: () = assert!(TOPICS_MAX_DEFAULT <= TOPICS_MAX_LIMIT);

// ===== Consumer groups =====

/// Session timeout of a member that names none.
pub const SESSION_TIMEOUT_MS_DEFAULT: u32 = 10_000;
/// Shortest session timeout: below it heartbeats (a third of it) would
/// flood the coordinator.
pub const SESSION_TIMEOUT_MS_MIN: u32 = 300;
/// Longest session timeout: a dead member holds its queues at most this long.
pub const SESSION_TIMEOUT_MS_MAX: u32 = 300_000;

/// Members one group (on one topic) may have: each is a line of every
/// fence the coordinator announces to every shard.
pub const GROUP_MEMBERS_MAX: usize = 1024;

/// Default (`groups_max`): groups (on a topic each) one coordinator shard
/// holds. Each one's fence lives on every shard, one owner per queue.
pub const GROUPS_MAX_DEFAULT: usize = 10_000;

const _: () = assert!(SESSION_TIMEOUT_MS_MIN <= SESSION_TIMEOUT_MS_DEFAULT);
const _: () = assert!(SESSION_TIMEOUT_MS_DEFAULT <= SESSION_TIMEOUT_MS_MAX);

// ===== Answers that list, and their pages (`protocol::page`) =====

/// Bytes (estimated) one listing answer carries at most: metadata, groups,
/// a group's queues, transactions. What is left goes on the next page
/// (`next` / `after`). A quarter of the frame limit, so an estimate that is
/// off by half still fits, and a client's read buffer stays small.
pub const RESPONSE_BYTES_MAX: usize = 1024 * 1024;
/// Tables one listing answer carries at most: the reader's verifier counts
/// them (`VERIFIER_TABLES_MAX`); the rest of the answer (outcome, shard
/// addresses) needs room too.
pub const RESPONSE_TABLES_MAX: usize = VERIFIER_TABLES_MAX / 2;
/// Longest cursor a request may hand back: two names and a separator, or a
/// name and a number.
pub const PAGE_CURSOR_BYTES_MAX: usize = TOPIC_NAME_BYTES_MAX + NAME_BYTES_MAX + 16;
/// Pages a client follows for one list before it gives up on a broker
/// whose list never ends (each page moves the cursor on).
pub const PAGES_FOLLOWED_MAX: usize = 1_000_000;
/// Topics a `GroupOffsetsRequest` may name.
pub const GROUP_OFFSETS_TOPICS_MAX: usize = 64;

/// Shards a broker may run: each is a table of every metadata answer, beside
/// a page of topics.
pub const SHARDS_MAX: u32 = 1024;

const _: () = assert!(RESPONSE_BYTES_MAX * 4 <= FRAME_BODY_BYTES_MAX);
// One entry always fits a page: the largest topic (every queue's shard),
// the largest group (every member with its longest id and all queues).
const _: () = assert!(TOPIC_NAME_BYTES_MAX + 4 * TOPIC_QUEUES_MAX as usize + 128 <= RESPONSE_BYTES_MAX);
const _: () = assert!(
    NAME_BYTES_MAX
        + TOPIC_NAME_BYTES_MAX
        + GROUP_MEMBERS_MAX * (CLIENT_ID_BYTES_MAX + 128)
        + 4 * TOPIC_QUEUES_MAX as usize
        <= RESPONSE_BYTES_MAX
);
const _: () = assert!(GROUP_MEMBERS_MAX < RESPONSE_TABLES_MAX);
const _: () = assert!(SHARDS_MAX as usize + RESPONSE_TABLES_MAX + 8 <= VERIFIER_TABLES_MAX);

// ===== Producers (the producer table, `server::dedup`) =====

/// Stored sends remembered per producer and queue, with their results: at
/// least as many as a client may have in flight (64 by default), so any
/// retry of an unacknowledged send finds its first result. (A retried batch
/// larger than this finds its older messages as duplicates without offsets.)
/// Sends not yet durable are kept beyond it, so a snapshot always knows the
/// first of them.
pub const SEQUENCES_REMEMBERED: usize = 64;
/// Default (`producer_idle_expiry_ms`), Kafka's producer id expiry: a
/// producer idle this long is forgotten.
pub const PRODUCER_IDLE_EXPIRY_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;
/// Default (`producers_max`): producers one shard tracks at most, ~100 bytes
/// for a producer that sent once, ~2.5 KiB per queue for a busy one. Past
/// it a new producer is refused (`TooManyProducers`); the tracked ones go on.
pub const PRODUCERS_MAX_DEFAULT: usize = 100_000;
/// Shortest `producer_idle_expiry_ms`: a producer resends a send for up to
/// its delivery timeout, and a retry after its producer was forgotten would
/// be stored twice. So a producer is never forgotten while a retry of its
/// last send may still come from the client's own resending.
pub const PRODUCER_IDLE_EXPIRY_MS_MIN: u64 = 300_000;

const _: () = assert!(PRODUCER_IDLE_EXPIRY_MS_MIN >= 2 * DELIVERY_TIMEOUT_DEFAULT.as_millis() as u64);
const _: () = assert!(PRODUCER_IDLE_EXPIRY_MS_DEFAULT >= PRODUCER_IDLE_EXPIRY_MS_MIN);

// ===== Clients, and the broker timeouts they wait out =====

/// Kafka's `delivery.timeout.ms`: how long a client's producer resends a
/// message before it reports it failed.
pub const DELIVERY_TIMEOUT_DEFAULT: Duration = Duration::from_secs(120);
/// How long a client's produce request waits for its answer: above the
/// broker's `sync_flush_timeout`, so a slow disk is answered
/// `FLUSH_DISK_TIMEOUT` instead of a client timeout that would make the
/// producer resend.
pub const PRODUCE_REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default (`sync_flush_timeout_ms`): a produce not durable this long is
/// answered `FLUSH_DISK_TIMEOUT`.
pub const SYNC_FLUSH_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default (`flush_interval_ms`, async flush): how often the log fdatasyncs.
pub const FLUSH_INTERVAL_MS_DEFAULT: u64 = 10;
/// Bytes a client's batch of one queue's messages closes at: below the
/// largest frame the broker reads, with room for the request around it.
pub const PRODUCE_BATCH_BYTES_MAX: usize = FRAME_BODY_BYTES_MAX - 64 * 1024;
/// Default of `ringmq message get --scan-max`: messages read looking for an
/// id before giving up.
pub const MESSAGE_SCAN_MAX_DEFAULT: u64 = 1_000_000;

const _: () = assert!(PRODUCE_REQUEST_TIMEOUT_DEFAULT.as_millis() as u64 > SYNC_FLUSH_TIMEOUT_MS_DEFAULT);
const _: () = assert!(PRODUCE_BATCH_BYTES_MAX >= MESSAGE_SIZE_BYTES_MAX);

/// Sends an outbox keeps in flight by default: each retry must find its
/// first result among the broker's remembered sends.
pub const OUTBOX_WINDOW_DEFAULT: usize = 64;

const _: () = assert!(OUTBOX_WINDOW_DEFAULT <= SEQUENCES_REMEMBERED);

// ===== Transactions, delays and retries =====

/// Producer groups one connection may register as a live producer of (for
/// check-backs): a process registers its own few; each is a name the shard
/// keeps while the connection lives.
pub const PRODUCER_GROUPS_PER_CONNECTION_MAX: usize = 64;

/// Default (`transaction_timeout_ms`): a half with no outcome is checked
/// back once this old.
pub const TRANSACTION_TIMEOUT_MS_DEFAULT: u64 = 6_000;
/// Default (`transaction_check_interval_ms`).
pub const TRANSACTION_CHECK_INTERVAL_MS_DEFAULT: u64 = 30_000;
/// Default (`transaction_check_max`): check-backs before the broker rolls a
/// half back itself (RocketMQ's 15).
pub const TRANSACTION_CHECK_MAX_DEFAULT: u32 = 15;
/// How long a settled transaction stays known (for repeated outcomes and
/// `tx list`), and how many settled ones stay known at most.
pub const SETTLED_TRANSACTIONS_KEPT: Duration = Duration::from_secs(3600);
pub const SETTLED_TRANSACTIONS_MAX: usize = 100_000;

/// Default (`delay_max_ms`): how far ahead a delayed message may be due,
/// 40 days.
pub const DELAY_MAX_MS_DEFAULT: u64 = 40 * 24 * 3600 * 1000;
/// Delay levels a configuration may name: a message's delay level is a
/// `ubyte`.
pub const DELAY_LEVELS_MAX: usize = u8::MAX as usize;
/// Delivered timer keys kept to answer a repeated produce or send-back as a
/// duplicate: for an hour, at most this many.
pub const DELIVERED_KEPT: Duration = Duration::from_secs(3600);
pub const DELIVERED_KEPT_MAX: usize = 100_000;

// ===== The key index (`storage::keys`, `ringmq message query`) =====

/// Keys of one message that get key-index entries (the first ones; a
/// message may carry more, found only through these).
pub const KEYS_INDEXED_PER_MESSAGE_MAX: usize = 16;

/// A key file whose segment saw no keyed record is still brought up to the
/// checkpoint once it lags this far: recovery scans at most this much of a
/// segment again to catch the file up.
pub const KEY_FILE_THROUGH_STEP_BYTES: u64 = 64 * 1024 * 1024;

/// Key-file blocks (4 KiB each) one read of a key search takes.
pub const KEY_QUERY_READ_BLOCKS: u64 = 64;

/// Key-file blocks one key search reads at most (256 MiB of key files,
/// about 8 million keyed records); past it the answer says `truncated`.
pub const KEY_QUERY_BLOCKS_MAX: u64 = 65_536;

/// Messages one `QUERY_MESSAGES` answer carries at most.
pub const QUERY_MESSAGES_MAX: u32 = 256;

/// Records' bytes one `QUERY_MESSAGES` answer carries at most (one record
/// always goes, whatever its size: the frame has room for the largest).
pub const QUERY_ANSWER_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Longest key a query may name, in bytes: the longest a message may carry.
pub const KEY_BYTES_MAX: usize = MESSAGE_KEY_BYTES_MAX;

const _: () = assert!(KEYS_INDEXED_PER_MESSAGE_MAX <= MESSAGE_KEYS_MAX);
const _: () = assert!(KEY_QUERY_READ_BLOCKS <= KEY_QUERY_BLOCKS_MAX);
// The client reads answers of up to twice the largest request body.
const _: () = assert!(QUERY_ANSWER_BYTES_MAX + RECORD_SIZE_BYTES_MAX + 64 * 1024 <= FRAME_BODY_BYTES_MAX * 2);

// ===== Disk =====

/// Default (`disk_max_used_percent`): above this share of its filesystem
/// used, a shard refuses produce.
pub const DISK_MAX_USED_PERCENT_DEFAULT: u8 = 90;

// ===== Metrics endpoint (`--metrics-listen`) =====

/// The request line and headers a scrape may send.
pub const METRICS_REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long one scrape connection may take to send its request and read the
/// answer.
pub const METRICS_REQUEST_TIME_MAX: Duration = Duration::from_secs(2);
/// What is read and dropped after an answer, at most.
pub const METRICS_DRAIN_BYTES_MAX: usize = 64 * 1024;
/// Committed-offset series (group, topic, queue) one shard publishes at
/// most, the first in that order: a scrape's size and the copy each shard
/// makes every half second stay bounded however many groups commit.
pub const METRICS_OFFSET_SERIES_MAX: usize = 10_000;

// ===== Replication to a standby (issue 13) =====

/// Log bytes one REPLICATE answer carries at most: the largest record with
/// a batch marker before it and padding after it must fit in one answer (a
/// standby takes only whole records), inside the answers a client reads.
pub const REPLICATE_BYTES_MAX: u32 = (RECORD_SIZE_BYTES_MAX + 2 * BLOCK_SIZE_BYTES) as u32;
/// Longest a REPLICATE with nothing durable to send waits for something.
pub const REPLICATE_WAIT_MS_MAX: u32 = 1_000;

// The client reads answers of up to twice the largest request body.
const _: () = assert!((REPLICATE_BYTES_MAX as usize) + 64 * 1024 <= FRAME_BODY_BYTES_MAX * 2);
