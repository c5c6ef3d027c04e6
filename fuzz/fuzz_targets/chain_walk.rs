//! Attaching to and walking a buffer region the peer wrote: either a region we formatted and
//! the peer then scribbled on, or an arbitrary image (seeded from the Go fixture). Attach
//! validates every header or fails; chain walks, deliveries, free-list walks and allocations
//! over the result end within the region's slice count, stay inside the mapping and inside
//! each slice's data area, and never hand out one slice twice.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use shmlink_core::buffer::{self, BufferManager, Role, SizeClass};
use shmlink_core::slice::SLICE_HEADER_SIZE;
use shmlink_fuzz::{Cursor, Mapping};

const MAX_IMAGE: usize = 64 << 10;

fn check_segment(m: &BufferManager<'_>, mapping: &Mapping, slice: u32, data: u32, len: u32) {
    let (area, cap) = m.data_area(slice).expect("a walked slice is a slice");
    assert_eq!(area, slice + SLICE_HEADER_SIZE as u32);
    assert!(data >= area && u64::from(data) + u64::from(len) <= u64::from(area) + u64::from(cap));
    std::hint::black_box(mapping.peek(data as usize, len as usize));
}

fn exercise(m: &BufferManager<'_>, mapping: &Mapping, input: &mut Cursor<'_>) {
    let total = m.total_slices();
    // Free lists: bounded walks.
    for list in m.lists() {
        assert!(list.free_slices().count() as u64 <= u64::from(list.capacity()) + 1);
    }
    for _ in 0..8 {
        if input.is_empty() {
            break;
        }
        let first = match input.u8() % 3 {
            0 => input.u32(),
            _ => {
                let lists = m.lists();
                let list = &lists[usize::from(input.u8()) % lists.len()];
                list.base()
                    + (u32::from(input.u16()) % list.capacity().max(1)) * list.slices().stride()
            }
        };
        // A walk ends within the slice count (a loop is an error, not a hang).
        let mut steps = 0u32;
        for segment in m.walk_chain(first) {
            steps += 1;
            assert!(
                steps <= total + 1,
                "a chain walk went on past {total} slices"
            );
            match segment {
                Ok(s) => check_segment(m, mapping, s.slice, s.data, s.len),
                Err(_) => break,
            }
        }
        // Taking delivery: each slice once, all inside; then recycled.
        let mut out = Vec::new();
        match m.receive_chain(first, &mut out) {
            Ok(()) => {
                let mut seen = HashSet::new();
                for s in &out {
                    assert!(
                        seen.insert(s.slice),
                        "slice {} delivered twice in one chain",
                        s.slice
                    );
                    check_segment(m, mapping, s.slice, s.data, s.len);
                }
                for s in &out {
                    let _ = m.recycle(s.slice);
                }
            }
            Err(_) => assert!(out.is_empty(), "a refused chain left segments behind"),
        }
        // Allocating from free lists the peer may have corrupted.
        let mut slices = Vec::new();
        if m.alloc_into(u64::from(input.u16()) * 4, &mut slices)
            .is_ok()
        {
            let distinct: HashSet<_> = slices.iter().collect();
            assert_eq!(
                distinct.len(),
                slices.len(),
                "one slice allocated twice: {slices:?}"
            );
            for &abs in &slices {
                assert!(m.data_area(abs).is_ok());
            }
            for &abs in &slices {
                let _ = m.recycle(abs);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    if input.u8() & 1 == 0 {
        // An image: two bytes of length, then the bytes (the rest zero).
        let len = (usize::from(input.u16()) * 8).clamp(8, MAX_IMAGE);
        let mapping = Mapping::zeroed(len);
        let image = input.take(len);
        mapping.poke(0, image);
        if let Ok(m) = buffer::attach(mapping.region(), Role::Mapper) {
            exercise(&m, &mapping, &mut input);
        }
    } else {
        // Our format, then the peer's writes, then a fresh attach (as a second session of
        // the same region would).
        let classes = [
            SizeClass {
                size: 4 * (u32::from(input.u8()) + 1),
                percent: 60,
            },
            SizeClass {
                size: 1028,
                percent: 40,
            },
        ];
        let mapping = Mapping::zeroed(MAX_IMAGE);
        let Ok(ours) = buffer::format(mapping.region(), &classes) else {
            return;
        };
        for _ in 0..usize::from(input.u8() % 16) {
            let at = usize::from(input.u16());
            let n = usize::from(input.u8() % 8 + 1);
            mapping.poke(at, input.take(n));
        }
        exercise(&ours, &mapping, &mut input);
        if let Ok(again) = buffer::attach(mapping.region(), Role::Mapper) {
            exercise(&again, &mapping, &mut input);
        }
    }
});
