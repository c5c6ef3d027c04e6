//! One buffer list: a lock-free FIFO free list of equally sized slices shared by both
//! processes (PROTOCOL.md 4.3, 4.6, 4.7). Allocation pops at the head, recycling pushes at the
//! tail, and the last free slice is never handed out so head never overtakes tail.
//!
//! The compat layout has no ABA tag on `head`. A pop that stalls between reading the head
//! slice's `next` and its CAS can succeed wrongly if, meanwhile, the whole free list rotated
//! back to the same head (see `loom-tests/tests/buffer.rs` for the model that exhibits it).

use core::fmt;

#[cfg(not(loom))]
use crate::region::Region;
use crate::region::Strided;
use crate::slice::{SLICE_HEADER_SIZE, SliceFlags, SliceHeader};
use crate::sync::{AtomicI32, AtomicU32, Ordering, spin_hint};

use super::{BufferError, Role, SliceFault};

/// The `next` a recycled slice carries until the following recycle links it: never a slice
/// offset (slice offsets are multiples of the stride below the list's size).
pub const NO_NEXT: u32 = u32::MAX;

/// Bytes of a buffer list header.
pub const LIST_HEADER_SIZE: usize = 36;
/// Consecutive reads of an out-of-list `next` under an unchanged head that make a pop report
/// corruption instead of a race it lost.
const BAD_NEXT_READS: u32 = 3;
/// Go's bound on CAS attempts in one pop.
pub const POP_ATTEMPTS: u32 = 200;
/// Bound on tail CAS attempts in one push. Each failure means another push succeeded, so
/// this is only reached if a peer rewrites the tail continuously; it turns that into an
/// error instead of a hang.
pub const PUSH_ATTEMPTS: u32 = 1 << 20;

/// The 36-byte header of one buffer list (all fields native-endian).
#[repr(C)]
#[derive(Default)]
pub struct ListHeader {
    /// Free slices; decremented speculatively by pop.
    size: AtomicI32,
    /// Total slices; constant.
    cap: AtomicU32,
    /// Offset of the first free slice, relative to the list's slice region.
    head: AtomicU32,
    /// Offset of the last free slice, relative to the list's slice region.
    tail: AtomicU32,
    /// Data bytes per slice; constant.
    cap_per_buffer: AtomicU32,
    /// Outstanding slices popped by the process that created the region.
    counter_creator: AtomicI32,
    /// The same counter for the process that mapped the region (Go's offset quirk).
    counter_mapper: AtomicI32,
    reserved: [AtomicU32; 2],
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<ListHeader>() == LIST_HEADER_SIZE);
    assert!(align_of::<ListHeader>() == 4);
    assert!(offset_of!(ListHeader, size) == 0);
    assert!(offset_of!(ListHeader, cap) == 4);
    assert!(offset_of!(ListHeader, head) == 8);
    assert!(offset_of!(ListHeader, tail) == 12);
    assert!(offset_of!(ListHeader, cap_per_buffer) == 16);
    assert!(offset_of!(ListHeader, counter_creator) == 20);
    assert!(offset_of!(ListHeader, counter_mapper) == 24);
    assert!(offset_of!(ListHeader, reserved) == 28);
};

impl ListHeader {
    /// `(capPerBuffer, cap)` as stored; used to locate a list's slices before validating it.
    #[cfg(not(loom))]
    pub(crate) fn geometry(&self) -> (u32, u32) {
        // SYNC: constants written before the handshake that handed over the region.
        (
            self.cap_per_buffer.load(Ordering::Relaxed),
            self.cap.load(Ordering::Relaxed),
        )
    }
}

/// A point-in-time reading of a list header, for metrics and debugging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListStats {
    /// Data bytes per slice.
    pub slice_size: u32,
    /// Total slices.
    pub cap: u32,
    /// Free slices (may be momentarily low while a pop is in flight).
    pub free: i32,
    /// Relative offset of the first free slice.
    pub head: u32,
    /// Relative offset of the last free slice.
    pub tail: u32,
    /// The counter at header offset 20 (creator's view).
    pub counter_creator: i32,
    /// The counter at header offset 24 (mapper's view).
    pub counter_mapper: i32,
}

/// The slice headers of one list, addressed by their wire offset (relative to the list's
/// slice region, a multiple of `slice_size + 20`).
///
/// In shared memory the headers sit `slice_size + 20` bytes apart with the data between
/// them. [`SliceTable::from_headers`] instead takes a dense array of headers (no data), which
/// lets tests and loom models run the same allocator on ordinary memory.
#[derive(Clone, Copy)]
pub struct SliceTable<'a> {
    headers: Strided<'a, SliceHeader>,
    wire_stride: u32,
}

impl fmt::Debug for SliceTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SliceTable")
            .field("count", &self.headers.len())
            .field("stride", &self.wire_stride)
            .finish()
    }
}

impl<'a> SliceTable<'a> {
    /// A table over a dense array of headers standing for slices of `slice_size` bytes.
    /// Returns `None` if the wire offsets would not fit in `u32`.
    pub fn from_headers(headers: &'a [SliceHeader], slice_size: u32) -> Option<Self> {
        let wire_stride = slice_size.checked_add(SLICE_HEADER_SIZE as u32)?;
        let headers = Strided::dense(headers)?;
        headers.len().checked_mul(wire_stride)?;
        Some(Self {
            headers,
            wire_stride,
        })
    }

    /// The table of `count` slices of `slice_size` bytes laid out from the start of `region`.
    #[cfg(not(loom))]
    pub(crate) fn in_region(region: Region<'a>, slice_size: u32, count: u32) -> Option<Self> {
        let wire_stride = slice_size.checked_add(SLICE_HEADER_SIZE as u32)?;
        count.checked_mul(wire_stride)?;
        let headers = Strided::in_region(region, wire_stride as usize, count)?;
        Some(Self {
            headers,
            wire_stride,
        })
    }

    /// Number of slices.
    pub fn len(&self) -> u32 {
        self.headers.len()
    }

    /// Whether the table has no slice.
    pub fn is_empty(&self) -> bool {
        self.headers.len() == 0
    }

    /// Bytes from one slice header to the next, on the wire.
    pub fn stride(&self) -> u32 {
        self.wire_stride
    }

    /// The header at relative wire offset `rel`, if `rel` is on a slice boundary in range.
    pub fn get(&self, rel: u32) -> Option<&'a SliceHeader> {
        if rel % self.wire_stride != 0 {
            return None;
        }
        self.headers.get(rel / self.wire_stride)
    }
}

/// One free list and its slices, bound to the role-specific counter.
#[derive(Clone, Copy)]
pub struct BufferList<'a> {
    header: &'a ListHeader,
    slices: SliceTable<'a>,
    /// Absolute offset of the slice region in the buffer region.
    base: u32,
    /// Capacity and slice size, read once when attaching; never re-read from shared memory.
    cap: u32,
    slice_size: u32,
    counter: &'a AtomicI32,
}

impl fmt::Debug for BufferList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferList")
            .field("base", &self.base)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<'a> BufferList<'a> {
    /// Formats `header` and `slices` as a full free list: every slice free and linked in
    /// order, head at the first slice, tail at the last. The memory must be private to the
    /// caller. `base` is the absolute offset of the slice region (0 off shared memory).
    pub fn format(
        header: &'a ListHeader,
        slices: SliceTable<'a>,
        base: u32,
        role: Role,
    ) -> Result<Self, BufferError> {
        let n = slices.len();
        if n == 0 {
            return Err(BufferError::InvalidConfig {
                reason: "a buffer list needs at least one slice",
            });
        }
        let stride = slices.stride();
        let slice_size = stride - SLICE_HEADER_SIZE as u32;
        for i in 0..n {
            let next = (i + 1 < n).then(|| (i + 1) * stride);
            if let Some(slice) = slices.get(i * stride) {
                slice.init(slice_size, next);
            }
        }
        // SYNC: formatting a private region (or heap memory before it is shared); the
        // handshake (or thread spawn) publishes it.
        let size = i32::try_from(n).map_err(|_| BufferError::InvalidConfig {
            reason: "a buffer list holds at most i32::MAX slices",
        })?;
        header.size.store(size, Ordering::Relaxed);
        header.cap.store(n, Ordering::Relaxed);
        header.head.store(0, Ordering::Relaxed);
        header.tail.store((n - 1) * stride, Ordering::Relaxed);
        header.cap_per_buffer.store(slice_size, Ordering::Relaxed);
        header.counter_creator.store(0, Ordering::Relaxed);
        header.counter_mapper.store(0, Ordering::Relaxed);
        Self::attach(header, slices, base, role, None)
    }

    /// Binds to a formatted list, validating the header against `slices`. `list` names the
    /// list in errors.
    pub fn attach(
        header: &'a ListHeader,
        slices: SliceTable<'a>,
        base: u32,
        role: Role,
        list: Option<u16>,
    ) -> Result<Self, BufferError> {
        let corrupted = |field, value: u32| BufferError::Corrupted {
            list,
            field,
            value: u64::from(value),
        };
        // SYNC: the creator formatted these before the handshake that gave us the region.
        let cap = header.cap.load(Ordering::Relaxed);
        let slice_size = header.cap_per_buffer.load(Ordering::Relaxed);
        if cap != slices.len() {
            return Err(corrupted("cap", cap));
        }
        // Checked: a peer-written capacity near u32::MAX must be an error, not an overflow.
        if slice_size.checked_add(SLICE_HEADER_SIZE as u32) != Some(slices.stride()) {
            return Err(corrupted("capPerBuffer", slice_size));
        }
        let this = Self {
            header,
            counter: match role {
                Role::Creator => &header.counter_creator,
                Role::Mapper => &header.counter_mapper,
            },
            slices,
            base,
            cap,
            slice_size,
        };
        let stats = this.stats();
        if stats.free < 0 || stats.free as u32 > cap {
            return Err(corrupted("size", stats.free as u32));
        }
        if slices.get(stats.head).is_none() {
            return Err(corrupted("head", stats.head));
        }
        if slices.get(stats.tail).is_none() {
            return Err(corrupted("tail", stats.tail));
        }
        Ok(this)
    }

    /// Data bytes per slice.
    pub fn slice_size(&self) -> u32 {
        self.slice_size
    }

    /// Total slices.
    pub fn capacity(&self) -> u32 {
        self.cap
    }

    /// Absolute offset of the slice region.
    pub fn base(&self) -> u32 {
        self.base
    }

    /// The slice table.
    pub fn slices(&self) -> &SliceTable<'a> {
        &self.slices
    }

    /// Absolute offset just past the last slice.
    pub(crate) fn end(&self) -> u64 {
        u64::from(self.base) + u64::from(self.cap) * u64::from(self.slices.stride())
    }

    /// The slice header at absolute offset `abs`, if `abs` is a slice of this list.
    pub fn slice_at(&self, abs: u32) -> Option<&'a SliceHeader> {
        self.slices.get(abs.checked_sub(self.base)?)
    }

    /// A reading of the header.
    pub fn stats(&self) -> ListStats {
        // SYNC: statistics only; no decision about slice ownership is made from these.
        let h = self.header;
        ListStats {
            slice_size: self.slice_size,
            cap: self.cap,
            free: h.size.load(Ordering::Relaxed),
            head: h.head.load(Ordering::Relaxed),
            tail: h.tail.load(Ordering::Relaxed),
            counter_creator: h.counter_creator.load(Ordering::Relaxed),
            // SYNC: statistics only, as above.
            counter_mapper: h.counter_mapper.load(Ordering::Relaxed),
        }
    }

    /// Pops a free slice (Go's `bufferList.pop`) and returns its absolute offset, marked
    /// in use. `Ok(None)` means none could be taken: only the last free slice is left (it is
    /// never handed out), or `POP_ATTEMPTS` CAS attempts lost to contention.
    pub fn pop(&self) -> Result<Option<u32>, BufferError> {
        let h = self.header;
        // SYNC: SeqCst like Go; pairs with the head CAS of other poppers.
        let mut head = h.head.load(Ordering::SeqCst);
        // SYNC: SeqCst RMW like Go; pairs with push's increment and other pops.
        // Compared without arithmetic: the peer can write any value, i32::MIN included.
        if h.size.fetch_sub(1, Ordering::SeqCst) <= 1 {
            self.undo_pop();
            return Ok(None);
        }
        let mut bad_reads = 0;
        for _ in 0..POP_ATTEMPTS {
            let Some(slice) = self.slices.get(head) else {
                self.undo_pop();
                return Err(BufferError::Corrupted {
                    list: None,
                    field: "head",
                    value: u64::from(head),
                });
            };
            // SYNC: acquire; pairs with push's release store of HAS_NEXT after `next`.
            let flags = SliceFlags::from_bits_truncate(slice.flags.load(Ordering::Acquire));
            if flags.contains(SliceFlags::HAS_NEXT) {
                // SYNC: ordered by the acquire flags load above.
                let next = slice.next.load(Ordering::Relaxed);
                // The new head must be a slice of this list before anyone else can see it:
                // publishing a bad head would hand the corruption to every later pop, ours
                // and the peer's. But one bad read is not proof: between our flags load and
                // our `next` load another popper may have taken the slice (its owner may have
                // linked it into a message chain, an absolute `next`) or recycled it (`next`
                // is then NO_NEXT until linked), and the head may even have come round to it
                // again. So look again, from the head; only a `next` that stays bad on
                // consecutive fresh reads of an unchanged head is corruption.
                if self.slices.get(next).is_none() {
                    // SYNC: SeqCst like every head access; pairs with other poppers' CAS.
                    let now = h.head.load(Ordering::SeqCst);
                    bad_reads = if now == head { bad_reads + 1 } else { 0 };
                    if bad_reads >= BAD_NEXT_READS {
                        self.undo_pop();
                        return Err(BufferError::Corrupted {
                            list: None,
                            field: "next of the head slice",
                            value: u64::from(next),
                        });
                    }
                    spin_hint();
                    head = now;
                    continue;
                }
                // SYNC: SeqCst CAS like Go; pairs with other poppers' CAS and head loads.
                if h.head
                    .compare_exchange(head, next, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    // SYNC: the slice is ours now; the flag reaches the peer with the
                    // queue push that hands the chain over (release).
                    slice
                        .flags
                        .store(SliceFlags::IN_USE.bits(), Ordering::Relaxed);
                    // SYNC: statistics only (the "all buffers returned?" check).
                    self.counter.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(self.base + head));
                }
            } else {
                bad_reads = 0;
                // SYNC: SeqCst read like Go's plain read; a stale value only makes us fail early.
                if h.size.load(Ordering::SeqCst) <= 1 {
                    self.undo_pop();
                    return Ok(None);
                }
            }
            spin_hint();
            // SYNC: SeqCst; pairs with the head CAS of other poppers.
            head = h.head.load(Ordering::SeqCst);
        }
        self.undo_pop();
        Ok(None)
    }

    fn undo_pop(&self) {
        // SYNC: SeqCst RMW restoring the speculative decrement; pairs with other size RMWs.
        self.header.size.fetch_add(1, Ordering::SeqCst);
    }

    /// Recycles the slice at absolute offset `abs` (Go's `bufferList.push`).
    ///
    /// Fails without touching the list if `abs` is not a slice of this list, or if the slice
    /// is not in use (a double recycle, or a slice nobody allocated).
    pub fn push(&self, abs: u32) -> Result<(), BufferError> {
        self.push_checked(abs, true)
    }

    /// Recycles a slice whose ownership the caller proved otherwise (the buffer manager's
    /// ledger), whether or not its IN_USE flag is set: shmipc-go clears the flags of a
    /// received slice it reuses for sending.
    pub(crate) fn push_held(&self, abs: u32) -> Result<(), BufferError> {
        self.push_checked(abs, false)
    }

    fn push_checked(&self, abs: u32, require_in_use: bool) -> Result<(), BufferError> {
        let rel = abs.checked_sub(self.base).unwrap_or(u32::MAX);
        let Some(slice) = self.slices.get(rel) else {
            return Err(BufferError::BadSlice {
                offset: abs,
                fault: SliceFault::NotASlice,
            });
        };
        // SYNC: swapping the flags to 0 claims the recycle exactly once, even if two threads
        // race to recycle the same slice. Relaxed suffices: the tail CAS below (SeqCst)
        // publishes it, and the next popper reads flags with acquire.
        let old = SliceFlags::from_bits_truncate(slice.flags.swap(0, Ordering::Relaxed));
        if require_in_use && !old.contains(SliceFlags::IN_USE) {
            return Err(BufferError::BadSlice {
                offset: abs,
                fault: SliceFault::NotInUse,
            });
        }
        // SYNC: published by the tail CAS below, like the flags.
        slice.len.store(0, Ordering::Relaxed);
        slice.start.store(0, Ordering::Relaxed);
        // The new tail has no successor yet; a `next` that is no slice offset makes a popper
        // that reads it without the HAS_NEXT that publishes a real one fail loudly instead of
        // following a stale link that looks valid (Go leaves the old value).
        slice.next.store(NO_NEXT, Ordering::Relaxed);
        let h = self.header;
        for _ in 0..PUSH_ATTEMPTS {
            // SYNC: SeqCst like Go; pairs with the tail CAS of other pushers.
            let tail = h.tail.load(Ordering::SeqCst);
            let Some(old_tail) = self.slices.get(tail) else {
                return Err(BufferError::Corrupted {
                    list: None,
                    field: "tail",
                    value: u64::from(tail),
                });
            };
            // SYNC: SeqCst CAS like Go; pairs with other pushers' CAS and tail loads.
            if h.tail
                .compare_exchange(tail, rel, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                // SYNC: `next` first, then the flag with release; pairs with pop's acquire
                // flags load, which then sees `next`.
                old_tail.next.store(rel, Ordering::Relaxed);
                old_tail
                    .flags
                    .fetch_or(SliceFlags::HAS_NEXT.bits(), Ordering::Release);
                // SYNC: SeqCst RMW like Go; pairs with pop's speculative decrement.
                h.size.fetch_add(1, Ordering::SeqCst);
                // SYNC: statistics only.
                self.counter.fetch_sub(1, Ordering::Relaxed);
                return Ok(());
            }
            spin_hint();
        }
        Err(BufferError::Corrupted {
            list: None,
            field: "tail (never stable)",
            value: u64::from(rel),
        })
    }

    /// Walks the free list from head along `next` while `HAS_NEXT` is set, yielding
    /// relative offsets; for audits and tests (the list may change under the walk).
    /// The walk stops after `cap` slices or at a link that leaves the list.
    pub fn free_slices(&self) -> FreeSlices<'a> {
        // SYNC: audit only.
        let head = self.header.head.load(Ordering::Acquire);
        FreeSlices {
            slices: self.slices,
            next: Some(head),
            remaining: self.cap,
        }
    }
}

/// Iterator over a free list; see [`BufferList::free_slices`].
#[derive(Debug)]
pub struct FreeSlices<'a> {
    slices: SliceTable<'a>,
    next: Option<u32>,
    remaining: u32,
}

impl Iterator for FreeSlices<'_> {
    type Item = Result<u32, BufferError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rel = self.next.take()?;
        if self.remaining == 0 {
            return Some(Err(BufferError::BadSlice {
                offset: rel,
                fault: SliceFault::ChainTooLong,
            }));
        }
        self.remaining -= 1;
        let Some(slice) = self.slices.get(rel) else {
            return Some(Err(BufferError::BadSlice {
                offset: rel,
                fault: SliceFault::NotASlice,
            }));
        };
        let snap = slice.snapshot();
        if snap.flags().contains(SliceFlags::HAS_NEXT) {
            self.next = Some(snap.next);
        }
        Some(Ok(rel))
    }
}
