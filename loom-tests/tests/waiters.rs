//! Loom model of the waiter registry and the pump's hand-off (core/src/waiters.rs), as the
//! driver uses it (runtimes/src/driver/waiting.rs): readers register their waker, one owns the
//! pump and drains the "queue" (delivering to every stream and waking its reader), the others
//! sleep on their own waker; leaving hands the pump over; a reader may take the pump from an
//! owner that sleeps; the socket's readiness wakes the owner or, with the pump vacant, a
//! successor. The property: every reader whose data was
//! sent gets it (no thread sleeps forever: loom reports a deadlock otherwise), whatever the
//! interleaving of an owner leaving, a waiter registering, data arriving for a sleeper and a
//! waiter cancelled in the middle of a hand-off. Each model prints how many interleavings it
//! explored (always more than one).
//!
//! # Mutations tried (`python3 loom-tests/mutations.py`, LOOM_MAX_PREEMPTIONS=2)
//!
//! | mutation of core/src/waiters.rs | model | result |
//! | --- | --- | --- |
//! | `leave`: an owner leaving hands the pump to nobody | `an_owner_leaving_hands_the_pump_to_a_sleeper` | missed here, and no message is lost: an owner that leaves with nobody to take over lowers the flag and takes in what came (`lower_flag`), so the next push reaches a sleeper through the socket's readiness. What the hand-off saves (that Polling frame) is checked by `tests/tests/hand_off.rs`, which fails under this mutation |
//! | `wake_owner`: a vacant pump wakes nobody | `data_for_a_sleeper_arriving_while_the_pump_is_vacant_is_taken_in` | caught (deadlock: an acceptor is reached only through readiness) |
//! | `leave`: a successor cancelled before it claimed does not pass the hand-off on | `a_successor_cancelled_mid_hand_off_passes_it_on` | caught (deadlock) |
//! | `resolve_vacancy` hands over to nobody | `a_vacancy_left_lazily_is_handed_over_later` | caught (deadlock) |

#![cfg(loom)]

use std::sync::Arc as StdArc;
use std::task::{Wake, Waker};

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex, Notify};
use loom::thread;
use shmlink_core::waiters::{Kind, Registry, Ticket};

/// A task's wake-up: loom's Notify keeps a permit, like a thread's parker.
struct Task(Notify);

impl Wake for Task {
    fn wake(self: StdArc<Self>) {
        self.0.notify();
    }
    fn wake_by_ref(self: &StdArc<Self>) {
        self.0.notify();
    }
}

/// A session of `streams` streams.
struct Session {
    reg: Mutex<Registry>,
    /// Stream ids sent by the peer and not taken in yet, and the working flag (up: the
    /// consumer will look at the queue, so the peer sends no readiness event). The real
    /// flag handshake is the queue model's business; one lock keeps this one simple.
    queue: Mutex<(Vec<usize>, bool)>,
    /// Delivered to the stream's buffer, and the reader's waker there.
    delivered: Vec<AtomicBool>,
    readers: Vec<Mutex<Option<Waker>>>,
}

impl Session {
    fn new(streams: usize, queued: &[usize]) -> Arc<Self> {
        Arc::new(Self {
            reg: Mutex::new(Registry::new()),
            queue: Mutex::new((queued.to_vec(), true)),
            delivered: (0..streams).map(|_| AtomicBool::new(false)).collect(),
            readers: (0..streams).map(|_| Mutex::new(None)).collect(),
        })
    }

    /// The peer sends data for `id` and, the flag being down, makes the socket readable.
    fn send(&self, id: usize) {
        let idle = {
            let mut q = self.queue.lock().unwrap();
            q.0.push(id);
            !q.1
        };
        if idle {
            let next = self.reg.lock().unwrap().wake_owner();
            if let Some(w) = next {
                w.wake();
            }
        }
    }

    /// Lowers the flag unless elements wait (then the caller pumps again): `true` if down.
    fn lower_flag(&self) -> bool {
        let mut q = self.queue.lock().unwrap();
        if q.0.is_empty() {
            q.1 = false;
            return true;
        }
        false
    }

    /// The owner's pump: every queued element goes to its stream; readers are woken after
    /// the locks are released.
    fn pump(&self) {
        let ids: Vec<usize> = {
            let mut q = self.queue.lock().unwrap();
            q.1 = true;
            std::mem::take(&mut q.0)
        };
        let mut wakes = Vec::new();
        for id in ids {
            // SYNC: SeqCst; model bookkeeping, read by the stream's reader.
            self.delivered[id].store(true, Ordering::SeqCst);
            if let Some(w) = self.readers[id].lock().unwrap().take() {
                wakes.push(w);
            }
        }
        for w in wakes {
            w.wake();
        }
    }

    /// The check of `poll_wait`: registers the reader's waker with its stream, then looks.
    fn check(&self, id: usize, waker: &Waker) -> bool {
        *self.readers[id].lock().unwrap() = Some(waker.clone());
        // SYNC: SeqCst; see pump.
        self.delivered[id].load(Ordering::SeqCst)
    }

    /// Leaves; an owner with no successor lowers the flag (Event mode), taking in what
    /// came meanwhile.
    fn leave(&self, ticket: &mut Ticket) {
        let (owned, next) = {
            let mut reg = self.reg.lock().unwrap();
            let owned = reg.owns(*ticket);
            (owned, reg.leave(ticket, false))
        };
        if let Some(w) = next {
            w.wake();
        } else if owned {
            while !self.lower_flag() {
                self.pump();
            }
        }
    }

    /// A reader's wait for stream `id`, as `poll_wait` in Event mode; with `give_up` it
    /// leaves after `give_up` sleeps (a cancelled read).
    fn read(&self, id: usize, give_up: Option<usize>) -> bool {
        self.wait_as(Kind::Reader, id, give_up)
    }

    /// [`read`](Self::read) as a reader or an acceptor (woken for the pump only when no
    /// reader waits).
    fn wait_as(&self, kind: Kind, id: usize, give_up: Option<usize>) -> bool {
        let task = StdArc::new(Task(Notify::new()));
        let waker = Waker::from(StdArc::clone(&task));
        let mut ticket: Ticket = None;
        let mut sleeps = 0;
        loop {
            if self.check(id, &waker) {
                self.leave(&mut ticket);
                return true;
            }
            let owner = {
                let mut reg = self.reg.lock().unwrap();
                reg.register(&mut ticket, kind, &waker);
                reg.claim(ticket)
            };
            if owner {
                self.pump();
            }
            if self.check(id, &waker) {
                self.leave(&mut ticket);
                return true;
            }
            // An owner about to sleep lowers the flag; elements that came meanwhile are
            // taken in first.
            if owner && !self.lower_flag() {
                continue;
            }
            if owner {
                // A reader that comes back may take the pump from a sleeping owner.
                self.reg.lock().unwrap().owner_sleeps(ticket);
            }
            if let Some(k) = give_up {
                // A timed wait: the timer fires by itself (a yield), and after `k` of them
                // the read is given up.
                if sleeps == k {
                    self.leave(&mut ticket);
                    return false;
                }
                sleeps += 1;
                thread::yield_now();
                continue;
            }
            task.0.wait();
        }
    }
}

fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    let runs = StdArc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = StdArc::clone(&runs);
    loom::model(move || {
        // SYNC: Relaxed; a count of iterations outside the model.
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    // SYNC: Relaxed; see above.
    let n = runs.load(std::sync::atomic::Ordering::Relaxed);
    println!("{name}: {n} interleavings explored");
    assert!(n > 1, "{name}: the model explored a single interleaving");
}

/// A owns the pump with its data already queued; B waits for data the peer sends later.
/// However A's leaving and B's registration interleave, B gets its data.
#[test]
fn an_owner_leaving_hands_the_pump_to_a_sleeper() {
    model("an_owner_leaving_hands_the_pump_to_a_sleeper", || {
        let s = Session::new(2, &[0]);
        let a = {
            let s = Arc::clone(&s);
            thread::spawn(move || assert!(s.read(0, None)))
        };
        let b = {
            let s = Arc::clone(&s);
            thread::spawn(move || assert!(s.read(1, None)))
        };
        s.send(1);
        a.join().unwrap();
        b.join().unwrap();
    });
}

/// The peer's data for a sleeper arrives while nobody owns the pump (its owner just left):
/// the socket's readiness must reach somebody who takes the pump.
#[test]
fn data_for_a_sleeper_arriving_while_the_pump_is_vacant_is_taken_in() {
    model(
        "data_for_a_sleeper_arriving_while_the_pump_is_vacant_is_taken_in",
        || {
            let s = Session::new(2, &[]);
            let done = Arc::new(AtomicUsize::new(0));
            let b = {
                let s = Arc::clone(&s);
                let done = Arc::clone(&done);
                thread::spawn(move || {
                    // An acceptor: nobody hands the pump to it when a reader leaves; only
                    // the socket's readiness reaches it.
                    assert!(s.wait_as(Kind::Acceptor, 1, None));
                    // SYNC: SeqCst; model bookkeeping.
                    done.fetch_add(1, Ordering::SeqCst);
                })
            };
            let a = {
                let s = Arc::clone(&s);
                thread::spawn(move || {
                    // A waits once and is cancelled (a timeout): it may own the pump when it
                    // goes.
                    let _ = s.read(0, Some(0));
                })
            };
            a.join().unwrap();
            s.send(1);
            b.join().unwrap();
            // SYNC: SeqCst; see above.
            assert_eq!(done.load(Ordering::SeqCst), 1);
        },
    );
}

/// The owner leaves with its data and names a successor; the successor is cancelled (its
/// timeout fires) before it claims the pump: the third reader must still be woken to take it.
#[test]
fn a_successor_cancelled_mid_hand_off_passes_it_on() {
    model("a_successor_cancelled_mid_hand_off_passes_it_on", || {
        let s = Session::new(3, &[0]);
        let b = {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                let _ = s.read(1, Some(1));
            })
        };
        let c = {
            let s = Arc::clone(&s);
            thread::spawn(move || assert!(s.read(2, None)))
        };
        let a = {
            let s = Arc::clone(&s);
            thread::spawn(move || assert!(s.read(0, None)))
        };
        a.join().unwrap();
        b.join().unwrap();
        s.send(2);
        c.join().unwrap();
    });
}

/// An owner that got its data leaves lazily (nobody received lately, so nobody is woken);
/// the hand-off thread looks at the vacancy once, later. A sleeper whose data is already in
/// the queue (pushed while the flag was up, so no readiness comes) must still get it: from
/// the deferred look, or from a reader that claims the pump meanwhile.
#[test]
fn a_vacancy_left_lazily_is_handed_over_later() {
    model("a_vacancy_left_lazily_is_handed_over_later", || {
        let s = Session::new(2, &[0]);
        let b = {
            let s = Arc::clone(&s);
            thread::spawn(move || assert!(s.read(1, None)))
        };
        // A: the owner with its data queued, leaving lazily.
        let vacancy = {
            let task = StdArc::new(Task(Notify::new()));
            let waker = Waker::from(StdArc::clone(&task));
            let mut ticket: Ticket = None;
            let owner = {
                let mut reg = s.reg.lock().unwrap();
                reg.register(&mut ticket, Kind::Reader, &waker);
                reg.claim(ticket)
            };
            if owner {
                s.pump();
            }
            let (next, vacancy) = s.reg.lock().unwrap().leave_lazily(&mut ticket);
            if let Some(w) = next {
                w.wake();
            }
            vacancy
        };
        // B's data arrives; with the flag up (A pumped last) no readiness event comes.
        s.send(1);
        // The deferred look.
        if let Some(v) = vacancy {
            let next = s.reg.lock().unwrap().resolve_vacancy(v);
            if let Some(w) = next {
                w.wake();
            }
        }
        b.join().unwrap();
    });
}
