//! `Region`: a borrowed view of one shared-memory mapping, and the checked casts from byte
//! offsets to the `#[repr(C)]` header types that live in it.
//!
//! This module never maps anything (core makes no OS call); a backend maps and hands out a
//! `Region`. It must never produce a reference that is out of bounds or misaligned.

use core::marker::PhantomData;
use core::ptr::NonNull;

/// A shared-memory mapping, borrowed for `'a`.
///
/// The bytes may change at any time (the peer process writes them), so `Region` never hands
/// out `&[u8]` or `&mut [u8]` itself: header fields are read through atomics, and payload
/// bytes through raw pointers whose use the caller justifies.
#[derive(Clone, Copy, Debug)]
pub struct Region<'a> {
    base: NonNull<u8>,
    len: usize,
    _mapping: PhantomData<&'a [u8]>,
}

// SAFETY: a Region is a pointer and a length into memory that is only accessed through
// atomics (headers) or by explicit unsafe code that reasons about concurrent writers (payload).
// Sharing the view between threads adds nothing a second process cannot already do.
unsafe impl Send for Region<'_> {}
// SAFETY: as above.
unsafe impl Sync for Region<'_> {}

/// A view of `count` values of `T` spaced `stride` bytes apart: the slice headers of a list
/// (with the slice data between them), or a dense array standing in for them in tests.
pub(crate) struct Strided<'a, T> {
    base: NonNull<T>,
    stride: usize,
    count: u32,
    _items: PhantomData<&'a [T]>,
}

impl<T> Clone for Strided<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Strided<'_, T> {}

// SAFETY: a Strided is a shared borrow of `T`s; it is Send/Sync exactly when `&T` is.
unsafe impl<T: Sync> Send for Strided<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for Strided<'_, T> {}

impl<'a, T> Strided<'a, T> {
    /// A dense array; `None` if it has more than `u32::MAX` items.
    pub(crate) fn dense(items: &'a [T]) -> Option<Self> {
        Some(Self {
            base: NonNull::from(items).cast(),
            stride: core::mem::size_of::<T>(),
            count: u32::try_from(items.len()).ok()?,
            _items: PhantomData,
        })
    }

    /// `count` values `stride` bytes apart from the start of `region`, if they fit and every
    /// one is aligned.
    #[cfg(not(loom))]
    pub(crate) fn in_region(region: Region<'a>, stride: usize, count: u32) -> Option<Self>
    where
        T: SharedLayout,
    {
        let size = core::mem::size_of::<T>();
        if stride < size || stride % core::mem::align_of::<T>() != 0 {
            return None;
        }
        let span = match count {
            0 => 0,
            n => stride.checked_mul(n as usize - 1)?.checked_add(size)?,
        };
        let region = region.sub(0, span)?;
        let base = region.base.cast::<T>();
        if !base.as_ptr().is_aligned() {
            return None;
        }
        Some(Self {
            base,
            stride,
            count,
            _items: PhantomData,
        })
    }

    /// Number of items.
    pub(crate) fn len(&self) -> u32 {
        self.count
    }

    /// The item at `index`, if in range.
    pub(crate) fn get(&self, index: u32) -> Option<&'a T> {
        if index >= self.count {
            return None;
        }
        // SAFETY: index < count, and both constructors guarantee that `count` aligned `T`s
        // spaced `stride` apart lie in memory borrowed for 'a: a slice (`dense`) or a checked
        // sub-region of shared memory holding SharedLayout types (`in_region`).
        Some(unsafe { self.base.byte_add(index as usize * self.stride).as_ref() })
    }
}

/// Types that may be overlaid on shared memory: `#[repr(C)]`, made only of atomics, every bit
/// pattern valid, alignment at most 4.
///
/// # Safety
///
/// Implementors must satisfy the description above; `Region::layout_at` relies on it.
#[cfg(not(loom))]
pub(crate) unsafe trait SharedLayout: Sized {}

// SAFETY (all impls below): each type is #[repr(C)], made only of atomics of at most 4-byte
// alignment (SharedCounter is a 4-aligned asm cell on amd64 and sits at 8-aligned offsets on
// arm64), and every bit pattern is a valid value; the const asserts next to each type check
// its size and offsets.
#[cfg(not(loom))]
// SAFETY: see above.
unsafe impl SharedLayout for crate::queue::QueueHeader {}
#[cfg(not(loom))]
// SAFETY: see above.
unsafe impl SharedLayout for crate::queue::ElementSlot {}
#[cfg(not(loom))]
// SAFETY: see above.
unsafe impl SharedLayout for crate::slice::SliceHeader {}
#[cfg(not(loom))]
// SAFETY: see above.
unsafe impl SharedLayout for crate::buffer::BufferManagerHeader {}
#[cfg(not(loom))]
// SAFETY: see above.
unsafe impl SharedLayout for crate::buffer::ListHeader {}

impl<'a> Region<'a> {
    /// Wraps `len` bytes at `base`.
    ///
    /// # Safety
    ///
    /// For all of `'a`, `base..base+len` must be a live mapping, readable and writable, that is
    /// only ever accessed by this process through `Region` (and by peers through the shmipc
    /// protocol); `base` must be at least 8-byte aligned (mappings are page aligned).
    pub unsafe fn from_raw(base: NonNull<u8>, len: usize) -> Self {
        Self {
            base,
            len,
            _mapping: PhantomData,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte of the mapping.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.base
    }

    /// The sub-region `[offset, offset + len)`, if it lies inside this one.
    pub fn sub(&self, offset: usize, len: usize) -> Option<Region<'a>> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: in bounds of a live mapping (checked above), so the pointer is non-null and
        // valid for the same lifetime.
        let base = unsafe { self.base.add(offset) };
        Some(Region {
            base,
            len,
            _mapping: PhantomData,
        })
    }

    /// A pointer to `len` payload bytes at `offset`, if they lie inside the region.
    ///
    /// The peer may write these bytes concurrently; whoever dereferences the pointer must
    /// account for that.
    pub fn bytes_ptr(&self, offset: usize, len: usize) -> Option<NonNull<u8>> {
        self.sub(offset, len).map(|r| r.base)
    }

    /// The `T` at `offset`, if it fits and is aligned.
    #[cfg(not(loom))]
    pub(crate) fn layout_at<T: SharedLayout>(&self, offset: usize) -> Option<&'a T> {
        let size = core::mem::size_of::<T>();
        let region = self.sub(offset, size)?;
        let ptr = region.base.cast::<T>();
        if !ptr.as_ptr().is_aligned() {
            return None;
        }
        // SAFETY: `ptr` is in bounds (checked by `sub`) and aligned (checked above); `T` is a
        // SharedLayout, so any bytes are a valid `T` and all access is atomic, which makes a
        // shared reference sound even while the peer writes.
        Some(unsafe { ptr.as_ref() })
    }

    /// `count` consecutive `T`s starting at `offset`, if they fit and are aligned.
    #[cfg(not(loom))]
    pub(crate) fn layout_slice_at<T: SharedLayout>(
        &self,
        offset: usize,
        count: usize,
    ) -> Option<&'a [T]> {
        let size = core::mem::size_of::<T>().checked_mul(count)?;
        let region = self.sub(offset, size)?;
        let ptr = region.base.cast::<T>();
        if !ptr.as_ptr().is_aligned() {
            return None;
        }
        // SAFETY: as in `layout_at`, for `count` elements, all in bounds.
        Some(unsafe { core::slice::from_raw_parts(ptr.as_ptr(), count) })
    }
}
