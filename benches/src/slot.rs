//! The two protocol-free references: one shared-memory slot per direction, a sequence word
//! and a payload area, handed over by busy-waiting on the word (the floor no IPC library can
//! beat on this machine) or by sleeping on it with a futex (the floor for a design that never
//! spins). The only unsafe code of the harness: raw bytes and atomics over a shared mapping.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use shmlink_linux::region::SharedRegion;

/// Bytes before a slot's payload: the sequence word and the length, padded to a cache line.
const SLOT_HEADER: usize = 64;

/// Bytes of a region holding two slots of `max` payload bytes.
pub(crate) fn region_len(max: usize) -> usize {
    2 * (SLOT_HEADER + max.next_multiple_of(64))
}

/// How a receiver waits for the next sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Spin on the word.
    Spin,
    /// `futex(FUTEX_WAIT)` on the word; the sender wakes it after every store.
    Futex,
}

/// One side's view: the slot it writes and the slot it reads.
pub(crate) struct Slots {
    region: SharedRegion,
    max: usize,
    out: usize,
    inp: usize,
    sent: u32,
    received: u32,
    wait: Wait,
}

impl Slots {
    /// The harness side creates the region (a /dev/shm file) and writes slot 0.
    pub(crate) fn create(path: &Path, max: usize, wait: Wait) -> std::io::Result<Self> {
        let region =
            SharedRegion::create_file(path, region_len(max)).map_err(std::io::Error::other)?;
        Ok(Self::new(region, max, 0, wait))
    }

    /// The peer side opens it and writes slot 1.
    pub(crate) fn open(path: &Path, max: usize, wait: Wait) -> std::io::Result<Self> {
        let region = SharedRegion::open_file(path).map_err(std::io::Error::other)?;
        if region.len() < region_len(max) {
            return Err(std::io::Error::other("slot region too small"));
        }
        Ok(Self::new(region, max, 1, wait))
    }

    fn new(region: SharedRegion, max: usize, side: usize, wait: Wait) -> Self {
        let stride = SLOT_HEADER + max.next_multiple_of(64);
        Self {
            region,
            max,
            out: side * stride,
            inp: (1 - side) * stride,
            sent: 0,
            received: 0,
            wait,
        }
    }

    /// Removes the file when this side drops (the harness's job).
    pub(crate) fn remove_on_drop(&self) {
        self.region.set_remove_on_drop(true);
    }

    fn word(&self, slot: usize) -> &AtomicU32 {
        let ptr = self
            .region
            .region()
            .bytes_ptr(slot, 4)
            .expect("slot header in range");
        // SAFETY: `slot` is a multiple of 64 inside the live mapping (4-byte aligned), the
        // mapping outlives `&self`, and the word is only ever accessed atomically, by both
        // processes.
        unsafe { AtomicU32::from_ptr(ptr.as_ptr().cast()) }
    }

    fn payload(&self, slot: usize, len: usize) -> *mut u8 {
        assert!(len <= self.max, "payload larger than the slot");
        self.region
            .region()
            .bytes_ptr(slot + SLOT_HEADER, len)
            .expect("payload in range")
            .as_ptr()
    }

    /// Writes `len` bytes with `fill` into the outgoing slot and publishes them.
    pub(crate) fn send(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) {
        let ptr = self.payload(self.out, len);
        // SAFETY: in range (checked in `payload`); the outgoing slot is written only by this
        // side, and the peer reads it only after the Release store below and before it
        // replies, which this side waits for before writing the slot again.
        fill(unsafe { std::slice::from_raw_parts_mut(ptr, len) });
        let len_word = self.payload(self.out, 0).wrapping_sub(SLOT_HEADER - 4);
        // SAFETY: offset 4 of the slot header, 4-aligned, inside the mapping; written only by
        // this side before the Release store that publishes it.
        // SYNC: Relaxed; published by the Release store of the sequence word below.
        unsafe { AtomicU32::from_ptr(len_word.cast()) }.store(len as u32, Ordering::Relaxed);
        self.sent = self.sent.wrapping_add(1);
        // SYNC: Release; pairs with the Acquire load in the peer's `recv`, which then sees
        // the payload and the length.
        self.word(self.out).store(self.sent, Ordering::Release);
        if self.wait == Wait::Futex {
            let _ = rustix::thread::futex::wake(
                self.word(self.out),
                rustix::thread::futex::Flags::empty(),
                1,
            );
        }
    }

    /// Waits for the peer's next message and hands its bytes to `read`.
    pub(crate) fn recv<R>(&mut self, read: impl FnOnce(&[u8]) -> R) -> R {
        let expected = self.received.wrapping_add(1);
        let word = self.word(self.inp);
        loop {
            // SYNC: Acquire; pairs with the peer's Release store in `send`.
            let seen = word.load(Ordering::Acquire);
            if seen == expected {
                break;
            }
            match self.wait {
                Wait::Spin => std::hint::spin_loop(),
                Wait::Futex => {
                    let _ = rustix::thread::futex::wait(
                        word,
                        rustix::thread::futex::Flags::empty(),
                        seen,
                        None,
                    );
                }
            }
        }
        self.received = expected;
        let len_word = self.payload(self.inp, 0).wrapping_sub(SLOT_HEADER - 4);
        // SAFETY: offset 4 of the peer's slot header, 4-aligned, in the mapping; read after
        // the Acquire load above.
        // SYNC: Relaxed; ordered by the Acquire load of the sequence word above.
        let len = unsafe { AtomicU32::from_ptr(len_word.cast()) }.load(Ordering::Relaxed) as usize;
        let ptr = self.payload(self.inp, len.min(self.max));
        // SAFETY: in range; the peer does not write its slot again until we reply.
        read(unsafe { std::slice::from_raw_parts(ptr, len.min(self.max)) })
    }
}
