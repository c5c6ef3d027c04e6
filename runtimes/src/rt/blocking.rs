//! The blocking adapter: a thread waits in `poll(2)` on the session's socket (when the driver
//! asked for it) and on its own eventfd, which is how a waker held by another thread reaches it.
//! No runtime, no helper thread.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use rustix::event::{EventfdFlags, PollFd, PollFlags};

use super::{Reactor, Timer, recv_now};

/// What the future polled last asked to wait for: sockets to become readable (usually one;
/// several when one wait covers many sessions, as a listener's `accept_stream`), and the
/// earliest deadline. Reset before every poll; the vector keeps its room, so the hot path
/// does not allocate.
struct Wait {
    /// `block_on` runs on this thread: only then do reads register their socket (a read
    /// outside it, as `available()` pumping, must not leave an fd here).
    active: bool,
    sockets: Vec<Arc<OwnedFd>>,
    deadline: Option<Instant>,
}

/// Marks this thread as inside `block_on`; when it returns (or unwinds) `WAIT` is as it was
/// before: empty outside any `block_on`, so that no socket stays registered (and open); the
/// outer wait's registrations for a `block_on` nested in another's poll (a callback doing
/// blocking I/O), so that the outer one still sleeps on its sockets.
struct Active {
    outer: Option<(Vec<Arc<OwnedFd>>, Option<Instant>)>,
}

impl Active {
    fn enter() -> Self {
        WAIT.with(|w| {
            let mut w = w.borrow_mut();
            let outer = w
                .active
                .then(|| (std::mem::take(&mut w.sockets), w.deadline.take()));
            w.active = true;
            Self { outer }
        })
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        WAIT.with(|w| {
            let mut w = w.borrow_mut();
            match self.outer.take() {
                Some((sockets, deadline)) => {
                    w.sockets = sockets;
                    w.deadline = deadline;
                    // The inner loop reset the shared wake-up flag: the outer one polls again
                    // rather than miss a wake-up that came meanwhile.
                    // SYNC: SeqCst like every access to the flag (see wake_by_ref).
                    PARKER.with(|p| p.notified.store(true, Ordering::SeqCst));
                }
                None => {
                    w.active = false;
                    w.sockets.clear();
                    w.deadline = None;
                }
            }
        });
    }
}

thread_local! {
    static WAIT: RefCell<Wait> = const {
        RefCell::new(Wait {
            active: false,
            sockets: Vec::new(),
            deadline: None,
        })
    };
    static PARKER: Arc<Parker> = Arc::new(Parker::new());
}

/// Threads of this process woken from their sleep and not running yet: while there are any,
/// a thread that spins (re-polls by waking itself) yields its CPU instead of busy-looping, so
/// that on a machine with few CPUs the woken thread runs at once instead of waiting for the
/// spinner's time slice to end.
static WOKEN_NOT_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// A thread's wake-up: a flag, and an eventfd written only when the thread sleeps.
struct Parker {
    efd: Option<OwnedFd>,
    notified: AtomicBool,
    sleeping: AtomicBool,
    /// Counted in [`WOKEN_NOT_RUNNING`] since a waker wrote the eventfd.
    counted: AtomicBool,
}

impl Parker {
    fn new() -> Self {
        Self {
            efd: rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).ok(),
            notified: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            counted: AtomicBool::new(false),
        }
    }
}

impl Wake for Parker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // SYNC: SeqCst store then SeqCst load, the Dekker pair of block_on's SeqCst store of
        // `sleeping` then load of `notified`: either the sleeper sees the notification and does
        // not sleep, or we see it sleeping and write the eventfd.
        if self.notified.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.sleeping.load(Ordering::SeqCst) {
            if let Some(efd) = &self.efd {
                // SYNC: Relaxed; a hint for spinners (see WOKEN_NOT_RUNNING), ordering nothing.
                if !self.counted.swap(true, Ordering::Relaxed) {
                    WOKEN_NOT_RUNNING.fetch_add(1, Ordering::Relaxed);
                }
                let _ = rustix::io::write(efd, &1u64.to_ne_bytes());
            }
        }
    }
}

/// Runs `future` on this thread to completion, sleeping in `poll(2)` while it is pending.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let parker = PARKER.with(Arc::clone);
    let waker = Waker::from(Arc::clone(&parker));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let _active = Active::enter();
    loop {
        // SYNC: SeqCst like every access to the flag (see wake_by_ref).
        parker.notified.store(false, Ordering::SeqCst);
        WAIT.with(|w| {
            let mut w = w.borrow_mut();
            w.sockets.clear();
            w.deadline = None;
        });
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        // SYNC: see wake_by_ref.
        if parker.notified.load(Ordering::SeqCst) {
            // Woken while polling (a spin: the driver re-polls by waking itself). A thread
            // woken elsewhere in the process and waiting for a CPU goes first.
            // SYNC: Relaxed; a hint (see WOKEN_NOT_RUNNING).
            if WOKEN_NOT_RUNNING.load(Ordering::Relaxed) > 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        parker.sleeping.store(true, Ordering::SeqCst);
        if !parker.notified.load(Ordering::SeqCst) {
            WAIT.with(|w| {
                let w = w.borrow();
                sleep(parker.efd.as_ref(), &w.sockets, w.deadline);
            });
        }
        parker.sleeping.store(false, Ordering::SeqCst);
        // SYNC: Relaxed; see WOKEN_NOT_RUNNING.
        if parker.counted.swap(false, Ordering::Relaxed) {
            WOKEN_NOT_RUNNING.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn sleep(efd: Option<&OwnedFd>, sockets: &[Arc<OwnedFd>], deadline: Option<Instant>) {
    let timeout = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        rustix::event::Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        }
    });
    let Some(efd) = efd else {
        // No eventfd (fd limit): nap briefly and look again.
        std::thread::sleep(std::time::Duration::from_micros(200));
        return;
    };
    let woken = if sockets.len() <= 1 {
        // One session (every stream's wait): no allocation.
        let mut fds = [
            PollFd::new(efd, PollFlags::IN),
            PollFd::from_borrowed_fd(
                sockets.first().map_or(efd.as_fd(), |s| s.as_fd()),
                PollFlags::IN,
            ),
        ];
        let n = 1 + sockets.len();
        let _ = rustix::event::poll(&mut fds[..n], timeout.as_ref());
        fds[0].revents().contains(PollFlags::IN)
    } else {
        let mut fds: Vec<PollFd<'_>> = std::iter::once(PollFd::new(efd, PollFlags::IN))
            .chain(sockets.iter().map(|s| PollFd::new(&**s, PollFlags::IN)))
            .collect();
        let _ = rustix::event::poll(&mut fds, timeout.as_ref());
        fds[0].revents().contains(PollFlags::IN)
    };
    if woken {
        let mut drain = [0u8; 8];
        let _ = rustix::io::read(efd, &mut drain);
    }
}

/// The blocking reactor: a read that finds nothing asks [`block_on`] to wait for the socket.
pub(crate) struct BlockingReactor {
    fd: Arc<OwnedFd>,
}

impl BlockingReactor {
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self { fd: Arc::new(fd) }
    }
}

impl Reactor for BlockingReactor {
    fn poll_recv(&self, _cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match recv_now(&*self.fd, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                WAIT.with(|w| {
                    let mut w = w.borrow_mut();
                    if w.active && !w.sockets.iter().any(|s| Arc::ptr_eq(s, &self.fd)) {
                        w.sockets.push(Arc::clone(&self.fd));
                    }
                });
                Poll::Pending
            }
            other => Poll::Ready(other),
        }
    }

    fn timer(&self) -> Box<dyn Timer> {
        Box::new(BlockingTimer)
    }
}

/// A deadline for [`block_on`]'s sleep (zero-sized: boxing it does not allocate).
struct BlockingTimer;

impl Timer for BlockingTimer {
    fn poll_at(&mut self, _cx: &mut Context<'_>, at: Instant) -> Poll<()> {
        if Instant::now() >= at {
            return Poll::Ready(());
        }
        WAIT.with(|w| {
            let mut w = w.borrow_mut();
            w.deadline = Some(w.deadline.map_or(at, |d| d.min(at)));
        });
        Poll::Pending
    }
}
