//! Property tests: every frame survives encode/decode, arbitrary bytes never panic the
//! decoder, and random allocate/recycle sequences never hand a slice out twice.

mod common;

use std::collections::HashSet;

use common::Mapping;
use proptest::prelude::*;
use shmlink_core::buffer::{self, SizeClass};
use shmlink_core::frame::{Decoded, Frame, FrameDecoder, FrameError, Message, Paths};

/// Owned inputs for a `Message`, so proptest can generate them.
#[derive(Debug, Clone)]
enum Spec {
    FilePath(Vec<u8>, Vec<u8>),
    Memfd(Vec<u8>, Vec<u8>),
    Polling,
    StreamClose(u32),
    Fallback(u32, u32, Vec<u8>),
    Exchange,
    AckShare,
    AckReady,
    HotRestart(u64),
    HotRestartAck(u64),
}

impl Spec {
    fn message(&self) -> Message<'_> {
        match self {
            Spec::FilePath(q, b) => Message::ShareMemoryByFilePath(Paths {
                queue: q,
                buffer: b,
            }),
            Spec::Memfd(q, b) => Message::ShareMemoryByMemfd(Paths {
                queue: q,
                buffer: b,
            }),
            Spec::Polling => Message::Polling,
            Spec::StreamClose(id) => Message::StreamClose { stream_id: *id },
            Spec::Fallback(id, status, data) => Message::FallbackData {
                stream_id: *id,
                status: *status,
                data,
            },
            Spec::Exchange => Message::ExchangeProtoVersion,
            Spec::AckShare => Message::AckShareMemory,
            Spec::AckReady => Message::AckReadyRecvFd,
            Spec::HotRestart(e) => Message::HotRestart { epoch: *e },
            Spec::HotRestartAck(e) => Message::HotRestartAck { epoch: *e },
        }
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    let path = || proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        (path(), path()).prop_map(|(q, b)| Spec::FilePath(q, b)),
        (path(), path()).prop_map(|(q, b)| Spec::Memfd(q, b)),
        Just(Spec::Polling),
        any::<u32>().prop_map(Spec::StreamClose),
        (
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..2000)
        )
            .prop_map(|(i, s, d)| Spec::Fallback(i, s, d)),
        Just(Spec::Exchange),
        Just(Spec::AckShare),
        Just(Spec::AckReady),
        any::<u64>().prop_map(Spec::HotRestart),
        any::<u64>().prop_map(Spec::HotRestartAck),
    ]
}

proptest! {
    #[test]
    fn decode_of_encode_is_identity_for_every_message_type(spec in spec(), version in 1u8..=255) {
        let frame = Frame::new(version, spec.message());
        let mut wire = vec![0u8; frame.encoded_len()];
        prop_assert_eq!(frame.encode(&mut wire).unwrap(), wire.len());
        prop_assert_eq!(u32::from_be_bytes(wire[0..4].try_into().unwrap()) as usize, wire.len());
        prop_assert_eq!(Frame::decode(&wire).unwrap(), Decoded::Frame(frame, wire.len()));
        // Every proper prefix asks for more bytes and consumes nothing.
        for cut in [0, 1, 7, wire.len() / 2, wire.len() - 1] {
            if cut < wire.len() {
                let is_incomplete = matches!(Frame::decode(&wire[..cut]), Ok(Decoded::Incomplete { .. }));
                prop_assert!(is_incomplete);
            }
        }
    }

    #[test]
    fn a_stream_of_frames_split_anywhere_decodes_to_the_same_frames(
        specs in proptest::collection::vec(spec(), 1..8),
        chunk in 1usize..64,
    ) {
        let mut wire = Vec::new();
        for s in &specs {
            Frame::new(3, s.message()).encode_into(&mut wire).unwrap();
        }
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        for piece in wire.chunks(chunk) {
            decoder.extend(piece);
            while let Some(frame) = decoder.next_frame().unwrap() {
                let mut bytes = Vec::new();
                frame.encode_into(&mut bytes).unwrap();
                got.push(bytes);
            }
        }
        prop_assert_eq!(decoder.pending(), 0);
        prop_assert_eq!(got.len(), specs.len());
        prop_assert_eq!(got.concat(), wire);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        match Frame::decode(&bytes) {
            Ok(Decoded::Frame(frame, used)) => {
                prop_assert!(used <= bytes.len());
                prop_assert_eq!(used, frame.encoded_len());
            }
            Ok(Decoded::Incomplete { needed }) => prop_assert!(needed > bytes.len()),
            Err(_) => {}
        }
        let mut decoder = FrameDecoder::new();
        decoder.extend(&bytes);
        for _ in 0..bytes.len() + 1 {
            match decoder.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn arbitrary_headers_are_rejected_with_the_right_error(
        len in any::<u32>(), magic in any::<u16>(), version in any::<u8>(), kind in any::<u8>()
    ) {
        let mut wire = Vec::new();
        wire.extend_from_slice(&len.to_be_bytes());
        wire.extend_from_slice(&magic.to_be_bytes());
        wire.extend_from_slice(&[version, kind]);
        match Frame::decode(&wire) {
            Err(FrameError::BadMagic { found }) => prop_assert_eq!(found, magic),
            Err(FrameError::BadVersion { .. }) => prop_assert!(magic == 0x7758 && version == 0),
            Err(FrameError::UnknownType { found }) => prop_assert!(found > 9),
            Err(FrameError::BadLength { length, .. }) => prop_assert_eq!(length, len),
            Err(FrameError::TooLong { length, .. }) => prop_assert_eq!(length, len),
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
            Ok(Decoded::Frame(frame, _)) => prop_assert!(len == 8 && frame.encoded_len() == 8),
            Ok(Decoded::Incomplete { needed }) => prop_assert_eq!(needed, len as usize),
        }
    }
}

#[test]
fn polling_with_a_length_other_than_8_is_rejected() {
    let wire = [0, 0, 0, 9, 0x77, 0x58, 3, 1, 0];
    assert!(matches!(
        Frame::decode(&wire),
        Err(FrameError::BadLength { length: 9, .. })
    ));
    let wire = [0, 0, 0, 8, 0x77, 0x58, 0, 1];
    assert_eq!(
        Frame::decode(&wire),
        Err(FrameError::BadVersion { found: 0 })
    );
    let wire = [0, 0, 0, 8, 0x77, 0x59, 3, 1];
    assert_eq!(
        Frame::decode(&wire),
        Err(FrameError::BadMagic { found: 0x7759 })
    );
    let wire = [0, 0, 0, 8, 0x77, 0x58, 3, 10];
    assert_eq!(
        Frame::decode(&wire),
        Err(FrameError::UnknownType { found: 10 })
    );
    // Path lengths that overrun the frame.
    let wire = [0, 0, 0, 12, 0x77, 0x58, 3, 0, 0, 5, 0, 0];
    assert_eq!(
        Frame::decode(&wire),
        Err(FrameError::BadPaths { length: 12 })
    );
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(u64),
    Recycle(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..20_000).prop_map(Op::Alloc),
        any::<usize>().prop_map(Op::Recycle)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn allocation_never_hands_a_slice_out_twice_and_recycling_restores_every_list(
        ops in proptest::collection::vec(op(), 1..200)
    ) {
        let mapping = Mapping::zeroed(128 << 10);
        let classes = [SizeClass { size: 1024, percent: 40 }, SizeClass { size: 4096, percent: 60 }];
        let m = buffer::format(mapping.region(), &classes).unwrap();
        let mut held: Vec<(u32, Vec<u32>)> = Vec::new();
        let mut owned: HashSet<u32> = HashSet::new();
        for op in ops {
            match op {
                Op::Alloc(n) => match m.alloc(n) {
                    Ok(chain) => {
                        let slices: Vec<u32> = m.walk_chain(chain.first()).map(|s| s.unwrap().slice).collect();
                        prop_assert_eq!(slices.len() as u32, chain.count());
                        let cap: u64 = slices.iter().map(|&s| u64::from(m.data_area(s).unwrap().1)).sum();
                        prop_assert!(cap >= n);
                        prop_assert_eq!(cap, chain.capacity());
                        for &s in &slices {
                            prop_assert!(owned.insert(s), "slice {} handed out twice", s);
                        }
                        held.push((chain.first(), slices));
                    }
                    Err(e) => prop_assert_eq!(e, buffer::BufferError::NoMoreBuffer { requested: n }),
                },
                Op::Recycle(i) if !held.is_empty() => {
                    let (first, slices) = held.swap_remove(i % held.len());
                    prop_assert_eq!(m.recycle_chain(first).unwrap() as usize, slices.len());
                    for s in slices {
                        owned.remove(&s);
                    }
                }
                Op::Recycle(_) => {}
            }
            let in_use: u32 = m.lists().iter().map(|l| l.capacity() - l.stats().free as u32).sum();
            prop_assert_eq!(in_use as usize, owned.len());
        }
        for (first, _) in held {
            m.recycle_chain(first).unwrap();
        }
        prop_assert!(m.all_free());
        for list in m.lists() {
            let visited: HashSet<u32> = list.free_slices().map(Result::unwrap).collect();
            prop_assert_eq!(visited.len() as u32, list.capacity());
        }
    }
}

mod receive_buffer {
    use proptest::prelude::*;
    use shmlink_core::buffer::Segment;
    use shmlink_core::session::{Piece, ReceiveBuffer};

    proptest! {
        #[test]
        fn reads_in_any_sizes_give_the_bytes_in_order_and_recycle_each_slice_once(
            pieces in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..50)), 0..20),
            reads in proptest::collection::vec(0usize..70, 1..60),
            pop_at in proptest::collection::vec(any::<bool>(), 60),
        ) {
            // "Shared memory": one backing buffer; a Shm piece names a range of it.
            let mut memory = Vec::new();
            let mut rb = ReceiveBuffer::default();
            let mut expected = Vec::new();
            let mut shm_slices = Vec::new();
            for (i, (shm, bytes)) in pieces.iter().enumerate() {
                expected.extend_from_slice(bytes);
                if *shm && !bytes.is_empty() {
                    let data = memory.len() as u32;
                    memory.extend_from_slice(bytes);
                    let seg = Segment { slice: i as u32, data, len: bytes.len() as u32 };
                    shm_slices.push(seg.slice);
                    rb.push(Piece::Shm(seg));
                } else {
                    rb.push(Piece::Heap(bytes.clone()));
                }
            }
            prop_assert_eq!(rb.len(), expected.len());
            let mut got = Vec::new();
            let mut recycled = Vec::new();
            for (k, &n) in reads.iter().enumerate() {
                if pop_at[k] {
                    if let Some((piece, offset)) = rb.pop_front() {
                        match piece {
                            Piece::Shm(s) => {
                                let start = s.data as usize + offset;
                                got.extend_from_slice(&memory[start..s.data as usize + s.len as usize]);
                                recycled.push(s.slice);
                            }
                            Piece::Heap(v) => got.extend_from_slice(&v[offset..]),
                        }
                    }
                } else {
                    let mut out = vec![0u8; n];
                    let m = rb.read(&mut out, |s| &memory[s.data as usize..(s.data + s.len) as usize], |s| recycled.push(s.slice));
                    got.extend_from_slice(&out[..m]);
                }
                prop_assert_eq!(rb.len(), expected.len() - got.len());
            }
            let mut rest = vec![0u8; expected.len()];
            let m = rb.read(&mut rest, |s| &memory[s.data as usize..(s.data + s.len) as usize], |s| recycled.push(s.slice));
            got.extend_from_slice(&rest[..m]);
            prop_assert_eq!(&got, &expected);
            prop_assert!(rb.is_empty());
            recycled.sort_unstable();
            prop_assert_eq!(recycled, shm_slices, "every slice recycled exactly once");
        }
    }

    #[test]
    fn drain_recycles_every_unread_slice() {
        let mut rb = ReceiveBuffer::default();
        rb.push(Piece::Shm(Segment {
            slice: 44,
            data: 64,
            len: 10,
        }));
        rb.push(Piece::Heap(vec![1, 2]));
        rb.push(Piece::Shm(Segment {
            slice: 8236,
            data: 8256,
            len: 5,
        }));
        let mut out = [0u8; 3];
        let memory = [7u8; 9000];
        assert_eq!(
            rb.read(
                &mut out,
                |s| &memory[s.data as usize..(s.data + s.len) as usize],
                |_| panic!("not consumed yet")
            ),
            3
        );
        let mut recycled = Vec::new();
        rb.drain(|s| recycled.push(s.slice));
        assert_eq!(recycled, [44, 8236]);
        assert_eq!(rb.len(), 0);
    }
}

/// Issue 6, item 5: every header field the peer can write, set to arbitrary values, then
/// attach and operate. Run in the test (debug) profile, so any overflow on a peer value is a
/// panic and fails the property; every outcome must be a value or an error.
mod arbitrary_headers {
    use super::common::Mapping;
    use proptest::prelude::*;
    use shmlink_core::buffer::{self, Role, SizeClass};
    use shmlink_core::queue::{self, Element, Side};
    use shmlink_core::session::Session;

    const LEN: usize = 32 << 10;

    /// Arbitrary words, weighted towards the edges where arithmetic breaks and towards small
    /// values that pass range checks.
    fn peer_value() -> impl Strategy<Value = u32> {
        prop_oneof![
            3 => any::<u32>(),
            2 => prop::sample::select(vec![
                0u32, 1, 2, 3, 4, 20, 532, 2068, 0x7FFF_FFFF, 0x8000_0000, 0x8000_0001,
                0xFFFF_FFFC, 0xFFFF_FFFE, u32::MAX,
            ]),
            2 => 0u32..(LEN as u32),
        ]
    }

    /// Offsets of every peer-writable header word of the formatted region: the manager
    /// header, both list headers, and the first and last slice headers of each list.
    fn header_words(m: &buffer::BufferManager<'_>) -> Vec<usize> {
        let mut at = vec![0, 4];
        for list in m.lists() {
            let base = list.base() as usize;
            at.extend((0..9).map(|k| base - 36 + 4 * k));
            let stride = list.slices().stride() as usize;
            for slice in [base, base + stride * (list.capacity() as usize - 1)] {
                at.extend((0..5).map(|k| slice + 4 * k));
            }
        }
        at
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn attaching_and_operating_on_arbitrary_headers_never_panics(
            writes in proptest::collection::vec((any::<prop::sample::Index>(), peer_value()), 1..12),
            elements in proptest::collection::vec((0u32..8, peer_value(), 0u32..3), 0..12),
            allocs in proptest::collection::vec(0u64..40_000, 0..8),
            queue_writes in proptest::collection::vec((0usize..6, peer_value()), 0..4),
            late_writes in proptest::collection::vec((any::<prop::sample::Index>(), peer_value()), 0..6),
        ) {
            let mapping = Mapping::zeroed(LEN);
            let classes = [SizeClass { size: 512, percent: 50 }, SizeClass { size: 2048, percent: 50 }];
            let words = header_words(&buffer::format(mapping.region(), &classes).unwrap());
            for (index, value) in &writes {
                mapping.poke(words[index.index(words.len())], &value.to_le_bytes());
            }
            // The peer's queue region too: cap, head, tail, flag of the first queue.
            let qmap = Mapping::zeroed(queue::region_size(16));
            queue::format_region(qmap.region(), 16).unwrap();

            for (word, value) in &queue_writes {
                qmap.poke(4 * word, &value.to_le_bytes());
            }
            if let Ok(pair) = queue::attach_region(qmap.region(), Side::Server) {
                let (producer, mut consumer) = pair.into_roles();
                // Any result is allowed against a hostile header (the peer owns these
                // bytes), but a reported length always fits the cap.
                let _ = producer.push(Element::data(2, 44));
                let _ = consumer.pop();
                let _ = consumer.finish_drain();
                if let Ok(len) = producer.queue().len() {
                    prop_assert!(len <= 16, "a queue of 16 reports {} elements", len);
                }
            }
            let m = match buffer::attach(mapping.region(), Role::Mapper) {
                Ok(m) => m,
                // Refused at attach: now format honestly and let the peer rewrite afterwards.
                Err(_) => buffer::format(mapping.region(), &classes).unwrap(),
            };
            // The peer keeps writing after we attached (validation at attach proves nothing
            // about later values).
            for (index, value) in &late_writes {
                mapping.poke(words[index.index(words.len())], &value.to_le_bytes());
            }
            let mut session = Session::new(Side::Server, 3, 0);
            for (id, offset, state) in elements {
                let element = Element { stream_id: id, offset, status: state };
                let mut outside = None;
                let _ = session.on_element(element, &m, &mut |d| {
                    // Whatever the peer wrote, a delivered segment lies inside the mapping.
                    if let shmlink_core::session::Delivery::Shm { segment, .. } = d {
                        if u64::from(segment.data) + u64::from(segment.len) > LEN as u64 {
                            outside = Some((segment.data, segment.len));
                        }
                    }
                });
                prop_assert!(outside.is_none(), "a segment outside the mapping: {:?}", outside);
            }
            for n in allocs {
                if let Ok(chain) = m.alloc(n) {
                    prop_assert!(chain.capacity() >= n, "an allocation of {} got {}", n, chain.capacity());
                    for slice in m.own_chain(&chain).flatten() {
                        let _ = m.set_len(slice.0, 1);
                    }
                    let _ = m.free_chain(&chain);
                }
            }
            prop_assert!(m.in_use_bytes() <= m.capacity_bytes());
            let _ = m.all_free();
            for list in m.lists() {
                let _ = list.free_slices().take(100).count();
                let _ = list.stats();
            }
        }
    }
}
