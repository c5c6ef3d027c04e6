//! Runtime adapters. The session driver (`driver.rs`) is written once as poll functions over
//! a [`Reactor`]: how this runtime learns that the socket has bytes, and how it sleeps until a
//! deadline. Each adapter is a few dozen lines:
//!
//! - `blocking`: no runtime. A thread waits in `poll(2)` on the socket and its own eventfd
//!   (which is how another thread's waker reaches it); see [`block_on`].
//! - `tokio` (feature `tokio`): `AsyncFd` readiness and `tokio::time::Sleep`.
//! - `smol` (feature `smol`): `async_io::Async` readiness and `async_io::Timer`, which any
//!   executor can drive (smol, async-executor, `futures`' `block_on`, a hand-written one).

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::task::{Context, Poll};
use std::time::Instant;

pub(crate) mod blocking;
#[cfg(feature = "smol")]
pub(crate) mod smol;
#[cfg(feature = "tokio")]
#[allow(unsafe_code)]
pub(crate) mod tokio;

pub(crate) use blocking::block_on;

/// Readiness of one session's socket and timers, from the runtime that drives the session.
pub(crate) trait Reactor: Send + Sync + 'static {
    /// Reads what the socket has now (never blocks). `Pending` means nothing is there: the
    /// reactor wakes `cx` when there may be more.
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;

    /// A reusable timer for deadlines and back-off.
    fn timer(&self) -> Box<dyn Timer>;
}

/// A timer that can be re-armed without allocating.
pub(crate) trait Timer: Send + Sync {
    /// Ready once `at` has passed; otherwise wakes `cx` then.
    fn poll_at(&mut self, cx: &mut Context<'_>, at: Instant) -> Poll<()>;
}

/// One non-blocking read from the socket.
pub(crate) fn recv_now(fd: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match rustix::net::recv(&fd, &mut *buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((n, _)) => return Ok(n),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Which runtime a session was made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Runtime {
    Blocking,
    #[cfg(feature = "tokio")]
    Tokio,
    #[cfg(feature = "smol")]
    Smol,
}

impl Runtime {
    /// The reactor for a socket (a duplicate of the session's fd, non-blocking).
    pub(crate) fn reactor(self, fd: OwnedFd) -> io::Result<Box<dyn Reactor>> {
        rustix::io::ioctl_fionbio(&fd, true)?;
        Ok(match self {
            Runtime::Blocking => Box::new(blocking::BlockingReactor::new(fd)),
            #[cfg(feature = "tokio")]
            Runtime::Tokio => Box::new(tokio::TokioReactor::new(fd)?),
            #[cfg(feature = "smol")]
            Runtime::Smol => Box::new(smol::SmolReactor::new(fd)?),
        })
    }
}

#[cfg_attr(not(any(feature = "tokio", feature = "smol")), allow(dead_code))]
/// Runs blocking `work` (a handshake) on its own thread and waits for it without blocking the
/// executor: async connects and accepts use it, so no runtime's blocking pool is needed.
pub(crate) async fn off_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    use std::sync::{Arc, Mutex};
    struct Slot<T> {
        value: Option<T>,
        done: bool,
        waker: Option<std::task::Waker>,
    }
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        done: false,
        waker: None,
    }));
    /// Marks the slot done even if `work` panics, so the waiting task never hangs.
    struct Finish<T>(Arc<Mutex<Slot<T>>>);
    impl<T> Drop for Finish<T> {
        fn drop(&mut self) {
            let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
            s.done = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }
    let finish = Finish(Arc::clone(&slot));
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let value = work();
            finish.0.lock().unwrap_or_else(|e| e.into_inner()).value = Some(value);
        })?;
    std::future::poll_fn(move |cx| {
        let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
        if s.done {
            return match s.value.take() {
                Some(v) => Poll::Ready(Ok(v)),
                None => Poll::Ready(Err(io::Error::other("the worker thread panicked"))),
            };
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
}

/// A future that is ready when `f` is; the async building block of the public API.
pub(crate) fn poll_fn<T>(f: impl FnMut(&mut Context<'_>) -> Poll<T>) -> impl Future<Output = T> {
    std::future::poll_fn(f)
}
