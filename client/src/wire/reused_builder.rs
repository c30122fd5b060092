//! One flatbuffer builder per thread, reused by the builders of the hot
//! path (a message, a produce answer): a fresh builder costs three
//! allocations and a zeroed buffer each time.

use flatbuffers::FlatBufferBuilder;
use std::cell::RefCell;

/// A builder that grew past this size is dropped after use rather than kept
/// by its thread for good.
pub(crate) const REUSED_BUILDER_BYTES_MAX: usize = 64 * 1024;

thread_local! {
    static REUSED_BUILDER: RefCell<FlatBufferBuilder<'static>> = RefCell::new(FlatBufferBuilder::new());
}

/// Calls `build` with the thread's builder, emptied; a call made from inside
/// `build` gets a fresh builder of its own.
pub fn with_reused_builder<R>(build: impl FnOnce(&mut FlatBufferBuilder<'static>) -> R) -> R {
    // Taken out, not borrowed: a nested call then finds an empty builder
    // (`new` allocates nothing) instead of a borrowed cell.
    let mut builder = REUSED_BUILDER.with(|reused| reused.replace(FlatBufferBuilder::new()));
    builder.reset();
    let result = build(&mut builder);
    if builder.unfinished_data().len() <= REUSED_BUILDER_BYTES_MAX {
        REUSED_BUILDER.with(|reused| reused.replace(builder));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_buffer(text: &str) -> Vec<u8> {
        with_reused_builder(|builder| {
            let text = builder.create_string(text);
            builder.finish_minimal(text);
            builder.finished_data().to_vec()
        })
    }

    #[test]
    fn a_reused_builder_starts_empty_and_a_nested_call_gets_its_own() {
        let first = string_buffer("a longer first string");
        let (outer, inner) = with_reused_builder(|builder| {
            let inner = string_buffer("inner");
            let text = builder.create_string("second");
            builder.finish_minimal(text);
            (builder.finished_data().to_vec(), inner)
        });
        let read = |buffer: &[u8]| flatbuffers::root::<&str>(buffer).expect("a string").to_string();
        assert_eq!(read(&first), "a longer first string");
        assert_eq!(read(&outer), "second");
        assert_eq!(read(&inner), "inner");
        assert_eq!(string_buffer("second"), outer, "the same input builds the same bytes, whatever came before");
    }

    #[test]
    fn a_builder_grown_past_the_bound_is_not_kept() {
        let large = "x".repeat(REUSED_BUILDER_BYTES_MAX * 2);
        let built = string_buffer(&large);
        assert_eq!(flatbuffers::root::<&str>(&built).expect("a string").len(), large.len());
        let kept = REUSED_BUILDER.with(|reused| reused.borrow().unfinished_data().len());
        assert_eq!(kept, 0, "the large builder was dropped, an empty one is in its place");
    }
}
