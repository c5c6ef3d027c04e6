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
use core::sync::atomic as imp;
#[cfg(loom)]
use loom::sync::atomic as imp;

pub(crate) use imp::Ordering;

/// A memory fence (`core::sync::atomic::fence`, or loom's under `--cfg loom`).
#[inline]
pub(crate) fn fence(order: Ordering) {
    imp::fence(order);
}

/// Defines a `#[repr(transparent)]` wrapper around an atomic integer, so that the rest of
/// the crate names only this facade (clippy's `disallowed-types` sees through re-exports,
/// not through wrappers) and loom can replace the inner type.
macro_rules! atomic_int {
    ($(#[$doc:meta])* $name:ident, $int:ty) => {
        $(#[$doc])*
        #[repr(transparent)]
        #[derive(Default)]
        pub(crate) struct $name(imp::$name);

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                // SYNC: diagnostics only.
                core::fmt::Debug::fmt(&self.0.load(Ordering::Relaxed), f)
            }
        }

        #[allow(dead_code)]
        impl $name {
            /// A new atomic holding `value`.
            #[cfg(not(loom))]
            pub(crate) const fn new(value: $int) -> Self {
                Self(imp::$name::new(value))
            }

            /// A new atomic holding `value`.
            #[cfg(loom)]
            pub(crate) fn new(value: $int) -> Self {
                Self(imp::$name::new(value))
            }

            #[inline]
            pub(crate) fn load(&self, order: Ordering) -> $int {
                self.0.load(order)
            }

            #[inline]
            pub(crate) fn store(&self, value: $int, order: Ordering) {
                self.0.store(value, order)
            }

            #[inline]
            pub(crate) fn swap(&self, value: $int, order: Ordering) -> $int {
                self.0.swap(value, order)
            }

            #[inline]
            pub(crate) fn compare_exchange(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int> {
                self.0.compare_exchange(current, new, success, failure)
            }

            #[inline]
            pub(crate) fn fetch_add(&self, value: $int, order: Ordering) -> $int {
                self.0.fetch_add(value, order)
            }

            #[inline]
            pub(crate) fn fetch_sub(&self, value: $int, order: Ordering) -> $int {
                self.0.fetch_sub(value, order)
            }

            #[inline]
            pub(crate) fn fetch_or(&self, value: $int, order: Ordering) -> $int {
                self.0.fetch_or(value, order)
            }
        }
    };
}

atomic_int!(
    /// An atomic `u8` in shared memory (the slice flags byte).
    AtomicU8, u8
);
atomic_int!(
    /// An atomic `u16` in shared memory (the buffer manager's list count).
    AtomicU16, u16
);
atomic_int!(
    /// An atomic `u32` in shared memory.
    AtomicU32, u32
);
atomic_int!(
    /// An atomic `i32` in shared memory (list sizes and counters).
    AtomicI32, i32
);

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
