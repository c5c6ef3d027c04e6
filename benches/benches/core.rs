//! criterion benches of core's pieces, so regressions show: the head/tail counter load (and
//! what the AMD-safe high-low-high read costs against the plain `mov` it replaced), queue
//! push/pop, slice alloc/recycle, chain walk and delivery, frame encode/decode.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shmlink_core::buffer::{BufferList, BufferManager, ListHeader, Role, SliceTable};
use shmlink_core::frame::{Decoded, Frame, Message};
use shmlink_core::queue::{Element, ElementSlot, LineAligned, Queue, QueueHeader};
use shmlink_core::slice::SliceHeader;

/// Two 8-byte counters at offsets 4 and 12 of a cache line, as in the amd64 queue header.
#[repr(C, align(64))]
struct Counters {
    words: [u32; 6],
}

/// The load shmlink used before issue 6: one unaligned `mov` per counter.
#[cfg(target_arch = "x86_64")]
fn plain_mov_pair(c: &Counters) -> (i64, i64) {
    let base = c.words.as_ptr().cast::<u8>();
    let (head, tail): (i64, i64);
    // SAFETY: both 8-byte reads lie inside `c.words` (bytes 4..12 and 12..20 of 24), which
    // nothing writes during the bench.
    unsafe {
        core::arch::asm!(
            "mov {h}, qword ptr [{p} + 4]",
            "mov {t}, qword ptr [{p} + 12]",
            p = in(reg) base,
            h = out(reg) head,
            t = out(reg) tail,
            options(nostack, preserves_flags, readonly),
        );
    }
    (head, tail)
}

/// The other atomic alternative: a locked read-modify-write adding 0 (takes the line
/// exclusive, so it costs the producer its cache line on every look).
#[cfg(target_arch = "x86_64")]
fn locked_read_pair(c: &mut Counters) -> (i64, i64) {
    let base = c.words.as_mut_ptr().cast::<u8>();
    let (mut head, mut tail) = (0i64, 0i64);
    // SAFETY: as above; the locked adds of 0 leave the values unchanged.
    unsafe {
        core::arch::asm!(
            "lock xadd qword ptr [{p} + 4], {h}",
            "lock xadd qword ptr [{p} + 12], {t}",
            p = in(reg) base,
            h = inout(reg) head,
            t = inout(reg) tail,
            options(nostack),
        );
    }
    (head, tail)
}

fn counter_load(c: &mut Criterion) {
    let header = Box::new(LineAligned(QueueHeader::new(16)));
    let slots: Vec<ElementSlot> = (0..16).map(|_| ElementSlot::default()).collect();
    let (producer, _consumer) = Queue::from_parts(&header, &slots).unwrap().split();
    let queue = producer.queue();
    let mut g = c.benchmark_group("head/tail load (two counters)");
    g.bench_function("high-low-high (shmlink, AMD-safe)", |b| {
        b.iter(|| black_box(queue.len().unwrap()))
    });
    #[cfg(target_arch = "x86_64")]
    {
        let mut counters = Box::new(Counters { words: [0; 6] });
        g.bench_function("plain unaligned mov (before issue 6)", |b| {
            b.iter(|| black_box(plain_mov_pair(black_box(&counters))))
        });
        g.bench_function("lock xadd 0", |b| {
            b.iter(|| black_box(locked_read_pair(black_box(&mut counters))))
        });
    }
    g.finish();
}

fn queue_push_pop(c: &mut Criterion) {
    let header = Box::new(LineAligned(QueueHeader::new(64)));
    let slots: Vec<ElementSlot> = (0..64).map(|_| ElementSlot::default()).collect();
    let (producer, mut consumer) = Queue::from_parts(&header, &slots).unwrap().split();
    consumer.mark_working(); // no wake-up decisions in the measured path
    c.bench_function("queue push + pop", |b| {
        b.iter(|| {
            let _ = producer.push(black_box(Element::data(2, 44))).unwrap();
            black_box(consumer.pop().unwrap())
        })
    });
}

/// Two managers (the two processes) over one list of 64 slices of 1 KiB.
fn managers(
    headers: &'static [SliceHeader],
    list: &'static ListHeader,
) -> (BufferManager<'static>, BufferManager<'static>) {
    let table = SliceTable::from_headers(headers, 1024).unwrap();
    let ours = BufferList::format(list, table, 0, Role::Creator).unwrap();
    let theirs = BufferList::attach(list, table, 0, Role::Mapper, None).unwrap();
    let len = 64 * (1024 + 20);
    (
        BufferManager::from_lists(&[ours], len).unwrap(),
        BufferManager::from_lists(&[theirs], len).unwrap(),
    )
}

fn slices(c: &mut Criterion) {
    let headers: &'static [SliceHeader] = Box::leak(
        (0..64)
            .map(|_| SliceHeader::default())
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let list: &'static ListHeader = Box::leak(Box::default());
    let (ours, theirs) = managers(headers, list);
    c.bench_function("slice alloc + recycle", |b| {
        b.iter(|| {
            let chain = ours.alloc(black_box(100)).unwrap();
            ours.recycle(chain.first()).unwrap();
        })
    });

    // A 4-slice chain the peer sent: walking it (validation only), and taking delivery of it
    // (walk, ownership ledger, recycle) as the session does for every element.
    let mut chain = Vec::new();
    for _ in 0..4 {
        let abs = theirs.alloc(1000).unwrap().first();
        theirs.set_len(abs, 1000).unwrap();
        if let Some(&prev) = chain.last() {
            theirs.link(prev, abs).unwrap();
        }
        chain.push(abs);
    }
    c.bench_function("chain walk (4 slices)", |b| {
        b.iter(|| black_box(ours.walk_chain(chain[0]).count()))
    });
    for &abs in &chain {
        theirs.recycle(abs).unwrap();
    }
    let mut out = Vec::with_capacity(8);
    c.bench_function("chain delivery (peer alloc 4 + receive + recycle)", |b| {
        b.iter(|| {
            let c = theirs.alloc(3000).unwrap();
            let first = c.first();
            for s in theirs.own_chain(&c) {
                let (abs, _) = s.unwrap();
                theirs.set_len(abs, 700).unwrap();
                theirs.hand_over(abs).unwrap();
            }
            ours.receive_chain(first, &mut out).unwrap();
            for s in &out {
                ours.recycle(s.slice).unwrap();
            }
        })
    });
}

fn frames(c: &mut Criterion) {
    let payload = vec![7u8; 1024];
    let polling = Frame::new(3, Message::Polling);
    let fallback = Frame::new(
        3,
        Message::FallbackData {
            stream_id: 2,
            status: 0,
            data: &payload,
        },
    );
    let mut wire = vec![0u8; 2048];
    c.bench_function("frame encode (Polling)", |b| {
        b.iter(|| black_box(polling.encode(&mut wire).unwrap()))
    });
    let n = fallback.encode(&mut wire).unwrap();
    let encoded = wire[..n].to_vec();
    c.bench_function("frame decode (FallbackData, 1 KiB)", |b| {
        b.iter(|| match Frame::decode(black_box(&encoded)).unwrap() {
            Decoded::Frame(f, used) => black_box((f, used)),
            Decoded::Incomplete { .. } => unreachable!(),
        })
    });
}

mod group {
    #![allow(missing_docs)]
    use super::*;
    criterion_group!(benches, counter_load, queue_push_pop, slices, frames);
}
criterion_main!(group::benches);
