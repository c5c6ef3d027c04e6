//! The IO queue on heap regions: order, capacity, the working-flag handshake, attach
//! validation, and a real multi-threaded run over the amd64 unaligned counters.

mod common;

use common::Mapping;
use shmlink_core::queue::{self, Drain, Element, QueueError, Side, Wake};

fn data(stream_id: u32, offset: u32) -> Element {
    Element::data(stream_id, offset)
}

#[test]
fn elements_come_out_in_order_across_many_wraparounds() {
    let mapping = Mapping::zeroed(queue::region_size(16));
    let pair = queue::format_region(mapping.region(), 16).unwrap();
    let (producer, mut consumer) = pair.send.split();
    let mut next_out = 0u32;
    for round in 0..100u32 {
        for k in 0..(round % 16 + 1) {
            let _ = producer.push(data(round, k)).unwrap();
        }
        for k in 0..(round % 16 + 1) {
            assert_eq!(consumer.pop().unwrap(), Some(data(round, k)));
            next_out += 1;
        }
        assert_eq!(consumer.pop().unwrap(), None);
    }
    assert_eq!(producer.queue().pushed_total(), i64::from(next_out));
}

#[test]
fn a_full_queue_refuses_the_push_and_keeps_every_element() {
    let mapping = Mapping::zeroed(queue::region_size(16));
    let pair = queue::format_region(mapping.region(), 16).unwrap();
    let (producer, mut consumer) = pair.send.split();
    for i in 0..16 {
        let _ = producer.push(data(2, i)).unwrap();
    }
    assert_eq!(
        producer.push(data(2, 99)),
        Err(QueueError::Full { cap: 16 })
    );
    for i in 0..16 {
        assert_eq!(consumer.pop().unwrap(), Some(data(2, i)));
    }
    assert_eq!(consumer.pop().unwrap(), None);
}

#[test]
fn only_the_idle_to_busy_edge_asks_for_a_notify() {
    let mapping = Mapping::zeroed(queue::region_size(16));
    let pair = queue::format_region(mapping.region(), 16).unwrap();
    let (producer, mut consumer) = pair.send.split();
    assert_eq!(producer.push(data(2, 1)).unwrap(), Wake::NotifyPeer);
    assert_eq!(producer.push(data(2, 2)).unwrap(), Wake::PeerAwake);
    assert_eq!(producer.push(data(2, 3)).unwrap(), Wake::PeerAwake);
    assert_eq!(consumer.pop().unwrap(), Some(data(2, 1)));
    // Elements still queued when the consumer lowers its flag: drain again, flag back up,
    // so the producer stays silent.
    assert_eq!(consumer.finish_drain().unwrap(), Drain::Again);
    assert_eq!(producer.queue().stats().working, 1);
    assert_eq!(producer.push(data(2, 4)).unwrap(), Wake::PeerAwake);
    while consumer.pop().unwrap().is_some() {}
    assert_eq!(consumer.finish_drain().unwrap(), Drain::Idle);
    assert_eq!(producer.queue().stats().working, 0);
    assert_eq!(producer.push(Element::close(2)).unwrap(), Wake::NotifyPeer);
    assert_eq!(
        consumer.pop().unwrap().map(|e| e.state()),
        Some(queue::STATUS_CLOSED)
    );
}

#[test]
fn client_and_server_see_the_two_halves_crosswise() {
    let mapping = Mapping::zeroed(queue::region_size(8192));
    let client = queue::format_region(mapping.region(), 8192).unwrap();
    let server = queue::attach_region(mapping.region(), Side::Server).unwrap();
    let (client_tx, mut client_rx) = client.into_roles();
    let (server_tx, mut server_rx) = server.into_roles();
    let _ = client_tx.push(data(2, 44)).unwrap();
    let _ = server_tx.push(data(2, 8236)).unwrap();
    assert_eq!(server_rx.pop().unwrap(), Some(data(2, 44)));
    assert_eq!(client_rx.pop().unwrap(), Some(data(2, 8236)));
    // The element bytes are native-endian (stream id, offset, status) after the 24-byte header.
    assert_eq!(
        mapping.bytes_at(24, 12),
        [2, 0, 0, 0, 44, 0, 0, 0, 0, 0, 0, 0]
    );
    // amd64 header: cap at 0, head at 4, tail at 12, flag at 20.
    #[cfg(target_arch = "x86_64")]
    {
        let h = mapping.bytes_at(0, 24);
        assert_eq!(u32::from_le_bytes(h[0..4].try_into().unwrap()), 8192);
        assert_eq!(i64::from_le_bytes(h[4..12].try_into().unwrap()), 1);
        assert_eq!(i64::from_le_bytes(h[12..20].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(h[20..24].try_into().unwrap()), 1);
    }
}

#[test]
fn attach_rejects_corrupted_headers_naming_the_field() {
    let fresh = || {
        let m = Mapping::zeroed(queue::region_size(16));
        queue::format_region(m.region(), 16).unwrap();
        m
    };
    let attach = |m: &Mapping| queue::attach_region(m.region(), Side::Server).unwrap_err();
    let m = fresh();
    m.poke(0, &0u32.to_le_bytes());
    assert_eq!(
        attach(&m),
        QueueError::Corrupted {
            field: "cap",
            value: 0
        }
    );
    let m = fresh();
    m.poke(0, &17u32.to_le_bytes());
    assert!(matches!(attach(&m), QueueError::RegionTooSmall { .. }));
    let m = fresh();
    m.poke(4, &5i64.to_le_bytes()); // head 5 > tail 0
    assert_eq!(
        attach(&m),
        QueueError::Corrupted {
            field: "head/tail",
            value: -5
        }
    );
    let m = fresh();
    m.poke(4, &(-1i64).to_le_bytes());
    assert_eq!(
        attach(&m),
        QueueError::Corrupted {
            field: "head",
            value: -1
        }
    );
    let m = fresh();
    m.poke(20, &7u32.to_le_bytes());
    assert_eq!(
        attach(&m),
        QueueError::Corrupted {
            field: "working flag",
            value: 7
        }
    );
    let odd = Mapping::zeroed(queue::region_size(16) - 4);
    assert!(matches!(
        queue::attach_region(odd.region(), Side::Server),
        Err(QueueError::Misaligned { .. })
    ));
}

#[test]
fn a_peer_that_corrupts_the_tail_gets_an_error_and_nothing_is_consumed() {
    let mapping = Mapping::zeroed(queue::region_size(16));
    let pair = queue::format_region(mapping.region(), 16).unwrap();
    let (producer, mut consumer) = pair.send.split();
    let _ = producer.push(data(2, 1)).unwrap();
    mapping.poke(12, &1000i64.to_le_bytes());
    assert_eq!(
        consumer.pop(),
        Err(QueueError::Corrupted {
            field: "head/tail",
            value: 1000
        })
    );
    assert_eq!(producer.queue().stats().head, 0);
    assert!(matches!(
        producer.push(data(2, 2)),
        Err(QueueError::Corrupted { .. })
    ));
}

#[test]
fn capacities_whose_counters_straddle_a_cache_line_are_refused_on_x86() {
    assert!(queue::capacity_is_safe(8192));
    assert!(queue::capacity_is_safe(65535)); // Go's benchmark capacity
    assert!(queue::capacity_is_safe(16));
    if cfg!(target_arch = "x86_64") {
        assert!(!queue::capacity_is_safe(8)); // cap = 8 (mod 16): head straddles
        assert!(!queue::capacity_is_safe(18)); // cap = 2 (mod 16): tail straddles
        let m = Mapping::zeroed(queue::region_size(8));
        assert_eq!(
            queue::format_region(m.region(), 8).unwrap_err(),
            QueueError::CounterStraddlesCacheLine { cap: 8 }
        );
    }
    assert!(!queue::capacity_is_safe(0));
}

#[test]
fn two_producer_threads_and_a_consumer_thread_lose_and_reorder_nothing() {
    const PER_PRODUCER: u32 = 200_000;
    let mapping = Mapping::zeroed(queue::region_size(64));
    let pair = queue::format_region(mapping.region(), 64).unwrap();
    let (producer, mut consumer) = pair.send.split();
    std::thread::scope(|s| {
        for id in [2u32, 3] {
            let producer = &producer;
            s.spawn(move || {
                for seq in 0..PER_PRODUCER {
                    while let Err(QueueError::Full { .. }) = producer.push(data(id, seq)) {
                        std::thread::yield_now();
                    }
                }
            });
        }
        let mut next = [0u32; 2];
        while next != [PER_PRODUCER; 2] {
            match consumer.pop().unwrap() {
                Some(e) => {
                    let lane = (e.stream_id - 2) as usize;
                    assert_eq!(e.offset, next[lane], "stream {} out of order", e.stream_id);
                    next[lane] += 1;
                }
                None => std::thread::yield_now(),
            }
        }
    });
    assert_eq!(producer.queue().stats().tail, i64::from(2 * PER_PRODUCER));
}

/// Review finding: a working flag the peer corrupted is noticed only after the tail was
/// raised; the error must say the element is in the queue (its slices are the peer's now).
#[test]
fn a_corrupt_flag_after_the_push_says_the_element_was_pushed() {
    let mapping = Mapping::zeroed(queue::region_size(16));
    let pair = queue::format_region(mapping.region(), 16).unwrap();
    let (producer, mut consumer) = pair.send.split();
    mapping.poke(20, &7u32.to_le_bytes());
    assert_eq!(
        producer.push(data(2, 1)),
        Err(QueueError::FlagCorruptedAfterPush { value: 7 })
    );
    assert_eq!(consumer.pop().unwrap(), Some(data(2, 1)), "it was pushed");
}
