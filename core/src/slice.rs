//! The buffer slice: a 20-byte header followed by `cap` data bytes, the unit the buffer
//! manager hands out and a message chain links together (PROTOCOL.md 4.4).
//!
//! Every field is read through an atomic so that a concurrent (or hostile) peer can never
//! cause a data race; readers take one [`SliceSnapshot`] and validate only that.

use bitflags::bitflags;

use crate::sync::{AtomicU8, AtomicU32, Ordering};

/// Bytes of a slice header.
pub const SLICE_HEADER_SIZE: usize = 20;

bitflags! {
    /// The flags byte at offset 16 of a slice header.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SliceFlags: u8 {
        /// `next` is valid: another slice follows (in a free list or in a message chain).
        const HAS_NEXT = 0x01;
        /// The slice is allocated (popped from its free list and not yet recycled).
        const IN_USE = 0x02;
    }
}

/// A slice header in shared memory (all fields native-endian).
#[repr(C)]
#[derive(Default)]
pub struct SliceHeader {
    pub(crate) cap: AtomicU32,
    pub(crate) len: AtomicU32,
    pub(crate) start: AtomicU32,
    pub(crate) next: AtomicU32,
    pub(crate) flags: AtomicU8,
    reserved: [AtomicU8; 3],
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<SliceHeader>() == SLICE_HEADER_SIZE);
    assert!(align_of::<SliceHeader>() == 4);
    assert!(offset_of!(SliceHeader, cap) == 0);
    assert!(offset_of!(SliceHeader, len) == 4);
    assert!(offset_of!(SliceHeader, start) == 8);
    assert!(offset_of!(SliceHeader, next) == 12);
    assert!(offset_of!(SliceHeader, flags) == 16);
    assert!(offset_of!(SliceHeader, reserved) == 17);
};

/// One consistent read of a slice header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceSnapshot {
    /// Data capacity in bytes.
    pub cap: u32,
    /// Valid data bytes.
    pub len: u32,
    /// Offset of the first valid byte inside the data area.
    pub start: u32,
    /// Link to the next slice (meaning depends on state, PROTOCOL.md 4.5).
    pub next: u32,
    /// The flags byte; unknown bits are kept so validation can see them.
    pub flags: u8,
}

impl SliceSnapshot {
    /// The known flags.
    pub fn flags(&self) -> SliceFlags {
        SliceFlags::from_bits_truncate(self.flags)
    }
}

impl SliceHeader {
    /// A header as the creator formats it: `cap` bytes, empty, linked to `next` if given.
    pub fn new(cap: u32, next: Option<u32>) -> Self {
        let header = Self::default();
        header.init(cap, next);
        header
    }

    pub(crate) fn init(&self, cap: u32, next: Option<u32>) {
        // SYNC: formatting a private region; published by the handshake.
        self.cap.store(cap, Ordering::Relaxed);
        self.len.store(0, Ordering::Relaxed);
        self.start.store(0, Ordering::Relaxed);
        self.next.store(next.unwrap_or(0), Ordering::Relaxed);
        let flags = if next.is_some() {
            SliceFlags::HAS_NEXT
        } else {
            SliceFlags::empty()
        };
        self.flags.store(flags.bits(), Ordering::Relaxed);
    }

    /// Reads every field once.
    pub fn snapshot(&self) -> SliceSnapshot {
        // SYNC: acquire on flags pairs with the release store of flags by whoever linked or
        // handed over this slice (free-list push, or the sender's queue push, which also
        // releases); the other fields were written before that store.
        let flags = self.flags.load(Ordering::Acquire);
        SliceSnapshot {
            cap: self.cap.load(Ordering::Relaxed),
            len: self.len.load(Ordering::Relaxed),
            start: self.start.load(Ordering::Relaxed),
            next: self.next.load(Ordering::Relaxed),
            flags,
        }
    }

    /// The flags byte.
    pub fn flags(&self) -> SliceFlags {
        // SYNC: pairs with the release stores of flags (push links, chain links).
        SliceFlags::from_bits_truncate(self.flags.load(Ordering::Acquire))
    }
}
