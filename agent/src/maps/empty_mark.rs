//! One entry of `EMPTY_TRIES` (see `agent_common::maps`): the mark that lets the kernel skip
//! a pair of source tries while they are empty.

use aya::maps::{Array, MapData};

use super::{MapsError, ctx, names};

pub(crate) struct EmptyMark {
    marks: Array<MapData, u32>,
    entry: u32,
    /// What this agent last wrote. The kernel may since have cleared a ban mark, so this
    /// only spares writes of a mark the agent alone clears.
    marked: bool,
}

impl EmptyMark {
    /// The mark at `entry` of `marks`, as if set: the first `refresh` or `clear` writes it.
    pub(super) fn new(marks: Array<MapData, u32>, entry: u32) -> Self {
        Self {
            marks,
            entry,
            marked: true,
        }
    }

    /// Clears the mark, before an insert into its tries: a packet never finds a new entry
    /// hidden behind it.
    pub(crate) fn clear(&mut self) -> Result<(), MapsError> {
        if self.marked {
            self.write(false)?;
        }
        Ok(())
    }

    /// Marks the tries empty if `is_empty` says so, else clears the mark. After marking,
    /// it looks again: the kernel inserts a ban and then clears the mark, so an insert it
    /// made meanwhile is seen here, or its clear comes after this mark.
    pub(crate) fn refresh(
        &mut self,
        is_empty: impl Fn() -> Result<bool, MapsError>,
    ) -> Result<(), MapsError> {
        if is_empty()? {
            self.write(true)?;
            if is_empty()? {
                return Ok(());
            }
        }
        self.write(false)
    }

    fn write(&mut self, marked: bool) -> Result<(), MapsError> {
        let value = if marked { names::MARKED_EMPTY } else { 0 };
        self.marks
            .set(self.entry, value, 0)
            .map_err(ctx(names::EMPTY_TRIES.name))?;
        self.marked = marked;
        Ok(())
    }
}

/// True when both tries of a pair hold nothing.
pub(crate) fn both_empty<V: aya::Pod>(
    v4: &aya::maps::LpmTrie<MapData, [u8; 4], V>,
    v6: &aya::maps::LpmTrie<MapData, [u8; 16], V>,
    name: &'static str,
) -> Result<bool, MapsError> {
    let v4_empty = v4.keys().next().transpose().map_err(ctx(name))?.is_none();
    let v6_empty = v6.keys().next().transpose().map_err(ctx(name))?.is_none();
    Ok(v4_empty && v6_empty)
}
