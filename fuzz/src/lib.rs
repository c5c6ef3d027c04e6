//! Support for the fuzz targets: page-aligned zeroed memory standing in for a shared-memory
//! mapping, and a cursor that turns the fuzzer's bytes into decisions.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;

use shmlink_core::region::Region;

/// Zeroed, page-aligned heap memory that a `Region` can borrow, standing in for a mapping
/// the peer shares with us.
pub struct Mapping {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Mapping {
    /// `len` zero bytes (at least one).
    pub fn zeroed(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), 4096).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        Self {
            ptr: NonNull::new(ptr).expect("allocation failed"),
            layout,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Always false (a mapping has at least one byte).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole mapping as a `Region`.
    pub fn region(&self) -> Region<'_> {
        // SAFETY: the allocation lives as long as `self`, is page aligned, and is accessed
        // only through Regions and `poke`/`peek`, on one thread.
        unsafe { Region::from_raw(self.ptr, self.layout.size()) }
    }

    /// The peer writes `bytes` at `offset` (clipped to the mapping).
    pub fn poke(&self, offset: usize, bytes: &[u8]) {
        if offset >= self.len() {
            return;
        }
        let n = bytes.len().min(self.len() - offset);
        // SAFETY: offset..offset+n is inside the allocation (checked above); one thread.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(offset), n) };
    }

    /// Reads `len` bytes at `offset`; panics if out of the mapping (that would be our bug).
    pub fn peek(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len()),
            "read of {len} bytes at {offset} leaves a mapping of {}",
            self.len()
        );
        let mut out = vec![0u8; len];
        // SAFETY: in bounds (asserted); one thread.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), len)
        };
        out
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// The fuzzer's bytes as a stream of decisions; zeros once exhausted.
pub struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// Over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Whether every byte was used.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    /// The next two bytes, little endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// The next four bytes, little endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` of the next bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.bytes.len());
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.bytes.len())
    }
}
