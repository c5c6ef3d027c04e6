//! The deferred hand-off. A waiter that owned the pump and returns with its data usually reads
//! again a moment later; if no other waiter received anything lately, waking one to take the
//! pump over would cost a thread wake-up per message (and, with 64 idle readers beside one
//! busy stream, most of the busy stream's rate). So the pump is left vacant with the working
//! flag up, and one process-wide thread (`shmlink-handoff`) looks at such vacancies after
//! [`GRACE`]: one that nobody claimed meanwhile is handed to a waiter then. A session that a
//! reader keeps claiming never comes due; the thread sleeps on a condvar while nothing is
//! pending.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use super::{Inner, lock};

/// How long a vacancy may last before a waiter is woken to take the pump.
pub(crate) const GRACE: Duration = Duration::from_micros(200);

struct Pending {
    session: Weak<Inner>,
    id: u64,
    vacancy: u64,
    since: Instant,
}

struct Deferred {
    list: Mutex<Vec<Pending>>,
    changed: Condvar,
    /// The thread waits on `changed` (nothing pending): only then is it notified.
    idle: AtomicBool,
}

fn deferred() -> &'static Deferred {
    static DEFERRED: OnceLock<Deferred> = OnceLock::new();
    static THREAD: OnceLock<()> = OnceLock::new();
    let d = DEFERRED.get_or_init(|| Deferred {
        list: Mutex::new(Vec::new()),
        changed: Condvar::new(),
        idle: AtomicBool::new(false),
    });
    THREAD.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("shmlink-handoff".into())
            .spawn(|| run(d));
        if let Err(e) = spawned {
            tracing::warn!(target: "shmlink::session", error = %e, "cannot start the hand-off thread; vacancies wait for the monitor");
        }
    });
    d
}

/// Looks at `session`'s vacancy number `vacancy` again after [`GRACE`].
pub(super) fn defer(session: &Inner, vacancy: u64) {
    let d = deferred();
    let now = Instant::now();
    let mut list = lock(&d.list);
    if let Some(p) = list.iter_mut().find(|p| p.id == session.id) {
        p.vacancy = vacancy;
        p.since = now;
        return;
    }
    list.push(Pending {
        session: session.me.clone(),
        id: session.id,
        vacancy,
        since: now,
    });
    drop(list);
    // SYNC: SeqCst, with the thread's SeqCst store before it waits and its check of the list
    // under the lock: either it sees our entry, or we see it idle and notify.
    if d.idle.load(Ordering::SeqCst) {
        d.changed.notify_one();
    }
}

fn run(d: &'static Deferred) {
    let mut due = Vec::new();
    loop {
        {
            let mut list = lock(&d.list);
            while list.is_empty() {
                // SYNC: SeqCst; see defer.
                d.idle.store(true, Ordering::SeqCst);
                list = d.changed.wait(list).unwrap_or_else(|e| e.into_inner());
                // SYNC: SeqCst; see defer.
                d.idle.store(false, Ordering::SeqCst);
            }
        }
        std::thread::sleep(GRACE);
        let now = Instant::now();
        {
            let mut list = lock(&d.list);
            let mut i = 0;
            while i < list.len() {
                if now.saturating_duration_since(list[i].since) >= GRACE {
                    due.push(list.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        // Sessions are released (and woken) outside the lock.
        for p in due.drain(..) {
            if let Some(session) = p.session.upgrade() {
                session.resolve_vacancy(p.vacancy);
            }
        }
    }
}
