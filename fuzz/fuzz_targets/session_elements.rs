//! The session state machine fed queue elements by a peer that shares the memory: correct
//! sends mixed with arbitrary elements, arbitrary writes into the buffer and queue regions,
//! slices pushed to the free lists behind our back, stream closes and fallback frames from
//! both sides.
//!
//! Checked: nothing panics or reads outside the mapping; every delivered segment lies inside
//! its slice's data area; a slice is never delivered again while our reader holds it; and
//! while the peer behaves, nothing it sends is refused and every slice comes back.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use shmlink_core::buffer::{self, BufferManager, Role, SizeClass};
use shmlink_core::frame::{Frame, Message};
use shmlink_core::queue::{self, Element, Side};
use shmlink_core::session::{Delivery, Session};
use shmlink_core::slice::SLICE_HEADER_SIZE;
use shmlink_fuzz::{Cursor, Mapping};

const BUFFER_LEN: usize = 64 << 10;
const QUEUE_CAP: u32 = 16;
const CLASSES: [SizeClass; 2] = [
    SizeClass {
        size: 256,
        percent: 50,
    },
    SizeClass {
        size: 1024,
        percent: 50,
    },
];

/// A slice boundary (the first slice of a list plus `k` strides), or a raw offset.
fn some_offset(input: &mut Cursor<'_>, m: &BufferManager<'_>) -> u32 {
    let lists = m.lists();
    match input.u8() % 4 {
        0 => input.u32(),
        1 => u32::from(input.u16()),
        n => {
            let list = &lists[usize::from(n) % lists.len()];
            let k = u32::from(input.u8()) % (list.capacity() + 1);
            let delta = i32::from(input.u8() as i8) * i32::from(n == 3);
            list.base()
                .wrapping_add(k * list.slices().stride())
                .wrapping_add_signed(delta)
        }
    }
}

/// The peer's own bookkeeping: sure to work while nobody scribbles on the memory; after
/// that the peer is as confused as we may be, and its failures are not ours to check.
fn peer_ok<T, E: std::fmt::Debug>(hostile: bool, r: Result<T, E>, what: &str) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(hostile, "{what}: {e:?}");
            None
        }
    }
}

struct Reader {
    held: HashSet<u32>,
    order: Vec<u32>,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let buffer = Mapping::zeroed(BUFFER_LEN);
    let queues = Mapping::zeroed(queue::region_size(QUEUE_CAP));
    // We are the server here (the element receiver); the peer created the memory, as a
    // client does. Both managers are ours over the same bytes, as two processes would be.
    let theirs = buffer::format(buffer.region(), &CLASSES).expect("format");
    let ours = buffer::attach(buffer.region(), Role::Mapper).expect("attach");
    let (peer_tx, _) = queue::format_region(queues.region(), QUEUE_CAP)
        .expect("queue format")
        .into_roles();
    let (_, mut rx) = queue::attach_region(queues.region(), Side::Server)
        .expect("queue attach")
        .into_roles();
    let mut session = Session::new(Side::Server, 3, 0);
    let mut reader = Reader {
        held: HashSet::new(),
        order: Vec::new(),
    };
    let mut hostile = false;
    let mut closed = false;
    let mut scratch = Vec::new();

    for _ in 0..256 {
        if input.is_empty() || closed {
            break;
        }
        let op = input.u8() % 10;
        if std::env::var_os("SHMLINK_FUZZ_TRACE").is_some() {
            eprintln!("op {op}");
        }
        match op {
            // A correct send: a chain of 1 to 4 slices, then its element.
            0 => {
                let stream = u32::from(input.u8() % 6);
                let mut slices: Vec<u32> = Vec::new();
                for _ in 0..(input.u8() % 4 + 1) {
                    let len = u32::from(input.u16()) % 1025; // one slice each
                    let Ok(chain) = theirs.alloc(u64::from(len.max(1))) else {
                        break;
                    };
                    if chain.count() > 1 {
                        // Large slices ran out and small ones were chained: not one slice.
                        peer_ok(hostile, theirs.free_chain(&chain), "own chain");
                        break;
                    }
                    let abs = chain.first();
                    let Some((_, cap)) = peer_ok(hostile, theirs.data_area(abs), "own slice")
                    else {
                        break;
                    };
                    let len = len.min(cap);
                    peer_ok(hostile, theirs.set_len(abs, len), "own slice");
                    if let Some(&prev) = slices.last() {
                        peer_ok(hostile, theirs.link(prev, abs), "own slices");
                    }
                    slices.push(abs);
                }
                if std::env::var_os("SHMLINK_FUZZ_TRACE").is_some() {
                    eprintln!("  send {stream} {slices:?}");
                }
                if let Some(&first) = slices.first() {
                    for &abs in &slices {
                        peer_ok(hostile, theirs.hand_over(abs), "own slice");
                    }
                    if peer_tx.push(Element::data(stream, first)).is_err() {
                        // Queue full: the peer takes its slices back, as a writer does.
                        for &abs in &slices {
                            peer_ok(hostile, theirs.take_back(abs), "handed over");
                            peer_ok(hostile, theirs.recycle(abs), "own slice");
                        }
                    }
                }
            }
            // An arbitrary element.
            1 => {
                hostile = true;
                let stream = u32::from(input.u8() % 6);
                let offset = some_offset(&mut input, &theirs);
                let status = u32::from(input.u8()) | (u32::from(input.u8() & 0x80) << 24);
                let _ = peer_tx.push(Element {
                    stream_id: stream,
                    offset,
                    status,
                });
            }
            // The peer writes the buffer region.
            2 => {
                hostile = true;
                let at = if input.u8() & 1 == 0 {
                    some_offset(&mut input, &theirs) as usize + usize::from(input.u8() % 24)
                } else {
                    usize::from(input.u16())
                };
                let n = usize::from(input.u8() % 8 + 1);
                buffer.poke(at, input.take(n));
            }
            // The peer writes the queue region (heads, tails, flags, elements).
            3 => {
                hostile = true;
                let at = usize::from(input.u16()) % queues.len();
                let n = usize::from(input.u8() % 8 + 1);
                queues.poke(at, input.take(n));
            }
            // We drain the receive queue.
            4 => {
                for _ in 0..32 {
                    let element = match rx.pop() {
                        Ok(Some(e)) => e,
                        Ok(None) => break,
                        Err(_) => {
                            assert!(hostile, "a correct peer's queue refused");
                            closed = true;
                            break;
                        }
                    };
                    let mut deliveries = Vec::new();
                    let result = session.on_element(element, &ours, &mut |d| deliveries.push(d));
                    for d in deliveries {
                        deliver(d, &ours, &buffer, &mut reader);
                    }
                    if let Err(e) = result {
                        assert!(hostile, "a correct element refused: {e}");
                        closed = true;
                        break;
                    }
                }
            }
            // Our reader consumes one held slice.
            5 => {
                if !reader.order.is_empty() {
                    let i = usize::from(input.u8()) % reader.order.len();
                    let slice = reader.order.swap_remove(i);
                    reader.held.remove(&slice);
                    let r = ours.recycle(slice);
                    assert!(hostile || r.is_ok(), "recycling a held slice: {r:?}");
                }
            }
            // We allocate (as a writer would) and give it all back.
            6 => {
                let n = u64::from(input.u16()) * 2;
                if ours.alloc_into(n, &mut scratch).is_ok() {
                    for &abs in &scratch {
                        let r = ours.recycle(abs);
                        assert!(hostile || r.is_ok(), "recycling our own slice: {r:?}");
                    }
                }
            }
            // A control frame from the peer.
            7 => {
                let stream = u32::from(input.u8() % 6);
                let n = usize::from(input.u8() % 16);
                let payload = input.take(n).to_vec();
                let message = if input.u8() & 1 == 0 {
                    Message::StreamClose { stream_id: stream }
                } else {
                    Message::FallbackData {
                        stream_id: stream,
                        status: u32::from(input.u8() % 3),
                        data: &payload,
                    }
                };
                let frame = Frame::new(3, message);
                let mut deliveries = Vec::new();
                let result = session.on_frame(&frame, 0, &mut |d| deliveries.push(d));
                assert!(result.is_ok(), "{:?}", frame.message);
                for d in deliveries {
                    deliver(d, &ours, &buffer, &mut reader);
                }
            }
            // The peer recycles a slice it does not hold (a double recycle, or a slice we
            // hold), straight into the free list.
            8 => {
                hostile = true;
                let at = some_offset(&mut input, &theirs);
                for list in theirs.lists() {
                    let _ = list.push(at);
                }
            }
            // We close a stream.
            _ => {
                let _ = session.close_stream(u32::from(input.u8() % 6));
            }
        }
    }
    // The reader gives everything back.
    for slice in reader.order.drain(..) {
        let r = ours.recycle(slice);
        assert!(hostile || r.is_ok(), "recycling a held slice: {r:?}");
    }
    if !hostile && !closed {
        // Drain what is left; with a correct peer every slice comes home.
        while let Ok(Some(element)) = rx.pop() {
            let mut deliveries = Vec::new();
            session
                .on_element(element, &ours, &mut |d| deliveries.push(d))
                .expect("a correct element");
            for d in deliveries {
                deliver(d, &ours, &buffer, &mut reader);
            }
        }
        for slice in reader.order.drain(..) {
            ours.recycle(slice).expect("a held slice");
        }
        if !ours.all_free() {
            for list in ours.lists() {
                eprintln!("{:?}", list.stats());
            }
            panic!("a correct exchange leaked slices");
        }
    }
});

fn deliver(d: Delivery<'_>, ours: &BufferManager<'_>, buffer: &Mapping, reader: &mut Reader) {
    if std::env::var_os("SHMLINK_FUZZ_TRACE").is_some() {
        eprintln!("  {d:?}");
    }
    match d {
        Delivery::Shm { segment, .. } => {
            let (area, cap) = ours.data_area(segment.slice).expect("a delivered slice");
            assert_eq!(area, segment.slice + SLICE_HEADER_SIZE as u32);
            assert!(
                segment.data >= area,
                "{segment:?} starts before its data area"
            );
            assert!(
                u64::from(segment.data) + u64::from(segment.len)
                    <= u64::from(area) + u64::from(cap),
                "{segment:?} runs past its slice"
            );
            // Touch every byte, as a reader would.
            let bytes = buffer.peek(segment.data as usize, segment.len as usize);
            std::hint::black_box(bytes);
            assert!(
                reader.held.insert(segment.slice),
                "slice {} delivered again while the reader holds it",
                segment.slice
            );
            reader.order.push(segment.slice);
        }
        Delivery::Recycle(slice) => {
            let _ = ours.recycle(slice);
        }
        Delivery::Opened(_)
        | Delivery::Closed(_)
        | Delivery::Fallback { .. }
        | Delivery::HotRestart { .. } => {}
    }
}
