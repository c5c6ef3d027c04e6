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

#![deny(unsafe_code)]

mod config;
mod error;
mod listener;
mod session;
#[allow(unsafe_code)]
mod shm;
#[allow(unsafe_code)]
mod stream;

pub use config::{Config, MemMode};
pub use error::Error;
pub use listener::{HandshakeFailure, Listener};
pub use session::Session;
pub use shmlink_core::buffer::SizeClass;
pub use shmlink_core::session::Metrics;
pub use stream::{Reservation, Stream, View};
