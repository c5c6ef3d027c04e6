//! The client's session pool (Go's `SessionManager`, PROTOCOL.md 6.6): N sessions to one
//! server, streams handed out round-robin from per-session pools and returned on drop, dead
//! sessions rebuilt with back-off while requests go to the live ones.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::{Config, Error, Metrics, Session, Stream};

/// How a [`SessionManager`] sizes and keeps its pools (Go's defaults where it has them).
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Sessions to the server (default 1, as Go's `SessionNum`).
    pub sessions: usize,
    /// Idle streams kept per session (default 64); more are closed when returned.
    pub max_idle_streams: usize,
    /// A pooled stream idle for longer is closed instead of reused (default 30 s, as Go's
    /// `StreamMaxIdleTime`).
    pub stream_idle_time: Duration,
    /// The first wait before rebuilding a dead session (default 50 ms); it doubles after each
    /// failed attempt, up to `max_rebuild_backoff`.
    pub rebuild_backoff: Duration,
    /// The longest wait between rebuild attempts (default 5 s).
    pub max_rebuild_backoff: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            sessions: 1,
            max_idle_streams: 64,
            stream_idle_time: Duration::from_secs(30),
            rebuild_backoff: Duration::from_millis(50),
            max_rebuild_backoff: Duration::from_secs(5),
        }
    }
}

/// One session of the pool and its idle streams.
struct Slot {
    session: Option<Arc<Session>>,
    idle: Vec<(Stream, Instant)>,
    next_attempt: Instant,
    backoff: Duration,
    /// Why the last attempt to (re)build this session failed.
    last_error: Option<String>,
}

struct Shared {
    path: PathBuf,
    config: Config,
    manager: ManagerConfig,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    rebuilt: AtomicUsize,
}

fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A pool of sessions to one server (blocking API).
///
/// ```no_run
/// use std::io::{Read, Write};
/// use shmlink::{Config, ManagerConfig, SessionManager};
///
/// let manager = SessionManager::new(
///     "/tmp/svc.sock",
///     Config::default(),
///     ManagerConfig { sessions: 4, ..ManagerConfig::default() },
/// )?;
/// let mut stream = manager.get_stream()?; // round-robin over the 4 sessions
/// stream.write_all(b"request")?;
/// let mut reply = [0u8; 5];
/// stream.read_exact(&mut reply)?;
/// drop(stream); // back to its session's pool, ready for the next request
/// # Ok::<(), shmlink::Error>(())
/// ```
#[derive(Clone)]
pub struct SessionManager {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("path", &self.shared.path)
            .field("sessions", &self.shared.slots.len())
            .finish()
    }
}

impl SessionManager {
    /// Connects `manager.sessions` sessions to the server at `path`. Fails only if none can
    /// be made; the others are rebuilt in the background of later requests.
    pub fn new(
        path: impl AsRef<Path>,
        config: Config,
        manager: ManagerConfig,
    ) -> Result<Self, Error> {
        config.validate()?;
        if manager.sessions == 0 {
            return Err(Error::Config("ManagerConfig::sessions is zero".into()));
        }
        let now = Instant::now();
        let slots = (0..manager.sessions)
            .map(|_| {
                Mutex::new(Slot {
                    session: None,
                    idle: Vec::new(),
                    next_attempt: now,
                    backoff: manager.rebuild_backoff,
                    last_error: None,
                })
            })
            .collect();
        let this = Self {
            shared: Arc::new(Shared {
                path: path.as_ref().to_owned(),
                config,
                manager,
                slots,
                next: AtomicUsize::new(0),
                rebuilt: AtomicUsize::new(0),
            }),
        };
        let mut first_error = None;
        let mut any = false;
        for slot in &this.shared.slots {
            match this.ensure(&mut lock(slot)) {
                Ok(_) => any = true,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (any, first_error) {
            (false, Some(e)) => Err(e),
            _ => Ok(this),
        }
    }

    /// The process-wide manager (Go's `GlobalSessionManager`), made on first use from
    /// `init`; later calls return the same one and ignore `init`.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), shmlink::Error> {
    /// use shmlink::{Config, ManagerConfig, SessionManager};
    /// let manager = SessionManager::global(|| {
    ///     SessionManager::new("/tmp/svc.sock", Config::default(), ManagerConfig::default())
    /// })?;
    /// let stream = manager.get_stream()?;
    /// # Ok(()) }
    /// ```
    pub fn global(
        init: impl FnOnce() -> Result<SessionManager, Error>,
    ) -> Result<&'static SessionManager, Error> {
        static GLOBAL: OnceLock<SessionManager> = OnceLock::new();
        if let Some(m) = GLOBAL.get() {
            return Ok(m);
        }
        let made = init()?;
        Ok(GLOBAL.get_or_init(|| made))
    }

    /// A live session for `slot`, rebuilding a dead one when its back-off allows.
    fn ensure(&self, slot: &mut Slot) -> Result<Arc<Session>, Error> {
        if let Some(s) = &slot.session {
            if !s.is_closed() {
                return Ok(Arc::clone(s));
            }
            // Dead: its idle streams go with it.
            slot.idle.clear();
            slot.session = None;
            tracing::warn!(target: "shmlink::manager", path = %self.shared.path.display(), "session lost; rebuilding");
        }
        let now = Instant::now();
        if now < slot.next_attempt {
            return Err(Error::Unavailable(format!(
                "session being rebuilt (next attempt in {:?}; last error: {})",
                slot.next_attempt - now,
                slot.last_error.as_deref().unwrap_or("none")
            )));
        }
        match Session::connect(&self.shared.path, self.shared.config.clone()) {
            Ok(session) => {
                let session = Arc::new(session);
                slot.session = Some(Arc::clone(&session));
                slot.backoff = self.shared.manager.rebuild_backoff;
                slot.last_error = None;
                // SYNC: Relaxed; a counter.
                self.shared.rebuilt.fetch_add(1, Ordering::Relaxed);
                Ok(session)
            }
            Err(e) => {
                slot.next_attempt = now + slot.backoff;
                slot.backoff = (slot.backoff * 2).min(self.shared.manager.max_rebuild_backoff);
                slot.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// A stream from the next session (round-robin): an idle one from its pool if there is
    /// one young enough, else a new one. Sessions that are dead (being rebuilt) or unhealthy
    /// (circuit breaker open after a fallback) are skipped while others can serve; if none
    /// can, the error of the last one tried.
    pub fn get_stream(&self) -> Result<PooledStream, Error> {
        let n = self.shared.slots.len();
        // SYNC: Relaxed; only spreads the load.
        let start = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        // Two rounds: the first skips unhealthy sessions, the second takes them anyway.
        for round in 0..2 {
            for k in 0..n {
                let index = (start + k) % n;
                let mut slot = lock(&self.shared.slots[index]);
                let session = match self.ensure(&mut slot) {
                    Ok(s) => s,
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                };
                if round == 0 && !session.is_healthy() {
                    last = Some(Error::Unhealthy);
                    continue;
                }
                let idle_time = self.shared.manager.stream_idle_time;
                while let Some((stream, since)) = slot.idle.pop() {
                    if since.elapsed() <= idle_time {
                        return Ok(PooledStream {
                            stream: Some(stream),
                            index,
                            shared: Arc::clone(&self.shared),
                        });
                    }
                    // Too old: dropped (closed).
                }
                drop(slot);
                match session.open_stream() {
                    Ok(stream) => {
                        return Ok(PooledStream {
                            stream: Some(stream),
                            index,
                            shared: Arc::clone(&self.shared),
                        });
                    }
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(last.unwrap_or(Error::ClosedLocally))
    }

    /// Go's metrics summed over the live sessions.
    pub fn metrics(&self) -> Metrics {
        let mut total = Metrics::default();
        for slot in &self.shared.slots {
            if let Some(s) = &lock(slot).session {
                add(&mut total, &s.metrics());
            }
        }
        total
    }

    /// How many sessions are live now.
    pub fn live_sessions(&self) -> usize {
        self.shared
            .slots
            .iter()
            .filter(|s| lock(s).session.as_ref().is_some_and(|s| !s.is_closed()))
            .count()
    }

    /// Sessions made so far, first ones and rebuilds.
    pub fn sessions_made(&self) -> usize {
        // SYNC: Relaxed; a counter.
        self.shared.rebuilt.load(Ordering::Relaxed)
    }

    /// Closes every session (gracefully) and empties the pools.
    pub fn close(&self) {
        for slot in &self.shared.slots {
            let mut slot = lock(slot);
            slot.idle.clear();
            if let Some(s) = slot.session.take() {
                s.close();
            }
        }
    }
}

/// A stream borrowed from a [`SessionManager`]: dereferences to [`Stream`]; on drop it goes
/// back to its session's pool (deadlines reset), or is closed if it has unread data, is in
/// fallback, or the pool is full.
pub struct PooledStream {
    stream: Option<Stream>,
    index: usize,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PooledStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledStream")
            .field("stream", &self.stream)
            .finish()
    }
}

impl Deref for PooledStream {
    type Target = Stream;

    fn deref(&self) -> &Stream {
        self.stream.as_ref().expect("present until drop")
    }
}

impl DerefMut for PooledStream {
    fn deref_mut(&mut self) -> &mut Stream {
        self.stream.as_mut().expect("present until drop")
    }
}

impl PooledStream {
    /// Closes the stream instead of returning it to the pool.
    pub fn close(mut self) {
        if let Some(mut s) = self.stream.take() {
            s.close();
        }
    }
}

impl std::io::Read for PooledStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::io::Read::read(&mut **self, buf)
    }
}

impl std::io::Write for PooledStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::Write::write(&mut **self, buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for PooledStream {
    fn drop(&mut self) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        if stream.available() > 0 || stream.is_fallback() || stream.is_ended() {
            stream.close();
            return;
        }
        stream.set_read_timeout(None);
        stream.set_write_timeout(self.shared.config.write_timeout);
        let mut slot = lock(&self.shared.slots[self.index]);
        let same_session = slot
            .session
            .as_ref()
            .is_some_and(|s| !s.is_closed() && Arc::ptr_eq(&s.inner, stream.session_inner()));
        if same_session && slot.idle.len() < self.shared.manager.max_idle_streams {
            slot.idle.push((stream, Instant::now()));
        }
    }
}

/// `total += m`, field by field.
fn add(total: &mut Metrics, m: &Metrics) {
    total.receive_sync_event_count += m.receive_sync_event_count;
    total.send_sync_event_count += m.send_sync_event_count;
    total.out_flow_bytes += m.out_flow_bytes;
    total.in_flow_bytes += m.in_flow_bytes;
    total.send_queue_count += m.send_queue_count;
    total.receive_queue_count += m.receive_queue_count;
    total.alloc_shm_error_count += m.alloc_shm_error_count;
    total.fallback_write_count += m.fallback_write_count;
    total.fallback_read_count += m.fallback_read_count;
    total.event_conn_error_count += m.event_conn_error_count;
    total.queue_full_error_count += m.queue_full_error_count;
    total.active_stream_count += m.active_stream_count;
    total.hot_restart_success_count += m.hot_restart_success_count;
    total.hot_restart_error_count += m.hot_restart_error_count;
}
