//! The wire protocol around the schemas: frames, request kinds, verification
//! of every body with explicit limits, and the builders both ends use.
//!
//! Frame: `u32 length | u16 kind | u32 request id | flatbuffer`, little-endian,
//! `length` counting the bytes after itself. Clients start requests with
//! ids below `BROKER_REQUEST_BIT`; the broker starts its own (check-backs)
//! with that bit set, on a connection that registered a producer group.

mod admin;
mod build;
mod codec;
mod frame;
mod kind;
pub mod page;
mod produce_answer;
mod produce_request;
mod produce_verifier;
mod replicate;
mod routing;

pub use admin::*;
pub use build::*;
pub use codec::{
    DecoderLimits, FrameBatch, FrameDecoder, OutgoingFrame, Pushed, Truncated, WRITE_COALESCE_BYTES,
    WRITE_IN_PLACE_BYTES,
};
pub use frame::{
    decode_frame, encode_frame, frame_bytes_missing, frame_header, read_room, release_excess, Frame, FrameError,
    WireFrame, FRAME_HEADER_BYTES, FRAME_PREFIX_BYTES,
};
pub use kind::{Kind, BROKER_REQUEST_BIT};
pub use produce_request::ProduceRequestBuilder;
pub use produce_verifier::{
    agrees_with_flatbuffers as produce_verifiers_agree,
    response_agrees_with_flatbuffers as produce_response_verifiers_agree, verify_produce_request,
    verify_produce_response,
};
pub use replicate::{
    promote_request, promote_response, replicate_request, replicate_response, Promoted, ReplicateAsk, ReplicatedBytes,
};
pub use routing::{
    coordinator_shard, dead_letter_topic, internal_topic_group, queue_owner, retry_topic, INTERNAL_TOPIC_PREFIX,
};

pub use crate::wire::generated::protocol as fb;

use crate::constants::{VERIFIER_DEPTH_MAX, VERIFIER_TABLES_MAX};
use flatbuffers::{Follow, Verifiable, VerifierOptions};

/// What the verifier lets a body's ranges add up to: twice the largest
/// body, so that sharing (several references to one string or table) is
/// bounded.
const BODY_APPARENT_BYTES_MAX: usize = crate::constants::FRAME_BODY_BYTES_MAX * 2;

/// Verifies a request or response body as `T` with the broker's limits.
pub fn verify<'a, T>(body: &'a [u8]) -> Result<T::Inner, String>
where
    T: Follow<'a> + Verifiable + 'a,
{
    flatbuffers::root_with_opts::<T>(&body_verifier_options(), body).map_err(|error| error.to_string())
}

/// The limits every body is verified within (`verify`, `produce_verifier`).
fn body_verifier_options() -> VerifierOptions {
    VerifierOptions {
        max_depth: VERIFIER_DEPTH_MAX,
        max_tables: VERIFIER_TABLES_MAX,
        max_apparent_size: BODY_APPARENT_BYTES_MAX,
        ignore_missing_null_terminator: false,
    }
}
