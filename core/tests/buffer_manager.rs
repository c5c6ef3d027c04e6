//! The buffer manager on a heap region: Go's creation layout byte for byte, allocation
//! policy, recycling, counters, attach validation and hostile chains.

mod common;

use std::collections::HashSet;

use common::{Mapping, gunzip_fixture};
use shmlink_core::buffer::{
    self, BufferError, DEFAULT_SIZE_CLASSES, Ownership, Role, SizeClass, SliceFault,
};

const DEFAULT_LEN: usize = 32 << 20;

#[test]
fn format_reproduces_gos_worked_example_byte_for_byte() {
    let mapping = Mapping::zeroed(DEFAULT_LEN);
    let manager = buffer::format(mapping.region(), &DEFAULT_SIZE_CLASSES).unwrap();
    let counts: Vec<u32> = manager.lists().iter().map(|l| l.capacity()).collect();
    assert_eq!(counts, [2047, 307, 51]);
    let bases: Vec<u32> = manager.lists().iter().map(|l| l.base() - 36).collect();
    assert_eq!(bases, [8, 16_769_068, 26_828_880]);
    assert_eq!(manager.capacity_bytes(), 33_465_372);
    drop(manager);

    // Manager header: u16 list count 3, 2 zero bytes, u32 used length 33,513,580.
    assert_eq!(mapping.bytes_at(0, 8), [3, 0, 0, 0, 0x6c, 0x60, 0xff, 0x01]);
    assert_eq!(mapping.u32_at(4), 33_513_580);
    for (header, n, size) in [
        (8usize, 2047u32, 8172u32),
        (16_769_068, 307, 32_748),
        (26_828_880, 51, 131_052),
    ] {
        let stride = size + 20;
        let mut want = Vec::new();
        for v in [n, n, 0, (n - 1) * stride, size, 0, 0, 0, 0] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(
            mapping.bytes_at(header, 36),
            want,
            "list header at {header}"
        );
        let region = header + 36;
        for i in [0, 1, n - 2, n - 1] {
            let at = region + (i * stride) as usize;
            let (next, flags) = if i + 1 < n {
                ((i + 1) * stride, 1u8)
            } else {
                (0, 0)
            };
            let mut want = Vec::new();
            for v in [size, 0, 0, next] {
                want.extend_from_slice(&v.to_le_bytes());
            }
            want.extend_from_slice(&[flags, 0, 0, 0]);
            assert_eq!(
                mapping.bytes_at(at, 20),
                want,
                "slice {i} of list at {header}"
            );
        }
    }
    // The unused tail after the lists is untouched.
    assert!(
        mapping
            .bytes_at(8 + 33_513_580, 40_844)
            .iter()
            .all(|&b| b == 0)
    );
}

#[test]
fn format_agrees_with_the_go_made_region_on_every_constant_field() {
    let ours = Mapping::zeroed(DEFAULT_LEN);
    buffer::format(ours.region(), &DEFAULT_SIZE_CLASSES).unwrap();
    let go = Mapping::from_bytes(&gunzip_fixture("buffer.bin.gz"));
    assert_eq!(ours.bytes_at(0, 8), go.bytes_at(0, 8));
    for (header, n, size) in [
        (8usize, 2047usize, 8172usize),
        (16_769_068, 307, 32_748),
        (26_828_880, 51, 131_052),
    ] {
        // size, cap (full lists in both) and capPerBuffer, counters.
        for field in [0, 4, 16, 20, 24] {
            assert_eq!(
                ours.u32_at(header + field),
                go.u32_at(header + field),
                "list {header} field {field}"
            );
        }
        for i in 0..n {
            let at = header + 36 + i * (size + 20);
            assert_eq!(ours.u32_at(at), go.u32_at(at), "cap of slice {i}");
        }
    }
}

#[test]
fn format_rejects_configurations_go_would_not_lay_out() {
    let mapping = Mapping::zeroed(1 << 20);
    let bad = |classes: &[SizeClass]| buffer::format(mapping.region(), classes).unwrap_err();
    assert!(matches!(bad(&[]), BufferError::InvalidConfig { .. }));
    assert!(matches!(
        bad(&[SizeClass {
            size: 1022,
            percent: 100
        }]),
        BufferError::InvalidConfig { .. }
    ));
    assert!(matches!(
        bad(&[SizeClass {
            size: 1024,
            percent: 90
        }]),
        BufferError::InvalidConfig { .. }
    ));
    assert!(matches!(
        bad(&[
            SizeClass {
                size: 1024,
                percent: 50
            },
            SizeClass {
                size: 1024,
                percent: 50
            }
        ]),
        BufferError::InvalidConfig { .. }
    ));
    assert!(matches!(
        bad(&[SizeClass {
            size: 2 << 20,
            percent: 100
        }]),
        BufferError::InvalidConfig { .. }
    ));
}

fn small_manager(mapping: &Mapping) -> buffer::BufferManager<'_> {
    // 64 KiB: 1 KiB slices at 50 %, 4 KiB slices at 50 %.
    let classes = [
        SizeClass {
            size: 4096,
            percent: 50,
        },
        SizeClass {
            size: 1024,
            percent: 50,
        },
    ];
    buffer::format(mapping.region(), &classes).unwrap()
}

#[test]
fn alloc_takes_one_slice_from_the_smallest_list_that_fits() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = small_manager(&mapping);
    let (small, big) = (m.lists()[0], m.lists()[1]);
    assert_eq!((small.slice_size(), big.slice_size()), (1024, 4096));
    let a = m.alloc(100).unwrap();
    assert_eq!((a.count(), a.capacity()), (1, 1024));
    assert!(small.slice_at(a.first()).is_some());
    let b = m.alloc(1025).unwrap();
    assert_eq!((b.count(), b.capacity()), (1, 4096));
    assert!(big.slice_at(b.first()).is_some());
    m.recycle_chain(a.first()).unwrap();
    m.recycle_chain(b.first()).unwrap();
    assert!(m.all_free());
}

#[test]
fn alloc_falls_through_to_a_larger_list_when_the_fitting_one_is_empty() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = small_manager(&mapping);
    let small = m.lists()[0];
    let mut taken = Vec::new();
    while let Some(abs) = small.pop().unwrap() {
        taken.push(abs);
    }
    // The last free slice is never handed out.
    assert_eq!(taken.len() as u32, small.capacity() - 1);
    let c = m.alloc(10).unwrap();
    assert_eq!(c.capacity(), 4096);
    // Popped straight from the list, as the peer would: they go back the same way.
    for abs in taken {
        small.push(abs).unwrap();
    }
    m.recycle_chain(c.first()).unwrap();
    assert!(m.all_free());
}

#[test]
fn large_alloc_chains_slices_from_the_largest_list_down_and_recycles_fully() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = small_manager(&mapping);
    let big = m.lists()[1];
    let usable_big = u64::from(big.capacity() - 1) * 4096;
    let n = usable_big + 1500; // needs every usable big slice plus two small ones
    let chain = m.alloc(n).unwrap();
    assert_eq!(chain.count(), big.capacity() - 1 + 2);
    let segments: Vec<_> = m.walk_chain(chain.first()).map(Result::unwrap).collect();
    assert_eq!(segments.len() as u32, chain.count());
    assert_eq!(segments.last().unwrap().slice, chain.last());
    let sizes: Vec<u32> = segments
        .iter()
        .map(|s| m.data_area(s.slice).unwrap().1)
        .collect();
    assert!(
        sizes.windows(2).all(|w| w[0] >= w[1]),
        "largest first: {sizes:?}"
    );
    assert_eq!(m.recycle_chain(chain.first()).unwrap(), chain.count());
    assert!(m.all_free());
    assert_eq!(m.in_use_bytes(), 0);
}

#[test]
fn alloc_beyond_shared_memory_fails_and_returns_everything_it_took() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = small_manager(&mapping);
    let err = m.alloc(1 << 20).unwrap_err();
    assert_eq!(err, BufferError::NoMoreBuffer { requested: 1 << 20 });
    assert!(m.all_free());
    assert_eq!(m.in_use_bytes(), 0);
}

#[test]
fn recycling_a_free_slice_or_a_non_slice_offset_is_refused() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = small_manager(&mapping);
    let c = m.alloc(10).unwrap();
    m.recycle(c.first()).unwrap();
    assert_eq!(
        m.recycle(c.first()),
        Err(BufferError::BadSlice {
            offset: c.first(),
            fault: SliceFault::NotOwned {
                state: Ownership::Recycled
            }
        })
    );
    assert_eq!(
        m.recycle(c.first() + 4),
        Err(BufferError::BadSlice {
            offset: c.first() + 4,
            fault: SliceFault::NotASlice
        })
    );
    assert_eq!(
        m.recycle(0),
        Err(BufferError::BadSlice {
            offset: 0,
            fault: SliceFault::NotASlice
        })
    );
    assert!(m.all_free());
}

#[test]
fn creator_counts_at_offset_20_and_mapper_at_offset_24() {
    let mapping = Mapping::zeroed(64 << 10);
    let creator = small_manager(&mapping);
    let mapper = buffer::attach(mapping.region(), Role::Mapper).unwrap();
    let a = creator.alloc(10).unwrap();
    let b = mapper.alloc(10).unwrap();
    let c = mapper.alloc(10).unwrap();
    let stats = creator.lists()[0].stats();
    assert_eq!((stats.counter_creator, stats.counter_mapper), (1, 2));
    // The receiver recycles: the mapper returns the creator's slice and vice versa.
    let mut got = Vec::new();
    creator.hand_over(a.first()).unwrap();
    mapper.receive_chain(a.first(), &mut got).unwrap();
    mapper.recycle(a.first()).unwrap();
    for x in [b, c] {
        mapper.hand_over(x.first()).unwrap();
        creator.receive_chain(x.first(), &mut got).unwrap();
        creator.recycle(x.first()).unwrap();
    }
    let stats = creator.lists()[0].stats();
    assert_eq!((stats.counter_creator, stats.counter_mapper), (-1, 1));
    assert!(creator.all_free());
}

#[test]
fn attach_rejects_corrupted_headers_naming_the_field() {
    let fresh = || {
        let m = Mapping::zeroed(64 << 10);
        small_manager(&m);
        m
    };
    let field_of = |m: &Mapping| match buffer::attach(m.region(), Role::Mapper).unwrap_err() {
        BufferError::Corrupted { field, .. } => field,
        other => panic!("unexpected {other:?}"),
    };
    let m = fresh();
    m.poke(0, &0u16.to_le_bytes());
    assert_eq!(field_of(&m), "list count");
    let m = fresh();
    m.poke(0, &7u16.to_le_bytes());
    assert_eq!(field_of(&m), "used length");
    let m = fresh();
    m.poke(4, &(m.u32_at(4) + 4).to_le_bytes());
    assert_eq!(field_of(&m), "used length");
    let m = fresh();
    m.poke(8 + 16, &1023u32.to_le_bytes());
    assert_eq!(field_of(&m), "capPerBuffer");
    let m = fresh();
    m.poke(8 + 4, &1_000_000u32.to_le_bytes());
    assert_eq!(field_of(&m), "cap");
    let m = fresh();
    m.poke(8 + 8, &5u32.to_le_bytes());
    assert_eq!(field_of(&m), "head");
    let m = fresh();
    m.poke(8 + 12, &u32::MAX.to_le_bytes());
    assert_eq!(field_of(&m), "tail");
    let m = fresh();
    m.poke(8, &(-3i32).to_le_bytes());
    assert_eq!(field_of(&m), "size");
    let m = fresh();
    m.poke(4, &u32::MAX.to_le_bytes());
    assert!(matches!(
        buffer::attach(m.region(), Role::Mapper),
        Err(BufferError::RegionTooSmall { .. })
    ));
}

/// Builds a chain of `n` small slices with lengths set, as a sender would.
fn sent_chain(m: &buffer::BufferManager<'_>, n: usize) -> Vec<u32> {
    let mut slices = Vec::new();
    for _ in 0..n {
        let c = m.alloc(10).unwrap();
        m.set_len(c.first(), 10).unwrap();
        if let Some(&prev) = slices.last() {
            m.link(prev, c.first()).unwrap();
        }
        slices.push(c.first());
    }
    slices
}

#[test]
fn hostile_chain_with_a_cycle_ends_in_an_error_not_a_hang() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = small_manager(&mapping);
    let chain = sent_chain(&m, 3);
    m.link(chain[2], chain[0]).unwrap(); // last points back to first
    let results: Vec<_> = m.walk_chain(chain[0]).collect();
    assert!(results.len() as u32 <= m.total_slices() + 1);
    assert!(matches!(
        results.last(),
        Some(Err(BufferError::BadSlice {
            fault: SliceFault::ChainTooLong,
            ..
        }))
    ));
    assert!(results[..results.len() - 1].iter().all(Result::is_ok));
}

#[test]
fn hostile_chain_into_the_middle_of_a_slice_or_out_of_range_is_rejected() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = small_manager(&mapping);
    let chain = sent_chain(&m, 2);
    for target in [chain[1] + 20, chain[1] - 1, 0, 7, 60_000, u32::MAX - 3] {
        // Point the first slice's next at `target` by writing shared memory as a peer would.
        mapping.poke(chain[0] as usize + 12, &target.to_le_bytes());
        let results: Vec<_> = m.walk_chain(chain[0]).collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert_eq!(
            results[1],
            Err(BufferError::BadSlice {
                offset: target,
                fault: SliceFault::NotASlice
            }),
            "target {target}"
        );
    }
}

#[test]
fn hostile_chain_with_absurd_length_or_foreign_cap_is_rejected() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = small_manager(&mapping);
    let chain = sent_chain(&m, 1);
    let at = chain[0] as usize;
    mapping.poke(at + 4, &u32::MAX.to_le_bytes()); // len
    let err = m.walk_chain(chain[0]).next().unwrap().unwrap_err();
    assert!(matches!(
        err,
        BufferError::BadSlice {
            fault: SliceFault::BadLength { .. },
            ..
        }
    ));
    mapping.poke(at + 4, &10u32.to_le_bytes());
    mapping.poke(at + 8, &1020u32.to_le_bytes()); // start: 1020 + 10 > 1024
    let err = m.walk_chain(chain[0]).next().unwrap().unwrap_err();
    assert_eq!(
        err,
        BufferError::BadSlice {
            offset: chain[0],
            fault: SliceFault::BadLength {
                start: 1020,
                len: 10
            }
        }
    );
    mapping.poke(at + 8, &0u32.to_le_bytes());
    mapping.poke(at, &4096u32.to_le_bytes()); // cap of a bigger list
    let err = m.walk_chain(chain[0]).next().unwrap().unwrap_err();
    assert_eq!(
        err,
        BufferError::BadSlice {
            offset: chain[0],
            fault: SliceFault::CapMismatch { cap: 4096 }
        }
    );
}

#[test]
fn a_received_chain_is_read_and_recycled_exactly_once() {
    let mapping = Mapping::zeroed(64 << 10);
    let sender = small_manager(&mapping);
    let receiver = buffer::attach(mapping.region(), Role::Mapper).unwrap();
    let chain = sent_chain(&sender, 4);
    for &abs in &chain {
        sender.hand_over(abs).unwrap();
    }
    let mut seen = Vec::new();
    receiver.receive_chain(chain[0], &mut seen).unwrap();
    assert_eq!(seen.iter().map(|s| s.slice).collect::<Vec<_>>(), chain);
    assert!(seen.iter().all(|s| s.len == 10 && s.data == s.slice + 20));
    assert_eq!(receiver.recycle_chain(chain[0]).unwrap(), 4);
    // Recycling them again is refused: they are not ours any more.
    assert!(matches!(
        receiver.recycle_chain(chain[0]),
        Err(BufferError::BadSlice {
            fault: SliceFault::NotOwned {
                state: Ownership::Recycled
            },
            ..
        })
    ));
    // And a replayed element naming the chain again is refused: the slices are free and we
    // recycled them (Go's reuse sends slices we sent it, never ones we recycled).
    let mut again = Vec::new();
    assert_eq!(
        receiver.receive_chain(chain[0], &mut again),
        Err(BufferError::BadSlice {
            offset: chain[0],
            fault: SliceFault::AnnouncedAgain
        })
    );
    assert!(again.is_empty());
    assert!(receiver.all_free());
    let free: HashSet<u32> = receiver.lists()[0]
        .free_slices()
        .map(Result::unwrap)
        .collect();
    assert_eq!(free.len() as u32, receiver.lists()[0].capacity());
}

/// shmipc-go's ReleaseReadAndReuse (PROTOCOL.md 5.4): the Go side keeps the last slice it
/// received, resets its header (flags 0, so no IN_USE), writes its reply into it and sends it
/// back without a pop. We must take delivery of it and recycle it into the free list, or
/// every Go round trip would close the session (it did before) or leak a slice.
#[test]
fn a_slice_go_reused_with_its_flags_reset_is_received_and_recycled() {
    let mapping = Mapping::zeroed(64 << 10);
    let ours = small_manager(&mapping);
    // We send one slice to Go.
    let x = ours.alloc(10).unwrap().first();
    ours.set_len(x, 10).unwrap();
    ours.hand_over(x).unwrap();
    // Go reads it, then reuses it: reset() (len 0, start 0, flags 0), its reply of 7 bytes
    // (update() sets len), and it sends the slice back as is, without a pop.
    mapping.poke(x as usize + 16, &[0]);
    mapping.poke(x as usize + 8, &0u32.to_le_bytes());
    mapping.poke(x as usize + 4, &7u32.to_le_bytes());
    let mut got = Vec::new();
    ours.receive_chain(x, &mut got).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].slice, got[0].len), (x, 7));
    ours.recycle(x).unwrap();
    assert!(ours.all_free(), "the slice is back in its free list");
}
