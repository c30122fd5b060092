//! Bodies of REPLICATE (issue 13): a standby's shard asks the same shard of
//! its primary for durable raw log bytes, shared by broker and client.

use super::build::{finish, outcome};
use super::{fb, Failure};
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

pub fn replicate_request(position: u64, max_bytes: u32, wait_ms: u32, with_topics: bool) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let args = fb::ReplicateRequestArgs { position, max_bytes, wait_ms, with_topics };
    let root = fb::ReplicateRequest::create(&mut builder, &args);
    finish(builder, root)
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
    };
    let root = fb::ReplicateResponse::create(&mut builder, &args);
    finish(builder, root)
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
}
