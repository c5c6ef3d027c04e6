//! `shmlink-core`: the pure-logic heart of shmlink, shmipc for Rust.
//!
//! Everything here is bytes and shared memory, never an OS call, so the crate is `no_std`
//! (the `alloc` feature adds heap conveniences). It speaks the shmipc-go V2/V3 layouts
//! byte for byte (see `docs/PROTOCOL.md` in the repository, which comments cite as
//! "PROTOCOL.md N.M"):
//!
//! - [`queue`]: the IO queue of 12-byte elements, and the working-flag handshake that decides
//!   when the peer must be woken.
//! - [`buffer`] and [`slice`](mod@slice): the shared allocator both processes pop slices from and recycle
//!   slices to, and the validated walk of a received message chain.
//! - [`frame`]: the control messages on the socket, with an incremental decoder.
//! - [`handshake`] (`alloc`): the V2/V3 connection handshake as sans-IO state machines.
//! - [`session`] (`alloc`): stream ids, implicit open, close, fallback routing, the circuit
//!   breaker and Go's metrics, as a sans-IO state machine.
//! - [`region`]: a borrowed view of a mapping that backends hand in.
//!
//! Lock-free code uses only the `sync` facade, which becomes loom under `--cfg loom`; the
//! models live in the workspace's `loom-tests` crate.

#![no_std]
#![deny(unsafe_code)]
#![warn(
    clippy::std_instead_of_core,
    clippy::std_instead_of_alloc,
    clippy::alloc_instead_of_core
)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("shmlink-core supports the shmipc layouts of x86_64 and aarch64 only");

pub mod buffer;
pub mod frame;
#[cfg(feature = "alloc")]
pub mod handshake;
pub mod queue;
#[allow(unsafe_code)]
pub mod region;
#[cfg(feature = "alloc")]
pub mod session;
pub mod slice;
#[allow(unsafe_code)]
mod sync;
#[cfg(feature = "alloc")]
pub mod waiters;
