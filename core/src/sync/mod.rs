//! The synchronisation facade: the only module of `shmlink-core` that names atomics, fences
//! and `UnsafeCell`. Under `--cfg loom` every item here is loom's model-checked twin, so the
//! algorithms in `queue` and `buffer` run unchanged inside loom models.
//!
//! Nothing else in the crate may name `core::sync::atomic` or `core::cell::UnsafeCell`; clippy's
//! `disallowed-types` (see `core/clippy.toml`) enforces it.

#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod counter;

pub(crate) use counter::SharedCounter;

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicI32, AtomicU8, AtomicU16, AtomicU32, Ordering, fence};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicI32, AtomicU8, AtomicU16, AtomicU32, Ordering, fence};

/// The process-local lock that serialises producers of one IO queue.
///
/// It guards "write element, bump tail" only, a handful of instructions, so a spin lock is
/// the right tool and keeps the crate `no_std`. Under loom it is loom's mutex so models can
/// interleave two producers.
#[cfg(not(loom))]
pub(crate) type ProducerLock = spin::Mutex<()>;
#[cfg(loom)]
pub(crate) type ProducerLock = loom::sync::Mutex<()>;

/// Locks a [`ProducerLock`]; hides the `Result` loom's mutex returns.
#[cfg(not(loom))]
pub(crate) fn lock(lock: &ProducerLock) -> spin::MutexGuard<'_, ()> {
    lock.lock()
}

/// Locks a [`ProducerLock`]; hides the `Result` loom's mutex returns.
#[cfg(loom)]
pub(crate) fn lock(lock: &ProducerLock) -> loom::sync::MutexGuard<'_, ()> {
    // A poisoned lock only means another model thread panicked; the model reports that.
    lock.lock().unwrap_or_else(|e| e.into_inner())
}

/// Backs off inside a retry loop. Under loom this yields, which tells the model checker
/// that the thread cannot progress until another one runs.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(not(loom))]
    core::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}
