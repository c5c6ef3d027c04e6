//! The shared memory of one session: the two mapped regions and the core views over them
//! (queues and buffer manager), kept in one struct so the views can never outlive the
//! mappings. This is the only module of `shmlink` with unsafe code: it extends the views'
//! lifetime to the struct's own and turns validated offsets into byte slices.

use std::sync::{Arc, Mutex};

use shmlink_core::buffer::{self, BufferManager, LedgerWord, Role};
use shmlink_core::queue::{self, Consumer, Producer, QueuePair, Side};
use shmlink_core::region::Region;
use shmlink_linux::region::SharedRegion;

use crate::Error;

/// A buffer region and this process's ownership ledger of its slices. A server maps one
/// buffer region once per client path and shares it between that client's sessions, so the
/// ledger is the region's, not a session's: a slice one session holds is held for all.
pub(crate) struct SharedBuffer {
    region: SharedRegion,
    ledger: Box<[LedgerWord]>,
}

impl SharedBuffer {
    /// A region we just created and will format with `classes`.
    pub(crate) fn created(
        region: SharedRegion,
        classes: &[buffer::SizeClass],
    ) -> Result<Self, Error> {
        let (plans, _) = buffer::plan(region.len() as u64, classes)?;
        let slices = plans.iter().map(|p| p.count).sum();
        Ok(Self::with_ledger(region, slices))
    }

    /// A region the peer formatted: validated once here to size the ledger (and again by
    /// every session that attaches).
    pub(crate) fn mapped(region: SharedRegion) -> Result<Self, Error> {
        let slices = buffer::attach(region.region(), Role::Mapper)?.total_slices();
        Ok(Self::with_ledger(region, slices))
    }

    fn with_ledger(region: SharedRegion, slices: u32) -> Self {
        let ledger = (0..buffer::ledger_words(slices))
            .map(|_| LedgerWord::default())
            .collect();
        Self { region, ledger }
    }
}

/// Views first, mappings last: fields drop in declaration order, so the views are gone
/// before the memory they point into is unmapped.
pub(crate) struct Shm {
    pub(crate) buffers: BufferManager<'static>,
    pub(crate) send: Producer<'static>,
    pub(crate) recv: Mutex<Consumer<'static>>,
    buffer_region: Region<'static>,
    queue_mapping: SharedRegion,
    buffer_mapping: Arc<SharedBuffer>,
}

/// A region borrowed for as long as the `Shm` that owns its mapping.
fn unbounded(region: &SharedRegion) -> Region<'static> {
    let view = region.region();
    // SAFETY: the mapping stays at the same address until the SharedRegion is dropped, and
    // every Region<'static> made here is stored in the same Shm as (the Arc of) its
    // SharedRegion, in a field declared earlier, so it is dropped first. Nothing hands the
    // 'static views out of Shm except borrows tied to `&Shm`.
    unsafe { Region::from_raw(view.as_ptr(), view.len()) }
}

/// The ledger borrowed for as long as the `Shm` that holds (the Arc of) its `SharedBuffer`.
fn unbounded_ledger(buffer: &SharedBuffer) -> &'static [LedgerWord] {
    let words: *const [LedgerWord] = &*buffer.ledger;
    // SAFETY: the boxed slice never moves or shrinks while its SharedBuffer lives, and every
    // borrow made here is stored in the same Shm as the Arc<SharedBuffer>, in a field declared
    // earlier (the BufferManager), so it is dropped first.
    unsafe { &*words }
}

impl Shm {
    /// The client's side: formats both freshly created regions.
    pub(crate) fn create(
        queue_mapping: SharedRegion,
        buffer_mapping: SharedRegion,
        queue_cap: u32,
        classes: &[buffer::SizeClass],
    ) -> Result<Self, Error> {
        let buffer = Arc::new(SharedBuffer::created(buffer_mapping, classes)?);
        Self::build(queue_mapping, buffer, |queue, region, ledger| {
            Ok((
                queue::format_region(queue, queue_cap)?,
                buffer::format_in(region, classes, ledger)?,
            ))
        })
    }

    /// The server's side: validates and attaches to the client's regions.
    pub(crate) fn attach(
        queue_mapping: SharedRegion,
        buffer_mapping: Arc<SharedBuffer>,
    ) -> Result<Self, Error> {
        Self::build(queue_mapping, buffer_mapping, |queue, region, ledger| {
            Ok((
                queue::attach_region(queue, Side::Server)?,
                buffer::attach_in(region, Role::Mapper, ledger)?,
            ))
        })
    }

    fn build(
        queue_mapping: SharedRegion,
        buffer_mapping: Arc<SharedBuffer>,
        views: impl FnOnce(
            Region<'static>,
            Region<'static>,
            &'static [LedgerWord],
        ) -> Result<(QueuePair<'static>, BufferManager<'static>), Error>,
    ) -> Result<Self, Error> {
        let buffer_region = unbounded(&buffer_mapping.region);
        let ledger = unbounded_ledger(&buffer_mapping);
        let (pair, buffers) = views(unbounded(&queue_mapping), buffer_region, ledger)?;
        let (send, recv) = pair.into_roles();
        Ok(Self {
            buffers,
            send,
            recv: Mutex::new(recv),
            buffer_region,
            queue_mapping,
            buffer_mapping,
        })
    }

    /// The queue region's mapping.
    pub(crate) fn queue_mapping(&self) -> &SharedRegion {
        &self.queue_mapping
    }

    /// The buffer region's mapping.
    pub(crate) fn buffer_mapping(&self) -> &SharedRegion {
        &self.buffer_mapping.region
    }

    /// The `len` payload bytes at absolute offset `data` of the buffer region.
    ///
    /// `data..data+len` must come from a validated chain segment or an allocation of ours
    /// (both lie inside one slice of the region); out-of-range requests give an empty slice.
    /// A hostile peer can still write these bytes while they are borrowed: the bytes are not
    /// a stable snapshot against a peer that breaks the protocol (see the crate docs).
    pub(crate) fn bytes(&self, data: u32, len: u32) -> &[u8] {
        let Some(ptr) = self.buffer_region.bytes_ptr(data as usize, len as usize) else {
            return &[];
        };
        // SAFETY: in bounds of the live buffer mapping (checked by bytes_ptr), which outlives
        // `&self`. The slice belongs to a received chain we hold (or our own allocation), so
        // no correct peer writes it until we recycle it, which happens only after the borrow
        // ends (views recycle in Drop).
        unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len as usize) }
    }

    /// Mutable access to the payload area of a slice we allocated and have not sent.
    ///
    /// # Safety
    ///
    /// `data..data+len` must be inside a slice this process allocated, not yet published or
    /// recycled, and no other `&mut` to it may exist.
    #[allow(clippy::mut_from_ref)] // the memory is shared, not owned by `self`; see above
    pub(crate) unsafe fn bytes_mut(&self, data: u32, len: u32) -> &mut [u8] {
        let Some(ptr) = self.buffer_region.bytes_ptr(data as usize, len as usize) else {
            return &mut [];
        };
        // SAFETY: in bounds (checked); exclusivity is the caller's contract: the slice is ours
        // alone until we publish or recycle it.
        unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), len as usize) }
    }
}
