//! A walk over a flatbuffer making the checks of flatbuffers' verifier
//! (23.5.26, `verifier.rs`), for verifiers written out for one schema
//! (`message_verifier`, `protocol::produce_verifier`). It answers only yes
//! or no: `None` anywhere means flatbuffers' verifier would refuse the
//! buffer, or that the buffer has a table with fields newer than the
//! checks know; `verify_with` then asks flatbuffers' verifier, for the
//! reason or for its own yes.
//!
//! As flatbuffers does, with the same `VerifierOptions`: positions are
//! checked for alignment relative to the buffer's start; every range
//! checked adds its size to an apparent size within the options' limit;
//! tables count towards the options' limit; strings are UTF-8 with a zero
//! byte after them. Depth is the caller's to bound (its schema fixes it).

use flatbuffers::{Follow, InvalidFlatbuffer, Verifiable, VerifierOptions};

const OFFSET_BYTES: usize = 4;

/// A schema's written-out checks, from the root table down.
pub(crate) type Checks = fn(&mut Walk<'_>) -> Option<()>;

/// `buffer` as a `T`: through `checks` if they say yes, else through
/// flatbuffers' verifier with the same `options`, for its reason (or its
/// yes, to a table with fields newer than `checks` know).
pub(crate) fn verify_with<'a, T>(
    buffer: &'a [u8],
    options: &VerifierOptions,
    checks: Checks,
) -> Result<T::Inner, InvalidFlatbuffer>
where
    T: Follow<'a> + Verifiable + 'a,
{
    if checks(&mut Walk::new(buffer, options)).is_some() {
        // SAFETY: `checks` say yes only where `root_with_opts::<T>` with
        // the same options would (`agrees_with_flatbuffers`, which the
        // verifiers' tests and the fuzz targets assert on every input).
        return Ok(unsafe { flatbuffers::root_unchecked::<T>(buffer) });
    }
    flatbuffers::root_with_opts::<T>(options, buffer)
}

/// Whether `checks` answer as flatbuffers' verifier does on `buffer`, or
/// say no to a table with fields newer than they know where it says yes.
/// Never a yes flatbuffers refuses.
pub(crate) fn agrees_with_flatbuffers<'a, T>(buffer: &'a [u8], options: &VerifierOptions, checks: Checks) -> bool
where
    T: Follow<'a> + Verifiable + 'a,
{
    let mut walk = Walk::new(buffer, options);
    let ours = checks(&mut walk).is_some();
    let theirs = flatbuffers::root_with_opts::<T>(options, buffer).is_ok();
    ours == theirs || (!ours && walk.met_newer_fields)
}

/// Whether `checks` say yes to `buffer` (for tests: `verify_with` is the
/// verification).
#[cfg(test)]
pub(crate) fn passes(buffer: &[u8], options: &VerifierOptions, checks: Checks) -> bool {
    checks(&mut Walk::new(buffer, options)).is_some()
}

/// A table being verified: where it is and where its vtable is.
pub(crate) struct Table {
    position: usize,
    vtable: usize,
    vtable_bytes: usize,
}

/// One verification.
pub(crate) struct Walk<'a> {
    buffer: &'a [u8],
    apparent_bytes: usize,
    apparent_bytes_max: usize,
    tables: usize,
    tables_max: usize,
    /// A table's vtable was longer than its checks know: the no is not
    /// flatbuffers' to give.
    met_newer_fields: bool,
}

impl<'a> Walk<'a> {
    #[inline]
    fn new(buffer: &'a [u8], options: &VerifierOptions) -> Self {
        Self {
            buffer,
            apparent_bytes: 0,
            apparent_bytes_max: options.max_apparent_size,
            tables: 0,
            tables_max: options.max_tables,
            met_newer_fields: false,
        }
    }

    /// The root table (`root_with_opts`: the offset at 0 and its table),
    /// as `table_behind`.
    #[inline]
    pub fn root(&mut self, last_field: u16) -> Option<Table> {
        self.table_behind(0, last_field)
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
        (self.tables <= self.tables_max).then_some(Table { position, vtable, vtable_bytes })
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

    /// The offset at `position` points at a table whose fields, as the
    /// checks know them, end with `last_field`. A longer vtable carries
    /// fields added to the schema after the checks were written (or sent by
    /// a newer peer): a no, for flatbuffers' verifier, which the generated
    /// code keeps up to date, to answer.
    #[inline]
    pub fn table_behind(&mut self, position: usize, last_field: u16) -> Option<Table> {
        let target = self.offset_target(position)?;
        let table = self.table_at(target)?;
        if table.vtable_bytes > usize::from(last_field) + 2 {
            self.met_newer_fields = true;
            return None;
        }
        Some(table)
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
