//! `shmlink-linux`: the only crate of shmlink that makes OS calls.
//!
//! - [`region`]: shared-memory regions: sealed memfds and `/dev/shm` files, created with
//!   `fallocate` so that running out of memory fails at creation, not as SIGBUS later, and
//!   mapped `MAP_SHARED`; peers' regions are mapped by fd or path.
//! - [`socket`]: the unix or TCP stream that carries control frames, and fd passing exactly as
//!   shmipc does it (one 0x00 byte plus one SCM_RIGHTS message with two fds).
//! - [`name`]: region names that never collide between clients (pid plus a random part).
//!
//! It holds no protocol logic: that lives in `shmlink-core`.

#![deny(unsafe_code)]

pub mod name;
#[allow(unsafe_code)]
pub mod region;
pub mod socket;
