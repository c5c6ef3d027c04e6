//! shmlink: shmipc for Rust. Zero-copy inter-process communication over Linux shared memory,
//! wire-compatible with shmipc-go and CloudWeGo's crate `shmipc` (protocol V2/V3). The wire
//! protocol and layouts are described in the repository's
//! [`docs/PROTOCOL.md`](https://github.com/shmlink/shmlink/blob/main/docs/PROTOCOL.md), which
//! comments cite as "PROTOCOL.md N.M" (the design: `docs/DESIGN.md`).
//!
//! A client [`Session::connect`]s to a server's unix socket, creates the shared memory (a
//! queue region and a buffer region) and hands it over in the handshake. Both sides then
//! write payloads straight into shared memory, announce them with a 12-byte queue element,
//! and wake the peer with a socket message only when it is idle.
//!
//! # Runtimes
//!
//! One protocol driver serves three runtimes; no session has a thread of its own. Of the
//! tasks (or threads) waiting on a session, one at a time owns its pump: it drains the shared
//! receive queue, hands what it finds for other streams to their buffers and wakes only
//! those, and returns its own data without a hop; the others sleep until their stream
//! receives something or the pump is handed to them. Writers publish from their own task.
//!
//! - blocking (always): [`Session`], [`Stream`], [`Listener`];
//! - `tokio` (feature): [`tokio::connect`] / [`tokio::accept`] give an [`AsyncSession`]
//!   whose waits go through tokio's reactor;
//! - `smol` (feature): [`smol::connect`] / [`smol::accept`], through `async-io`, which any
//!   executor can drive (smol, async-executor, `futures`' `block_on`, a hand-written one).
//!
//! Around sessions: [`Listener`] (handshakes off the accept path; [`Listener::accept_stream`]
//! across all sessions or `serve` for a callback per stream; `close`, and a graceful
//! [`Listener::shutdown`]), [`SessionManager`] and, on tokio or smol, `AsyncSessionManager`
//! (a client's pool of sessions and streams, rebuilt after a peer goes away), graceful
//! [`Session::close`] (the socket closes only once the peer took what was queued for it), Go's
//! [`Metrics`] readable at any time and a [`Monitor`] that hears from every session, and
//! `tracing` events with session and stream ids, none on the per-message path.
//!
//! A blocking echo, client and server in one process:
//!
//! ```
//! use std::io::{Read, Write};
//! use shmlink::{Config, Listener, Session};
//!
//! let path = std::env::temp_dir().join(format!("shmlink-doc-{}.sock", std::process::id()));
//!
//! // Server: echo every piece back, reading zero copy.
//! let listener = Listener::bind(&path, Config::default())?;
//! let server = std::thread::spawn(move || -> Result<(), shmlink::Error> {
//!     let session = listener.accept()?;
//!     let mut stream = session.accept_stream(None)?;
//!     while let Some(view) = stream.read_view()? {
//!         stream.send(&view)?;
//!     }
//!     Ok(())
//! });
//!
//! // Client: creates the shared memory (memfd by default) and connects.
//! let session = Session::connect(&path, Config::default())?;
//! let mut stream = session.open_stream()?;
//! stream.write_all(b"ping")?;
//! let mut reply = [0u8; 4];
//! stream.read_exact(&mut reply)?;
//! assert_eq!(&reply, b"ping");
//!
//! drop(stream); // closes the stream: the server sees the end and returns
//! server.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The same on tokio (feature `tokio`), a complete server and client:
//!
//! ```no_run
//! # #[cfg(feature = "tokio")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shmlink::{AsyncStream, Config, Error, Listener};
//!
//! async fn echo(mut stream: AsyncStream) -> Result<(), Error> {
//!     // Zero copy: each view borrows a slice of shared memory until it is dropped.
//!     while let Some(view) = stream.read_view().await? {
//!         let n = view.len();
//!         let mut reply = stream.reserve(n).await?; // shared memory again
//!         reply.write_at(0, &view);
//!         drop(view);
//!         reply.commit(n).await?;
//!     }
//!     Ok(())
//! }
//!
//! let rt = tokio::runtime::Runtime::new()?;
//! rt.block_on(async {
//!     let listener = Listener::bind("/tmp/echo-tokio.sock", Config::default())?;
//!     tokio::spawn(async move {
//!         while let Ok(session) = shmlink::tokio::accept(&listener).await {
//!             tokio::spawn(async move {
//!                 while let Ok(stream) = session.accept_stream(None).await {
//!                     tokio::spawn(echo(stream));
//!                 }
//!             });
//!         }
//!     });
//!
//!     let session = shmlink::tokio::connect("/tmp/echo-tokio.sock", Config::default()).await?;
//!     let mut stream = session.open_stream()?;
//!     stream.send(b"ping").await?;
//!     let reply = stream.read_bytes(4).await?.ok_or(Error::StreamEnded)?;
//!     assert_eq!(&reply[..], b"ping");
//!     Ok(())
//! })
//! # }
//! # #[cfg(not(feature = "tokio"))]
//! # fn main() {}
//! ```
//!
//! And with `smol` (feature `smol`): the same types, made by [`smol::connect`] and
//! [`smol::accept`]; here each session and stream gets a thread driving it with
//! `async_io::block_on`, which is all an executor needs to provide:
//!
//! ```no_run
//! # #[cfg(feature = "smol")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use shmlink::{Config, Error, Listener};
//!
//! let listener = Listener::bind("/tmp/echo-smol.sock", Config::default())?;
//! std::thread::spawn(move || {
//!     while let Ok(session) = async_io::block_on(shmlink::smol::accept(&listener)) {
//!         std::thread::spawn(move || {
//!             while let Ok(mut stream) = async_io::block_on(session.accept_stream(None)) {
//!                 std::thread::spawn(move || {
//!                     async_io::block_on(async {
//!                         while let Ok(Some(view)) = stream.read_view().await {
//!                             let copy = view.to_vec();
//!                             drop(view);
//!                             if stream.send(&copy).await.is_err() {
//!                                 break;
//!                             }
//!                         }
//!                     })
//!                 });
//!             }
//!         });
//!     }
//! });
//!
//! async_io::block_on(async {
//!     let session = shmlink::smol::connect("/tmp/echo-smol.sock", Config::default()).await?;
//!     let mut stream = session.open_stream()?;
//!     stream.send(b"ping").await?;
//!     let reply = stream.read_bytes(4).await?.ok_or(Error::StreamEnded)?;
//!     assert_eq!(&reply[..], b"ping");
//!     Ok::<_, Error>(())
//! })?;
//! # Ok(()) }
//! # #[cfg(not(feature = "smol"))]
//! # fn main() {}
//! ```
//!
//! # Waiting, deadlines and cancellation
//!
//! [`Config::sync`] says how a reader waits ([`SyncMode`]): `Event` sleeps at once and is
//! woken by the peer's Polling frame, as Go does; `Adaptive` (the default) keeps looking at
//! the queue for [`Config::spin_window`] first, yielding to other tasks between looks, so a
//! quick peer's answer costs no system call; `Poll` looks until the data comes. Read timeouts
//! (`set_read_timeout`) bound every read; write timeouts bound how long a write waits for
//! memory or queue room under [`Exhaustion::Wait`].
//!
//! Async reads are cancellation-safe: a dropped read future loses nothing (the data stays
//! buffered for the next read), and a read that was spinning for the session gives that up.
//! A dropped `send`/`commit` publishes at most once: the message was sent or it was not, and
//! its shared memory is never lost. `AsyncWrite::poll_write` publishes at once; `poll_flush`
//! waits for socket frames (wake-ups, fallback data) the socket could not take yet.
//!
//! # When shared memory runs out
//!
//! [`Config::on_exhaustion`] decides ([`Exhaustion`]): `Fallback` (the default: the bytes
//! travel on the socket and the stream stays there, as Go does, so a Go peer and a shmlink
//! peer behave alike and a slow reader never blocks a writer), `Wait` (bounded by the write
//! timeout; nothing moves to the socket), or `Error`. No message is lost, duplicated or
//! reordered across a switch; a message larger than all of shared memory falls back or
//! fails by the same policy.

//!
//! # What a peer can and cannot do to you
//!
//! The peer maps the same shared memory, so it is part of the attack surface. A peer that
//! breaks the protocol, by bug or on purpose, **can**:
//!
//! - write the bytes of slices it holds, or that we sent it, at any time (so the bytes of a
//!   [`View`] are not a stable snapshot against a hostile peer: copy before validating);
//! - make us close the session, with an error that names what it did
//!   ([`Error::ProtocolViolation`]); other sessions are not affected;
//! - in file mode, name only regular files it owns inside [`Config::shm_dirs`]; the server
//!   refuses anything else (a symbolic link, a device, another user's file) by name.
//!
//! It **cannot** make us read or write outside our mappings, panic, loop or wait without a
//! bound, deliver one message twice, or give one slice two owners: every offset and length it
//! writes is validated once, from one read, and which slices this process holds is recorded
//! in this process's memory (an ownership ledger), never taken from the shared flags. A chain
//! announced twice (while we hold it, or after we recycled it), a slice we are still writing,
//! a double recycle or a free list that hands us a slice we hold are refused and named. The
//! shared IN_USE flag is not required of a slice we sent the peer: shmipc-go resets it when it
//! sends a received slice back (`ReleaseReadAndReuse`). One client's failed handshake is logged and
//! counted by the [`Listener`]; it never ends the listener and never delays other clients.
//!
//! What remains:
//!
//! - the compat free list has no ABA tag on its head, as in shmipc-go (documented in
//!   `loom-tests`), so a pop stalled while the whole list rotates could link a wrong head; the
//!   next pop then refuses the corrupt link rather than follow it;
//! - a peer that shrinks a region it handed us (a file, or a memfd it did not seal, as Go
//!   never does) makes the next access to the cut-off pages raise SIGBUS in this process: a
//!   crash, not a panic. Our own memfds are sealed; refusing unsealed peer regions is planned;
//! - over TCP the peer's uid is unknown, so file-mode paths need only be owned by this
//!   process's uid: any local process that can connect to a TCP listener can name them. Use
//!   unix sockets (the peer's uid is checked) where other users share the host.

#![deny(unsafe_code)]
// docs.rs builds with `--cfg docsrs` (see Cargo.toml): items behind `tokio` or `smol` say so.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "tokio", feature = "smol"))]
mod async_stream;
mod config;
mod driver;
mod error;
mod listener;
mod manager;
mod monitor;
mod rt;
mod session;
#[allow(unsafe_code)]
mod shm;
#[allow(unsafe_code)]
mod stream;

/// The tokio runtime: sessions whose waits go through tokio's reactor and timers. Create them
/// inside a tokio runtime with I/O and time enabled.
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio {
    crate::async_stream::runtime_entry!(Runtime::Tokio, "tokio");

    /// Runs `handler` on every stream any client opens, each in a task of its own, until
    /// the listener is closed; then returns `Ok(())`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), shmlink::Error> {
    /// let listener = shmlink::Listener::bind("/tmp/echo.sock", shmlink::Config::default())?;
    /// shmlink::tokio::serve(&listener, |mut stream| async move {
    ///     while let Ok(Some(view)) = stream.read_view().await {
    ///         let reply = view.to_vec();
    ///         drop(view);
    ///         if stream.send(&reply).await.is_err() {
    ///             break;
    ///         }
    ///     }
    /// })
    /// .await
    /// # }
    /// ```
    pub async fn serve<F, Fut>(listener: &Listener, handler: F) -> Result<(), Error>
    where
        F: Fn(crate::AsyncStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        loop {
            match accept_stream(listener).await {
                Ok(stream) => {
                    ::tokio::spawn(handler(stream));
                }
                Err(Error::ClosedLocally) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// The smol runtime, through `async-io`: works under any executor (smol, async-executor,
/// `futures`' `block_on`, a hand-written one).
#[cfg(feature = "smol")]
#[cfg_attr(docsrs, doc(cfg(feature = "smol")))]
pub mod smol {
    crate::async_stream::runtime_entry!(Runtime::Smol, "smol");

    /// Runs `handler` on every stream any client opens, each as a task handed to `spawn`
    /// (async-io has no executor of its own: pass your executor's spawn), until the listener
    /// is closed; then returns `Ok(())`.
    ///
    /// ```no_run
    /// # use std::{future::Future, pin::Pin};
    /// # async fn demo(spawn: impl Fn(Pin<Box<dyn Future<Output = ()> + Send>>)) -> Result<(), shmlink::Error> {
    /// // With smol: `let ex = smol::Executor::new();` and `spawn = |task| ex.spawn(task).detach()`.
    /// let listener = shmlink::Listener::bind("/tmp/echo.sock", shmlink::Config::default())?;
    /// shmlink::smol::serve(&listener, spawn, |mut stream| async move {
    ///     while let Ok(Some(view)) = stream.read_view().await {
    ///         let reply = view.to_vec();
    ///         drop(view);
    ///         if stream.send(&reply).await.is_err() {
    ///             break;
    ///         }
    ///     }
    /// })
    /// .await
    /// # }
    /// ```
    pub async fn serve<S, F, Fut>(listener: &Listener, spawn: S, handler: F) -> Result<(), Error>
    where
        S: Fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
        F: Fn(crate::AsyncStream) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        loop {
            match accept_stream(listener).await {
                Ok(stream) => spawn(Box::pin(handler(stream))),
                Err(Error::ClosedLocally) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(any(feature = "tokio", feature = "smol"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "tokio", feature = "smol"))))]
pub use async_stream::{AsyncSession, AsyncStream, ReadHalf, WriteHalf};
pub use config::{Config, Exhaustion, GO_SIZE_CLASSES, MemMode, SIZE_CLASSES, SyncMode};
pub use error::Error;
pub use listener::{HandshakeFailure, Listener};
#[cfg(any(feature = "tokio", feature = "smol"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "tokio", feature = "smol"))))]
pub use manager::{AsyncPooledStream, AsyncSessionManager};
pub use manager::{ManagerConfig, PooledStream, SessionManager};
pub use monitor::{Monitor, SessionInfo};
pub use session::Session;
pub use shmlink_core::buffer::SizeClass;
pub use shmlink_core::session::{
    Metrics, PerformanceMetrics, ShareMemoryMetrics, StabilityMetrics,
};
pub use shmlink_linux::socket::Peer;
pub use stream::{Async, Blocking, Pieces, Reservation, Stream, View};
