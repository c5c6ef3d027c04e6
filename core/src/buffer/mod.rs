//! The buffer manager: the shared-memory allocator both processes pop slices from and
//! recycle slices to (PROTOCOL.md 4).
//!
//! # Layout
//!
//! ```text
//! [ header 8 B ][ list 0: header 36 B | n0 slices ][ list 1: header 36 B | n1 slices ] ... [unused]
//! ```
//!
//! The 8-byte [`BufferManagerHeader`] holds the list count and the "used length" (bytes of
//! all lists). Lists are sorted by slice size. Each slice is a 20-byte
//! [`SliceHeader`] followed by its data. [`format`] reproduces Go's
//! sizing exactly: with the default 32 MiB and size classes 8,172 / 32,748 / 131,052 bytes at
//! 50 / 30 / 20 %, it makes 2,047 / 307 / 51 slices with list headers at offsets 8,
//! 16,769,068 and 26,828,880, and a used length of 33,513,580.
//!
//! # Offsets
//!
//! A list's `head`, `tail` and the `next` of a *free* slice are relative to that list's slice
//! region; the `next` of a slice in a *message chain* and the offset in a queue element are
//! absolute (from the start of the buffer region). This module converts at the boundary; its
//! public API speaks absolute offsets only.
//!
//! # Allocating, sending, recycling
//!
//! [`BufferManager::alloc`] follows Go's writer: one slice from the smallest list that fits
//! `n` bytes, else slices from the largest list downwards until `n` is covered, linked into a
//! [`SliceChain`] in shared memory as they are popped. The sender sets each slice's length
//! ([`BufferManager::set_len`]) and pushes one queue element naming the first slice. The
//! receiver walks the chain with [`BufferManager::walk_chain`], which checks every link (in
//! range, on a slice boundary, in use, length within capacity, no cycle) and recycles the
//! slices once the data is consumed ([`BufferManager::recycle_chain`]).
//!
//! ```
//! use shmlink_core::buffer::{BufferList, BufferManager, ListHeader, Role, SliceTable};
//! use shmlink_core::slice::SliceHeader;
//!
//! // Two lists of 4 slices each (64 and 256 bytes), on ordinary memory.
//! let small_headers: Vec<SliceHeader> = (0..4).map(|_| SliceHeader::default()).collect();
//! let big_headers: Vec<SliceHeader> = (0..4).map(|_| SliceHeader::default()).collect();
//! let (small, big) = (ListHeader::default(), ListHeader::default());
//! let lists = [
//!     BufferList::format(&small, SliceTable::from_headers(&small_headers, 64).unwrap(), 44, Role::Creator)?,
//!     BufferList::format(&big, SliceTable::from_headers(&big_headers, 256).unwrap(), 1000, Role::Creator)?,
//! ];
//! let manager = BufferManager::from_lists(&lists, 4096)?;
//!
//! // 600 bytes do not fit one slice: take 256-byte slices from the largest list down.
//! let chain = manager.alloc(600)?;
//! assert_eq!(chain.count(), 3);
//! // Only three of the four are ever handed out: the last free slice stays in the list.
//! assert!(manager.alloc(1000).is_err());
//!
//! let mut total = 0;
//! for segment in manager.walk_chain(chain.first()) {
//!     let segment = segment?;
//!     manager.set_len(segment.slice, 200)?;
//!     total += 200;
//! }
//! assert_eq!(total, 600);
//! assert_eq!(manager.recycle_chain(chain.first())?, 3);
//! assert_eq!(manager.in_use_bytes(), 0);
//! # Ok::<(), shmlink_core::buffer::BufferError>(())
//! ```

mod ledger;
mod list;

use core::fmt;

use ledger::Ledger;
pub use ledger::{LedgerWord, Ownership, SLICES_PER_WORD, ledger_words};
pub use list::{
    BufferList, FreeSlices, LIST_HEADER_SIZE, ListHeader, ListStats, NO_NEXT, POP_ATTEMPTS,
    PUSH_ATTEMPTS, SliceTable,
};

#[cfg(not(loom))]
use crate::region::Region;
use crate::slice::{SLICE_HEADER_SIZE, SliceFlags, SliceHeader};
use crate::sync::{AtomicU16, AtomicU32, Ordering};

/// Bytes of the buffer manager header.
pub const MANAGER_HEADER_SIZE: usize = 8;
/// The most lists (size classes) this implementation accepts.
pub const MAX_LISTS: usize = 32;

/// The 8-byte header at the start of a buffer region.
#[repr(C)]
#[derive(Default)]
pub struct BufferManagerHeader {
    list_count: AtomicU16,
    reserved: AtomicU16,
    used_len: AtomicU32,
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<BufferManagerHeader>() == MANAGER_HEADER_SIZE);
    assert!(offset_of!(BufferManagerHeader, list_count) == 0);
    assert!(offset_of!(BufferManagerHeader, reserved) == 2);
    assert!(offset_of!(BufferManagerHeader, used_len) == 4);
};

/// Which process this is with respect to a buffer region. It selects the per-list counter
/// that allocation updates (offset 20 for the creator, 24 for the mapper, as Go does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The process that formatted the region (the client).
    Creator,
    /// A process that mapped a region someone else formatted (the server).
    Mapper,
}

/// A size class for [`format`]: slices of `size` data bytes taking `percent` of the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeClass {
    /// Data bytes per slice; a multiple of 4.
    pub size: u32,
    /// Share of the region in percent; the classes must sum to 100.
    pub percent: u8,
}

/// shmipc-go's default size classes: 8 KiB, 32 KiB and 128 KiB slices (header included)
/// at 50 / 30 / 20 %.
pub const DEFAULT_SIZE_CLASSES: [SizeClass; 3] = [
    SizeClass {
        size: 8172,
        percent: 50,
    },
    SizeClass {
        size: 32748,
        percent: 30,
    },
    SizeClass {
        size: 131_052,
        percent: 20,
    },
];

/// What is wrong with a slice offset or a slice met on a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SliceFault {
    /// The offset is outside every list, or not on a slice boundary.
    NotASlice,
    /// The slice is free, but a chain or recycle needs it allocated.
    NotInUse,
    /// The slice header's cap differs from its list's slice size.
    CapMismatch {
        /// The cap found.
        cap: u32,
    },
    /// `start + len` exceeds the slice's capacity.
    BadLength {
        /// The start found.
        start: u32,
        /// The length found.
        len: u32,
    },
    /// The chain has more links than the region has slices: it loops.
    ChainTooLong,
    /// The slice is already held by this process (we are writing it, or received it and have
    /// not recycled it): the peer named it twice, or handed us a slice we own. A second owner
    /// is refused.
    AlreadyOwned {
        /// What this process holds of it.
        state: Ownership,
    },
    /// The operation needs a slice this process holds in `expected` state, and it does not
    /// (a double recycle, or a slice we never allocated or received).
    NotOwned {
        /// What this process holds of it.
        state: Ownership,
    },
    /// Our own chain did not end where its length says: a link in our slices was rewritten.
    ChainRewritten,
    /// The slice is in the free list: we received it, recycled it, and nobody allocated it
    /// since (its IN_USE flag is clear). The peer announced again a chain we already had.
    AnnouncedAgain,
}

/// Errors of the buffer manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BufferError {
    /// [`format`] was given size classes it cannot lay out.
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// The region is smaller than the header says (or than the configuration needs).
    RegionTooSmall {
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        actual: u64,
    },
    /// A header field holds a value no correct peer writes.
    Corrupted {
        /// The list index, if the field belongs to a list header.
        list: Option<u16>,
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
    /// Shared memory cannot cover the request now; the caller falls back to the socket.
    NoMoreBuffer {
        /// Bytes requested.
        requested: u64,
    },
    /// An offset from a queue element, a chain link or a recycle is not acceptable.
    BadSlice {
        /// The absolute offset.
        offset: u32,
        /// Why.
        fault: SliceFault,
    },
}

impl fmt::Display for BufferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidConfig { reason } => write!(f, "invalid buffer configuration: {reason}"),
            Self::RegionTooSmall { needed, actual } => {
                write!(
                    f,
                    "buffer region too small: need {needed} bytes, have {actual}"
                )
            }
            Self::Corrupted {
                list: Some(list),
                field,
                value,
            } => {
                write!(f, "buffer list {list} header corrupted: {field} = {value}")
            }
            Self::Corrupted {
                list: None,
                field,
                value,
            } => {
                write!(f, "buffer header corrupted: {field} = {value}")
            }
            Self::NoMoreBuffer { requested } => {
                write!(
                    f,
                    "shared memory exhausted: cannot allocate {requested} bytes"
                )
            }
            Self::BadSlice { offset, fault } => {
                write!(f, "bad slice at offset {offset}: ")?;
                match fault {
                    SliceFault::NotASlice => write!(f, "not a slice boundary of any list"),
                    SliceFault::NotInUse => write!(f, "slice is free, not allocated"),
                    SliceFault::CapMismatch { cap } => {
                        write!(f, "slice cap {cap} differs from its list's slice size")
                    }
                    SliceFault::BadLength { start, len } => {
                        write!(f, "start {start} + len {len} exceeds the slice capacity")
                    }
                    SliceFault::ChainTooLong => {
                        write!(f, "chain longer than the number of slices (a cycle)")
                    }
                    SliceFault::AlreadyOwned { state } => write!(
                        f,
                        "slice already has an owner in this process ({}); \
                         a slice is never given two owners",
                        describe(*state)
                    ),
                    SliceFault::NotOwned { state } => write!(
                        f,
                        "slice is not held by this process for this operation ({})",
                        describe(*state)
                    ),
                    SliceFault::ChainRewritten => {
                        write!(f, "a link of our own unsent chain was rewritten")
                    }
                    SliceFault::AnnouncedAgain => write!(
                        f,
                        "the slice is free: we recycled it and nobody allocated it since \
                         (a chain announced again)"
                    ),
                }
            }
        }
    }
}

impl core::error::Error for BufferError {}

fn describe(state: Ownership) -> &'static str {
    match state {
        Ownership::NotOurs => "not ours",
        Ownership::Writing => "we are still writing it",
        Ownership::Received => "we received it and have not recycled it",
        Ownership::Recycled => "we recycled it",
    }
}

/// The bytes [`format`] lays out: the header plus every list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListPlan {
    /// Absolute offset of the list header.
    pub header_offset: u32,
    /// Data bytes per slice.
    pub slice_size: u32,
    /// Number of slices.
    pub count: u32,
}

/// Computes Go's layout (PROTOCOL.md 4.2) for a region of `region_len` bytes, without
/// touching memory. Returns the lists (sorted by size) and the used length.
pub fn plan(
    region_len: u64,
    classes: &[SizeClass],
) -> Result<(heapless::Vec<ListPlan, MAX_LISTS>, u32), BufferError> {
    let invalid = |reason| Err(BufferError::InvalidConfig { reason });
    if classes.is_empty() {
        return invalid("at least one size class is needed");
    }
    if classes.len() > MAX_LISTS {
        return invalid("more than 32 size classes");
    }
    if region_len > u64::from(u32::MAX) {
        return invalid("buffer region larger than 4 GiB (offsets are u32)");
    }
    let mut sorted: heapless::Vec<SizeClass, MAX_LISTS> = heapless::Vec::new();
    for class in classes {
        if class.size == 0 || class.size % 4 != 0 {
            return invalid("slice sizes must be non-zero multiples of 4");
        }
        // Capacity checked above, cannot fail.
        let _ = sorted.push(*class);
    }
    sorted.sort_unstable_by_key(|c| c.size);
    if sorted.windows(2).any(|w| w[0].size == w[1].size) {
        return invalid("two size classes have the same slice size");
    }
    let percent: u32 = sorted.iter().map(|c| u32::from(c.percent)).sum();
    if percent != 100 {
        return invalid("size class percentages must sum to 100");
    }
    let overhead = (LIST_HEADER_SIZE * sorted.len() + MANAGER_HEADER_SIZE) as u64;
    let Some(remaining) = region_len.checked_sub(overhead) else {
        return Err(BufferError::RegionTooSmall {
            needed: overhead,
            actual: region_len,
        });
    };
    let mut lists = heapless::Vec::new();
    let mut offset = MANAGER_HEADER_SIZE as u64;
    for class in &sorted {
        // Go: u64 product, truncated to u32, then integer division by the slice stride.
        let share = (remaining * u64::from(class.percent) / 100) as u32;
        let count = share / (class.size + SLICE_HEADER_SIZE as u32);
        if count == 0 {
            return invalid("a size class gets no slice: region too small or slice too large");
        }
        let _ = lists.push(ListPlan {
            header_offset: offset as u32,
            slice_size: class.size,
            count,
        });
        offset += LIST_HEADER_SIZE as u64
            + u64::from(count) * u64::from(class.size + SLICE_HEADER_SIZE as u32);
    }
    let used = offset - MANAGER_HEADER_SIZE as u64;
    Ok((lists, used as u32))
}

/// Formats a buffer region (the client's job) with Go's algorithm and returns the manager,
/// as [`Role::Creator`], with an ownership ledger on the heap. `region` must be private to
/// the caller.
#[cfg(all(not(loom), feature = "alloc"))]
pub fn format<'a>(
    region: Region<'a>,
    classes: &[SizeClass],
) -> Result<BufferManager<'a>, BufferError> {
    let (lists, len) = format_lists(region, classes)?;
    BufferManager::new(lists, len, None)
}

/// [`format`] with the ownership ledger in `ledger` (at least [`ledger_words`] of the total
/// slice count, all zero), for builds without a heap or for a ledger shared by several
/// managers of one region. The ledger belongs to the region: every manager of one region in
/// this process must use the same ledger, and a region's ledger must never be reused for
/// another region.
#[cfg(not(loom))]
pub fn format_in<'a>(
    region: Region<'a>,
    classes: &[SizeClass],
    ledger: &'a [LedgerWord],
) -> Result<BufferManager<'a>, BufferError> {
    let (lists, len) = format_lists(region, classes)?;
    BufferManager::new(lists, len, Some(ledger))
}

#[cfg(not(loom))]
type Lists<'a> = heapless::Vec<BufferList<'a>, MAX_LISTS>;

#[cfg(not(loom))]
fn format_lists<'a>(
    region: Region<'a>,
    classes: &[SizeClass],
) -> Result<(Lists<'a>, u32), BufferError> {
    let (plans, used) = plan(region.len() as u64, classes)?;
    let header: &BufferManagerHeader = region.layout_at(0).ok_or(BufferError::RegionTooSmall {
        needed: 8,
        actual: region.len() as u64,
    })?;
    let mut lists = heapless::Vec::new();
    for (index, p) in plans.iter().enumerate() {
        let (list_header, slices, base) =
            list_parts(region, p.header_offset, p.slice_size, p.count, index)?;
        let list = BufferList::format(list_header, slices, base, Role::Creator)?;
        let _ = lists.push(list);
    }
    // SYNC: private region during formatting; the handshake publishes it.
    header
        .list_count
        .store(plans.len() as u16, Ordering::Relaxed);
    header.reserved.store(0, Ordering::Relaxed);
    header.used_len.store(used, Ordering::Relaxed);
    Ok((lists, region.len() as u32))
}

/// Attaches to a buffer region formatted by the peer (or by ourselves earlier), validating
/// every header: list count, used length against the region size, each list's geometry,
/// sizes, head and tail. The ownership ledger goes on the heap.
#[cfg(all(not(loom), feature = "alloc"))]
pub fn attach(region: Region<'_>, role: Role) -> Result<BufferManager<'_>, BufferError> {
    let (lists, len) = attach_lists(region, role)?;
    BufferManager::new(lists, len, None)
}

/// [`attach`] with the ownership ledger in `ledger`, for builds without a heap, or to share
/// one ledger between the managers of one region (a server that maps one client's buffer
/// region for several sessions must, or a slice one session holds would look free to the
/// others). A ledger too small for the slices the region holds is an error. The ledger
/// belongs to the region, as for [`format_in`].
#[cfg(not(loom))]
pub fn attach_in<'a>(
    region: Region<'a>,
    role: Role,
    ledger: &'a [LedgerWord],
) -> Result<BufferManager<'a>, BufferError> {
    let (lists, len) = attach_lists(region, role)?;
    BufferManager::new(lists, len, Some(ledger))
}

#[cfg(not(loom))]
fn attach_lists(region: Region<'_>, role: Role) -> Result<(Lists<'_>, u32), BufferError> {
    let region_len = region.len() as u64;
    if region_len > u64::from(u32::MAX) {
        return Err(BufferError::InvalidConfig {
            reason: "buffer region larger than 4 GiB",
        });
    }
    let header: &BufferManagerHeader = region.layout_at(0).ok_or(BufferError::RegionTooSmall {
        needed: 8,
        actual: region_len,
    })?;
    // SYNC: written before the handshake that handed us the region.
    let count = header.list_count.load(Ordering::Relaxed);
    let used = header.used_len.load(Ordering::Relaxed);
    let corrupted = |field, value: u64| BufferError::Corrupted {
        list: None,
        field,
        value,
    };
    if count == 0 || usize::from(count) > MAX_LISTS {
        return Err(corrupted("list count", u64::from(count)));
    }
    let end = MANAGER_HEADER_SIZE as u64 + u64::from(used);
    if end > region_len {
        return Err(BufferError::RegionTooSmall {
            needed: end,
            actual: region_len,
        });
    }
    let mut lists: heapless::Vec<BufferList<'_>, MAX_LISTS> = heapless::Vec::new();
    let mut offset = MANAGER_HEADER_SIZE as u64;
    for index in 0..usize::from(count) {
        let list_err = |field, value: u64| BufferError::Corrupted {
            list: Some(index as u16),
            field,
            value,
        };
        if offset + LIST_HEADER_SIZE as u64 > end {
            return Err(corrupted("used length", u64::from(used)));
        }
        let list_header: &ListHeader = region
            .layout_at(offset as usize)
            .ok_or(list_err("header offset", offset))?;
        let (slice_size, cap) = list_header.geometry();
        if slice_size == 0 || slice_size % 4 != 0 {
            return Err(list_err("capPerBuffer", u64::from(slice_size)));
        }
        if let Some(prev) = lists.last() {
            if slice_size <= prev.slice_size() {
                return Err(list_err(
                    "capPerBuffer (lists must be sorted by size)",
                    u64::from(slice_size),
                ));
            }
        }
        // Both factors are the peer's: even in u64, u32::MAX slices of u32::MAX bytes
        // overflow, so every step is checked.
        let bytes = u64::from(cap)
            .checked_mul(u64::from(slice_size) + SLICE_HEADER_SIZE as u64)
            .and_then(|b| b.checked_add(LIST_HEADER_SIZE as u64));
        let fits = bytes
            .and_then(|b| offset.checked_add(b))
            .is_some_and(|list_end| list_end <= end);
        let (Some(bytes), true) = (bytes, fits && cap != 0) else {
            return Err(list_err("cap", u64::from(cap)));
        };
        let (list_header, slices, base) =
            list_parts(region, offset as u32, slice_size, cap, index)?;
        let list = BufferList::attach(list_header, slices, base, role, Some(index as u16))?;
        let _ = lists.push(list);
        offset += bytes;
    }
    if offset != end {
        return Err(corrupted("used length", u64::from(used)));
    }
    Ok((lists, region_len as u32))
}

#[cfg(not(loom))]
fn list_parts<'a>(
    region: Region<'a>,
    header_offset: u32,
    slice_size: u32,
    count: u32,
    index: usize,
) -> Result<(&'a ListHeader, SliceTable<'a>, u32), BufferError> {
    let bad = |field, value: u64| BufferError::Corrupted {
        list: Some(index as u16),
        field,
        value,
    };
    let header: &ListHeader = region
        .layout_at(header_offset as usize)
        .ok_or(bad("header offset", u64::from(header_offset)))?;
    let base = header_offset + LIST_HEADER_SIZE as u32;
    let slices_region = region
        .len()
        .checked_sub(base as usize)
        .and_then(|rest| region.sub(base as usize, rest))
        .ok_or(bad("header offset", u64::from(header_offset)))?;
    let slices = SliceTable::in_region(slices_region, slice_size, count)
        .ok_or(bad("cap", u64::from(count)))?;
    Ok((header, slices, base))
}

/// One slice of a walked chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Absolute offset of the slice header.
    pub slice: u32,
    /// Absolute offset of the first valid data byte (`slice + 20 + start`).
    pub data: u32,
    /// Valid data bytes.
    pub len: u32,
}

/// Slices allocated by [`BufferManager::alloc`], already linked in shared memory
/// (absolute `next`, `HAS_NEXT` on all but the last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SliceChain {
    first: u32,
    last: u32,
    count: u32,
    capacity: u64,
}

impl SliceChain {
    /// Absolute offset of the first slice header: what a queue element carries.
    pub fn first(&self) -> u32 {
        self.first
    }

    /// Absolute offset of the last slice header.
    pub fn last(&self) -> u32 {
        self.last
    }

    /// Number of slices.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Total data capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

/// The buffer manager of one buffer region, as seen by one process: the shared free lists,
/// plus this process's [ownership ledger](Ownership) of the slices it holds.
#[derive(Clone, Debug)]
pub struct BufferManager<'a> {
    lists: heapless::Vec<BufferList<'a>, MAX_LISTS>,
    /// Ledger index of each list's first slice.
    first_index: heapless::Vec<u32, MAX_LISTS>,
    region_len: u32,
    total_slices: u32,
    ledger: Ledger<'a>,
}

/// Where a slice offset points: its list, header and ledger index.
struct Located<'m, 'a> {
    list: &'m BufferList<'a>,
    header: &'a SliceHeader,
    index: u32,
}

impl<'a> BufferManager<'a> {
    /// A manager over lists built by hand (tests, loom models), with its ownership ledger on
    /// the heap. Lists must be sorted by slice size, must not overlap, and must lie inside
    /// `region_len`.
    #[cfg(feature = "alloc")]
    pub fn from_lists(lists: &[BufferList<'a>], region_len: u32) -> Result<Self, BufferError> {
        Self::new(Self::collect(lists)?, region_len, None)
    }

    /// [`from_lists`](Self::from_lists) with the ledger in `ledger`, for builds without a heap.
    pub fn from_lists_in(
        lists: &[BufferList<'a>],
        region_len: u32,
        ledger: &'a [LedgerWord],
    ) -> Result<Self, BufferError> {
        Self::new(Self::collect(lists)?, region_len, Some(ledger))
    }

    fn collect(
        lists: &[BufferList<'a>],
    ) -> Result<heapless::Vec<BufferList<'a>, MAX_LISTS>, BufferError> {
        let mut v = heapless::Vec::new();
        for list in lists {
            v.push(*list).map_err(|_| BufferError::InvalidConfig {
                reason: "more than 32 lists",
            })?;
        }
        Ok(v)
    }

    fn new(
        lists: heapless::Vec<BufferList<'a>, MAX_LISTS>,
        region_len: u32,
        ledger: Option<&'a [LedgerWord]>,
    ) -> Result<Self, BufferError> {
        let mut total: u32 = 0;
        let mut prev_end = 0u64;
        let mut first_index = heapless::Vec::new();
        for (i, list) in lists.iter().enumerate() {
            if u64::from(list.base()) < prev_end || list.end() > u64::from(region_len) {
                return Err(BufferError::Corrupted {
                    list: Some(i as u16),
                    field: "slice region",
                    value: u64::from(list.base()),
                });
            }
            prev_end = list.end();
            let _ = first_index.push(total);
            // Lists do not overlap and lie in a region of at most 4 GiB with slices of at
            // least 24 bytes, so this cannot overflow; checked all the same.
            total = total
                .checked_add(list.capacity())
                .ok_or(BufferError::InvalidConfig {
                    reason: "more than u32::MAX slices",
                })?;
        }
        if lists
            .windows(2)
            .any(|w| w[0].slice_size() >= w[1].slice_size())
        {
            return Err(BufferError::InvalidConfig {
                reason: "lists must be sorted by slice size",
            });
        }
        let ledger = match ledger {
            Some(words) => Ledger::Borrowed(words),
            #[cfg(feature = "alloc")]
            None => Ledger::new(total),
            #[cfg(not(feature = "alloc"))]
            None => Ledger::Borrowed(&[]),
        };
        if !ledger.covers(total) {
            return Err(BufferError::InvalidConfig {
                reason: "the ownership ledger is smaller than ledger_words(total slices)",
            });
        }
        Ok(Self {
            lists,
            first_index,
            region_len,
            total_slices: total,
            ledger,
        })
    }

    /// The lists, sorted by slice size.
    pub fn lists(&self) -> &[BufferList<'a>] {
        &self.lists
    }

    /// The largest slice's data size.
    pub fn max_slice_size(&self) -> u32 {
        self.lists.last().map_or(0, BufferList::slice_size)
    }

    /// Total slices in all lists.
    pub fn total_slices(&self) -> u32 {
        self.total_slices
    }

    /// Metrics `CapacityOfShareMemoryInBytes`: Σ cap × slice size (u32 arithmetic, as Go).
    pub fn capacity_bytes(&self) -> u32 {
        self.lists.iter().fold(0u32, |acc, l| {
            acc.wrapping_add(l.capacity().wrapping_mul(l.slice_size()))
        })
    }

    /// Metrics `AllInUsedShareMemoryInBytes`: Σ (cap − free) × slice size (u32, as Go). The
    /// free count lives in shared memory: one the peer wrote outside 0..=cap is clamped, so
    /// the metric never claims more than the capacity (Go would wrap around).
    pub fn in_use_bytes(&self) -> u32 {
        self.lists.iter().fold(0u32, |acc, l| {
            let free = (i64::from(l.stats().free)).clamp(0, i64::from(l.capacity())) as u32;
            acc.wrapping_add(l.capacity().wrapping_sub(free).wrapping_mul(l.slice_size()))
        })
    }

    /// Whether every list is back to full (all slices free).
    pub fn all_free(&self) -> bool {
        self.lists
            .iter()
            .all(|l| l.stats().free == l.capacity() as i32)
    }

    fn locate(&self, abs: u32) -> Result<Located<'_, 'a>, BufferError> {
        let not_a_slice = BufferError::BadSlice {
            offset: abs,
            fault: SliceFault::NotASlice,
        };
        let (i, list) = self
            .lists
            .iter()
            .enumerate()
            .find(|(_, l)| abs >= l.base() && u64::from(abs) < l.end())
            .ok_or(not_a_slice)?;
        let header = list.slice_at(abs).ok_or(not_a_slice)?;
        // On a boundary inside the list (checked by slice_at), so the quotient is < cap.
        let within = (abs - list.base()) / list.slices().stride();
        Ok(Located {
            list,
            header,
            index: self.first_index[i] + within,
        })
    }

    /// Finds the list and header of the slice at absolute offset `abs`.
    pub fn slice_at(&self, abs: u32) -> Result<(&BufferList<'a>, &'a SliceHeader), BufferError> {
        let at = self.locate(abs)?;
        Ok((at.list, at.header))
    }

    /// What this process holds of the slice at `abs`.
    pub fn ownership(&self, abs: u32) -> Result<Ownership, BufferError> {
        let at = self.locate(abs)?;
        Ok(self.ledger.get(at.index))
    }

    /// One ledger transition, as an error naming the slice when refused.
    fn transition(
        &self,
        abs: u32,
        index: u32,
        from: Ownership,
        to: Ownership,
    ) -> Result<(), BufferError> {
        self.ledger
            .transition(index, from, to)
            .map_err(|state| BufferError::BadSlice {
                offset: abs,
                fault: if from == Ownership::NotOurs {
                    SliceFault::AlreadyOwned { state }
                } else {
                    SliceFault::NotOwned { state }
                },
            })
    }

    /// A slice of ours being written: the only slices `link`, `set_len` and
    /// `end_chain_at` may touch.
    fn writing(&self, abs: u32) -> Result<Located<'_, 'a>, BufferError> {
        let at = self.locate(abs)?;
        match self.ledger.get(at.index) {
            Ownership::Writing => Ok(at),
            state => Err(BufferError::BadSlice {
                offset: abs,
                fault: SliceFault::NotOwned { state },
            }),
        }
    }

    /// Absolute offset and capacity of the data area of the slice at `abs`.
    pub fn data_area(&self, abs: u32) -> Result<(u32, u32), BufferError> {
        let (list, _) = self.slice_at(abs)?;
        Ok((abs + SLICE_HEADER_SIZE as u32, list.slice_size()))
    }

    /// Pops one slice from `list` and records it as ours, being written.
    fn pop_owned(&self, list: &BufferList<'a>) -> Result<Option<u32>, BufferError> {
        let Some(abs) = list.pop()? else {
            return Ok(None);
        };
        let at = self.locate(abs)?;
        // A free list that hands us a slice we already hold was fed it by the peer (it
        // recycled one of ours): refuse the second ownership, leave the slice with its
        // first owner. A slice we recycled ourselves is free, as it should be.
        self.ledger
            .transition_from(
                at.index,
                |s| matches!(s, Ownership::NotOurs | Ownership::Recycled),
                Ownership::Writing,
            )
            .map_err(|state| BufferError::BadSlice {
                offset: abs,
                fault: SliceFault::AlreadyOwned { state },
            })?;
        Ok(Some(abs))
    }

    /// Allocates slices covering `n` bytes with Go's policy (PROTOCOL.md 4.8): one slice from
    /// the smallest list whose slices hold `n` (falling through to larger lists), else slices
    /// from the largest list downwards. The slices come back linked as a chain, each marked
    /// in use with length 0 and recorded as ours, being written. If shared memory cannot
    /// cover `n`, everything taken is returned and the result is
    /// [`BufferError::NoMoreBuffer`].
    ///
    /// Without a list of the slices in process memory, a failed allocation and
    /// [`own_chain`](Self::own_chain) follow the links written into shared memory, which a
    /// hostile peer can rewrite to name another of our chains. Where there is a heap, use
    /// [`alloc_into`](Self::alloc_into), which never reads links back.
    pub fn alloc(&self, n: u64) -> Result<SliceChain, BufferError> {
        self.alloc_recording(n, &mut FollowLinks)
    }

    /// [`alloc`](Self::alloc), also leaving the slices' absolute offsets, in chain order, in
    /// `slices` (cleared first): the list of what this call took, kept in process memory, so
    /// neither the failure path nor the caller ever follows a link the peer could rewrite.
    #[cfg(feature = "alloc")]
    pub fn alloc_into(
        &self,
        n: u64,
        slices: &mut alloc::vec::Vec<u32>,
    ) -> Result<SliceChain, BufferError> {
        slices.clear();
        self.alloc_recording(n, slices)
    }

    fn alloc_recording(
        &self,
        n: u64,
        record: &mut impl Recorder,
    ) -> Result<SliceChain, BufferError> {
        for list in self.lists.iter().filter(|l| u64::from(l.slice_size()) >= n) {
            if let Some(abs) = self.pop_owned(list)? {
                record.taken(abs);
                return Ok(SliceChain {
                    first: abs,
                    last: abs,
                    count: 1,
                    capacity: u64::from(list.slice_size()),
                });
            }
        }
        let mut chain: Option<SliceChain> = None;
        for list in self.lists.iter().rev() {
            while chain.map_or(0, |c| c.capacity) < n {
                let abs = match self.pop_owned(list) {
                    Ok(Some(abs)) => abs,
                    Ok(None) => break,
                    Err(e) => {
                        record.give_back(self, chain);
                        return Err(e);
                    }
                };
                record.taken(abs);
                chain = Some(match chain {
                    None => SliceChain {
                        first: abs,
                        last: abs,
                        count: 1,
                        capacity: u64::from(list.slice_size()),
                    },
                    Some(c) => {
                        if let Err(e) = self.link(c.last, abs) {
                            record.give_back(self, Some(c));
                            // Not on the chain yet (already given back if recorded).
                            let _ = self.recycle(abs);
                            return Err(e);
                        }
                        SliceChain {
                            first: c.first,
                            last: abs,
                            count: c.count + 1,
                            capacity: c.capacity + u64::from(list.slice_size()),
                        }
                    }
                });
            }
        }
        match chain {
            Some(c) if c.capacity >= n => Ok(c),
            Some(c) => {
                record.give_back(self, Some(c));
                Err(BufferError::NoMoreBuffer { requested: n })
            }
            None => Err(BufferError::NoMoreBuffer { requested: n }),
        }
    }

    /// Links the slice at `prev` to the slice at `next` (absolute) in a message chain.
    /// Both must be ours, being written.
    pub fn link(&self, prev: u32, next: u32) -> Result<(), BufferError> {
        self.writing(next)?;
        let at = self.writing(prev)?;
        // SYNC: the slice is ours; published to the peer by the queue push's release.
        at.header.next.store(next, Ordering::Relaxed);
        at.header.flags.store(
            (SliceFlags::IN_USE | SliceFlags::HAS_NEXT).bits(),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Makes the slice at `abs` (ours, being written) the last of its chain (clears
    /// `HAS_NEXT`), so the slices after it can be recycled separately.
    pub fn end_chain_at(&self, abs: u32) -> Result<(), BufferError> {
        let at = self.writing(abs)?;
        // SYNC: the slice is ours; published to the peer by the queue push's release.
        at.header
            .flags
            .store(SliceFlags::IN_USE.bits(), Ordering::Relaxed);
        Ok(())
    }

    /// Sets the number of valid bytes of a slice we are writing, before sending it.
    pub fn set_len(&self, abs: u32, len: u32) -> Result<(), BufferError> {
        let at = self.writing(abs)?;
        if len > at.list.slice_size() {
            return Err(BufferError::BadSlice {
                offset: abs,
                fault: SliceFault::BadLength { start: 0, len },
            });
        }
        // SYNC: the slice is ours; published to the peer by the queue push's release.
        at.header.len.store(len, Ordering::Relaxed);
        at.header.start.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// The slices of a chain we allocated, in order, with their data capacity: read from the
    /// links we wrote, each checked to be ours and being written, and exactly
    /// `chain.count()` of them ending at `chain.last()`.
    pub fn own_chain<'m>(&'m self, chain: &SliceChain) -> OwnChain<'m, 'a> {
        OwnChain {
            manager: self,
            next: Some(chain.first),
            left: chain.count,
            last: chain.last,
        }
    }

    /// Gives up ownership of a slice we wrote, just before announcing it to the peer: from
    /// the push on it is the peer's, and the peer may recycle it and even send it back.
    pub fn hand_over(&self, abs: u32) -> Result<(), BufferError> {
        let at = self.locate(abs)?;
        self.transition(abs, at.index, Ownership::Writing, Ownership::NotOurs)
    }

    /// Takes back a slice handed over for a push that failed (nothing reached the peer).
    pub fn take_back(&self, abs: u32) -> Result<(), BufferError> {
        let at = self.locate(abs)?;
        self.transition(abs, at.index, Ownership::NotOurs, Ownership::Writing)
    }

    /// Recycles one slice this process holds (being written, or received) to its list.
    /// A slice we do not hold is refused: a double recycle, or a slice the peer named that
    /// was never delivered to us.
    pub fn recycle(&self, abs: u32) -> Result<(), BufferError> {
        let at = self.locate(abs)?;
        let from = match self.ledger.get(at.index) {
            state @ (Ownership::NotOurs | Ownership::Recycled) => {
                return Err(BufferError::BadSlice {
                    offset: abs,
                    fault: SliceFault::NotOwned { state },
                });
            }
            held => held,
        };
        // Claim the recycle in the ledger first: of two threads recycling one slice, only
        // one gets past this, and the slice is not ours any more once it is in the free list.
        self.transition(abs, at.index, from, Ownership::Recycled)?;
        // The ledger says we hold it, so it goes back whatever its flags say (a slice Go
        // reused for sending carries none).
        at.list.push_held(abs)
    }

    /// Recycles every slice of a chain we allocated and did not send.
    pub fn free_chain(&self, chain: &SliceChain) -> Result<u32, BufferError> {
        let mut count = 0;
        let mut failure = None;
        for slice in self.own_chain(chain) {
            match slice {
                Ok((abs, _)) => match self.recycle(abs) {
                    Ok(()) => count += 1,
                    Err(e) => failure = failure.or(Some(e)),
                },
                Err(e) => {
                    failure = failure.or(Some(e));
                    break;
                }
            }
        }
        failure.map_or(Ok(count), Err)
    }

    /// Walks the chain starting at absolute offset `first` without taking it, yielding each
    /// slice's data range: for audits and tests. To take delivery of a chain use
    /// [`receive_chain`](Self::receive_chain).
    ///
    /// Every link is checked: it must be a slice boundary inside a list, the slice must be in
    /// use, its cap must match its list, `start + len` must fit, and the chain may not be
    /// longer than the region has slices (so a cycle ends in an error, not a hang). Each
    /// header is read once; only that snapshot is used. After an error the walk stops.
    pub fn walk_chain(&self, first: u32) -> ChainWalk<'_, 'a> {
        ChainWalk {
            manager: self,
            next: Some(first),
            steps: 0,
        }
    }

    /// Takes delivery of the chain the peer announced at `first`: walks it once, checks every
    /// link as [`walk_chain`](Self::walk_chain) does, records each slice as received by this
    /// process (refusing a slice we already hold: one we are writing, or one of a chain
    /// announced twice), and leaves the segments in `out`, exactly as validated.
    ///
    /// On error nothing is taken: slices recorded by this call are released again (they stay
    /// the peer's), `out` is empty, and the error names the offending slice. The caller
    /// delivers only `out`, never re-reading shared memory, so a peer that rewrites headers
    /// after the walk cannot change what is delivered.
    #[cfg(feature = "alloc")]
    pub fn receive_chain(
        &self,
        first: u32,
        out: &mut alloc::vec::Vec<Segment>,
    ) -> Result<(), BufferError> {
        out.clear();
        let mut walk = self.walk_chain(first);
        let result = loop {
            let Some(segment) = walk.next_located() else {
                break Ok(());
            };
            match segment.and_then(|(segment, index, in_use)| {
                // Not ours, or free since we recycled it, where only the peer's pop (IN_USE)
                // makes it new data; one CAS either way.
                let taken = self.ledger.transition_from(
                    index,
                    |s| s == Ownership::NotOurs || (s == Ownership::Recycled && in_use),
                    Ownership::Received,
                );
                taken.map_err(|state| BufferError::BadSlice {
                    offset: segment.slice,
                    fault: if state == Ownership::Recycled {
                        SliceFault::AnnouncedAgain
                    } else {
                        SliceFault::AlreadyOwned { state }
                    },
                })?;
                Ok(segment)
            }) {
                Ok(segment) => out.push(segment),
                Err(e) => break Err(e),
            }
        };
        if result.is_err() {
            for segment in out.drain(..) {
                if let Ok(at) = self.locate(segment.slice) {
                    let _ =
                        self.ledger
                            .transition(at.index, Ownership::Received, Ownership::NotOurs);
                }
            }
        }
        result
    }

    /// Walks the chain at `first` and recycles every slice, each of which this process must
    /// hold; returns how many. Stops at the first bad link (the slices before it are
    /// recycled).
    pub fn recycle_chain(&self, first: u32) -> Result<u32, BufferError> {
        let mut count = 0;
        for segment in self.walk_chain(first) {
            self.recycle(segment?.slice)?;
            count += 1;
        }
        Ok(count)
    }

    /// Byte length of the region this manager covers.
    pub fn region_len(&self) -> u32 {
        self.region_len
    }
}

/// Where an allocation in progress keeps track of what it took, to give it back on failure.
trait Recorder {
    fn taken(&mut self, abs: u32);
    fn give_back(&mut self, manager: &BufferManager<'_>, chain: Option<SliceChain>);
}

/// No storage: give back by following our own links (see [`BufferManager::alloc`]).
struct FollowLinks;

impl Recorder for FollowLinks {
    fn taken(&mut self, _: u32) {}

    fn give_back(&mut self, manager: &BufferManager<'_>, chain: Option<SliceChain>) {
        if let Some(c) = chain {
            let _ = manager.free_chain(&c);
        }
    }
}

#[cfg(feature = "alloc")]
impl Recorder for alloc::vec::Vec<u32> {
    fn taken(&mut self, abs: u32) {
        self.push(abs);
    }

    fn give_back(&mut self, manager: &BufferManager<'_>, _: Option<SliceChain>) {
        for abs in self.drain(..) {
            let _ = manager.recycle(abs);
        }
    }
}

/// Iterator over a chain we allocated; see [`BufferManager::own_chain`]. Yields each slice's
/// absolute offset and data capacity.
#[derive(Debug)]
pub struct OwnChain<'m, 'a> {
    manager: &'m BufferManager<'a>,
    next: Option<u32>,
    left: u32,
    last: u32,
}

impl Iterator for OwnChain<'_, '_> {
    type Item = Result<(u32, u32), BufferError>;

    fn next(&mut self) -> Option<Self::Item> {
        let abs = self.next.take()?;
        let at = match self.manager.writing(abs) {
            Ok(at) => at,
            Err(e) => return Some(Err(e)),
        };
        self.left = self.left.saturating_sub(1);
        if self.left == 0 {
            if abs != self.last {
                return Some(Err(BufferError::BadSlice {
                    offset: abs,
                    fault: SliceFault::ChainRewritten,
                }));
            }
        } else {
            // SYNC: our own slice, written by this process (or published to this thread
            // with the chain it belongs to).
            self.next = Some(at.header.next.load(Ordering::Relaxed));
        }
        Some(Ok((abs, at.list.slice_size())))
    }
}

/// Iterator over a received chain; see [`BufferManager::walk_chain`].
#[derive(Debug)]
pub struct ChainWalk<'m, 'a> {
    manager: &'m BufferManager<'a>,
    next: Option<u32>,
    steps: u32,
}

impl ChainWalk<'_, '_> {
    /// The next segment with its ledger index and whether its IN_USE flag was set.
    fn next_located(&mut self) -> Option<Result<(Segment, u32, bool), BufferError>> {
        let offset = self.next.take()?;
        let fail = |fault| Some(Err(BufferError::BadSlice { offset, fault }));
        if self.steps >= self.manager.total_slices {
            return fail(SliceFault::ChainTooLong);
        }
        self.steps += 1;
        let at = match self.manager.locate(offset) {
            Ok(found) => found,
            Err(e) => return Some(Err(e)),
        };
        let slice_size = at.list.slice_size();
        let snap = at.header.snapshot();
        if snap.cap != slice_size {
            return fail(SliceFault::CapMismatch { cap: snap.cap });
        }
        // IN_USE is not required: shmipc-go's ReleaseReadAndReuse sends a slice it received
        // back after resetting its flags to 0 (PROTOCOL.md 5.4), and the flag is only the
        // peer's claim anyway. Ownership is proved by the ledger (`receive_chain`).
        if u64::from(snap.start) + u64::from(snap.len) > u64::from(slice_size) {
            return fail(SliceFault::BadLength {
                start: snap.start,
                len: snap.len,
            });
        }
        if snap.flags().contains(SliceFlags::HAS_NEXT) {
            self.next = Some(snap.next);
        }
        // `offset` is a slice inside the region and `start + len <= cap`, so the data lies
        // inside the region (< 4 GiB): no overflow.
        Some(Ok((
            Segment {
                slice: offset,
                data: offset + SLICE_HEADER_SIZE as u32 + snap.start,
                len: snap.len,
            },
            at.index,
            snap.flags().contains(SliceFlags::IN_USE),
        )))
    }
}

impl Iterator for ChainWalk<'_, '_> {
    type Item = Result<Segment, BufferError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_located()
            .map(|r| r.map(|(segment, _, _)| segment))
    }
}
