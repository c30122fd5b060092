//! Every request the broker serves, as a shard reads it before touching
//! its state (`server::requests`): `kind byte | body`. Either a refusal
//! with a clear reason and a code the client can act on, or a request
//! whose every field is within the broker's limits; a produce's messages go
//! through the same verification the handler applies, and its fast checks
//! answer as flatbuffers' verifier does.

use super::message::read_every_field;
use super::{within, ALLOCATION_SLACK_BYTES, FAILURE_MESSAGE_BYTES_MAX};
use crate::constants::{
    CLIENT_ID_BYTES_MAX, FETCH_BYTES_MAX, FETCH_COUNT_MAX, FETCH_TAGS_MAX, FETCH_WAIT_MS_MAX, GROUP_OFFSETS_TOPICS_MAX,
    KEY_BYTES_MAX, NAME_BYTES_MAX, PAGE_CURSOR_BYTES_MAX, PRODUCE_MESSAGES_MAX, QUERY_MESSAGES_MAX,
};
use crate::protocol::{fb, produce_response_verifiers_agree, produce_verifiers_agree, Failure, Kind};
use crate::server::requests::{MessageLimits, Request};
use crate::wire::VerifiedMessage;
use bytes::Bytes;

pub fn request(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else { return };
    // The fast checks never say yes where flatbuffers' verifier says no (a
    // produce answer is the client's input; its checks ride along here).
    if u16::from(kind) == Kind::ProduceRequest as u16 {
        assert!(produce_verifiers_agree(body), "the produce request verifiers disagree");
    }
    if u16::from(kind) == Kind::ProduceResponse as u16 {
        assert!(produce_response_verifiers_agree(body), "the produce answer verifiers disagree");
    }
    let body = Bytes::copy_from_slice(body);
    within(allocation_bound(body.len()), "request reading", || match Request::read(u16::from(kind), &body) {
        Ok(request) => check(&request, &body),
        Err(failure) => assert_clear(
            &failure,
            &[fb::ErrorCode::InvalidRequest, fb::ErrorCode::InvalidTopic, fb::ErrorCode::UnknownKind],
        ),
    });
}

/// A vector in the body may repeat one offset for every element: 4 bytes
/// of body per element, each read into a slice (16 bytes) or, for a
/// produce, a verified message (capped by `PRODUCE_MESSAGES_MAX`).
fn allocation_bound(body_bytes: usize) -> usize {
    let messages = PRODUCE_MESSAGES_MAX * std::mem::size_of::<VerifiedMessage>();
    ALLOCATION_SLACK_BYTES + messages.max(4 * body_bytes)
}

fn assert_clear(failure: &Failure, codes: &[fb::ErrorCode]) {
    let text = &failure.message;
    assert!(codes.contains(&failure.code), "refused with {:?}: {text:.200}", failure.code);
    assert!(!text.is_empty() && text.len() <= FAILURE_MESSAGE_BYTES_MAX, "unclear refusal: {text:.200}…");
}

fn check(request: &Request<'_>, body: &Bytes) {
    match request {
        Request::Metadata(request) => {
            assert!(request.topics.len() <= body.len() / 4);
            assert!(request.after.is_none_or(|after| after.len() <= PAGE_CURSOR_BYTES_MAX));
        }
        Request::CreateTopic(request) => assert_name(request.name),
        Request::Produce(request) => match request.messages(body, &MessageLimits::fuzzing()) {
            Ok(messages) => {
                assert!(messages.len() <= PRODUCE_MESSAGES_MAX);
                messages.iter().for_each(read_every_field);
            }
            Err(failure) => assert_clear(
                &failure,
                &[fb::ErrorCode::InvalidRequest, fb::ErrorCode::InvalidMessage, fb::ErrorCode::MessageTooLarge],
            ),
        },
        Request::Fetch(request) => {
            assert!((1..=FETCH_COUNT_MAX as usize).contains(&request.count));
            assert!((1..=FETCH_BYTES_MAX).contains(&request.bytes_max));
            assert!(request.wait.as_millis() <= u128::from(FETCH_WAIT_MS_MAX));
            assert!(request.tag_hashes.len() <= FETCH_TAGS_MAX);
        }
        Request::JoinGroup(request) => {
            assert_name(request.group);
            assert!(request.member_id.len() <= CLIENT_ID_BYTES_MAX && request.instance_id.len() <= CLIENT_ID_BYTES_MAX);
        }
        Request::Heartbeat(member) | Request::LeaveGroup(member) => {
            assert_name(member.group);
            assert!(member.member_id.len() <= CLIENT_ID_BYTES_MAX);
        }
        Request::CommitOffset(request) => {
            assert_name(request.group);
            assert!(request.member_id.len() <= CLIENT_ID_BYTES_MAX);
        }
        Request::FetchOffset(request) => assert!(request.group.len() <= NAME_BYTES_MAX),
        Request::EndTransaction(request) => assert!(request.transaction_id.len() <= CLIENT_ID_BYTES_MAX),
        Request::RegisterProducer { producer_group } => {
            assert!(!producer_group.is_empty() && producer_group.len() <= NAME_BYTES_MAX)
        }
        Request::SendBack(request) => assert_name(request.group),
        Request::ResendDeadLetter(request) => assert_name(request.group),
        Request::ListGroups(request) => {
            request.group.iter().for_each(|group| assert_name(group));
            assert!(request.after.is_none_or(|(group, topic)| group.len() + topic.len() < PAGE_CURSOR_BYTES_MAX));
        }
        Request::GroupOffsets(request) => {
            assert_name(request.group);
            assert!(request.topics.len() <= GROUP_OFFSETS_TOPICS_MAX);
            assert!(request.after.is_none_or(|(topic, _)| topic.len() < PAGE_CURSOR_BYTES_MAX));
        }
        Request::ResetOffset(request) => assert_name(request.group),
        Request::QueryMessages(request) => {
            assert!(!request.key.is_empty() && request.key.len() <= KEY_BYTES_MAX);
            assert!((1..=QUERY_MESSAGES_MAX).contains(&request.max));
        }
        // Its numbers are capped where they are used (`replication::primary`).
        Request::Replicate(_) | Request::Promote(_) => {}
        Request::ListTransactions(_) | Request::ShardStatus | Request::OffsetAtTime(_) => {}
    }
}

/// What `check_name` lets through: 1 to `NAME_BYTES_MAX` of `[A-Za-z0-9-_.:]`.
fn assert_name(name: &str) {
    let valid = name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_.:".contains(&byte));
    assert!(valid && !name.is_empty() && name.len() <= NAME_BYTES_MAX, "name {name:.300?} passed");
}
