//! Spinning that fits the machine. A waiter that owns the pump may spin (keep the receive
//! queue's working flag up and look at the queue again and again, re-polling by waking
//! itself) instead of sleeping, so a ping-pong or a burst pays no wake-up. Two limits keep it
//! from hurting:
//!
//! - at most (CPUs this process may run on - 1) threads of the process spin at once, whatever
//!   the number of sessions and streams (a spin token, taken and given back here);
//! - `Adaptive` decides per waiter: a waiter whose last few spin windows ended without data
//!   stops spinning, except for a longer probe now and then, and one hit makes it spin again.
//!   State per waiter (not per session) keeps one slow stream from switching off a fast one,
//!   and makes the decision for a given traffic pattern the same on every run.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Settings;
use crate::config::SyncMode;

/// After this many spin windows in a row that ended without data a waiter stops spinning,
/// except for a probe of [`PROBE_FACTOR`] windows every [`PROBE_EVERY`] waits.
const MAX_MISSES: u32 = 3;
const PROBE_EVERY: u32 = 16;
const PROBE_FACTOR: u32 = 4;

/// Threads of this process spinning now.
static SPINNING: AtomicUsize = AtomicUsize::new(0);

/// How many threads may spin at once: one fewer than the CPUs we may run on (so a peer or
/// another thread always has one), at least one when there are two or more.
pub(crate) fn spin_limit() -> usize {
    static LIMIT: OnceLock<usize> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_sub(1)
    })
}

/// One waiter's spinning state, kept across its waits.
#[derive(Debug, Default)]
pub(crate) struct Spin {
    /// The end of this wait's spin window, once the wait started spinning.
    until: Option<Instant>,
    /// Holds one of the process's spin tokens.
    token: bool,
    /// Spin windows in a row that ended without data.
    misses: u32,
    waits: u32,
}

impl Spin {
    /// Whether the owner of the pump should spin now (taking a token if it has none).
    pub(super) fn may_spin(&mut self, settings: &Settings, now: Instant) -> bool {
        let window = match settings.sync {
            SyncMode::Event => return false,
            _ if !settings.can_spin => return false,
            SyncMode::Poll => return self.take_token(),
            SyncMode::Adaptive => settings.spin_window,
        };
        let until = *self.until.get_or_insert_with(|| {
            self.waits = self.waits.wrapping_add(1);
            let window = match (self.misses >= MAX_MISSES, self.waits % PROBE_EVERY == 0) {
                (false, _) => window,
                (true, true) => window * PROBE_FACTOR,
                (true, false) => Duration::ZERO,
            };
            now + window
        });
        if now < until {
            return self.take_token();
        }
        if self.token {
            // The window ended without data: one miss per wait.
            self.misses = (self.misses + 1).min(MAX_MISSES);
            self.give_back();
        }
        false
    }

    /// Whether this waiter holds a spin token (it is spinning).
    pub(super) fn spinning(&self) -> bool {
        self.token
    }

    /// The wait ended: data within the window is a hit (spin again next time); the token
    /// goes back.
    pub(super) fn finish(&mut self, got_data: bool, now: Instant) {
        if got_data && self.until.is_some_and(|u| now <= u) {
            self.misses = 0;
        }
        self.until = None;
        self.give_back();
    }

    /// Stops spinning without ending the wait (the waiter sleeps now).
    pub(super) fn pause(&mut self) {
        self.give_back();
    }

    fn take_token(&mut self) -> bool {
        if self.token {
            return true;
        }
        let limit = spin_limit();
        // SYNC: Relaxed; a counter of tokens, ordering no other memory.
        self.token = SPINNING
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        self.token
    }

    fn give_back(&mut self) {
        if self.token {
            self.token = false;
            // SYNC: Relaxed; see take_token.
            SPINNING.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Spin {
    fn drop(&mut self) {
        self.give_back();
    }
}
