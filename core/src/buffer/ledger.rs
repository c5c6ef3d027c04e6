//! The ownership ledger: which slices this process holds, recorded in its own memory.
//!
//! The shared `IN_USE` flag is the peer's claim, and the peer can write it; it can never be
//! our proof of ownership. Each slice has two bits here: not ours, being written by us
//! (allocated and not yet sent), or received by us (delivered and not yet recycled). Every
//! allocation, received chain, hand-over and recycle makes one checked transition, so a slice
//! can never have two owners in this process: a peer that names a slice we are still writing,
//! or announces one chain twice, is caught here and reported with the slice's offset.
//!
//! Nothing here is shared with the peer; the atomics only serialise threads of this process.

use core::fmt;

use crate::sync::{AtomicU32, Ordering};

/// Slices per ledger word (two bits each).
pub const SLICES_PER_WORD: u32 = 16;

/// One word of the ledger: the states of 16 slices. Storage for the `_in` constructors of
/// [`BufferManager`](super::BufferManager) when there is no heap.
#[derive(Default)]
pub struct LedgerWord(AtomicU32);

impl fmt::Debug for LedgerWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Ledger words needed for `slices` slices.
pub const fn ledger_words(slices: u32) -> usize {
    slices.div_ceil(SLICES_PER_WORD) as usize
}

/// What this process holds of one slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Not ours: free, or the peer's.
    NotOurs,
    /// Allocated by us and not yet sent (or sent and taken back after a failed push).
    Writing,
    /// Received from the peer and not yet recycled.
    Received,
    /// Recycled by us into the free list, and not popped by us since. The peer may pop it
    /// (its flags then say IN_USE) and send it; a chain naming it with IN_USE clear is one
    /// we already had and gave back: announced again.
    Recycled,
}

impl Ownership {
    const fn bits(self) -> u32 {
        match self {
            Self::NotOurs => 0,
            Self::Writing => 1,
            Self::Received => 2,
            Self::Recycled => 3,
        }
    }

    const fn from_bits(bits: u32) -> Self {
        match bits & 3 {
            1 => Self::Writing,
            2 => Self::Received,
            3 => Self::Recycled,
            _ => Self::NotOurs,
        }
    }
}

#[cfg(feature = "alloc")]
type Owned = alloc::sync::Arc<[LedgerWord]>;

/// The ledger's storage: borrowed (no heap) or shared between clones of one manager.
#[derive(Clone)]
pub(crate) enum Ledger<'a> {
    Borrowed(&'a [LedgerWord]),
    #[cfg(feature = "alloc")]
    Owned(Owned),
}

impl fmt::Debug for Ledger<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("words", &self.words().len())
            .finish()
    }
}

impl<'a> Ledger<'a> {
    /// A heap ledger for `slices` slices, all not ours.
    #[cfg(feature = "alloc")]
    pub(crate) fn new(slices: u32) -> Self {
        let words: alloc::vec::Vec<LedgerWord> = (0..ledger_words(slices))
            .map(|_| LedgerWord::default())
            .collect();
        Self::Owned(Owned::from(words))
    }

    fn words(&self) -> &[LedgerWord] {
        match self {
            Self::Borrowed(words) => words,
            #[cfg(feature = "alloc")]
            Self::Owned(words) => words,
        }
    }

    /// Whether the ledger can record `slices` slices.
    pub(crate) fn covers(&self, slices: u32) -> bool {
        self.words().len() >= ledger_words(slices)
    }

    /// The state of slice `index`.
    pub(crate) fn get(&self, index: u32) -> Ownership {
        let (word, shift) = Self::locate(index);
        self.words().get(word).map_or(Ownership::NotOurs, |w| {
            // SYNC: process-local; pairs with the AcqRel CAS in `transition`.
            Ownership::from_bits(w.0.load(Ordering::Acquire) >> shift)
        })
    }

    /// Moves slice `index` from `from` to `to`; on refusal returns the state found.
    pub(crate) fn transition(
        &self,
        index: u32,
        from: Ownership,
        to: Ownership,
    ) -> Result<(), Ownership> {
        self.transition_from(index, |found| found == from, to)
            .map(|_| ())
    }

    /// Moves slice `index` to `to` from whichever state `accept` takes, in one CAS; returns
    /// the state it left, or on refusal the state found.
    pub(crate) fn transition_from(
        &self,
        index: u32,
        accept: impl Fn(Ownership) -> bool,
        to: Ownership,
    ) -> Result<Ownership, Ownership> {
        let (word, shift) = Self::locate(index);
        let Some(word) = self.words().get(word) else {
            return Err(Ownership::NotOurs);
        };
        let mask = 3 << shift;
        // SYNC: process-local; Acquire pairs with the AcqRel CAS of the thread that made the
        // previous transition of this slice (e.g. the driver's receive before a reader's
        // recycle), so each transition sees the one before it.
        let mut current = word.0.load(Ordering::Acquire);
        loop {
            let found = Ownership::from_bits(current >> shift);
            if !accept(found) {
                return Err(found);
            }
            let new = (current & !mask) | (to.bits() << shift);
            // SYNC: AcqRel CAS, pairs with the same CAS of other threads on this word.
            match word
                .0
                .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(found),
                Err(actual) => current = actual,
            }
        }
    }

    const fn locate(index: u32) -> (usize, u32) {
        (
            (index / SLICES_PER_WORD) as usize,
            (index % SLICES_PER_WORD) * 2,
        )
    }
}
