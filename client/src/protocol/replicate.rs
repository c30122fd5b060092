//! Bodies of REPLICATE (issue 13): a standby's shard asks the same shard of
//! its primary for durable raw log bytes, shared by broker and client.

use super::build::{finish, outcome};
use super::{fb, EpochStart, Failure};
use flatbuffers::FlatBufferBuilder;

/// Durable log bytes from `position`, all in one segment of the primary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicatedBytes {
    pub position: u64,
    pub bytes: Vec<u8>,
    /// The primary's durable end when it answered.
    pub durable: u64,
    pub segment_start: u64,
    pub segment_size_bytes: u64,
    /// The primary's topic registry (JSON), when asked for.
    pub topics: Option<Vec<u8>>,
    /// The primary's epoch and where it started in this shard's log.
    pub epoch: EpochStart,
}

impl ReplicatedBytes {
    /// Reads an answer, refusing one that does not hold together (bytes
    /// outside their segment or past the durable end it claims): every byte
    /// from the network is untrusted.
    pub fn read(response: &fb::ReplicateResponse<'_>) -> Result<Self, String> {
        let bytes = response.bytes().map(|bytes| bytes.bytes().to_vec()).unwrap_or_default();
        let answer = Self {
            position: response.position(),
            bytes,
            durable: response.durable(),
            segment_start: response.segment_start(),
            segment_size_bytes: response.segment_size_bytes(),
            topics: response.topics().map(|topics| topics.bytes().to_vec()),
            epoch: EpochStart { epoch: response.epoch(), position: response.epoch_start() },
        };
        let end = answer.position.checked_add(answer.bytes.len() as u64).ok_or("bytes end past u64")?;
        if !answer.bytes.is_empty() {
            let segment_end =
                answer.segment_start.checked_add(answer.segment_size_bytes).ok_or("segment end past u64")?;
            if answer.position < answer.segment_start || end > segment_end {
                return Err(format!(
                    "bytes {}..{end} lie outside their segment {}..{segment_end}",
                    answer.position, answer.segment_start
                ));
            }
            if end > answer.durable {
                return Err(format!("bytes end at {end}, past the durable end {} claimed", answer.durable));
            }
        }
        Ok(answer)
    }
}

/// What a standby's shard asks for: bytes from `position`, having
/// `confirmed` durable (the two differ while it gathers one large write).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicateAsk {
    pub position: u64,
    pub confirmed: u64,
    pub max_bytes: u32,
    pub wait_ms: u32,
    pub with_topics: bool,
}

pub fn replicate_request(ask: &ReplicateAsk) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let args = fb::ReplicateRequestArgs {
        position: ask.position,
        confirmed: ask.confirmed,
        max_bytes: ask.max_bytes,
        wait_ms: ask.wait_ms,
        with_topics: ask.with_topics,
    };
    let root = fb::ReplicateRequest::create(&mut builder, &args);
    finish(&mut builder, root)
}

pub fn replicate_response(failure: Option<&Failure>, answer: &ReplicatedBytes) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::with_capacity(answer.bytes.len() + 256);
    let outcome = outcome(&mut builder, failure);
    let bytes = (!answer.bytes.is_empty()).then(|| builder.create_vector(&answer.bytes));
    let topics = answer.topics.as_deref().map(|topics| builder.create_vector(topics));
    let args = fb::ReplicateResponseArgs {
        outcome: Some(outcome),
        position: answer.position,
        bytes,
        durable: answer.durable,
        segment_start: answer.segment_start,
        segment_size_bytes: answer.segment_size_bytes,
        topics,
        epoch: answer.epoch.epoch,
        epoch_start: answer.epoch.position,
    };
    let root = fb::ReplicateResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

/// What a promoted broker's primary waits for: `None`, its configured
/// `replication`.
pub fn promote_request(replication: Option<fb::PromoteReplication>) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let replication = replication.unwrap_or(fb::PromoteReplication::Configured);
    let root = fb::PromoteRequest::create(&mut builder, &fb::PromoteRequestArgs { replication });
    finish(&mut builder, root)
}

/// A promotion's answer: the epoch now, whether this request changed it,
/// and where the epoch starts in each shard's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Promoted {
    pub epoch: u64,
    pub promoted: bool,
    pub starts: Vec<EpochStart>,
}

impl Promoted {
    pub fn read(response: &fb::PromoteResponse<'_>) -> Self {
        Self { epoch: response.epoch(), promoted: response.promoted(), starts: EpochStart::read_all(response.starts()) }
    }
}

pub fn promote_response(failure: Option<&Failure>, promoted: &Promoted) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let outcome = outcome(&mut builder, failure);
    let starts = builder.create_vector(&EpochStart::to_wire(&promoted.starts));
    let args = fb::PromoteResponseArgs {
        outcome: Some(outcome),
        epoch: promoted.epoch,
        promoted: promoted.promoted,
        starts: Some(starts),
    };
    let root = fb::PromoteResponse::create(&mut builder, &args);
    finish(&mut builder, root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::verify;

    #[test]
    fn an_answer_round_trips_and_a_lying_one_is_refused() {
        let answer = ReplicatedBytes {
            position: 4096,
            bytes: vec![7; 100],
            durable: 4196,
            segment_start: 0,
            segment_size_bytes: 1 << 20,
            topics: Some(b"{}".to_vec()),
            epoch: EpochStart { epoch: 2, position: 8192 },
        };
        let body = replicate_response(None, &answer);
        let response = verify::<fb::ReplicateResponse>(&body).expect("verify");
        assert_eq!(ReplicatedBytes::read(&response).expect("read"), answer);
        for lie in [
            ReplicatedBytes { durable: 4195, ..answer.clone() },
            ReplicatedBytes { segment_start: 8192, ..answer.clone() },
            ReplicatedBytes { segment_size_bytes: 4100, ..answer.clone() },
        ] {
            let body = replicate_response(None, &lie);
            let response = verify::<fb::ReplicateResponse>(&body).expect("verify");
            assert!(ReplicatedBytes::read(&response).is_err(), "{lie:?}");
        }
    }

    #[test]
    fn a_promotion_answer_round_trips() {
        let promoted = Promoted {
            epoch: 3,
            promoted: true,
            starts: vec![EpochStart { epoch: 3, position: 8192 }, EpochStart { epoch: 3, position: 4096 }],
        };
        let body = promote_response(None, &promoted);
        assert_eq!(Promoted::read(&verify::<fb::PromoteResponse>(&body).expect("verify")), promoted);
        let ask = promote_request(Some(fb::PromoteReplication::Sync));
        let request = verify::<fb::PromoteRequest>(&ask).expect("verify");
        assert_eq!(request.replication(), fb::PromoteReplication::Sync);
    }
}
