//! What travels on the wire: the flatbuffers schemas' generated code and the
//! verification every incoming message passes before anything touches it.

pub mod generated;
mod message;
pub mod record;

pub use message::{
    check_message_fields, key_hash, stored_key_hashes, tag_hash, verify_message, BuiltMessage, MessageDraft,
    VerifiedMessage, WireError,
};
