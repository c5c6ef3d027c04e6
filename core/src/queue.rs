//! The IO queue: a ring of 12-byte elements in shared memory that carries "stream S has data at
//! offset O" (or "stream S closed") from one process to the other (PROTOCOL.md 3).
//!
//! # Layout
//!
//! A queue region holds two queues back to back, each a 24-byte [`QueueHeader`] followed by
//! `cap` [`ElementSlot`]s. The first half carries client-to-server traffic, the second half
//! server-to-client. The header layout depends on the architecture, exactly as in shmipc-go:
//!
//! | arch  | cap | head | tail | working flag |
//! |-------|-----|------|------|--------------|
//! | amd64 | 0   | 4    | 12   | 20           |
//! | arm64 | 0   | 8    | 16   | 4            |
//!
//! On amd64 the 8-byte counters are not 8-aligned; they are accessed through one audited type
//! in `sync` (inline assembly), and [`Queue::attach`] refuses any layout where a counter would
//! straddle a cache line, where x86 no longer guarantees an atomic load.
//!
//! # Algorithm
//!
//! Each queue has one producing process and one consuming process. Within the producing
//! process many threads may push: [`Producer`] serialises them with a short spin lock around
//! "write element, bump tail". The element is written before the tail increment, which
//! publishes it (release); the consumer loads the tail (acquire) before reading the slot.
//!
//! # Waking the peer: the working flag
//!
//! The consumer is asleep on the socket when idle. After each push the producer tries to
//! flip the header's working flag from 0 to 1; only if that succeeds must it send a Polling
//! frame, and [`Producer::push`] tells it so with [`Wake::NotifyPeer`]. A consumer woken by a
//! Polling pops until empty, then calls [`Consumer::finish_drain`], which lowers the flag
//! and looks at the queue once more: if something arrived meanwhile it raises the flag again
//! and answers [`Drain::Again`]. This is a Dekker-style store-then-load on both sides, so
//! both use sequentially consistent operations plus a SeqCst fence; `loom-tests` checks that
//! no wake-up is ever lost.
//!
//! ```
//! use shmlink_core::queue::{Drain, Element, ElementSlot, LineAligned, Queue, QueueHeader, Wake};
//!
//! // In process memory, align the header to a cache line so no counter straddles one.
//! let header = LineAligned(QueueHeader::new(4));
//! let slots: Vec<ElementSlot> = (0..4).map(|_| ElementSlot::default()).collect();
//! let (producer, mut consumer) = Queue::from_parts(&header, &slots).unwrap().split();
//!
//! // The first push finds the consumer idle: the caller must send a Polling frame.
//! assert_eq!(producer.push(Element::data(2, 44)).unwrap(), Wake::NotifyPeer);
//! // The consumer is now "working", so further pushes need no syscall.
//! assert_eq!(producer.push(Element::close(2)).unwrap(), Wake::PeerAwake);
//!
//! // The consumer, woken by the Polling frame, drains and then goes idle.
//! assert_eq!(consumer.pop().unwrap(), Some(Element::data(2, 44)));
//! assert_eq!(consumer.pop().unwrap(), Some(Element::close(2)));
//! assert_eq!(consumer.pop().unwrap(), None);
//! assert_eq!(consumer.finish_drain().unwrap(), Drain::Idle);
//! ```

use core::fmt;

#[cfg(not(loom))]
use crate::region::Region;
use crate::sync::{AtomicU32, Ordering, ProducerLock, SharedCounter, fence, lock};

/// Bytes of one queue header.
pub const HEADER_SIZE: usize = 24;
/// Bytes of one queue element.
pub const ELEMENT_SIZE: usize = 12;
/// Element status (low byte): data for the stream.
pub const STATUS_OPENED: u8 = 0;
/// Element status (low byte): the sender closed the stream.
pub const STATUS_CLOSED: u8 = 1;

/// Bytes of a queue region holding two queues of `cap` elements: `2 × (24 + 12 × cap)`.
pub const fn region_size(cap: u32) -> usize {
    2 * (HEADER_SIZE + ELEMENT_SIZE * cap as usize)
}

/// The 24-byte header of one queue, as shared with the peer (amd64 layout).
#[cfg(not(target_arch = "aarch64"))]
#[repr(C)]
pub struct QueueHeader {
    cap: AtomicU32,
    head: SharedCounter,
    tail: SharedCounter,
    working: AtomicU32,
}

/// The 24-byte header of one queue, as shared with the peer (arm64 layout).
#[cfg(target_arch = "aarch64")]
#[repr(C)]
pub struct QueueHeader {
    cap: AtomicU32,
    working: AtomicU32,
    head: SharedCounter,
    tail: SharedCounter,
}

#[cfg(all(not(loom), not(target_arch = "aarch64")))]
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<QueueHeader>() == HEADER_SIZE);
    assert!(align_of::<QueueHeader>() == 4);
    assert!(offset_of!(QueueHeader, cap) == 0);
    assert!(offset_of!(QueueHeader, head) == 4);
    assert!(offset_of!(QueueHeader, tail) == 12);
    assert!(offset_of!(QueueHeader, working) == 20);
};

#[cfg(all(not(loom), target_arch = "aarch64"))]
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<QueueHeader>() == HEADER_SIZE);
    assert!(offset_of!(QueueHeader, cap) == 0);
    assert!(offset_of!(QueueHeader, working) == 4);
    assert!(offset_of!(QueueHeader, head) == 8);
    assert!(offset_of!(QueueHeader, tail) == 16);
};

impl QueueHeader {
    /// A fresh header for a heap-allocated queue of `cap` elements (tests, loom models,
    /// in-process use). Shared-memory queues are made by [`format_region`].
    pub fn new(cap: u32) -> Self {
        Self {
            cap: AtomicU32::new(cap),
            working: AtomicU32::new(0),
            head: SharedCounter::new(0),
            tail: SharedCounter::new(0),
        }
    }
}

/// A value aligned to a 64-byte cache line: a [`QueueHeader`] in process memory wrapped in
/// this can never put a counter across a line, which [`Queue::from_parts`] refuses.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct LineAligned<T>(pub T);

impl<T> core::ops::Deref for LineAligned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// One 12-byte queue slot in shared memory: stream id, absolute offset of the first slice
/// header in the buffer region, status (all native-endian).
#[repr(C)]
#[derive(Default)]
pub struct ElementSlot {
    stream_id: AtomicU32,
    offset: AtomicU32,
    status: AtomicU32,
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<ElementSlot>() == ELEMENT_SIZE);
    assert!(offset_of!(ElementSlot, stream_id) == 0);
    assert!(offset_of!(ElementSlot, offset) == 4);
    assert!(offset_of!(ElementSlot, status) == 8);
};

/// A queue element by value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Element {
    /// The stream id ("seqID").
    pub stream_id: u32,
    /// Absolute offset of the first slice header of the data in the buffer region; 0 for a
    /// close event.
    pub offset: u32,
    /// The status word; only the low byte (the stream state) is meaningful.
    pub status: u32,
}

impl Element {
    /// "Stream `stream_id` has data starting at the slice at `offset`."
    pub const fn data(stream_id: u32, offset: u32) -> Self {
        Self {
            stream_id,
            offset,
            status: STATUS_OPENED as u32,
        }
    }

    /// "Stream `stream_id` was closed by the sender."
    pub const fn close(stream_id: u32) -> Self {
        Self {
            stream_id,
            offset: 0,
            status: STATUS_CLOSED as u32,
        }
    }

    /// The stream state carried in the low byte of the status (Go masks the rest away).
    pub const fn state(&self) -> u8 {
        (self.status & 0xff) as u8
    }
}

/// A reading of a queue header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueStats {
    /// Capacity in elements (as read when attaching).
    pub cap: u32,
    /// Elements ever popped.
    pub head: i64,
    /// Elements ever pushed.
    pub tail: i64,
    /// The working flag: 1 while the consumer is draining.
    pub working: u32,
}

/// What the producer must do after a successful push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a NotifyPeer that is not acted on leaves the peer asleep with data queued"]
pub enum Wake {
    /// The consumer was idle and this push raised its working flag: send one Polling frame
    /// (or bump the eventfd).
    NotifyPeer,
    /// The consumer is already draining and will see the element; send nothing.
    PeerAwake,
}

/// What the consumer must do after lowering its working flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "ignoring Drain::Again leaves elements behind with the flag raised"]
pub enum Drain {
    /// The queue was empty after the flag went down: sleep until the next Polling.
    Idle,
    /// Elements arrived meanwhile; the flag is up again: pop them (no Polling will come).
    Again,
}

/// Errors of the IO queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue holds `cap` elements; the consumer has not caught up.
    Full {
        /// The queue capacity.
        cap: u32,
    },
    /// A header field holds a value no correct peer writes; the queue cannot be trusted.
    Corrupted {
        /// Which field (`"cap"`, `"head"`, `"tail"`, `"head/tail"`, `"working flag"`).
        field: &'static str,
        /// The value found.
        value: i64,
    },
    /// The region is too small for the capacity its header (or the caller) claims.
    RegionTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The region is not aligned or sized as the layout requires.
    Misaligned {
        /// What was wrong.
        what: &'static str,
    },
    /// The element was pushed (the tail is raised, the peer will see it), but the working
    /// flag held a value no correct peer writes, so whether to wake the peer is unknown. The
    /// queue cannot be trusted any more; the element's data is the peer's now.
    FlagCorruptedAfterPush {
        /// The value found.
        value: u32,
    },
    /// With this capacity an 8-byte counter of the second queue would straddle a 64-byte
    /// cache line, where x86 does not make plain loads atomic (and a locked add is a split
    /// lock). Capacities that are multiples of 16 are always fine.
    CounterStraddlesCacheLine {
        /// The offending capacity.
        cap: u32,
    },
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full { cap } => write!(f, "io queue is full ({cap} elements pending)"),
            Self::Corrupted { field, value } => {
                write!(f, "io queue header corrupted: {field} = {value}")
            }
            Self::RegionTooSmall { needed, actual } => {
                write!(
                    f,
                    "queue region too small: need {needed} bytes, have {actual}"
                )
            }
            Self::Misaligned { what } => write!(f, "queue region misaligned: {what}"),
            Self::FlagCorruptedAfterPush { value } => write!(
                f,
                "io queue working flag corrupted ({value}) after an element was pushed"
            ),
            Self::CounterStraddlesCacheLine { cap } => write!(
                f,
                "queue capacity {cap} puts a head/tail counter across a cache line; \
                 use a capacity that is a multiple of 16"
            ),
        }
    }
}

impl core::error::Error for QueueError {}

/// One queue: a header and its element slots. Split it into its [`Producer`] and
/// [`Consumer`] with [`split`](Queue::split); a process uses one role per queue.
///
/// A `Queue` is neither `Copy` nor `Clone`, and `split` consumes it, so one `Queue` value
/// yields exactly one producer (the only thing that serialises pushes in this process) and one
/// consumer:
///
/// ```compile_fail
/// # use shmlink_core::queue::{ElementSlot, LineAligned, Queue, QueueHeader};
/// let header = LineAligned(QueueHeader::new(16));
/// let slots: Vec<ElementSlot> = (0..16).map(|_| ElementSlot::default()).collect();
/// let queue = Queue::from_parts(&header, &slots).unwrap();
/// let (first, _) = queue.split();
/// let (second, _) = queue.split(); // error: `queue` was moved by the first split
/// ```
///
/// ```compile_fail
/// # use shmlink_core::queue::{ElementSlot, LineAligned, Producer, Queue, QueueHeader};
/// let header = LineAligned(QueueHeader::new(16));
/// let slots: Vec<ElementSlot> = (0..16).map(|_| ElementSlot::default()).collect();
/// let queue = Queue::from_parts(&header, &slots).unwrap();
/// let (producer, _) = queue.split();
/// let another = Producer::new(*producer.queue()); // error: no public constructor, no copy
/// ```
pub struct Queue<'a> {
    header: &'a QueueHeader,
    slots: &'a [ElementSlot],
    /// Capacity read once when attaching; the peer-writable header copy is never re-read.
    cap: u32,
}

impl fmt::Debug for Queue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("cap", &self.cap)
            .field("head", &self.header.head.load())
            .field("tail", &self.header.tail.load())
            .finish()
    }
}

impl<'a> Queue<'a> {
    /// A queue over a header and slots held in ordinary memory (tests, loom models).
    /// The header's capacity must equal `slots.len()`, and, like every constructor, the
    /// header must not put a head/tail counter across a cache line.
    pub fn from_parts(
        header: &'a QueueHeader,
        slots: &'a [ElementSlot],
    ) -> Result<Self, QueueError> {
        // SYNC: the header was built by this process before it was shared; nothing to pair.
        let cap = header.cap.load(Ordering::Relaxed);
        if cap == 0 || cap as usize != slots.len() {
            return Err(QueueError::Corrupted {
                field: "cap",
                value: i64::from(cap),
            });
        }
        #[cfg(not(loom))]
        check_cache_lines(core::ptr::from_ref(header).cast::<u8>() as usize, cap)?;
        let queue = Self { header, slots, cap };
        queue.check_counters()?;
        Ok(queue)
    }

    /// Formats one queue of `cap` elements at the start of `region` (which must be private
    /// to the caller, e.g. freshly created): zero-fills header and slots, writes `cap`.
    #[cfg(not(loom))]
    pub fn format(region: Region<'a>, cap: u32) -> Result<Self, QueueError> {
        let (header, slots) = Self::overlay(region, cap)?;
        for slot in slots {
            slot.store(Element {
                stream_id: 0,
                offset: 0,
                status: 0,
            });
        }
        header.head.store(0);
        header.tail.store(0);
        // SYNC: private region during formatting; the handshake publishes it to the peer.
        header.working.store(0, Ordering::Relaxed);
        header.cap.store(cap, Ordering::Relaxed);
        Ok(Self { header, slots, cap })
    }

    /// Attaches to a queue someone formatted at the start of `region`, validating the
    /// header: capacity non-zero and fitting the region, counters consistent.
    #[cfg(not(loom))]
    pub fn attach(region: Region<'a>) -> Result<Self, QueueError> {
        let header: &QueueHeader = region.layout_at(0).ok_or(QueueError::Misaligned {
            what: "queue header not 4-aligned or region < 24 bytes",
        })?;
        // SYNC: formatting happened before the handshake message that gave us the region.
        let cap = header.cap.load(Ordering::Relaxed);
        let (header, slots) = Self::overlay(region, cap)?;
        let queue = Self { header, slots, cap };
        queue.check_counters()?;
        // SYNC: sanity check only; the value is re-read with SeqCst whenever it matters.
        let working = header.working.load(Ordering::Relaxed);
        if working > 1 {
            return Err(QueueError::Corrupted {
                field: "working flag",
                value: i64::from(working),
            });
        }
        Ok(queue)
    }

    #[cfg(not(loom))]
    fn overlay(
        region: Region<'a>,
        cap: u32,
    ) -> Result<(&'a QueueHeader, &'a [ElementSlot]), QueueError> {
        if cap == 0 || cap > (u32::MAX - HEADER_SIZE as u32) / ELEMENT_SIZE as u32 {
            return Err(QueueError::Corrupted {
                field: "cap",
                value: i64::from(cap),
            });
        }
        let needed = HEADER_SIZE + ELEMENT_SIZE * cap as usize;
        if region.len() < needed {
            return Err(QueueError::RegionTooSmall {
                needed,
                actual: region.len(),
            });
        }
        check_cache_lines(region.as_ptr().as_ptr() as usize, cap)?;
        let header = region
            .layout_at::<QueueHeader>(0)
            .ok_or(QueueError::Misaligned {
                what: "queue header not 4-aligned",
            })?;
        let slots = region
            .layout_slice_at::<ElementSlot>(HEADER_SIZE, cap as usize)
            .ok_or(QueueError::Misaligned {
                what: "queue elements not 4-aligned",
            })?;
        Ok((header, slots))
    }

    /// The capacity in elements.
    pub fn capacity(&self) -> u32 {
        self.cap
    }

    /// Elements pushed but not yet popped, validated against the capacity.
    pub fn len(&self) -> Result<u32, QueueError> {
        let head = self.header.head.load();
        let tail = self.header.tail.load();
        self.size(head, tail)
    }

    /// Whether no element is pending.
    pub fn is_empty(&self) -> Result<bool, QueueError> {
        Ok(self.len()? == 0)
    }

    /// A reading of the header, for metrics and debugging (like Go's `DebugQueueDetail`).
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            cap: self.cap,
            head: self.header.head.load(),
            tail: self.header.tail.load(),
            // SYNC: diagnostics only; decisions use the SeqCst accesses of the handshake.
            working: self.header.working.load(Ordering::Relaxed),
        }
    }

    /// The element stored in slot `index` (`0..cap`), whether or not it is pending; for
    /// audits of a captured region. `None` if `index` is out of range.
    pub fn slot_value(&self, index: u32) -> Option<Element> {
        self.slots.get(index as usize).map(ElementSlot::load)
    }

    /// Elements ever pushed (the tail counter; Go reports it as Send/ReceiveQueueCount).
    pub fn pushed_total(&self) -> i64 {
        self.header.tail.load()
    }

    /// Splits the queue into its two roles: the only way to get a [`Producer`] or a
    /// [`Consumer`]. Drop the role this process does not play.
    pub fn split(self) -> (Producer<'a>, Consumer<'a>) {
        let roles = Roles {
            header: self.header,
            slots: self.slots,
            cap: self.cap,
        };
        (
            Producer {
                queue: self,
                lock: ProducerLock::new(()),
            },
            Consumer {
                queue: roles.queue(),
            },
        )
    }

    fn size(&self, head: i64, tail: i64) -> Result<u32, QueueError> {
        if head < 0 {
            return Err(QueueError::Corrupted {
                field: "head",
                value: head,
            });
        }
        let size = tail.wrapping_sub(head);
        if size < 0 || size > i64::from(self.cap) {
            return Err(QueueError::Corrupted {
                field: "head/tail",
                value: size,
            });
        }
        Ok(size as u32)
    }

    fn check_counters(&self) -> Result<(), QueueError> {
        self.len().map(|_| ())
    }

    fn slot(&self, counter: i64) -> &'a ElementSlot {
        // `counter` was validated as non-negative; the index is < cap == slots.len().
        let index = (counter as u64 % u64::from(self.cap)) as usize;
        &self.slots[index]
    }
}

/// On x86 a locked add across a cache line is a split lock (slow, and fatal under
/// `split_lock_detect=fatal`). The first queue's counters sit at bytes 4..20 of a page; the
/// second queue's depend on the capacity. `base` is the header's address.
#[cfg(not(loom))]
fn check_cache_lines(base: usize, cap: u32) -> Result<(), QueueError> {
    if !cfg!(target_arch = "x86_64") {
        return Ok(());
    }
    for field in [4usize, 12] {
        let start = base + field;
        if start / 64 != (start + 7) / 64 {
            return Err(QueueError::CounterStraddlesCacheLine { cap });
        }
    }
    Ok(())
}

/// Checks, before creating a queue region, that a capacity gives both queues counters
/// that stay within cache lines (any multiple of 16 does; PROTOCOL.md 3.6).
pub const fn capacity_is_safe(cap: u32) -> bool {
    if cap == 0 {
        return false;
    }
    if !cfg!(target_arch = "x86_64") {
        return true;
    }
    let second = HEADER_SIZE + ELEMENT_SIZE * cap as usize;
    let head = second + 4;
    let tail = second + 12;
    head / 64 == (head + 7) / 64 && tail / 64 == (tail + 7) / 64
}

impl ElementSlot {
    fn store(&self, e: Element) {
        // SYNC: plain (relaxed) stores; published by the producer's tail increment
        // (SharedCounter::fetch_add, release) and read after the consumer's tail load.
        self.stream_id.store(e.stream_id, Ordering::Relaxed);
        self.offset.store(e.offset, Ordering::Relaxed);
        self.status.store(e.status, Ordering::Relaxed);
    }

    fn load(&self) -> Element {
        // SYNC: ordered after the consumer's tail load (acquire), which pairs with the
        // producer's tail increment that published these stores.
        Element {
            stream_id: self.stream_id.load(Ordering::Relaxed),
            offset: self.offset.load(Ordering::Relaxed),
            status: self.status.load(Ordering::Relaxed),
        }
    }
}

/// The parts of a queue, to build the consumer's own `Queue` in `split` without making
/// `Queue` copyable in public.
struct Roles<'a> {
    header: &'a QueueHeader,
    slots: &'a [ElementSlot],
    cap: u32,
}

impl<'a> Roles<'a> {
    fn queue(self) -> Queue<'a> {
        Queue {
            header: self.header,
            slots: self.slots,
            cap: self.cap,
        }
    }
}

/// The producing side of a queue. Shareable between threads of one process: pushes are
/// serialised by a short spin lock. Made only by [`Queue::split`].
pub struct Producer<'a> {
    queue: Queue<'a>,
    lock: ProducerLock,
}

impl fmt::Debug for Producer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("queue", &self.queue)
            .finish()
    }
}

impl<'a> Producer<'a> {
    /// The queue this side pushes to.
    pub fn queue(&self) -> &Queue<'a> {
        &self.queue
    }

    /// Pushes `element` and runs the producer half of the working-flag handshake.
    ///
    /// Returns [`Wake::NotifyPeer`] when the caller must send a Polling frame, or
    /// [`QueueError::Full`] when `cap` elements are pending (nothing is written then). Every
    /// error but [`QueueError::FlagCorruptedAfterPush`] means nothing was pushed.
    pub fn push(&self, element: Element) -> Result<Wake, QueueError> {
        {
            let _guard = lock(&self.lock);
            let queue = &self.queue;
            // The tail is ours (only this process writes it, under this lock); the head is
            // the consumer's and tells us which slots it has finished reading.
            let tail = queue.header.tail.load();
            let head = queue.header.head.load();
            let size = queue.size(head, tail)?;
            if size == queue.cap {
                return Err(QueueError::Full { cap: queue.cap });
            }
            queue.slot(tail).store(element);
            // SYNC: releases the element stores to the consumer's tail load; also a SeqCst
            // fence ordering this increment before the flag CAS below (Dekker pair with
            // Consumer::finish_drain's flag store + fence + tail load).
            queue.header.tail.fetch_add(1);
        }
        self.wake()
    }

    fn wake(&self) -> Result<Wake, QueueError> {
        // A busy consumer keeps the flag at 1: a plain load answers without a locked
        // read-modify-write that would take the line from the consumer on every push.
        // SYNC: SeqCst load after the SeqCst tail increment: the same Dekker pair as the
        // CAS below (a 1 seen here was stored before the consumer's SeqCst store of 0 in
        // finish_drain, whose fence then makes it see our tail).
        match self.queue.header.working.load(Ordering::SeqCst) {
            1 => return Ok(Wake::PeerAwake),
            0 => {}
            value => return Err(QueueError::FlagCorruptedAfterPush { value }),
        }
        // SYNC: SeqCst CAS, paired with the consumer's SeqCst store of 0 and its fence in
        // finish_drain: either we see 0 and notify, or the consumer sees our tail.
        match self
            .queue
            .header
            .working
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => Ok(Wake::NotifyPeer),
            Err(1) => Ok(Wake::PeerAwake),
            Err(value) => Err(QueueError::FlagCorruptedAfterPush { value }),
        }
    }
}

/// The consuming side of a queue. Exactly one per queue, across both processes; made only
/// by [`Queue::split`].
#[derive(Debug)]
pub struct Consumer<'a> {
    queue: Queue<'a>,
}

impl<'a> Consumer<'a> {
    /// The queue this side pops from.
    pub fn queue(&self) -> &Queue<'a> {
        &self.queue
    }

    /// Pops the oldest element, or `None` if the queue is empty.
    ///
    /// A head/tail pair no correct peer could produce gives [`QueueError::Corrupted`];
    /// nothing is consumed then.
    pub fn pop(&mut self) -> Result<Option<Element>, QueueError> {
        let queue = &self.queue;
        let head = queue.header.head.load();
        // SYNC: acquire; pairs with the producer's tail fetch_add that published the slot.
        let tail = queue.header.tail.load();
        if queue.size(head, tail)? == 0 {
            return Ok(None);
        }
        let element = queue.slot(head).load();
        // SYNC: releases our slot reads to the producer's head load before it reuses the slot.
        queue.header.head.fetch_add(1);
        Ok(Some(element))
    }

    /// The consumer half of the working-flag handshake, to call when [`pop`](Self::pop)
    /// found the queue empty: lowers the flag, then looks again.
    pub fn finish_drain(&mut self) -> Result<Drain, QueueError> {
        let header = self.queue.header;
        // SYNC: SeqCst store + SeqCst fence, paired with the producer's tail increment (a
        // full fence) and its SeqCst CAS of the flag: the store->load Dekker pattern of
        // PROTOCOL.md 3.6 needs both, or a wake-up can be lost.
        header.working.store(0, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.queue.len()? == 0 {
            return Ok(Drain::Idle);
        }
        // SYNC: SeqCst, like the store above; the producer's CAS will fail and stay silent.
        header.working.store(1, Ordering::SeqCst);
        Ok(Drain::Again)
    }

    /// Raises the working flag without a Polling frame having arrived. Used by consumers that
    /// poll the queue on their own schedule; they must call [`finish_drain`](Self::finish_drain)
    /// before sleeping.
    pub fn mark_working(&mut self) {
        // SYNC: SeqCst like every flag access (PROTOCOL.md 3.6).
        self.queue.header.working.store(1, Ordering::SeqCst);
    }
}

/// The two queues of a queue region, from one side's point of view.
#[derive(Debug)]
pub struct QueuePair<'a> {
    /// The queue this process pushes to.
    pub send: Queue<'a>,
    /// The queue this process pops from.
    pub recv: Queue<'a>,
}

impl<'a> QueuePair<'a> {
    /// This process's two roles: the producer of the send queue and the consumer of the
    /// receive queue.
    pub fn into_roles(self) -> (Producer<'a>, Consumer<'a>) {
        let (producer, _) = self.send.split();
        let (_, consumer) = self.recv.split();
        (producer, consumer)
    }
}

/// Which end of the connection a process is (PROTOCOL.md 1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Connects and creates the shared memory; sends on the first queue.
    Client,
    /// Accepts and maps; sends on the second queue.
    Server,
}

/// Formats a queue region of two queues with `cap` elements each (the client's job).
/// `cap` must satisfy [`capacity_is_safe`]; `region` must be exactly [`region_size`] long
/// or longer (the halves are split at `len / 2`, as the server does).
#[cfg(not(loom))]
pub fn format_region(region: Region<'_>, cap: u32) -> Result<QueuePair<'_>, QueueError> {
    if !capacity_is_safe(cap) {
        return Err(QueueError::CounterStraddlesCacheLine { cap });
    }
    let (first, second) = halves(region)?;
    let first = Queue::format(first, cap)?;
    let second = Queue::format(second, cap)?;
    Ok(QueuePair {
        send: first,
        recv: second,
    })
}

/// Attaches to a queue region formatted by the client, splitting it at `len / 2` as Go's
/// server does, and orients the queues for `side`.
#[cfg(not(loom))]
pub fn attach_region(region: Region<'_>, side: Side) -> Result<QueuePair<'_>, QueueError> {
    let (first, second) = halves(region)?;
    let first = Queue::attach(first)?;
    let second = Queue::attach(second)?;
    Ok(match side {
        Side::Client => QueuePair {
            send: first,
            recv: second,
        },
        Side::Server => QueuePair {
            send: second,
            recv: first,
        },
    })
}

#[cfg(not(loom))]
fn halves(region: Region<'_>) -> Result<(Region<'_>, Region<'_>), QueueError> {
    let len = region.len();
    if len % 8 != 0 {
        return Err(QueueError::Misaligned {
            what: "queue region length not a multiple of 8",
        });
    }
    if cfg!(target_arch = "aarch64") && len % 16 != 0 {
        return Err(QueueError::Misaligned {
            what: "queue region length not a multiple of 16 (arm64)",
        });
    }
    let half = len / 2;
    let (Some(first), Some(second)) = (region.sub(0, half), region.sub(half, half)) else {
        return Err(QueueError::RegionTooSmall {
            needed: 2 * HEADER_SIZE,
            actual: len,
        });
    };
    Ok((first, second))
}
