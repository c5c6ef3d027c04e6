//! Compatibility with shared memory and socket bytes recorded from real shmipc-go processes
//! (tests/fixtures/README.md).

mod common;

use std::collections::HashSet;

use common::{Mapping, gunzip_fixture};
use shmlink_core::buffer::{self, Role};
use shmlink_core::frame::{Decoded, Frame, Message, Paths};
use shmlink_core::queue::{self, Element, QueueStats, Side};
use shmlink_core::slice::SliceFlags;

#[test]
fn go_buffer_region_attaches_with_the_documented_lists() {
    let bytes = gunzip_fixture("buffer.bin.gz");
    assert_eq!(bytes.len(), 33_554_432);
    let mapping = Mapping::from_bytes(&bytes);
    let manager = buffer::attach(mapping.region(), Role::Mapper).unwrap();

    // (header offset, free, cap, head, tail, slice size) from the fixture README.
    let expected = [
        (8u32, 2047, 2047, 81_920, 73_728, 8172),
        (16_769_068, 307, 307, 0, 10_027_008, 32_748),
        (26_828_880, 51, 51, 524_288, 393_216, 131_052),
    ];
    assert_eq!(manager.lists().len(), 3);
    for (list, &(header, free, cap, head, tail, size)) in manager.lists().iter().zip(&expected) {
        let stats = list.stats();
        assert_eq!(list.base(), header + 36);
        assert_eq!(
            (
                stats.free,
                stats.cap,
                stats.head,
                stats.tail,
                stats.slice_size
            ),
            (free, cap, head, tail, size)
        );
        assert_eq!((stats.counter_creator, stats.counter_mapper), (0, 0));
    }
    assert!(manager.all_free());
    assert_eq!(manager.capacity_bytes(), 33_465_372);
    assert_eq!(manager.in_use_bytes(), 0);
    assert_eq!(mapping.u32_at(4), 33_513_580, "used length");
}

#[test]
fn walking_each_go_free_list_visits_every_slice_once_from_head_to_tail() {
    let mapping = Mapping::from_bytes(&gunzip_fixture("buffer.bin.gz"));
    let manager = buffer::attach(mapping.region(), Role::Mapper).unwrap();
    for list in manager.lists() {
        let stats = list.stats();
        let visited: Vec<u32> = list.free_slices().map(Result::unwrap).collect();
        let unique: HashSet<u32> = visited.iter().copied().collect();
        assert_eq!(
            visited.len(),
            stats.cap as usize,
            "every slice of list {}",
            list.slice_size()
        );
        assert_eq!(unique.len(), visited.len(), "no slice visited twice");
        assert_eq!(visited.first(), Some(&stats.head));
        assert_eq!(visited.last(), Some(&stats.tail));
        let stride = list.slice_size() + 20;
        assert!(
            visited
                .iter()
                .all(|rel| rel % stride == 0 && rel / stride < stats.cap)
        );
    }
}

#[test]
fn go_request_offsets_point_at_slices_that_were_released() {
    // The queue elements name the first slices of the four requests and echoes; after the run
    // Go had released them: slice boundaries, flags without IN_USE. (A received chain no
    // longer requires IN_USE, because Go's ReleaseReadAndReuse sends slices with their flags
    // reset; ownership is the ledger's business.)
    let mapping = Mapping::from_bytes(&gunzip_fixture("buffer.bin.gz"));
    let manager = buffer::attach(mapping.region(), Role::Mapper).unwrap();
    for offset in [44u32, 16_428, 32_812, 65_580, 8236, 24_620, 49_196, 73_772] {
        let (_, header) = manager
            .slice_at(offset)
            .unwrap_or_else(|e| panic!("{offset} is a slice boundary: {e}"));
        assert!(
            !header.flags().contains(SliceFlags::IN_USE),
            "{offset} was released"
        );
        let segment = manager.walk_chain(offset).next().unwrap().unwrap();
        assert_eq!((segment.slice, segment.len), (offset, 0));
    }
}

#[test]
fn go_queue_region_decodes_to_the_recorded_elements() {
    let bytes = gunzip_fixture("queue.bin.gz");
    assert_eq!(bytes.len(), queue::region_size(8192));
    let mapping = Mapping::from_bytes(&bytes);
    let server = queue::attach_region(mapping.region(), Side::Server).unwrap();
    let client = queue::attach_region(mapping.region(), Side::Client).unwrap();

    let to_server = [(2, 44, 0), (2, 16_428, 0), (2, 32_812, 0), (2, 65_580, 0)];
    let to_client = [(2, 8236, 0), (2, 24_620, 0), (2, 49_196, 0), (2, 73_772, 0)];
    for (queue, expected) in [(&server.recv, to_server), (&server.send, to_client)] {
        assert_eq!(
            queue.stats(),
            QueueStats {
                cap: 8192,
                head: 4,
                tail: 4,
                working: 0
            }
        );
        for (i, &(stream_id, offset, status)) in expected.iter().enumerate() {
            assert_eq!(
                queue.slot_value(i as u32),
                Some(Element {
                    stream_id,
                    offset,
                    status
                })
            );
        }
        assert_eq!(
            queue.slot_value(4),
            Some(Element {
                stream_id: 0,
                offset: 0,
                status: 0
            })
        );
        assert_eq!(queue.len().unwrap(), 0);
    }
    // The client sees the same two queues the other way round.
    assert_eq!(client.send.slot_value(0), server.recv.slot_value(0));
    assert_eq!(client.recv.slot_value(0), server.send.slot_value(0));
}

#[test]
fn go_v3_memfd_session_frames_decode_and_reencode_byte_for_byte() {
    let paths = Paths {
        queue: b"/dev/shm/goclient_25559_queue_0",
        buffer: b"/dev/shm/goclient_25559_buffer",
    };
    let mut expected = vec![
        ("C->S", Message::ExchangeProtoVersion),
        ("S->C", Message::ExchangeProtoVersion),
        ("C->S", Message::ShareMemoryByMemfd(paths)),
        ("S->C", Message::AckReadyRecvFd),
        ("S->C", Message::AckShareMemory),
    ];
    for _ in 0..4 {
        expected.push(("C->S", Message::Polling));
        expected.push(("S->C", Message::Polling));
    }
    expected.push(("C->S", Message::Polling));

    let recorded = common::recorded_frames();
    assert_eq!(recorded.len(), expected.len());
    for ((dir, bytes), (want_dir, want)) in recorded.iter().zip(&expected) {
        assert_eq!(dir, want_dir);
        let Decoded::Frame(frame, used) = Frame::decode(bytes).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(used, bytes.len());
        assert_eq!(frame, Frame::new(3, *want));
        let mut out = vec![0u8; frame.encoded_len()];
        frame.encode(&mut out).unwrap();
        assert_eq!(&out, bytes, "re-encoding {want:?}");
    }
    // The paths frame is 73 bytes long, as the README says.
    assert_eq!(recorded[2].1.len(), 73);
}
