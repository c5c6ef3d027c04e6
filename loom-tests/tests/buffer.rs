//! Loom models of the buffer list (core/src/buffer/list.rs): the free list both processes
//! pop from and push to concurrently.
//!
//! # The ABA window of the compat free list
//!
//! The compat layout (PROTOCOL.md 4.7) has no tag on `head`. `pop` loads `head` (slice H),
//! reads H's `next` (N), then CASes `head` from H to N. The window is between reading `next`
//! and the CAS: if, while the popper is stalled there, other pops advance `head` all the way
//! round the list and a recycle relinks H so that `head` is H again but H's `next` is now
//! some M != N, the stale CAS still succeeds and sets `head` to N. N may be allocated at that
//! moment: the free chain now runs through a slice somebody owns, and the slices between M
//! and N drop out of it. For that, every other free slice must be popped during the stall;
//! with Go's default lists (51 to 2,047 slices, the last one never handed out) and pops that
//! take nanoseconds, it needs a stall long enough for the whole list to rotate. The model
//! `aba_window_of_the_untagged_free_list` exhibits it on a four-slice list and is ignored so
//! the suite stays green; run it with `--ignored` to watch it fail. A negotiated profile with
//! a tagged head (DESIGN.md, "Profiles") closes the window.
#![cfg(loom)]

use std::collections::HashSet;

use loom::sync::atomic::{AtomicU32, Ordering};
use loom::thread;
use shmlink_core::buffer::{BufferList, ListHeader, Role, SliceTable};
use shmlink_core::slice::SliceHeader;
use shmlink_loom_tests::leak;

const SLICE: u32 = 64;
const STRIDE: u32 = SLICE + 20;

/// A full list of `n` slices and the two processes' views of it.
fn list(n: usize) -> (BufferList<'static>, BufferList<'static>) {
    let header = leak(ListHeader::default());
    let headers = leak((0..n).map(|_| SliceHeader::default()).collect::<Vec<_>>());
    let table = SliceTable::from_headers(headers, SLICE).unwrap();
    let creator = BufferList::format(header, table, 0, Role::Creator).unwrap();
    let mapper = BufferList::attach(header, table, 0, Role::Mapper, None).unwrap();
    (creator, mapper)
}

/// Slot per slice: 0 = free, otherwise the owner's id. Claiming an owned slice fails the model.
struct Owners(Vec<AtomicU32>);

impl Owners {
    fn new(n: usize) -> &'static Self {
        leak(Owners((0..n).map(|_| AtomicU32::new(0)).collect()))
    }
    fn claim(&self, abs: u32, who: u32) {
        let prev = self.0[(abs / STRIDE) as usize].swap(who, Ordering::SeqCst);
        assert_eq!(prev, 0, "slice {abs} handed to {who} while owned by {prev}");
    }
    fn release(&self, abs: u32) {
        self.0[(abs / STRIDE) as usize].store(0, Ordering::SeqCst);
    }
}

fn pop(list: &BufferList<'_>, owners: &Owners, who: u32) -> Option<u32> {
    let abs = list.pop().unwrap()?;
    owners.claim(abs, who);
    Some(abs)
}

fn push(list: &BufferList<'_>, owners: &Owners, abs: u32) {
    owners.release(abs);
    list.push(abs).unwrap();
}

/// After everything is recycled: size == cap, and the free chain from head visits every
/// slice exactly once and ends at tail.
fn assert_full(list: &BufferList<'_>) {
    let stats = list.stats();
    assert_eq!(stats.free as u32, stats.cap, "free count");
    let visited: Vec<u32> = list.free_slices().map(Result::unwrap).collect();
    let unique: HashSet<u32> = visited.iter().copied().collect();
    assert_eq!(
        unique.len(),
        visited.len(),
        "a slice appears twice in the free chain"
    );
    assert_eq!(
        visited.len() as u32,
        stats.cap,
        "free chain lost slices: {visited:?}"
    );
    assert_eq!(visited.last(), Some(&stats.tail));
}

/// (c) Two threads standing for the two processes allocate and recycle on one list, one of
/// them recycling a slice the other allocated (the receiver recycles): no slice ever has two
/// owners, and the list ends full with both role counters balanced.
#[test]
fn alloc_recycle_from_both_processes_never_double_allocates() {
    loom::model(|| {
        let (creator, mapper) = list(4);
        let owners = Owners::new(4);
        let mailbox = leak(AtomicU32::new(u32::MAX));
        let client = thread::spawn(move || {
            let a = pop(&creator, owners, 1);
            let b = pop(&creator, owners, 1);
            if let Some(a) = a {
                push(&creator, owners, a);
            }
            // Send `b` to the server, which will recycle it: ownership travels with it.
            if let Some(b) = b {
                owners.release(b);
            }
            mailbox.store(b.unwrap_or(u32::MAX - 1), Ordering::Release);
        });
        let server = thread::spawn(move || {
            if let Some(c) = pop(&mapper, owners, 2) {
                push(&mapper, owners, c);
            }
            let b = loop {
                match mailbox.load(Ordering::Acquire) {
                    u32::MAX => thread::yield_now(),
                    b => break b,
                }
            };
            if b != u32::MAX - 1 {
                owners.claim(b, 2);
                push(&mapper, owners, b);
            }
        });
        client.join().unwrap();
        server.join().unwrap();
        assert_full(&creator);
        let stats = creator.stats();
        assert_eq!(stats.counter_creator + stats.counter_mapper, 0);
    });
}

/// Two threads race to pop from a list with exactly two free slices beyond the reserved
/// last one: both succeed with distinct slices, or one is told "none" (never a slice twice,
/// never the last free slice).
#[test]
fn concurrent_pops_never_hand_out_the_last_free_slice() {
    loom::model(|| {
        let (creator, mapper) = list(3);
        let owners = Owners::new(3);
        let t = thread::spawn(move || pop(&mapper, owners, 2));
        let mine = pop(&creator, owners, 1);
        let theirs = t.join().unwrap();
        let got: Vec<u32> = mine.into_iter().chain(theirs).collect();
        assert!(got.len() <= 2);
        assert!(
            !got.contains(&(2 * STRIDE)),
            "the last free slice was handed out"
        );
        for abs in got {
            push(&creator, owners, abs);
        }
        assert_full(&creator);
    });
}

/// The compat free list's ABA window (see the module docs). Thread A pops once and is
/// stalled between reading head's `next` and its CAS; thread B pops H, recycles it, pops the
/// rest of the list round to H again and recycles a different slice after H, so that H's
/// `next` changes. A's stale CAS then succeeds: a slice B owns becomes the list head and the
/// free chain loses slices. Ignored: this documents a limit of the compat layout.
#[test]
#[ignore = "exhibits the ABA window of the compat free list (no tag on head); run with --ignored"]
fn aba_window_of_the_untagged_free_list() {
    loom::model(|| {
        let (creator, mapper) = list(4);
        let owners = Owners::new(4);
        let a = thread::spawn(move || {
            if let Some(x) = pop(&mapper, owners, 1) {
                push(&mapper, owners, x);
            }
        });
        let mut held = Vec::new();
        if let Some(h) = pop(&creator, owners, 2) {
            push(&creator, owners, h); // H goes to the tail
            held.extend(pop(&creator, owners, 2));
            held.extend(pop(&creator, owners, 2));
            if let Some(&second) = held.get(1) {
                push(&creator, owners, second); // relinks H.next to a different slice
                held.pop();
            }
            held.extend(pop(&creator, owners, 2)); // head comes round to H again
        }
        for x in held {
            push(&creator, owners, x);
        }
        a.join().unwrap();
        assert_full(&creator);
    });
}
