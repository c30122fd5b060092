//! `Consumer::poll` returns as soon as one queue answers; the long polls of
//! its other queues must not pile up at the broker, one more per poll. A
//! stand-in broker (one shard, a topic of two queues) answers queue 1's
//! fetches at once with a message, and holds queue 0's for their whole
//! wait, counting how many of queue 0's are in flight at once.

use ringmq::client::{Client, Consumer, ConsumerOptions};
use ringmq::constants::RECORD_HEADER_SIZE_BYTES;
use ringmq::protocol::{
    self, decode_frame, encode_frame, fb, verify, Assignment, FetchedRecords, Frame, Kind, ShardEndpoint, TopicLayout,
};
use ringmq::storage::record::{self, RecordHeader};
use ringmq::wire::MessageDraft;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Held {
    now: AtomicUsize,
    most: AtomicUsize,
}

fn answer(writer: &Mutex<TcpStream>, request: &Frame, body: &[u8]) {
    let kind = Kind::from_u16(request.kind).and_then(Kind::response).expect("a request kind");
    let frame = encode_frame(kind as u16, request.request_id, body);
    let _ = writer.lock().expect("writer").write_all(&frame);
}

fn empty_fetch(offset: u64) -> Vec<u8> {
    let fetched = FetchedRecords { next_offset: offset, high_watermark: offset, ..FetchedRecords::default() };
    protocol::fetch_response(None, &fetched)
}

/// A fetch answer holding the one message at `offset` of queue 1, framed as
/// the broker stores it.
fn one_message(offset: u64) -> Vec<u8> {
    let draft = MessageDraft { msg_id: (1, offset), topic: "work", queue: 1, body: b"data", ..Default::default() };
    let message = draft.build();
    let header = RecordHeader {
        length: (RECORD_HEADER_SIZE_BYTES + message.len()) as u32,
        flags: 0,
        queue_id: 1,
        tag_hash: 0,
        queue_offset: offset,
        store_timestamp_us: 1,
        ref_position: record::NO_POSITION,
        ref_size: 0,
        reconsume_times: 0,
    };
    let mut bytes = vec![0; record::padded_size(header.length as usize)];
    record::encode(&mut bytes, &header, &message);
    bytes.truncate(header.length as usize);
    let fetched = FetchedRecords {
        records: &bytes,
        record_count: 1,
        next_offset: offset + 1,
        high_watermark: offset + 1,
        ..FetchedRecords::default()
    };
    protocol::fetch_response(None, &fetched)
}

fn serve_connection(stream: TcpStream, port: u16, held: Arc<Held>) {
    let writer = Arc::new(Mutex::new(stream.try_clone().expect("clone")));
    let mut reader = stream;
    let mut buffer = bytes::BytesMut::new();
    let mut chunk = vec![0; 64 * 1024];
    loop {
        while let Ok(Some(frame)) = decode_frame(&mut buffer, 1 << 20) {
            let assignment =
                Assignment { member_id: "m".into(), generation: 1, queues: vec![0, 1], heartbeat_interval_ms: 1000 };
            match Kind::from_u16(frame.kind) {
                Some(Kind::MetadataRequest) => {
                    let shards = [ShardEndpoint { shard: 0, host: "127.0.0.1".into(), port }];
                    let topics = [TopicLayout { name: "work".into(), queue_shards: vec![0, 0] }];
                    answer(&writer, &frame, &protocol::metadata_response(None, &shards, &topics, None));
                }
                Some(Kind::JoinGroupRequest | Kind::HeartbeatRequest | Kind::LeaveGroupRequest) => {
                    answer(&writer, &frame, &protocol::group_assignment(None, &assignment));
                }
                Some(Kind::FetchOffsetRequest) => answer(&writer, &frame, &protocol::offset_response(None, None)),
                Some(Kind::FetchRequest) => {
                    let request = verify::<fb::FetchRequest>(&frame.body).expect("a fetch");
                    let (queue, offset, wait) = (request.queue(), request.offset(), request.max_wait_ms());
                    if queue == 1 {
                        answer(&writer, &frame, &one_message(offset));
                        continue;
                    }
                    // Queue 0 has nothing: a long poll for its whole wait.
                    let now = held.now.fetch_add(1, Ordering::SeqCst) + 1;
                    held.most.fetch_max(now, Ordering::SeqCst);
                    let (writer, held) = (writer.clone(), held.clone());
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(u64::from(wait)));
                        held.now.fetch_sub(1, Ordering::SeqCst);
                        answer(&writer, &frame, &empty_fetch(offset));
                    });
                }
                other => panic!("the stand-in broker got {other:?}"),
            }
        }
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
}

#[test]
fn polls_keep_at_most_one_long_poll_per_queue_in_flight() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let held = Arc::new(Held::default());
    let serving = held.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let held = serving.clone();
            std::thread::spawn(move || serve_connection(stream, port, held));
        }
    });
    let client = Arc::new(Client::connect(&format!("127.0.0.1:{port}")).expect("connect"));
    let options = ConsumerOptions { max_wait: Duration::from_secs(2), ..ConsumerOptions::default() };
    let mut consumer = Consumer::join(client, "g", "work", options).expect("join");
    let mut received = 0;
    for _ in 0..20 {
        received += consumer.poll().expect("poll").len();
    }
    assert!(received >= 19, "queue 1's messages came, one a poll: {received}");
    let most = held.most.load(Ordering::SeqCst);
    assert!(most >= 1, "queue 0 was long-polled");
    assert_eq!(most, 1, "queue 0's long polls piled up at the broker");
}
