//! `SharedCounter`: the 8-byte head/tail counters of the IO queue header.
//!
//! On amd64 the compat layout puts them at offsets 4 and 12 of the queue header (PROTOCOL.md
//! 3.2), which are not 8-aligned, so `AtomicI64` cannot be used there (it would be UB). This is
//! the one audited place that touches them: `lock xadd` for increments and plain `mov` for
//! loads, which x86 executes atomically for any access that stays inside one cache line
//! (`queue` refuses layouts where a counter straddles a line). On arm64 the layout is aligned
//! and the counter is a plain `AtomicI64`; under loom it is loom's aligned twin.
//!
//! Contract, on every implementation: `load` is at least Acquire, `fetch_add` is a SeqCst
//! read-modify-write that also acts as a SeqCst fence, and `store` is only used while the
//! region is private to its creator (formatting).

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

        /// Atomically loads the counter (x86 `mov`: Acquire, and SeqCst as loads go on x86).
        #[inline]
        pub(crate) fn load(&self) -> i64 {
            let ptr = self.cell.get().cast::<i64>();
            let value: i64;
            // SAFETY: `ptr` points to 8 valid bytes owned by `self`. A `mov` that stays within
            // one cache line is single-copy atomic on x86 even when unaligned; the queue
            // module refuses layouts where the counter crosses a line. The asm block has no
            // `nomem`/`readonly`, so the compiler treats it as a memory barrier and cannot
            // move the element reads that follow it (acquire) ahead of it.
            // SYNC: pairs with the `lock xadd` in `fetch_add` of the other side (producer's
            // tail bump / consumer's head bump), which publishes the element writes.
            unsafe {
                core::arch::asm!(
                    "mov {v}, qword ptr [{p}]",
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

        /// Loads the counter.
        #[inline]
        pub(crate) fn load(&self) -> i64 {
            // SYNC: pairs with `fetch_add` on the other side, which publishes the elements.
            self.value.load(Ordering::SeqCst)
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

#[cfg(all(not(loom), target_arch = "x86_64"))]
const _: () = {
    assert!(core::mem::size_of::<SharedCounter>() == 8);
    assert!(core::mem::align_of::<SharedCounter>() == 4);
};

#[cfg(all(test, not(loom)))]
mod tests {
    use super::SharedCounter;

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
}
