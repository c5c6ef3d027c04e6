//! What a peer that breaks the protocol through shared memory can no longer do: give a slice
//! two owners, get a different chain delivered than the one validated, make us publish a
//! corrupt free-list head, overflow our arithmetic, reopen a stream we closed. Each test
//! plays the peer by writing the region directly (or through a second manager attached to the
//! same memory, as the other process would) and checks the error names the slice or field.

mod common;

use common::{Mapping, peer_sends};
use shmlink_core::buffer::{self, BufferError, BufferManager, Role, SizeClass};
use shmlink_core::queue::{Element, ElementSlot, Queue, QueueError, QueueHeader, Side};
use shmlink_core::session::{Delivery, Session};

const SLICE: u32 = 1024;

fn classes() -> [SizeClass; 1] {
    [SizeClass {
        size: SLICE,
        percent: 100,
    }]
}

/// Our manager (the creator) over a fresh 64 KiB region.
fn ours(mapping: &Mapping) -> BufferManager<'_> {
    buffer::format(mapping.region(), &classes()).unwrap()
}

/// The peer's manager over the same memory.
fn theirs(mapping: &Mapping) -> BufferManager<'_> {
    buffer::attach(mapping.region(), Role::Mapper).unwrap()
}

fn record<'f>(got: &mut Vec<String>) -> impl FnMut(Delivery<'f>) + '_ {
    |d| got.push(format!("{d:?}"))
}

#[test]
fn a_chain_naming_a_slice_we_are_still_writing_is_refused_and_the_slice_named() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = ours(&mapping);
    // Our writer popped this slice and is filling it; the peer names it in a queue element.
    let writing = m.alloc(10).unwrap().first();
    let mut server = Session::new(Side::Server, 3, 0);
    let mut got = Vec::new();
    let err = server
        .on_element(Element::data(2, writing), &m, &mut record(&mut got))
        .expect_err("a slice we are writing must not be delivered to our reader");
    let text = err.to_string();
    assert!(text.contains(&writing.to_string()), "{text}");
    assert!(text.contains("still writing"), "{text}");
    assert!(got.is_empty(), "nothing delivered: {got:?}");
    // Our writer still owns it and can finish and recycle it.
    m.set_len(writing, 10).unwrap();
    m.recycle(writing).unwrap();
}

#[test]
fn one_chain_announced_in_two_elements_is_delivered_once() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = ours(&mapping);
    let peer = theirs(&mapping);
    let chain = peer_sends(&peer, &[10, 20]);
    let mut server = Session::new(Side::Server, 3, 0);
    let mut got = Vec::new();
    server
        .on_element(Element::data(2, chain[0]), &m, &mut record(&mut got))
        .unwrap();
    assert_eq!(got.len(), 3, "Opened + two segments: {got:?}");
    let mut again = Vec::new();
    let err = server
        .on_element(Element::data(2, chain[0]), &m, &mut record(&mut again))
        .expect_err("the same chain must not be delivered twice");
    assert!(again.is_empty(), "{again:?}");
    let text = err.to_string();
    assert!(text.contains(&chain[0].to_string()), "{text}");
    assert!(text.contains("received it"), "{text}");
    // The first delivery's slices are still ours, once each.
    assert_eq!(m.recycle_chain(chain[0]).unwrap(), 2);
    assert!(m.all_free());
}

#[test]
fn a_free_list_that_hands_back_a_slice_we_hold_is_refused() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = ours(&mapping);
    let peer = theirs(&mapping);
    let held = m.alloc(10).unwrap().first();
    // The peer recycles a slice it does not own (ours, still being written).
    peer.lists()[0].push(held).unwrap();
    // And one honest recycle after it, so that `held` is not the last free slice (which is
    // never handed out).
    let honest = peer.alloc(10).unwrap().first();
    peer.recycle(honest).unwrap();
    let mut taken = Vec::new();
    let err = loop {
        match m.alloc(10) {
            Ok(c) => taken.push(c.first()),
            Err(e) => break e,
        }
        assert!(taken.len() < 1000, "alloc never failed");
    };
    assert!(
        !taken.contains(&held),
        "a slice we hold was handed out again"
    );
    let text = err.to_string();
    assert!(
        text.contains(&held.to_string()) && text.contains("still writing"),
        "{text}"
    );
}

#[test]
fn delivery_is_exactly_the_chain_validated_even_if_the_peer_rewrites_it_meanwhile() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = ours(&mapping);
    let peer = theirs(&mapping);
    let chain = peer_sends(&peer, &[10, 20]);
    let mut server = Session::new(Side::Server, 3, 0);
    let mut got = Vec::new();
    // The moment the stream is announced (after validation, before the data), the peer cuts
    // the chain after its first slice and shrinks the second.
    server
        .on_element(Element::data(2, chain[0]), &m, &mut |d| {
            if let Delivery::Opened(_) = d {
                mapping.poke(chain[0] as usize + 16, &[0x02]); // flags: IN_USE, no HAS_NEXT
                mapping.poke(chain[1] as usize + 4, &3u32.to_le_bytes());
            }
            if let Delivery::Shm { segment, .. } = d {
                got.push((segment.slice, segment.len));
            }
        })
        .unwrap();
    assert_eq!(got, [(chain[0], 10), (chain[1], 20)]);
}

#[test]
fn a_head_slice_whose_next_leaves_the_list_is_reported_and_never_published() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = ours(&mapping);
    let list = m.lists()[0];
    let before = list.stats();
    // The head slice's `next` (header offset 12) no longer points at a slice boundary.
    let head_abs = list.base() + before.head;
    mapping.poke(head_abs as usize + 12, &7u32.to_le_bytes());
    let err = m
        .alloc(10)
        .expect_err("a bad next must not become the head");
    assert!(format!("{err}").contains("next"), "{err}");
    let after = list.stats();
    assert_eq!(after.head, before.head, "nothing published");
    assert_eq!(
        after.free, before.free,
        "the speculative decrement is undone"
    );
}

#[test]
fn a_free_count_of_i32_min_is_no_overflow() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = ours(&mapping);
    let header = m.lists()[0].base() as usize - 36;
    mapping.poke(header, &i32::MIN.to_le_bytes());
    assert!(matches!(
        m.alloc(10),
        Err(BufferError::NoMoreBuffer { requested: 10 })
    ));
}

#[test]
fn a_slice_size_near_u32_max_at_attach_is_an_error_not_an_overflow() {
    let mapping = Mapping::zeroed(64 << 10);
    ours(&mapping);
    // capPerBuffer of list 0 (list header at 8, field at 16).
    mapping.poke(8 + 16, &0xFFFF_FFFCu32.to_le_bytes());
    let err = buffer::attach(mapping.region(), Role::Mapper).unwrap_err();
    assert!(
        matches!(err, BufferError::Corrupted { list: Some(0), .. }),
        "{err}"
    );
}

#[test]
fn every_queue_constructor_refuses_a_counter_across_a_cache_line() {
    #[repr(C, align(64))]
    struct Line {
        pad: [u8; 56],
        header: QueueHeader,
    }
    let line = Line {
        pad: [0; 56],
        header: QueueHeader::new(16),
    };
    let slots: Vec<ElementSlot> = (0..16).map(|_| ElementSlot::default()).collect();
    // The header starts at byte 56 of a line, so its head (offset 4) spans bytes 60..68.
    match Queue::from_parts(&line.header, &slots) {
        Err(QueueError::CounterStraddlesCacheLine { cap: 16 }) => {}
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a straddling counter was accepted"),
    }
    assert_eq!(line.pad[0], 0);
}

#[test]
fn data_queued_for_a_stream_we_closed_is_recycled_not_reopened() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = ours(&mapping);
    let peer = theirs(&mapping);
    let mut server = Session::new(Side::Server, 3, 0);
    let first = peer_sends(&peer, &[10]);
    let mut got = Vec::new();
    server
        .on_element(Element::data(2, first[0]), &m, &mut record(&mut got))
        .unwrap();
    assert_eq!(got[0], "Opened(2)");
    m.recycle(first[0]).unwrap();
    // We close stream 2; the peer had already queued more data for it.
    let _ = server.close_stream(2);
    let late = peer_sends(&peer, &[10]);
    let mut got = Vec::new();
    server
        .on_element(Element::data(2, late[0]), &m, &mut record(&mut got))
        .unwrap();
    assert_eq!(got, [format!("Recycle({})", late[0])], "no zombie stream");
    assert_eq!(server.stream_state(2), None);
    m.recycle(late[0]).unwrap();
    // The peer's close arrives: both sides closed, the id is forgotten.
    server
        .on_element(Element::close(2), &m, &mut record(&mut got))
        .unwrap();
    assert!(!server.is_closed_locally(2));
}

#[test]
fn a_frame_longer_than_the_configured_limit_is_refused_naming_the_limit() {
    use shmlink_core::frame::{FrameDecoder, FrameError};
    let mut decoder = FrameDecoder::with_limit(1 << 20);
    // FallbackData of 2 MiB + 16: only the header is needed to refuse it.
    let len = (2u32 << 20) + 16;
    decoder.extend(&len.to_be_bytes());
    decoder.extend(&[0x77, 0x58, 3, 3]);
    let err = decoder.next_frame().unwrap_err();
    assert_eq!(
        err,
        FrameError::TooLong {
            length: len,
            limit: 1 << 20
        }
    );
    assert!(err.to_string().contains("1048576"), "{err}");
}

/// Found by the arbitrary-header property in CI: a capacity and a slice size both near
/// u32::MAX overflow even a u64 product; attach must refuse, not panic.
#[test]
fn a_huge_cap_times_a_huge_slice_size_is_an_error_not_an_overflow() {
    let mapping = Mapping::zeroed(64 << 10);
    ours(&mapping);
    mapping.poke(8 + 4, &0xFFFF_FFFCu32.to_le_bytes()); // cap of list 0
    mapping.poke(8 + 16, &0xFFFF_FFFCu32.to_le_bytes()); // capPerBuffer of list 0
    let err = buffer::attach(mapping.region(), Role::Mapper).unwrap_err();
    assert!(
        matches!(err, BufferError::Corrupted { list: Some(0), .. }),
        "{err}"
    );
}

/// A chain announced again after we took delivery of it and recycled it is refused (the
/// slices are free, IN_USE clear), while a slice we recycled that the peer allocated again
/// (IN_USE set by its pop) is a new message and is delivered.
#[test]
fn a_chain_announced_again_after_we_recycled_it_is_refused_but_a_reallocated_slice_is_not() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = ours(&mapping);
    let peer = theirs(&mapping);
    let chain = peer_sends(&peer, &[10]);
    let mut server = Session::new(Side::Server, 3, 0);
    let mut got = Vec::new();
    server
        .on_element(Element::data(2, chain[0]), &m, &mut record(&mut got))
        .unwrap();
    m.recycle(chain[0]).unwrap();
    let err = server
        .on_element(Element::data(2, chain[0]), &m, &mut record(&mut got))
        .expect_err("a replay of a recycled chain must not be delivered again");
    assert!(err.to_string().contains("announced again"), "{err}");
    // The peer recycles one of its own after it (the last free slice is never handed out),
    // then pops slices until it gets that one back, and sends it: that is new data.
    let spare = peer.alloc(10).unwrap().first();
    peer.recycle(spare).unwrap();
    let again = loop {
        let abs = peer.alloc(10).unwrap().first();
        if abs == chain[0] {
            break abs;
        }
    };
    peer.set_len(again, 10).unwrap();
    peer.hand_over(again).unwrap();
    let mut fresh = Vec::new();
    server
        .on_element(Element::data(2, again), &m, &mut record(&mut fresh))
        .unwrap();
    assert!(fresh.iter().any(|d| d.starts_with("Shm")), "{fresh:?}");
}

#[test]
fn a_length_one_past_the_slice_is_refused_not_delivered() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = ours(&mapping);
    let peer = theirs(&mapping);
    let slice = peer_sends(&peer, &[3])[0];
    mapping.poke(slice as usize + 4, &(SLICE + 1).to_ne_bytes());
    let mut server = Session::new(Side::Server, 3, 0);
    let mut got = Vec::new();
    let err = server
        .on_element(Element::data(2, slice), &m, &mut record(&mut got))
        .expect_err("a length past the slice must be refused");
    assert!(got.is_empty(), "{got:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("bad slice at offset {slice}")),
        "{text}"
    );
    assert!(text.contains("exceeds the slice capacity"), "{text}");
}
