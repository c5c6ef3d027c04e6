//! `SharedCounter`: the 8-byte head/tail counters of the IO queue header.
//!
//! On amd64 the compat layout puts them at offsets 4 and 12 of the queue header (PROTOCOL.md
//! 3.2), which are not 8-aligned, so `AtomicI64` cannot be used there (it would be UB). This is
//! the one audited place that touches them: `lock xadd` for increments (atomic for any access
//! inside one cache line; `queue` refuses layouts where a counter straddles a line, which would
//! be a split lock) and a high-low-high read of the two aligned 4-byte halves for loads, which
//! is atomic on Intel and AMD alike (a plain unaligned `mov` is not, on AMD). On arm64 the
//! layout is aligned and the counter is a plain `AtomicI64`; under loom it is loom's aligned
//! twin.
//!
//! Contract, on every implementation: `load` is an Acquire load and no stronger (the loom twin
//! must not be stronger than the hardware, or models pass that the hardware would fail),
//! `fetch_add` is a SeqCst read-modify-write that also acts as a SeqCst fence (x86's locked
//! instructions are full barriers), and `store` is only used while the region is private to its
//! creator (formatting).

#[cfg(all(not(loom), target_arch = "x86_64"))]
mod imp {
    use core::cell::UnsafeCell;

    /// A 64-bit counter with 4-byte alignment, accessed atomically with inline assembly.
    #[repr(C, align(4))]
    pub(crate) struct SharedCounter {
        cell: UnsafeCell<[u32; 2]>,
    }

    // SAFETY: every access to `cell` goes through the atomic instructions below, so
    // concurrent use from several threads (or processes) never races at the language level.
    unsafe impl Sync for SharedCounter {}

    impl SharedCounter {
        /// A counter starting at `value` (for heap-allocated queues and tests).
        pub(crate) const fn new(value: i64) -> Self {
            let v = value as u64;
            Self {
                cell: UnsafeCell::new([v as u32, (v >> 32) as u32]),
            }
        }

        /// Atomically loads the counter.
        ///
        /// Intel makes an unaligned 8-byte `mov` inside one cache line atomic, but AMD's
        /// manual promises atomicity only inside an aligned 8-byte block, and offsets 4 and 12
        /// cross one: a plain `mov` could see the low half after a carry and the high half
        /// before it. So the counter is read as high, low, high with aligned 4-byte loads
        /// (each atomic on every x86) and retried until both highs agree. Each counter has one
        /// writer that only adds, so equal highs mean the low half belongs to them. A peer
        /// that rewrites the counter arbitrarily can make us read any value, as it could
        /// anyway; callers validate it, and the retries are bounded.
        ///
        /// If the highs keep disagreeing (the counter is moving by 2^32 at a time, which only a
        /// peer rewriting it can do), the value is read with `lock xadd` of 0 instead: atomic
        /// whatever the alignment, never torn, at the price of a write to the line.
        #[inline]
        pub(crate) fn load(&self) -> i64 {
            super::hi_lo_hi(|half| self.load_half(half)).unwrap_or_else(|| self.fetch_add(0))
        }

        /// One aligned 4-byte load of the low (0) or high (1) half.
        #[inline]
        fn load_half(&self, half: usize) -> u32 {
            let ptr = self.cell.get().cast::<u32>().wrapping_add(half & 1);
            let value: u32;
            // SAFETY: `ptr` points to one of the two 4-aligned halves owned by `self`; an
            // aligned 4-byte `mov` is atomic on every x86. The asm block has no
            // `nomem`/`readonly`, so the compiler treats it as a memory barrier and keeps the
            // loads (and the element reads that follow) in program order; x86 does not reorder
            // loads with loads, so the hardware keeps them in order too (acquire).
            // SYNC: pairs with the `lock xadd` in `fetch_add` of the other side (producer's
            // tail bump / consumer's head bump), which publishes the element writes.
            unsafe {
                core::arch::asm!(
                    "mov {v:e}, dword ptr [{p}]",
                    p = in(reg) ptr,
                    v = out(reg) value,
                    options(nostack, preserves_flags),
                );
            }
            value
        }

        /// Atomically adds `delta` and returns the previous value (`lock xadd`: a SeqCst
        /// read-modify-write and a full fence).
        #[inline]
        pub(crate) fn fetch_add(&self, delta: i64) -> i64 {
            let ptr = self.cell.get().cast::<i64>();
            let mut value = delta;
            // SAFETY: as in `load`; a LOCK-prefixed RMW is atomic and a full barrier even when
            // unaligned (within one cache line, see above).
            // SYNC: pairs with `load` on the other side; as a full fence it also orders the
            // tail bump before the working-flag CAS (PROTOCOL.md 3.6 Dekker pair).
            unsafe {
                core::arch::asm!(
                    "lock xadd qword ptr [{p}], {v}",
                    p = in(reg) ptr,
                    v = inout(reg) value,
                    options(nostack),
                );
            }
            value
        }

        /// Stores `value` (`xchg`, SeqCst). Used when formatting a region nobody else maps yet.
        #[inline]
        pub(crate) fn store(&self, value: i64) {
            let ptr = self.cell.get().cast::<i64>();
            let mut v = value;
            // SAFETY: as in `load`; `xchg` with memory is implicitly locked and atomic.
            // SYNC: formatting happens before the region is shared; the socket handshake that
            // hands the region over orders it for the peer.
            unsafe {
                core::arch::asm!(
                    "xchg qword ptr [{p}], {v}",
                    p = in(reg) ptr,
                    v = inout(reg) v,
                    options(nostack, preserves_flags),
                );
            }
            let _ = v;
        }
    }
}

#[cfg(any(loom, not(target_arch = "x86_64")))]
mod imp {
    #[cfg(not(loom))]
    use core::sync::atomic::{AtomicI64, Ordering, fence};
    #[cfg(loom)]
    use loom::sync::atomic::{AtomicI64, Ordering, fence};

    /// A 64-bit counter in an aligned layout (arm64's queue header, and loom models).
    #[repr(transparent)]
    pub(crate) struct SharedCounter {
        value: AtomicI64,
    }

    impl SharedCounter {
        /// A counter starting at `value` (for heap-allocated queues and tests).
        #[cfg(not(loom))]
        pub(crate) const fn new(value: i64) -> Self {
            Self {
                value: AtomicI64::new(value),
            }
        }

        /// A counter starting at `value` (for heap-allocated queues and tests).
        #[cfg(loom)]
        pub(crate) fn new(value: i64) -> Self {
            Self {
                value: AtomicI64::new(value),
            }
        }

        /// Loads the counter: Acquire, exactly what x86's `mov` gives and no more. A SeqCst
        /// load here would, under loom, synchronise with earlier SeqCst fences and hide a
        /// missing fence in the algorithms (see `loom-tests/tests/queue.rs`).
        #[inline]
        pub(crate) fn load(&self) -> i64 {
            // SYNC: acquire; pairs with `fetch_add` (release half) on the other side, which
            // publishes the elements.
            self.value.load(Ordering::Acquire)
        }

        /// Adds `delta`, returning the previous value; a SeqCst RMW followed by a SeqCst fence
        /// so that it orders like x86's `lock xadd` (loom treats SeqCst accesses as AcqRel,
        /// but models SeqCst fences).
        #[inline]
        pub(crate) fn fetch_add(&self, delta: i64) -> i64 {
            // SYNC: release half pairs with `load` on the other side.
            let old = self.value.fetch_add(delta, Ordering::SeqCst);
            // SYNC: pairs with the consumer's fence between "working flag = 0" and its tail
            // load (queue::Consumer::finish_drain): the Dekker pair of PROTOCOL.md 3.6.
            fence(Ordering::SeqCst);
            old
        }

        /// Stores `value`. Used when formatting a region nobody else maps yet.
        #[cfg_attr(loom, allow(dead_code))]
        #[inline]
        pub(crate) fn store(&self, value: i64) {
            // SYNC: formatting precedes sharing; the handshake orders it for the peer.
            self.value.store(value, Ordering::SeqCst);
        }
    }
}

pub(crate) use imp::SharedCounter;

/// Bound on high-low-high retries: the high half changes once per 2^32 increments, so a
/// second attempt practically always succeeds; only a counter moving by 2^32 at a time (a
/// peer rewriting it) can exhaust this, and then the caller reads it with a locked RMW.
#[cfg_attr(not(all(not(loom), target_arch = "x86_64")), allow(dead_code))]
const LOAD_ATTEMPTS: u32 = 16;

/// Reads a 64-bit counter whose single writer only adds, from two 32-bit halves read by
/// `read(0)` (low) and `read(1)` (high) in program order: high, low, high, retried until the
/// two highs agree. Equal highs mean no carry happened between them, so the low half belongs
/// to that high half. `None` when they never agreed in [`LOAD_ATTEMPTS`] tries: the halves
/// of the last try may belong to different values, and are not returned.
#[cfg_attr(not(all(not(loom), target_arch = "x86_64")), allow(dead_code))]
#[inline]
fn hi_lo_hi(mut read: impl FnMut(usize) -> u32) -> Option<i64> {
    for _ in 0..LOAD_ATTEMPTS {
        let hi = read(1);
        let lo = read(0);
        let again = read(1);
        if hi == again {
            return Some(((u64::from(hi) << 32) | u64::from(lo)) as i64);
        }
    }
    None
}

#[cfg(all(not(loom), target_arch = "x86_64"))]
const _: () = {
    assert!(core::mem::size_of::<SharedCounter>() == 8);
    assert!(core::mem::align_of::<SharedCounter>() == 4);
};

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;

    use super::{SharedCounter, hi_lo_hi};

    /// The interleaving AMD permits for an unaligned `mov` across an aligned 8-byte block:
    /// the high half read before a carry, the low half after it. A single 8-byte read of that
    /// moment would give 0x0_0000_0000 for a counter going from 0x0_FFFF_FFFF to
    /// 0x1_0000_0000; high-low-high sees the highs differ and reads again.
    #[test]
    fn a_carry_between_the_halves_is_retried_not_returned() {
        // Reads in order: hi (before the carry), lo (after), hi (after); then a clean triple.
        let script = [0u32, 0, 1, 1, 0, 1];
        let mut at = 0;
        let value = hi_lo_hi(|half| {
            let v = script[at];
            at += 1;
            // The script lists highs at positions 0, 2, 3, 5 and lows at 1, 4.
            assert_eq!(
                half,
                usize::from(at % 3 != 2),
                "read order is high, low, high"
            );
            v
        });
        assert_eq!(value, Some(0x1_0000_0000));
        assert_eq!(at, 6);
    }

    /// Highs that never agree give no value (the caller then reads with a locked RMW): the
    /// last halves read are never glued together. Before, the 16th torn pair was returned,
    /// and `load_is_never_torn_across_the_aligned_eight_byte_boundary` failed now and then.
    #[test]
    fn highs_that_never_agree_give_no_value_not_a_torn_one() {
        let mut high = 0u32;
        let value = hi_lo_hi(|half| {
            if half == 1 {
                high += 1;
                high
            } else {
                0xffff_ffff
            }
        });
        assert_eq!(value, None);
        assert_eq!(high, 2 * super::LOAD_ATTEMPTS);
    }

    #[test]
    fn fetch_add_returns_previous_value_and_load_sees_sum() {
        let c = SharedCounter::new(-3);
        assert_eq!(c.fetch_add(5), -3);
        assert_eq!(c.fetch_add(1 << 40), 2);
        assert_eq!(c.load(), 2 + (1 << 40));
        c.store(7);
        assert_eq!(c.load(), 7);
    }

    #[test]
    fn counter_works_at_an_unaligned_offset() {
        // Four-byte aligned but not eight: exactly the amd64 queue header situation.
        #[repr(C)]
        struct Hdr {
            cap: u32,
            head: SharedCounter,
        }
        let h = Hdr {
            cap: 1,
            head: SharedCounter::new(0),
        };
        assert_eq!(core::mem::offset_of!(Hdr, head), 4);
        for _ in 0..1000 {
            h.head.fetch_add(1);
        }
        assert_eq!(h.head.load(), 1000);
        assert_eq!(h.cap, 1);
    }

    /// Every `fetch_add` of `2^32 - 1` changes both halves of the counter, so a load that
    /// reads the halves at different moments sees a value that is not `start + k × step`.
    /// The counter sits at offset 4 of an 8-aligned block, straddling an aligned 8-byte
    /// boundary exactly like the amd64 queue header's head and tail.
    #[test]
    fn load_is_never_torn_across_the_aligned_eight_byte_boundary() {
        #[repr(C, align(64))]
        struct Line {
            pad: u32,
            counter: SharedCounter,
        }
        const STEP: i64 = (1 << 32) - 1;
        const ADDS: u64 = 2_000_000;
        let start: i64 = 0x0000_0001_0000_0000;
        let line = Line {
            pad: 0,
            counter: SharedCounter::new(start),
        };
        assert_eq!(core::mem::offset_of!(Line, counter), 4);
        let done = core::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..ADDS {
                    line.counter.fetch_add(STEP);
                }
                done.store(true, core::sync::atomic::Ordering::Release);
            });
            let mut last = start;
            let mut loads = 0u64;
            while !done.load(core::sync::atomic::Ordering::Acquire) || loads < 1000 {
                let v = line.counter.load();
                assert_eq!((v - start) % STEP, 0, "torn load: {v:#x}");
                assert!(v >= last, "went backwards: {v:#x} after {last:#x}");
                last = v;
                loads += 1;
            }
        });
        assert_eq!(line.counter.load(), start + STEP * ADDS as i64);
        assert_eq!(line.pad, 0);
    }
}
