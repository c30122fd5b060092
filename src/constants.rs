//! Every limit of the broker, in one place. Where two limits must agree, a
//! `const` assertion says so and the build fails if they drift apart.

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

/// Longest long poll a fetch may ask for.
pub const FETCH_WAIT_MS_MAX: u32 = 30_000;

const _: () = assert!(FRAME_BODY_BYTES_MAX > MESSAGE_SIZE_BYTES_MAX);

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

/// Default interval between two checkpoints (index files and positions).
pub const CHECKPOINT_INTERVAL_MS_DEFAULT: u64 = 2_000;

/// Fewest request-body bytes a connection may have in flight (the budget
/// counts whole KiB).
pub const IN_FLIGHT_BYTES_MIN: usize = 1024;

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

/// Longest key a query may name, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;

const _: () = assert!(KEY_QUERY_READ_BLOCKS <= KEY_QUERY_BLOCKS_MAX);
// The client reads answers of up to twice the largest request body.
const _: () = assert!(QUERY_ANSWER_BYTES_MAX + RECORD_SIZE_BYTES_MAX + 64 * 1024 <= FRAME_BODY_BYTES_MAX * 2);
