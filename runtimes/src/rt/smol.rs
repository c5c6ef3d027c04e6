//! The smol adapter: readiness and timers from `async-io`, which works under any executor
//! (smol, async-executor, `futures`' `block_on`, or a hand-written one): async-io runs its
//! own reactor when no executor drives it.

use std::io;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use async_io::{Async, Timer as IoTimer};

use super::{Reactor, Timer, recv_now};

pub(crate) struct SmolReactor {
    fd: Async<OwnedFd>,
}

impl SmolReactor {
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(Self {
            fd: Async::new(fd)?,
        })
    }
}

impl Reactor for SmolReactor {
    fn poll_recv(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            match recv_now(self.fd.get_ref(), buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.fd.poll_readable(cx))?;
                }
                other => return Poll::Ready(other),
            }
        }
    }

    fn timer(&self) -> Box<dyn Timer> {
        Box::new(SmolTimer {
            timer: IoTimer::never(),
            at: None,
        })
    }
}

struct SmolTimer {
    timer: IoTimer,
    at: Option<Instant>,
}

impl Timer for SmolTimer {
    fn poll_at(&mut self, cx: &mut Context<'_>, at: Instant) -> Poll<()> {
        if Instant::now() >= at {
            return Poll::Ready(());
        }
        if self.at != Some(at) {
            self.timer.set_at(at);
            self.at = Some(at);
        }
        match std::future::Future::poll(std::pin::Pin::new(&mut self.timer), cx) {
            Poll::Ready(_) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}
