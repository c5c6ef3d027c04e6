//! The tokio adapter: readiness from tokio's reactor (`AsyncFd`), time from `tokio::time`.
//! Sessions must be created inside a tokio runtime with I/O and time enabled.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tokio::io::unix::AsyncFd;

use super::{Reactor, Timer, recv_now};

pub(crate) struct TokioReactor {
    fd: AsyncFd<OwnedFd>,
}

impl TokioReactor {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: the AsyncFd takes ownership of the OwnedFd, which stays open and is the
        // same descriptor (OwnedFd::as_raw_fd never changes) until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { fd })
    }
}

impl Reactor for TokioReactor {
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            // try_io clears the readiness when the read would block, so the next
            // poll_read_ready waits for a new event.
            match guard.try_io(|fd| recv_now(fd.get_ref(), buf)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn timer(&self) -> Box<dyn Timer> {
        Box::new(TokioTimer(Box::pin(tokio::time::sleep_until(
            Instant::now().into(),
        ))))
    }
}

struct TokioTimer(Pin<Box<tokio::time::Sleep>>);

impl Timer for TokioTimer {
    fn poll_at(&mut self, cx: &mut Context<'_>, at: Instant) -> Poll<()> {
        let at = tokio::time::Instant::from_std(at);
        if self.0.deadline() != at {
            self.0.as_mut().reset(at);
        }
        std::future::Future::poll(self.0.as_mut(), cx)
    }
}
