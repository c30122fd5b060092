//! A walk over a flatbuffer making the checks of flatbuffers' verifier
//! (23.5.26, `verifier.rs`), for verifiers written out for one schema
//! (`message_verifier`, `protocol::produce_verifier`). It answers only yes
//! or no: `None` anywhere means flatbuffers' verifier would refuse the
//! buffer, which the caller then asks for the reason.
//!
//! As flatbuffers does: positions are checked for alignment relative to
//! the buffer's start; every range checked adds its size to an apparent
//! size that must stay within the caller's limit; tables count towards
//! `VERIFIER_TABLES_MAX`; strings are UTF-8 with a zero byte after them.
//! Depth is the caller's to bound (its schema fixes it).

use crate::constants::VERIFIER_TABLES_MAX;

const OFFSET_BYTES: usize = 4;

/// A table being verified: where it is and where its vtable is.
pub(crate) struct Table {
    pub position: usize,
    pub vtable: usize,
    pub vtable_bytes: usize,
}

/// One verification.
pub(crate) struct Walk<'a> {
    buffer: &'a [u8],
    apparent_bytes: usize,
    apparent_bytes_max: usize,
    tables: usize,
}

impl<'a> Walk<'a> {
    #[inline]
    pub fn new(buffer: &'a [u8], apparent_bytes_max: usize) -> Self {
        Self { buffer, apparent_bytes: 0, apparent_bytes_max, tables: 0 }
    }

    /// The root table (`root_with_opts`: the offset at 0 and its table).
    #[inline]
    pub fn root(&mut self) -> Option<Table> {
        self.table_behind(0)
    }

    /// `range_in_buffer`: in the buffer, counted into the apparent size.
    #[inline]
    pub fn range(&mut self, position: usize, size: usize) -> Option<()> {
        if position.saturating_add(size) > self.buffer.len() {
            return None;
        }
        self.apparent_bytes += size;
        (self.apparent_bytes <= self.apparent_bytes_max).then_some(())
    }

    /// `in_buffer` of a scalar, whose alignment is its size.
    #[inline]
    fn scalar(&mut self, position: usize, size: usize) -> Option<()> {
        debug_assert!(size.is_power_of_two() && size <= 8);
        if position % size != 0 {
            return None;
        }
        self.range(position, size)
    }

    #[inline]
    pub fn scalar_if_present(&mut self, table: &Table, field: u16, size: usize) -> Option<()> {
        match self.field(table, field)? {
            Some(position) => self.scalar(position, size),
            None => Some(()),
        }
    }

    #[inline]
    fn u16_at(&mut self, position: usize) -> Option<usize> {
        self.scalar(position, 2)?;
        let bytes = self.buffer.get(position..position + 2)?;
        Some(usize::from(u16::from_le_bytes([bytes[0], bytes[1]])))
    }

    #[inline]
    fn u32_at(&mut self, position: usize) -> Option<u32> {
        self.scalar(position, 4)?;
        let bytes = self.buffer.get(position..position + 4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Where the unsigned offset at `position` points.
    #[inline]
    fn offset_target(&mut self, position: usize) -> Option<usize> {
        Some((self.u32_at(position)? as usize).saturating_add(position))
    }

    /// `visit_table`: the signed offset to the vtable, the vtable's length
    /// (even, in the buffer), the table and depth limits.
    #[inline]
    fn table_at(&mut self, position: usize) -> Option<Table> {
        let soffset = self.u32_at(position)? as i32;
        let vtable = if soffset > 0 {
            position.checked_sub(soffset.unsigned_abs() as usize)?
        } else {
            position.checked_add(soffset.unsigned_abs() as usize)?
        };
        let vtable_bytes = self.u16_at(vtable)?;
        if vtable.saturating_add(vtable_bytes) % 2 != 0 {
            return None;
        }
        self.range(vtable, vtable_bytes)?;
        self.tables += 1;
        (self.tables <= VERIFIER_TABLES_MAX).then_some(Table { position, vtable, vtable_bytes })
    }

    /// `deref`: the field's position, if the vtable has it and it is set.
    #[inline]
    pub fn field(&mut self, table: &Table, field: u16) -> Option<Option<usize>> {
        let field = usize::from(field);
        if field >= table.vtable_bytes {
            return Some(None);
        }
        let offset = self.u16_at(table.vtable.saturating_add(field))?;
        Some((offset > 0).then(|| table.position.saturating_add(offset)))
    }

    /// `verify_vector_range`: the length, the elements' alignment and room;
    /// the elements' range.
    #[inline]
    fn vector(&mut self, position: usize, element_bytes: usize) -> Option<std::ops::Range<usize>> {
        let length = self.u32_at(position)? as usize;
        let start = position.saturating_add(OFFSET_BYTES);
        // The length was aligned: so are elements of at most its size.
        debug_assert!(start % element_bytes == 0);
        let size = length.saturating_mul(element_bytes);
        self.range(start, size)?;
        Some(start..start.saturating_add(size))
    }

    /// The offset at `position` points at a table.
    #[inline]
    pub fn table_behind(&mut self, position: usize) -> Option<Table> {
        let target = self.offset_target(position)?;
        self.table_at(target)
    }

    /// The field at `position` points at a vector of bytes.
    #[inline]
    pub fn bytes(&mut self, position: usize) -> Option<()> {
        let target = self.offset_target(position)?;
        self.vector(target, 1).map(|_| ())
    }

    /// The field at `position` points at a vector of offsets: `visit`
    /// each of them.
    #[inline]
    pub fn each_offset(&mut self, position: usize, visit: impl Fn(&mut Walk<'a>, usize) -> Option<()>) -> Option<()> {
        let target = self.offset_target(position)?;
        let elements = self.vector(target, OFFSET_BYTES)?;
        elements.step_by(OFFSET_BYTES).try_for_each(|element| visit(self, element))
    }

    /// The field at `position` points at a string: UTF-8, followed by a
    /// zero byte.
    #[inline]
    pub fn string(&mut self, position: usize) -> Option<()> {
        let target = self.offset_target(position)?;
        let text = self.vector(target, 1)?;
        if self.buffer.get(text.end) != Some(&0) {
            return None;
        }
        std::str::from_utf8(self.buffer.get(text)?).ok().map(|_| ())
    }
}

/// One random damage to a flatbuffer, for tests that compare a written-out
/// verifier with flatbuffers' own.
#[cfg(test)]
pub(crate) use damage::answers_on_damage;

#[cfg(test)]
mod damage {
    /// Writes `value`'s low bytes at `position`, as far as the buffer goes.
    fn overwrite(message: &mut [u8], position: usize, value: u32, width: usize) {
        for (index, byte) in value.to_le_bytes().iter().take(width).enumerate() {
            if let Some(slot) = message.get_mut(position + index) {
                *slot = *byte;
            }
        }
    }

    /// One random damage: a byte, a small or large offset-sized value at an
    /// aligned position, a small or any vtable entry, a cut, or bytes added
    /// at the end.
    fn damage(message: &mut Vec<u8>, random: &mut fastrand::Rng) {
        let position = random.usize(..message.len().max(1));
        match random.u8(..6) {
            0 => overwrite(message, position, random.u32(..), 1),
            1 => {
                let value = [0, 1, 2, 3, 4, 8, 0xff, 0xffff, 0x7fff_ffff, 0x8000_0000, u32::MAX][random.usize(..11)];
                overwrite(message, position & !3, value, 4);
            }
            2 => {
                let limit = [64, 0x1_0000][random.usize(..2)];
                overwrite(message, position & !1, random.u32(..limit), 2);
            }
            3 => message.truncate(position),
            4 => message.extend((0..random.usize(1..9)).map(|_| random.u8(..))),
            _ => {
                let delta = random.i32(-16..16);
                let at = position & !3;
                if let Some(word) = message.get(at..at + 4) {
                    let value = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                    overwrite(message, at, value.wrapping_add_signed(delta), 4);
                }
            }
        }
    }

    /// Damages copies of `bases` (1 to 3 damages each, 25,000 copies of
    /// each base), asserts `agrees` on every copy, and counts the copies
    /// `verifies` refused and accepted, which the caller checks are both
    /// many: the damage reached the structure.
    pub(crate) fn answers_on_damage(
        bases: Vec<Vec<u8>>,
        seed: u64,
        verifies: fn(&[u8]) -> bool,
        agrees: fn(&[u8]) -> bool,
    ) -> (usize, usize) {
        let mut random = fastrand::Rng::with_seed(seed);
        let (mut refused, mut accepted) = (0, 0);
        for base in bases {
            for _ in 0..25_000 {
                let mut damaged = base.clone();
                for _ in 0..random.usize(1..4) {
                    damage(&mut damaged, &mut random);
                }
                assert!(agrees(&damaged), "they disagree on {damaged:?}");
                if verifies(&damaged) {
                    accepted += 1;
                } else {
                    refused += 1;
                }
            }
        }
        (refused, accepted)
    }
}
