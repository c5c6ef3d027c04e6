//! Loom models of every lock-free algorithm in `shmlink-core`.
//!
//! The models live in `tests/` and compile only under `--cfg loom`, where core's `sync`
//! facade swaps in loom's atomics, mutex and fences. Run them with
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p shmlink-loom-tests --release --target-dir target/loom
//! ```
//!
//! - `tests/queue.rs`: IO queue order and content, the working-flag handshake (no lost
//!   wake-up), a full queue under the handshake, a close pushed after a write from another
//!   thread, two producers through the process-local lock.
//! - `tests/waiters.rs`: the waiter registry and the pump's hand-off (an owner leaving while a
//!   waiter registers, data for a sleeper while the pump is vacant, a successor cancelled
//!   mid-hand-off).
//! - `tests/buffer.rs`: free-list pop/push from threads standing for both processes, the
//!   link publication with stale values that look valid and with junk, the ownership
//!   ledger (a double recycle, two transitions on one word), a chain across lists received
//!   and recycled on the other side, and (ignored, documented) the ABA window of the compat
//!   free list.
//!
//! Each model file lists the mutations of core tried against it and whether it caught them;
//! `mutations.py` reruns them.

/// Leaks `value` for the rest of the model iteration. Models borrow queue and list memory
/// for `'static` so that threads can share it; a few bytes per iteration is fine.
pub fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}
