//! Byte-level protocol tests: garbage, a truncated frame, an oversized
//! length, an unknown kind, an invalid flatbuffer, an unknown topic and a
//! queue out of range. Each gets the exact error it should, and the broker
//! keeps serving every other connection.

mod common;

use bytes::BytesMut;
use common::Broker;
use ringmq::client::Client;
use ringmq::protocol::{self, decode_frame, encode_frame, fb, verify, Failure, Kind};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn connect(broker: &Broker) -> TcpStream {
    let stream = TcpStream::connect(broker.address()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream
}

thread_local! {
    /// Bytes read past the last frame, per test thread (one stream at a time).
    static LEFTOVER: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Reads one frame, or `None` when the broker closed the connection.
fn read_frame(stream: &mut TcpStream) -> Option<protocol::Frame> {
    LEFTOVER.with(|leftover| read_frame_into(stream, &mut leftover.borrow_mut()))
}

fn read_frame_into(stream: &mut TcpStream, buffer: &mut BytesMut) -> Option<protocol::Frame> {
    let mut chunk = [0; 4096];
    loop {
        if let Some(frame) = decode_frame(buffer, 1 << 24).expect("a valid frame from the broker") {
            return Some(frame);
        }
        match stream.read(&mut chunk) {
            Ok(0) => {
                buffer.clear();
                return None;
            }
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                buffer.clear();
                return None;
            }
            Err(error) => panic!("reading from the broker: {error}"),
        }
    }
}

fn failure_of(frame: &protocol::Frame) -> Failure {
    assert_eq!(frame.kind, Kind::ErrorResponse as u16, "expected an error response");
    let response = verify::<fb::ErrorResponse>(&frame.body).expect("a valid error response");
    Failure::from_outcome(response.outcome()).expect("an error")
}

fn assert_still_serving(broker: &Broker) {
    let client = Client::connect(&broker.address()).expect("the broker still answers");
    assert!(client.topic("t").is_ok());
}

fn answer(stream: &mut TcpStream, kind: u16, request_id: u32, body: &[u8]) -> protocol::Frame {
    stream.write_all(&encode_frame(kind, request_id, body)).expect("write");
    let frame = read_frame(stream).expect("an answer");
    assert_eq!(frame.request_id, request_id);
    frame
}

#[test]
fn every_kind_of_bad_input_gets_its_error_and_the_broker_survives() {
    let broker = Broker::start(1);
    Client::connect(&broker.address()).expect("connect").create_topic("t", 2).expect("create");

    // Garbage: its first four bytes read as a huge length.
    let mut stream = connect(&broker);
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    let frame = read_frame(&mut stream).expect("an answer before the close");
    assert_eq!((failure_of(&frame).code, frame.request_id), (fb::ErrorCode::BadFrame, 0));
    assert!(read_frame(&mut stream).is_none(), "the connection is closed after a bad frame");
    assert_still_serving(&broker);

    // A length over the maximum, refused from the prefix alone.
    let mut stream = connect(&broker);
    stream.write_all(&(64u32 << 20).to_le_bytes()).expect("write");
    let frame = read_frame(&mut stream).expect("an answer");
    let failure = failure_of(&frame);
    assert_eq!(failure.code, fb::ErrorCode::BadFrame);
    assert!(failure.message.contains("exceeds the maximum"), "{failure}");
    assert_still_serving(&broker);

    // A length below the header.
    let mut stream = connect(&broker);
    stream.write_all(&2u32.to_le_bytes()).expect("write");
    assert_eq!(failure_of(&read_frame(&mut stream).expect("an answer")).code, fb::ErrorCode::BadFrame);

    // A truncated frame, then the client goes away.
    let mut stream = connect(&broker);
    let whole = encode_frame(Kind::MetadataRequest as u16, 1, &protocol::metadata_request(&[]));
    stream.write_all(&whole[..whole.len() - 3]).expect("write");
    drop(stream);
    assert_still_serving(&broker);

    // On one connection: errors that keep the connection open.
    let mut stream = connect(&broker);
    let frame = answer(&mut stream, 999, 7, b"");
    assert_eq!(failure_of(&frame).code, fb::ErrorCode::UnknownKind);
    let frame = answer(&mut stream, Kind::ProduceRequest as u16, 8, b"\x01\x02\x03 not a flatbuffer");
    assert_eq!(failure_of(&frame).code, fb::ErrorCode::InvalidRequest);
    let message = ringmq::wire::MessageDraft { topic: "t", body: b"x", ..Default::default() }.build();
    let frame =
        answer(&mut stream, Kind::ProduceRequest as u16, 9, &protocol::produce_request("nope", 0, &[&message], false));
    assert_eq!(failure_of(&frame).code, fb::ErrorCode::UnknownTopic);
    let frame =
        answer(&mut stream, Kind::ProduceRequest as u16, 10, &protocol::produce_request("t", 5, &[&message], false));
    assert_eq!(failure_of(&frame).code, fb::ErrorCode::QueueOutOfRange);
    let frame = answer(
        &mut stream,
        Kind::ProduceRequest as u16,
        11,
        &protocol::produce_request("t", 0, &[b"garbage message"], false),
    );
    assert_eq!(failure_of(&frame).code, fb::ErrorCode::InvalidMessage);
    // A request id with the high bit belongs to the broker's own requests:
    // refused, not left unanswered.
    let frame = answer(&mut stream, Kind::MetadataRequest as u16, 0x8000_0001, &protocol::metadata_request(&[]));
    assert_eq!(failure_of(&frame).code, fb::ErrorCode::InvalidRequest);
    // The same connection still works for a good request.
    let frame =
        answer(&mut stream, Kind::ProduceRequest as u16, 12, &protocol::produce_request("t", 0, &[&message], false));
    assert_eq!(frame.kind, Kind::ProduceResponse as u16);
    assert_still_serving(&broker);
}

#[test]
fn requests_on_one_connection_are_answered_by_request_id() {
    let broker = Broker::start(1);
    Client::connect(&broker.address()).expect("connect").create_topic("t", 1).expect("create");
    let mut stream = connect(&broker);
    let message = ringmq::wire::MessageDraft { topic: "t", body: b"p", ..Default::default() }.build();
    let mut wire = Vec::new();
    for request_id in 100..150 {
        wire.extend(encode_frame(
            Kind::ProduceRequest as u16,
            request_id,
            &protocol::produce_request("t", 0, &[&message], false),
        ));
    }
    stream.write_all(&wire).expect("write pipelined requests");
    let mut answered: Vec<u32> = (0..50).map(|_| read_frame(&mut stream).expect("answer").request_id).collect();
    answered.sort_unstable();
    assert_eq!(answered, (100..150).collect::<Vec<_>>());
}
