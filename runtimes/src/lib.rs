//! shmlink: shmipc for Rust. Zero-copy inter-process communication over Linux shared memory,
//! wire-compatible with shmipc-go and CloudWeGo's crate `shmipc` (protocol V2/V3).
//!
//! A client [`Session::connect`]s to a server's unix socket, creates the shared memory (a
//! queue region and a buffer region) and hands it over in the handshake. Both sides then
//! write payloads straight into shared memory, announce them with a 12-byte queue element,
//! and wake the peer with a socket message only when it is idle.
//!
//! This blocking API runs one driver thread per session; it needs no async runtime.
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

#[cfg(any(feature = "tokio", feature = "smol"))]
mod async_stream;
mod config;
mod driver;
mod error;
mod listener;
mod rt;
mod session;
#[allow(unsafe_code)]
mod shm;
#[allow(unsafe_code)]
mod stream;

/// The tokio runtime: sessions whose waits go through tokio's reactor and timers. Create them
/// inside a tokio runtime with I/O and time enabled.
#[cfg(feature = "tokio")]
pub mod tokio {
    crate::async_stream::runtime_entry!(Runtime::Tokio, "tokio");
}

/// The smol runtime, through `async-io`: works under any executor (smol, async-executor,
/// `futures`' `block_on`, a hand-written one).
#[cfg(feature = "smol")]
pub mod smol {
    crate::async_stream::runtime_entry!(Runtime::Smol, "smol");
}

#[cfg(any(feature = "tokio", feature = "smol"))]
pub use async_stream::{AsyncSession, AsyncStream, ReadHalf, WriteHalf};
pub use config::{Config, Exhaustion, MemMode, SyncMode};
pub use error::Error;
pub use listener::{HandshakeFailure, Listener};
pub use session::Session;
pub use shmlink_core::buffer::SizeClass;
pub use shmlink_core::session::Metrics;
pub use stream::{Async, Blocking, Pieces, Reservation, Stream, View};
