//! Following the pages of a listing answer (`protocol::page`): each answer
//! that leaves entries out names the cursor of the next page.

use super::ClientError;
use crate::constants::PAGES_FOLLOWED_MAX;

/// The cursor to ask the next page with. A cursor that does not move (a
/// broker asking for the same page again) or a list that never ends is a
/// protocol error, not a loop.
#[derive(Debug, Default)]
pub struct PageCursor {
    after: Option<Vec<u8>>,
    pages: usize,
}

impl PageCursor {
    /// The `after` of the next request, from an answer's `next`; `None`
    /// when the list is complete.
    pub fn next(&mut self, next: Option<flatbuffers::Vector<'_, u8>>) -> Result<Option<&[u8]>, ClientError> {
        let Some(next) = next.map(|next| next.bytes()).filter(|next| !next.is_empty()) else {
            return Ok(None);
        };
        if self.after.as_deref() == Some(next) {
            return Err(ClientError::Protocol("the broker named the same page twice".into()));
        }
        self.pages += 1;
        if self.pages >= PAGES_FOLLOWED_MAX {
            return Err(ClientError::Protocol(format!("a list of more than {PAGES_FOLLOWED_MAX} pages")));
        }
        self.after = Some(next.to_vec());
        Ok(self.after.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flatbuffers::FlatBufferBuilder;

    /// A `[ubyte]` as an answer carries it.
    fn with_vector<T>(bytes: &[u8], read: impl FnOnce(flatbuffers::Vector<'_, u8>) -> T) -> T {
        let mut builder = FlatBufferBuilder::new();
        let vector = builder.create_vector(bytes);
        builder.finish_minimal(vector);
        let data = builder.finished_data();
        let vector = flatbuffers::root::<flatbuffers::Vector<'_, u8>>(data).expect("a vector");
        read(vector)
    }

    #[test]
    fn a_cursor_moves_on_and_one_that_stands_still_is_refused() {
        let mut cursor = PageCursor::default();
        assert_eq!(cursor.next(None).expect("complete"), None);
        assert_eq!(
            with_vector(b"a", |next| cursor.next(Some(next)).expect("moves").map(<[u8]>::to_vec)),
            Some(b"a".to_vec())
        );
        assert_eq!(
            with_vector(b"", |next| cursor.next(Some(next)).expect("empty: complete").map(<[u8]>::to_vec)),
            None
        );
        assert!(with_vector(b"a", |next| cursor.next(Some(next)).is_err()), "the same page again");
    }
}
