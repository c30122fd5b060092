//! What travels on the wire: the flatbuffers schemas' generated code and the
//! verification every incoming message passes before anything touches it.

mod finished;
pub(crate) mod forward_writer;
pub mod generated;
mod message;
mod message_verifier;
mod message_writer;
pub mod record;
mod reused_builder;
pub(crate) mod walk;

pub use finished::Finished;
pub use message::{
    check_message_fields, key_hash, stored_key_hashes, tag_hash, verify_message, MessageDraft, VerifiedMessage,
    WireError,
};
pub use message_verifier::agrees_with_flatbuffers as message_verifiers_agree;
pub use reused_builder::with_reused_builder;
pub(crate) use reused_builder::REUSED_BUILDER_BYTES_MAX;
