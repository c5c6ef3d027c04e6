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
//!
//! # Mutations tried (`python3 loom-tests/mutations.py`, LOOM_MAX_PREEMPTIONS=2)
//!
//! | mutation of core | model | result |
//! | --- | --- | --- |
//! | recycle's link flag `fetch_or` Relaxed | `a_recycle_publishes_its_link_before_a_popper_follows_it` | missed, and not a bug: the size increment after the link is a release RMW that the popper's acquire size decrement reads (one release sequence), so the link is published through the size counter as well |
//! | pop's flags load Relaxed | the same | missed, for the same reason |
//! | pop reports corruption on one bad `next` read (`BAD_NEXT_READS` = 1) | `alloc_recycle_from_both_processes_never_double_allocates` | caught (this model found that false alarm: a recycled head's `next` is NO_NEXT until linked) |
//! | recycle ignores the ownership ledger | `manager::two_threads_recycling_one_slice_recycle_it_once` | caught (the ledger is the only guard: held slices are recycled whatever their IN_USE flag says, as shmipc-go reuses received slices with their flags reset) |
//! | ledger transition as load + store instead of CAS | `manager::ledger_transitions_on_one_word_lose_no_update` | caught |
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

/// Recycling publishes the link: a popper that sees HAS_NEXT on the old tail must see the
/// `next` written before it (the Release of the flag's `fetch_or` pairs with pop's Acquire
/// flags load). The client takes the two slices that can be taken; the server gives one back
/// while the client pops again. With `junk`, one slice is popped and recycled first, so every
/// unlinked `next` is the junk push writes (`NO_NEXT`, never a slice offset); without, the old
/// tail is the slice formatting left last, whose `next` is still formatting's 0, a stale read
/// of which looks like a valid link (to slice 0, which the client holds).
fn link_race(junk: bool) {
    loom::model(move || {
        let (creator, mapper) = list(3);
        if junk {
            let first = creator.pop().unwrap().unwrap();
            creator.push(first).unwrap();
        }
        let owners = Owners::new(3);
        let a = pop(&creator, owners, 1).unwrap();
        let b = pop(&creator, owners, 1).unwrap();
        owners.release(b);
        let t = thread::spawn(move || {
            owners.claim(b, 2);
            push(&mapper, owners, b);
        });
        let again = pop(&creator, owners, 1);
        t.join().unwrap();
        push(&creator, owners, a);
        if let Some(x) = again {
            push(&creator, owners, x);
        }
        assert_full(&creator);
    });
}

/// A stale read of a link that looks valid would show as a slice handed out twice or a free
/// chain that loses slices.
#[test]
fn a_recycle_publishes_its_link_before_a_popper_follows_it() {
    link_race(false);
}

/// A stale read of junk cannot look like a link: the pop must neither fail nor hand out a
/// slice twice; it looks again.
#[test]
fn a_stale_junk_link_is_read_again_not_followed() {
    link_race(true);
}

/// Manager-level models: the ownership ledger and chains across lists.
mod manager {
    use super::*;
    use shmlink_core::buffer::{BufferManager, Ownership};

    /// Two lists (64- and 256-byte slices, 3 each) laid out back to back from offset 0.
    fn two_lists() -> (BufferManager<'static>, BufferManager<'static>) {
        lists_of([3, 3])
    }

    /// A small list (SLICE) and a large one (4 × SLICE) of `counts` slices each.
    fn lists_of(counts: [usize; 2]) -> (BufferManager<'static>, BufferManager<'static>) {
        let mut creator = Vec::new();
        let mut mapper = Vec::new();
        let mut base = 0;
        for (size, count) in [SLICE, 4 * SLICE].into_iter().zip(counts) {
            let header = leak(ListHeader::default());
            let headers = leak(
                (0..count)
                    .map(|_| SliceHeader::default())
                    .collect::<Vec<_>>(),
            );
            let table = SliceTable::from_headers(headers, size).unwrap();
            creator.push(BufferList::format(header, table, base, Role::Creator).unwrap());
            mapper.push(BufferList::attach(header, table, base, Role::Mapper, None).unwrap());
            base += count as u32 * (size + 20);
        }
        (
            BufferManager::from_lists(&creator, base).unwrap(),
            BufferManager::from_lists(&mapper, base).unwrap(),
        )
    }

    /// Two threads of one process recycle the same slice (a double recycle): the ledger lets
    /// exactly one through, and the list ends full with the slice in it once.
    #[test]
    fn two_threads_recycling_one_slice_recycle_it_once() {
        loom::model(|| {
            let (m, _) = two_lists();
            let m = leak(m);
            let x = m.alloc(10).unwrap().first();
            let t = thread::spawn(move || m.recycle(x).is_ok());
            let mine = m.recycle(x).is_ok();
            let theirs = t.join().unwrap();
            assert!(
                mine ^ theirs,
                "recycled {} times",
                u8::from(mine) + u8::from(theirs)
            );
            assert_eq!(m.ownership(x).unwrap(), Ownership::Recycled);
            assert_full(&m.lists()[0]);
        });
    }

    /// The ledger is one CAS word per 16 slices: the driver taking delivery of one slice and
    /// a reader recycling another of the same word, at once, lose neither transition.
    #[test]
    fn ledger_transitions_on_one_word_lose_no_update() {
        loom::model(|| {
            let (m, peer) = two_lists();
            let (m, peer) = (leak(m), leak(peer));
            let held = m.alloc(10).unwrap().first();
            let sent = peer.alloc(10).unwrap().first();
            peer.set_len(sent, 10).unwrap();
            peer.hand_over(sent).unwrap();
            let t = thread::spawn(move || {
                let mut out = Vec::new();
                m.receive_chain(sent, &mut out).unwrap();
                out.len()
            });
            m.recycle(held).unwrap();
            assert_eq!(t.join().unwrap(), 1);
            assert_eq!(m.ownership(sent).unwrap(), Ownership::Received);
            assert_eq!(m.ownership(held).unwrap(), Ownership::Recycled);
            m.recycle(sent).unwrap();
            assert!(m.all_free());
        });
    }

    /// One process allocates a chain across both lists (more than the largest slice holds,
    /// and the large list has a single slice to give (a list keeps one back), so the chain
    /// takes one of each), links it and
    /// hands it over; the other takes delivery and recycles it into both lists while the
    /// first allocates again from the small list. No slice has two owners and both lists end
    /// full. The model counts its interleavings: the recycle and the pop meet on one list.
    #[test]
    fn a_chain_across_lists_is_linked_received_and_recycled_on_the_other_side() {
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&runs);
        loom::model(move || {
            // SYNC: Relaxed; a count of iterations outside the model.
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (client, server) = lists_of([3, 2]);
            let (client, server) = (leak(client), leak(server));
            let chain = client.alloc(u64::from(4 * SLICE) + 10).unwrap();
            assert_eq!(chain.count(), 2);
            let slices: Vec<u32> = client.own_chain(&chain).map(|s| s.unwrap().0).collect();
            let sizes: Vec<u32> = slices
                .iter()
                .map(|&s| client.slice_at(s).unwrap().0.slice_size())
                .collect();
            assert_eq!(sizes, [4 * SLICE, SLICE], "the chain spans both lists");
            for &s in &slices {
                client.set_len(s, 10).unwrap();
                client.hand_over(s).unwrap();
            }
            let first = chain.first();
            let t = thread::spawn(move || {
                let mut out = Vec::new();
                server.receive_chain(first, &mut out).unwrap();
                let got: Vec<u32> = out.iter().map(|s| s.slice).collect();
                for s in &got {
                    server.recycle(*s).unwrap();
                }
                got
            });
            // Pops the small list's other slice, or the chain's once it is back.
            let other = client.alloc(10);
            let got = t.join().unwrap();
            assert_eq!(got, slices);
            // A chain slice may come back to the client only through the free list, after
            // the server recycled it (the ledgers refuse a second owner: the unwraps above
            // and the free below fail otherwise), and every slice ends in its list once.
            if let Ok(c) = other {
                client.free_chain(&c).unwrap();
            }
            for list in client.lists() {
                assert_full(list);
            }
        });
        // SYNC: Relaxed; see above.
        let n = runs.load(std::sync::atomic::Ordering::Relaxed);
        println!("a_chain_across_lists: {n} interleavings explored");
        assert!(n > 1, "the model explored a single interleaving");
    }
}
