//! The waiter registry of one session: who waits for it, and which one of them owns the pump
//! (drains the receive queue, reads the socket, or spins). Pure bookkeeping under the caller's
//! lock: it never wakes anyone itself, it hands back the one [`Waker`] to call once the lock is
//! released, so no waker ever runs under a lock.
//!
//! The rules (DESIGN.md, "Waiting without a herd"):
//! - at most one owner; every other waiter sleeps on its own waker and is woken only for its
//!   own data (the caller's business) or to take the pump over;
//! - leaving (data found, timeout, cancellation, drop) is [`leave`](Registry::leave): an owner
//!   that leaves names a successor, readers before acceptors, and a successor that leaves
//!   before it claimed the pump passes the hand-off on, so no waiter is ever stranded;
//! - registration and removal are O(1): a slot keeps its index, waiters form an intrusive
//!   list in a slab.
//!
//! It must never allocate once its slab has grown to the number of concurrent waiters.

use alloc::vec::Vec;
use core::task::Waker;

const NIL: u32 = u32::MAX;

/// What a waiter waits for: its successor preference when the owner leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A stream's reader: woken first to take the pump over.
    Reader,
    /// A wait for streams the peer opens: a long wait, woken for the pump only when no
    /// reader waits (or when the caller asks for it).
    Acceptor,
}

struct Entry {
    waker: Option<Waker>,
    kind: Kind,
    /// A reader whose last wait ended with data a moment ago: likely to receive again.
    recent: bool,
    prev: u32,
    next: u32,
    live: bool,
}

/// A waiter's place in a [`Registry`]: its index, kept by the waiter so that registering again
/// and leaving cost no search. `None` while not registered.
pub type Ticket = Option<u32>;

/// The waiters of one session and the pump's owner. See the module docs.
pub struct Registry {
    entries: Vec<Entry>,
    /// Free entries, linked through `next`.
    free: u32,
    /// Live waiters, oldest first.
    head: u32,
    tail: u32,
    len: usize,
    owner: u32,
    /// The owner sleeps (neither pumping nor spinning): a reader may take the pump from it.
    owner_asleep: bool,
    /// The waiter woken to take the pump over that has not claimed it yet.
    successor: u32,
    /// Bumped by [`progress`](Self::progress): lets a watchdog tell an owner that stopped
    /// being polled (an abandoned read) from one that works.
    progress: u64,
    /// Live readers marked recent.
    recent: usize,
    /// Bumped by every vacancy [`leave_lazily`](Self::leave_lazily) leaves behind.
    vacancy: u64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Registry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Registry")
            .field("waiters", &self.len)
            .field("owner", &self.owner())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
            owner: NIL,
            owner_asleep: false,
            successor: NIL,
            progress: 0,
            recent: 0,
            vacancy: 0,
        }
    }

    /// Registers a waiter (or updates its waker): O(1). The ticket keeps its index.
    pub fn register(&mut self, ticket: &mut Ticket, kind: Kind, waker: &Waker) {
        if let Some(i) = *ticket {
            if let Some(e) = self.entries.get_mut(i as usize) {
                if e.live {
                    match &e.waker {
                        Some(w) if w.will_wake(waker) => {}
                        _ => e.waker = Some(waker.clone()),
                    }
                    e.kind = kind;
                    return;
                }
            }
        }
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.entries[i as usize].next;
            i
        } else {
            self.entries.push(Entry {
                waker: None,
                kind,
                recent: false,
                prev: NIL,
                next: NIL,
                live: false,
            });
            (self.entries.len() - 1) as u32
        };
        let tail = self.tail;
        let e = &mut self.entries[i as usize];
        e.waker = Some(waker.clone());
        e.kind = kind;
        e.recent = false;
        e.live = true;
        e.prev = tail;
        e.next = NIL;
        if tail == NIL {
            self.head = i;
        } else {
            self.entries[tail as usize].next = i;
        }
        self.tail = i;
        self.len += 1;
        *ticket = Some(i);
    }

    /// Makes the waiter the pump's owner if nobody owns it, if it already does, or if it is a
    /// reader and the owner is an acceptor or sleeps (see [`owner_sleeps`](Self::owner_sleeps)):
    /// the reader that came back is the one likely to receive next, and the one displaced
    /// loses nothing (it sleeps on its own waker). A reader never takes the pump from a
    /// reader that pumps or spins: measured, that starved the others (8 blocking streams fell
    /// from 97 k to 10 k round trips/s); rotation on leaving keeps one busy thread from
    /// starving the rest. `false`: it must sleep.
    pub fn claim(&mut self, ticket: Ticket) -> bool {
        let Some(i) = ticket else {
            return false;
        };
        let kind = |j: u32| self.entries.get(j as usize).map(|e| e.kind);
        let takes_over = self.owner != NIL
            && kind(i) == Some(Kind::Reader)
            && (self.owner_asleep || kind(self.owner) == Some(Kind::Acceptor));
        if self.owner == NIL || self.owner == i || takes_over {
            self.owner = i;
            self.owner_asleep = false;
            if self.successor == i || self.successor == NIL {
                self.successor = NIL;
            }
            return true;
        }
        false
    }

    /// Marks a reader recent (its last wait ended with data a moment ago) or not: when an
    /// owner leaves with its data, a recent reader is woken to take the pump over at once,
    /// while readers that have been idle are left asleep (see
    /// [`leave_lazily`](Self::leave_lazily)).
    pub fn set_recent(&mut self, ticket: Ticket, recent: bool) {
        let Some(e) = ticket.and_then(|i| self.entries.get_mut(i as usize)) else {
            return;
        };
        let recent = recent && e.live && e.kind == Kind::Reader;
        if e.recent != recent {
            e.recent = recent;
            if recent {
                self.recent += 1;
            } else {
                self.recent -= 1;
            }
        }
    }

    /// [`leave`](Self::leave) for an owner that got its data and will likely be back in a
    /// moment: the pump goes at once only to a recent reader (readers first, oldest first).
    /// With none, nobody is woken now: the pump stays vacant and the returned vacancy number
    /// lets the caller hand it over later with [`resolve_vacancy`](Self::resolve_vacancy) if
    /// nobody claimed it meanwhile. `(waker to call, vacancy left behind)`.
    pub fn leave_lazily(&mut self, ticket: &mut Ticket) -> (Option<Waker>, Option<u64>) {
        if !self.owns(*ticket) {
            return (self.leave(ticket, false), None);
        }
        let me = *ticket;
        if self.recent > 0 {
            let next = self.pick_recent(me);
            if next != NIL {
                // Unlink first (the owner leaves), then name the successor.
                let mut t = me;
                self.unlink_only(&mut t);
                *ticket = None;
                self.owner = NIL;
                self.owner_asleep = false;
                self.successor = next;
                return (self.entries[next as usize].waker.clone(), None);
            }
        }
        let mut t = me;
        self.unlink_only(&mut t);
        *ticket = None;
        self.owner = NIL;
        self.owner_asleep = false;
        self.successor = NIL;
        self.vacancy = self.vacancy.wrapping_add(1);
        (None, Some(self.vacancy))
    }

    /// A vacancy left by [`leave_lazily`](Self::leave_lazily), looked at again later: if the
    /// pump is still vacant since then (no owner, no successor, no later vacancy) and somebody
    /// waits, it is handed over now (readers first, acceptors too).
    pub fn resolve_vacancy(&mut self, vacancy: u64) -> Option<Waker> {
        if self.owner != NIL || self.successor != NIL || self.vacancy != vacancy || self.len == 0 {
            return None;
        }
        self.hand_off(true)
    }

    /// The owner goes to sleep (the flag is down, the socket armed): a reader that comes back
    /// may take the pump from it. Cleared by the next claim.
    pub fn owner_sleeps(&mut self, ticket: Ticket) {
        if self.owns(ticket) {
            self.owner_asleep = true;
        }
    }

    /// Whether the waiter owns the pump.
    pub fn owns(&self, ticket: Ticket) -> bool {
        ticket.is_some_and(|i| i == self.owner)
    }

    /// The owner's index, if any.
    pub fn owner(&self) -> Option<u32> {
        (self.owner != NIL).then_some(self.owner)
    }

    /// Whether a waiter was woken to take the pump over and has not claimed it yet.
    pub fn succession_pending(&self) -> bool {
        self.successor != NIL
    }

    /// Waiters registered.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a reader (not only acceptors) waits, other than `except`.
    pub fn has_reader(&self, except: Ticket) -> bool {
        self.pick(except, false) != NIL
    }

    /// The owner worked (pumped): see [`progress_mark`](Self::progress_mark).
    pub fn progress(&mut self) {
        self.progress = self.progress.wrapping_add(1);
    }

    /// A number that moves while an owner works.
    pub fn progress_mark(&self) -> u64 {
        self.progress
    }

    /// The waiter stops waiting (O(1)). If it owned the pump, or had been woken to take it
    /// over and had not yet, the pump goes to a successor (readers first; acceptors too only
    /// if `acceptors`), whose waker is returned to be called after the lock is released.
    pub fn leave(&mut self, ticket: &mut Ticket, acceptors: bool) -> Option<Waker> {
        let i = (*ticket)?;
        if !self.unlink_only(ticket) {
            return None;
        }
        let owned = self.owner == i;
        let was_successor = self.successor == i;
        if owned {
            self.owner = NIL;
            self.owner_asleep = false;
        }
        if was_successor {
            self.successor = NIL;
        }
        if (owned || was_successor) && self.owner == NIL {
            return self.hand_off(acceptors);
        }
        None
    }

    /// Takes the waiter out of the list and frees its entry (no hand-off); `false` if it was
    /// not registered.
    fn unlink_only(&mut self, ticket: &mut Ticket) -> bool {
        let Some(i) = ticket.take() else {
            return false;
        };
        let Some(e) = self.entries.get_mut(i as usize) else {
            return false;
        };
        if !e.live {
            return false;
        }
        e.live = false;
        e.waker = None;
        if core::mem::take(&mut e.recent) {
            self.recent -= 1;
        }
        let (prev, next) = (e.prev, e.next);
        e.next = self.free;
        self.free = i;
        if prev == NIL {
            self.head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        self.len -= 1;
        true
    }

    /// The pump's owner gives it up without leaving (it will sleep as an ordinary waiter);
    /// the successor's waker is returned as by [`leave`](Self::leave).
    pub fn step_down(&mut self, ticket: Ticket, acceptors: bool) -> Option<Waker> {
        if ticket.is_none() || !self.owns(ticket) {
            return None;
        }
        self.owner = NIL;
        self.owner_asleep = false;
        self.hand_off_except(ticket, acceptors)
    }

    /// Whom to wake when the socket becomes readable: the owner, or, with the pump vacant,
    /// a successor (acceptors included: the socket has work for somebody).
    pub fn wake_owner(&mut self) -> Option<Waker> {
        if self.owner != NIL {
            return self.entries[self.owner as usize].waker.clone();
        }
        if self.successor != NIL {
            return self.entries[self.successor as usize].waker.clone();
        }
        self.hand_off(true)
    }

    /// Takes the pump from an owner that stopped working (its task no longer polls it): the
    /// successor's waker is returned as by [`leave`](Self::leave).
    pub fn revoke(&mut self) -> Option<Waker> {
        // Neither the owner that stopped nor a successor that never came is picked again.
        let stale = match (self.owner, self.successor) {
            (NIL, NIL) => None,
            (NIL, s) => Some(s),
            (o, _) => Some(o),
        };
        self.owner = NIL;
        self.owner_asleep = false;
        self.successor = NIL;
        self.hand_off_except(stale, true)
    }

    /// The wakers of the acceptors waiting (a stream was opened; the caller calls them
    /// unlocked). A cancelled accept has left the registry, so nothing stale is kept.
    pub fn acceptors(&self, out: &mut Vec<Waker>) {
        let mut i = self.head;
        while i != NIL {
            let e = &self.entries[i as usize];
            if e.kind == Kind::Acceptor {
                if let Some(w) = &e.waker {
                    out.push(w.clone());
                }
            }
            i = e.next;
        }
    }

    /// Every waiter's waker, for a session that closes (the caller calls them unlocked).
    pub fn wake_all(&mut self, out: &mut Vec<Waker>) {
        let mut i = self.head;
        while i != NIL {
            let e = &self.entries[i as usize];
            if let Some(w) = &e.waker {
                out.push(w.clone());
            }
            i = e.next;
        }
    }

    fn hand_off(&mut self, acceptors: bool) -> Option<Waker> {
        self.hand_off_except(None, acceptors)
    }

    fn hand_off_except(&mut self, except: Ticket, acceptors: bool) -> Option<Waker> {
        let mut next = self.pick(except, false);
        if next == NIL && acceptors {
            next = self.pick(except, true);
        }
        if next == NIL {
            self.successor = NIL;
            return None;
        }
        self.successor = next;
        self.entries[next as usize].waker.clone()
    }

    /// The oldest recent reader other than `except`.
    fn pick_recent(&self, except: Ticket) -> u32 {
        let mut i = self.head;
        while i != NIL {
            let e = &self.entries[i as usize];
            if Some(i) != except && e.recent {
                return i;
            }
            i = e.next;
        }
        NIL
    }

    /// The oldest live waiter other than `except`: readers only, or anyone.
    fn pick(&self, except: Ticket, anyone: bool) -> u32 {
        let mut i = self.head;
        while i != NIL {
            let e = &self.entries[i as usize];
            if Some(i) != except && (anyone || e.kind == Kind::Reader) {
                return i;
            }
            i = e.next;
        }
        NIL
    }
}

#[cfg(test)]
// A test counter in process memory, never shared memory: the sync facade is not needed.
#[allow(clippy::disallowed_types)]
mod tests {
    use super::*;
    use alloc::sync::Arc;
    use alloc::task::Wake;
    use core::sync::atomic::{AtomicUsize, Ordering};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            // SYNC: Relaxed; a test counter.
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (Arc::clone(&c), Waker::from(c))
    }

    fn woke(w: Option<Waker>, c: &Count) -> bool {
        if let Some(w) = w {
            w.wake();
        }
        // SYNC: Relaxed; a test counter.
        c.0.swap(0, Ordering::Relaxed) > 0
    }

    #[test]
    fn one_owner_and_the_oldest_reader_succeeds_it() {
        let mut r = Registry::new();
        let (ca, wa) = waker();
        let (cb, wb) = waker();
        let (cc, wc) = waker();
        let (mut a, mut b, mut c) = (None, None, None);
        r.register(&mut c, Kind::Acceptor, &wc);
        r.register(&mut a, Kind::Reader, &wa);
        r.register(&mut b, Kind::Reader, &wb);
        assert!(r.claim(c), "an acceptor takes a vacant pump");
        assert!(r.claim(a), "a reader takes the pump from an acceptor");
        assert!(!r.claim(c));
        assert!(!r.claim(b), "nor from another reader that works");
        r.owner_sleeps(a);
        assert!(r.claim(b), "but from one that sleeps");
        assert!(!r.claim(a), "the new owner works until it sleeps");
        r.owner_sleeps(b);
        assert!(r.claim(a));
        // The reader goes before the older acceptor.
        assert!(woke(r.leave(&mut a, true), &cb));
        assert!(!woke(None, &ca) && !woke(None, &cc));
        assert!(r.succession_pending());
        assert!(r.claim(b));
        assert!(!r.succession_pending());
        // Only the acceptor is left: woken only if asked.
        let mut b2 = b;
        assert!(r.leave(&mut b2, false).is_none());
        assert!(r.owner().is_none());
        assert!(woke(r.wake_owner(), &cc));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn an_owner_leaving_lazily_wakes_only_a_recent_reader() {
        let mut r = Registry::new();
        let (_, wa) = waker();
        let (cb, wb) = waker();
        let (cc, wc) = waker();
        let (mut a, mut b, mut c) = (None, None, None);
        r.register(&mut a, Kind::Reader, &wa);
        r.register(&mut b, Kind::Reader, &wb);
        r.register(&mut c, Kind::Reader, &wc);
        assert!(r.claim(a));
        // Only idle readers wait: nobody is woken, the vacancy is for later.
        let (next, vacancy) = r.leave_lazily(&mut a);
        assert!(next.is_none() && a.is_none());
        let v = vacancy.expect("a vacancy");
        assert!(r.owner().is_none() && !r.succession_pending());
        // Still vacant later: handed over then.
        assert!(woke(r.resolve_vacancy(v), &cb));
        assert!(r.claim(b));
        assert!(r.resolve_vacancy(v).is_none(), "claimed since");
        // A recent reader is woken at once.
        r.set_recent(c, true);
        let (next, vacancy) = r.leave_lazily(&mut b);
        assert!(vacancy.is_none());
        assert!(woke(next, &cc));
        assert!(r.claim(c));
    }

    #[test]
    fn a_successor_that_leaves_unclaimed_passes_the_pump_on() {
        let mut r = Registry::new();
        let (_, wa) = waker();
        let (cb, wb) = waker();
        let (cc, wc) = waker();
        let (mut a, mut b, mut c) = (None, None, None);
        r.register(&mut a, Kind::Reader, &wa);
        r.register(&mut b, Kind::Reader, &wb);
        r.register(&mut c, Kind::Reader, &wc);
        assert!(r.claim(a));
        assert!(woke(r.leave(&mut a, true), &cb));
        // b is cancelled before it claims: c must hear of it.
        assert!(woke(r.leave(&mut b, true), &cc));
        assert!(r.claim(c));
    }

    #[test]
    fn slots_are_reused_and_registration_keeps_its_index() {
        let mut r = Registry::new();
        let (_, w) = waker();
        let mut t = None;
        r.register(&mut t, Kind::Reader, &w);
        let first = t;
        r.register(&mut t, Kind::Reader, &w);
        assert_eq!(t, first);
        assert_eq!(r.len(), 1);
        r.leave(&mut t, true);
        assert!(t.is_none() && r.is_empty());
        r.register(&mut t, Kind::Reader, &w);
        assert_eq!(t, first, "the freed entry is reused");
    }

    #[test]
    fn revoking_an_owner_wakes_a_successor() {
        let mut r = Registry::new();
        let (_, wa) = waker();
        let (cb, wb) = waker();
        let (mut a, mut b) = (None, None);
        r.register(&mut a, Kind::Reader, &wa);
        r.register(&mut b, Kind::Acceptor, &wb);
        assert!(r.claim(a));
        assert!(!r.claim(b));
        // The owner's task stopped polling; the watchdog hands over to someone else
        // (acceptors too), never back to the stale owner.
        assert!(woke(r.revoke(), &cb));
        assert!(r.owner().is_none());
        assert!(r.claim(b));
        assert!(r.owns(b));
    }
}
