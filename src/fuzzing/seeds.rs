//! Seed inputs of each fuzz target: real bodies of every request kind,
//! messages of every sort, frames of every kind, and the refusals the
//! decoders and handlers know. `fuzz/corpus/<target>/` holds them
//! (`cargo test --test fuzz_corpus -- --ignored` writes them again).

use crate::protocol::{self, fb, page, FetchParams, Kind, MessageQuery, OffsetReset};
use crate::wire::MessageDraft;

/// Name and bytes of each seed.
pub type Seeds = Vec<(String, Vec<u8>)>;

/// Messages: plain, keyed and tagged, with properties, half, delayed, and
/// ones the produce checks refuse.
pub fn messages() -> Seeds {
    let plain = MessageDraft { msg_id: (1, 2), topic: "orders", body: b"payload", ..MessageDraft::default() };
    let long_tag = "t".repeat(crate::constants::MESSAGE_TAG_BYTES_MAX + 1);
    let long_key = "k".repeat(crate::constants::MESSAGE_KEY_BYTES_MAX + 1);
    let full = MessageDraft {
        queue: 3,
        keys: &["order-1", "customer-9"],
        tag: Some("paid"),
        properties: &[("region", "eu"), ("CHECK_IMMUNITY_TIME_IN_SECONDS", "10")],
        producer_id: 7,
        sequence: 42,
        born_timestamp_us: 1_700_000_000_000_000,
        ..plain.clone()
    };
    let half =
        MessageDraft { half: true, producer_group: Some("payments"), transaction_id: Some("tx-1"), ..plain.clone() };
    let seeds = [
        ("plain", plain.build()),
        ("full", full.build()),
        ("half", half.build()),
        ("half-without-group", MessageDraft { producer_group: None, ..half.clone() }.build()),
        ("delay-level", MessageDraft { delay_level: 3, ..plain.clone() }.build()),
        ("delay-level-unknown", MessageDraft { delay_level: 200, ..plain.clone() }.build()),
        ("deliver-at", MessageDraft { deliver_at_ms: 1_700_000_060_000, ..plain.clone() }.build()),
        ("delayed-half", MessageDraft { delay_level: 1, ..half.clone() }.build()),
        ("empty-topic", MessageDraft { topic: "", ..plain.clone() }.build()),
        ("empty-body", MessageDraft { body: b"", ..plain.clone() }.build()),
        // Past the field caps a produce applies (`wire::check_message_fields`).
        ("tag-too-long", MessageDraft { tag: Some(&long_tag), ..plain.clone() }.build()),
        ("key-too-long", MessageDraft { keys: &[&long_key], ..plain.clone() }.build()),
    ];
    let mut seeds: Seeds = seeds.into_iter().map(|(name, bytes)| (name.to_string(), bytes)).collect();
    let full = seeds[1].1.clone();
    seeds.push(("truncated".into(), full[..full.len() / 2].to_vec()));
    seeds.push(("garbage".into(), b"not a flatbuffer".to_vec()));
    seeds
}

/// `kind byte | body` of every request kind, and of the refusals each
/// kind's checks know.
pub fn requests() -> Seeds {
    let message = |draft: MessageDraft<'_>| draft.build();
    let plain = MessageDraft { msg_id: (1, 2), topic: "orders", body: b"payload", ..MessageDraft::default() };
    let half =
        MessageDraft { half: true, producer_group: Some("payments"), transaction_id: Some("tx-1"), ..plain.clone() };
    let batch = [message(plain.clone()), message(MessageDraft { tag: Some("blue"), ..plain.clone() }), message(half)];
    let batch: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
    // Unprintable, so an error quoting it with `{:?}` would grow six-fold.
    let long_name = "\u{7f}".repeat(4 * crate::constants::NAME_BYTES_MAX);
    let fetch = FetchParams {
        topic: "orders".into(),
        queue: 1,
        offset: 5,
        max_count: 32,
        max_bytes: 1 << 20,
        max_wait_ms: 500,
        tag_hashes: vec![crate::wire::tag_hash("blue")],
    };
    let reset = |target, value| OffsetReset {
        group: "billing".into(),
        topic: "orders".into(),
        queue: 2,
        target,
        value,
        force: false,
    };
    let query =
        MessageQuery { topic: "orders".into(), key: "order-1".into(), since_ms: 1_700_000_000_000, max_count: 16 };
    let too_long_cursor = vec![b'a'; crate::constants::PAGE_CURSOR_BYTES_MAX + 1];
    let mut seeds = vec![
        ("metadata", Kind::MetadataRequest, protocol::metadata_request(&["orders", "payments"])),
        ("metadata-all", Kind::MetadataRequest, protocol::metadata_request(&[])),
        (
            "metadata-after",
            Kind::MetadataRequest,
            protocol::metadata_page_request(&[], Some(&page::name_cursor("orders"))),
        ),
        (
            "metadata-after-too-long",
            Kind::MetadataRequest,
            protocol::metadata_page_request(&[], Some(&too_long_cursor)),
        ),
        ("metadata-after-not-utf8", Kind::MetadataRequest, protocol::metadata_page_request(&[], Some(b"\xff\xfe"))),
        ("create-topic", Kind::CreateTopicRequest, protocol::create_topic_request("orders", 8)),
        ("create-topic-bad-name", Kind::CreateTopicRequest, protocol::create_topic_request("a b/c", 8)),
        ("create-topic-long-name", Kind::CreateTopicRequest, protocol::create_topic_request(&long_name, 8)),
        ("produce", Kind::ProduceRequest, protocol::produce_request("orders", 0, &batch, false).to_vec()),
        ("produce-skip-gap", Kind::ProduceRequest, protocol::produce_request("orders", 1, &batch[..1], true).to_vec()),
        ("produce-internal", Kind::ProduceRequest, protocol::produce_request("%RETRY%g", 0, &batch, false).to_vec()),
        (
            "produce-bad-message",
            Kind::ProduceRequest,
            protocol::produce_request("orders", 0, &[b"junk"], false).to_vec(),
        ),
        ("fetch", Kind::FetchRequest, protocol::fetch_request(&fetch)),
        (
            "fetch-many-tags",
            Kind::FetchRequest,
            protocol::fetch_request(&FetchParams { tag_hashes: (0..65).collect(), ..fetch.clone() }),
        ),
        ("join", Kind::JoinGroupRequest, protocol::join_group_request("billing", "orders", "", "host-1", 30_000)),
        (
            "join-long-member",
            Kind::JoinGroupRequest,
            protocol::join_group_request("billing", "orders", &"m".repeat(256), "", 0),
        ),
        ("heartbeat", Kind::HeartbeatRequest, protocol::heartbeat_request("billing", "orders", "member-1")),
        ("leave", Kind::LeaveGroupRequest, protocol::leave_group_request("billing", "orders", "member-1")),
        (
            "commit-offset",
            Kind::CommitOffsetRequest,
            protocol::commit_offset_request("billing", "orders", 2, 10, 3, "member-1"),
        ),
        ("fetch-offset", Kind::FetchOffsetRequest, protocol::fetch_offset_request("billing", "orders", 2)),
        (
            "end-transaction",
            Kind::EndTransactionRequest,
            protocol::end_transaction_request("orders", 0, "tx-1", fb::TransactionOutcome::Commit, false),
        ),
        (
            "end-transaction-unknown",
            Kind::EndTransactionRequest,
            protocol::end_transaction_request("orders", 0, "tx-1", fb::TransactionOutcome(9), true),
        ),
        ("list-transactions", Kind::ListTransactionsRequest, protocol::list_transactions_request(true)),
        (
            "list-transactions-after",
            Kind::ListTransactionsRequest,
            protocol::list_transactions_page_request(false, Some(&page::keyed_cursor("settled", 4096))),
        ),
        (
            "list-transactions-bad-cursor",
            Kind::ListTransactionsRequest,
            protocol::list_transactions_page_request(false, Some(b"settled")),
        ),
        ("register-producer", Kind::RegisterProducerRequest, protocol::register_producer_request("payments")),
        ("register-producer-empty", Kind::RegisterProducerRequest, protocol::register_producer_request("")),
        ("send-back", Kind::SendBackRequest, protocol::send_back_request("billing", "orders", 2, 10, 16, 0)),
        (
            "resend-dead-letter",
            Kind::ResendDeadLetterRequest,
            protocol::resend_dead_letter_request("billing", 0, 4, true),
        ),
        ("shard-status", Kind::ShardStatusRequest, protocol::shard_status_request()),
        ("list-groups", Kind::ListGroupsRequest, protocol::list_groups_request(Some("billing"), None)),
        ("list-groups-all", Kind::ListGroupsRequest, protocol::list_groups_request(None, None)),
        (
            "list-groups-after",
            Kind::ListGroupsRequest,
            protocol::list_groups_request(None, Some(&page::pair_cursor("billing", "orders"))),
        ),
        ("list-groups-bad-cursor", Kind::ListGroupsRequest, protocol::list_groups_request(None, Some(b"billing"))),
        (
            "group-offsets",
            Kind::GroupOffsetsRequest,
            protocol::group_offsets_request("billing", &["orders", "%RETRY%billing"], None),
        ),
        (
            "group-offsets-after",
            Kind::GroupOffsetsRequest,
            protocol::group_offsets_request("billing", &["orders"], Some(&page::keyed_cursor("orders", 3))),
        ),
        (
            "group-offsets-cursor-queue-too-large",
            Kind::GroupOffsetsRequest,
            protocol::group_offsets_request("billing", &[], Some(&page::keyed_cursor("orders", u64::MAX))),
        ),
        ("reset-offset", Kind::ResetOffsetRequest, protocol::reset_offset_request(&reset(fb::ResetTarget::Offset, 7))),
        (
            "reset-offset-time",
            Kind::ResetOffsetRequest,
            protocol::reset_offset_request(&reset(fb::ResetTarget::Time, 1_700_000_000_000)),
        ),
        (
            "reset-offset-unknown",
            Kind::ResetOffsetRequest,
            protocol::reset_offset_request(&reset(fb::ResetTarget(9), 0)),
        ),
        ("offset-at-time", Kind::OffsetAtTimeRequest, protocol::offset_at_time_request("orders", 2, 1_700_000_000_000)),
        ("query-messages", Kind::QueryMessagesRequest, protocol::query_messages_request(&query)),
        (
            "query-messages-all",
            Kind::QueryMessagesRequest,
            protocol::query_messages_request(&MessageQuery { since_ms: 0, max_count: 0, ..query.clone() }),
        ),
        (
            "query-messages-empty-key",
            Kind::QueryMessagesRequest,
            protocol::query_messages_request(&MessageQuery { key: String::new(), ..query.clone() }),
        ),
        (
            "query-messages-long-key",
            Kind::QueryMessagesRequest,
            protocol::query_messages_request(&MessageQuery {
                key: "k".repeat(crate::constants::KEY_BYTES_MAX + 1),
                max_count: u32::MAX,
                ..query.clone()
            }),
        ),
        ("not-a-request", Kind::MetadataResponse, protocol::metadata_request(&[])),
    ];
    seeds.push(("unknown-kind", Kind::ErrorResponse, b"\x04\x00\x00\x00".to_vec()));
    seeds
        .into_iter()
        .map(|(name, kind, body)| {
            let mut input = vec![kind as u8];
            input.extend(body);
            (name.to_string(), input)
        })
        .collect()
}

/// `flags | seed | stream` (see `fuzzing::frame`): the requests above as
/// frames, cut into reads every way, and the framings the decoder refuses.
pub fn frames() -> Seeds {
    let stream: Vec<u8> = requests()
        .iter()
        .enumerate()
        .flat_map(|(id, (_, input))| protocol::encode_frame(u16::from(input[0]), id as u32, &input[1..]))
        .collect();
    let frame_input = |flags: u8, seed: u64, stream: &[u8]| {
        let mut input = vec![flags];
        input.extend(seed.to_le_bytes());
        input.extend(stream);
        input
    };
    let large = protocol::frame_header(Kind::ProduceRequest as u16, 1, 3 << 20);
    let mut too_short = protocol::encode_frame(1, 1, b"");
    too_short.extend(5u32.to_le_bytes());
    // Frames no larger than one already received whole get their room at
    // once (`read_room`); the last one is completed by the filler.
    let proven: Vec<u8> = [
        protocol::encode_frame(Kind::ProduceRequest as u16, 1, &[7; 30_000]),
        protocol::encode_frame(Kind::ProduceRequest as u16, 2, &[8; 20_000]),
        protocol::frame_header(Kind::ProduceRequest as u16, 3, 30_000).to_vec(),
    ]
    .concat();
    let mut too_large = stream[..40.min(stream.len())].to_vec();
    too_large.extend(u32::MAX.to_le_bytes());
    vec![
        ("requests-byte-reads".into(), frame_input(0, 1, &stream)),
        ("requests-whole-reads".into(), frame_input(4, 2, &stream)),
        ("requests-random-reads".into(), frame_input(8, 3, &stream)),
        ("requests-small-reads".into(), frame_input(12, 4, &stream)),
        ("requests-small-limit".into(), frame_input(9, 300, &stream)),
        ("large-frame".into(), frame_input(16 | 8, 5, &large)),
        ("large-frame-then-more".into(), frame_input(16 | 4, 6, &[&stream[..], &large[..]].concat())),
        ("proven-frames-random-reads".into(), frame_input(16 | 8, 10, &proven)),
        ("proven-frames-whole-reads".into(), frame_input(16 | 4, 11, &proven)),
        ("too-short".into(), frame_input(8, 7, &too_short)),
        ("too-large".into(), frame_input(12, 8, &too_large)),
        ("truncated".into(), frame_input(8, 9, &stream[..stream.len() - 3])),
    ]
}
