//! Test support: page-aligned heap memory standing in for a shared-memory mapping, and
//! the recorded Go fixtures.

#![allow(dead_code, unreachable_pub)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io::Read;
use std::ptr::NonNull;

use shmlink_core::buffer::BufferManager;
use shmlink_core::region::Region;

/// Zeroed, page-aligned memory that a `Region` can borrow.
pub struct Mapping {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Mapping {
    pub fn zeroed(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), 4096).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        Self {
            ptr: NonNull::new(ptr).expect("allocation failed"),
            layout,
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Self {
        let m = Self::zeroed(bytes.len());
        // SAFETY: the mapping holds at least bytes.len() bytes and nothing borrows it yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.ptr.as_ptr(), bytes.len()) };
        m
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    pub fn region(&self) -> Region<'_> {
        // SAFETY: the allocation lives as long as `self`, is page aligned, and is only
        // accessed through the returned Region (or `bytes`, when no Region is in use).
        unsafe { Region::from_raw(self.ptr, self.layout.size()) }
    }

    /// A copy of the bytes; call only while no other thread touches the mapping.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.layout.size()];
        // SAFETY: the allocation holds `size` bytes; single-threaded use (see above).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr(), out.as_mut_ptr(), out.len()) };
        out
    }

    /// Overwrites bytes at `offset`, standing in for a peer writing shared memory.
    pub fn poke(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len());
        // SAFETY: in bounds (checked); single-threaded use.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            )
        };
    }

    pub fn u32_at(&self, offset: usize) -> u32 {
        let b = self.bytes_at(offset, 4);
        u32::from_le_bytes(b.try_into().unwrap())
    }

    pub fn bytes_at(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.len());
        let mut out = vec![0u8; len];
        // SAFETY: in bounds (checked); single-threaded use.
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

pub fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn gunzip_fixture(name: &str) -> Vec<u8> {
    let file = std::fs::File::open(fixture_path(name)).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(file)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The socket messages of go-memfd-v3-client.txt: (direction, bytes).
pub fn recorded_frames() -> Vec<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(fixture_path("go-memfd-v3-client.txt")).unwrap();
    let mut frames = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(dir @ ("C->S" | "S->C")) = words.next() else {
            continue;
        };
        let hex: String = words
            .take_while(|w| w.chars().all(|c| c.is_ascii_hexdigit()))
            .collect();
        if hex.is_empty() {
            continue; // the sendmsg line: one 0x00 byte plus SCM_RIGHTS, not a frame
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        frames.push((dir.to_owned(), bytes));
    }
    frames
}

/// The peer allocates and links one slice per length, as a sender does before its push, and
/// gives up its claim on them (`hand_over`): the chain is ready to be announced.
pub fn peer_sends(peer: &BufferManager<'_>, lens: &[u32]) -> Vec<u32> {
    let mut slices: Vec<u32> = Vec::new();
    for &len in lens {
        let abs = peer.alloc(u64::from(len.max(1))).unwrap().first();
        peer.set_len(abs, len).unwrap();
        if let Some(&prev) = slices.last() {
            peer.link(prev, abs).unwrap();
        }
        slices.push(abs);
    }
    for &abs in &slices {
        peer.hand_over(abs).unwrap();
    }
    slices
}
