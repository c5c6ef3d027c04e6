//! The client's session pool (Go's `SessionManager`, PROTOCOL.md 6.6): N sessions to one
//! server, streams handed out from per-session pools and returned on drop, dead sessions
//! rebuilt with back-off on a short-lived thread while requests go to the live ones.
//!
//! Go hands streams out round-robin per request, and so do the async pools (tasks share and
//! change executor threads, so per-thread spreading put 8 tasks on one session). The blocking
//! pool spreads threads round-robin over the sessions and each keeps its session: a thread's
//! requests then meet the same peer thread, whose adaptive spin is still warm, instead of a
//! sleeping one (one thread rotating over four sessions measured 5x slower per request).
//!
//! One pool serves every runtime: [`SessionManager`] (blocking) holds [`Stream`]s,
//! `AsyncSessionManager` (made by `shmlink::tokio::manager` or `shmlink::smol::manager`)
//! holds `AsyncStream`s. Only making a session differs, and that runs off the caller's task.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use shmlink_linux::socket::Conn;

use crate::driver::Inner;
use crate::rt::Runtime;
use crate::session::client_handshake;
use crate::{Config, Error, Metrics, Stream};

/// How a session manager sizes and keeps its pools (Go's defaults where it has them).
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Sessions to the server (default 1, as Go's `SessionNum`).
    pub sessions: usize,
    /// Idle streams kept per session (default 64); more are closed when returned.
    pub max_idle_streams: usize,
    /// A pooled stream idle for longer is closed instead of reused (default 30 s, as Go's
    /// `StreamMaxIdleTime`).
    pub stream_idle_time: Duration,
    /// The wait before the second attempt to rebuild a dead session (the first is
    /// immediate; default 50 ms); it doubles after each failed attempt, up to
    /// `max_rebuild_backoff`.
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

/// A stream type a pool can hold.
pub(crate) trait Pooled: Sized + Send + 'static {
    /// Spread requests over the sessions round-robin, one by one (async: tasks move between
    /// executor threads and many share one, so a thread's session would put every task of a
    /// thread on one session); otherwise each thread keeps its session.
    const PER_REQUEST: bool = false;

    fn open(inner: &Arc<Inner>) -> Result<Self, Error>;
    /// Whether it can serve another request: nothing unread, not in fallback, not ended.
    fn reusable(&self) -> bool;
    /// Deadlines back to the session's defaults.
    fn reset(&mut self);
    fn session(&self) -> &Arc<Inner>;
    fn close(&mut self);
}

impl Pooled for Stream {
    fn open(inner: &Arc<Inner>) -> Result<Self, Error> {
        Ok(Stream::new(Arc::clone(inner), inner.open_stream()?))
    }

    fn reusable(&self) -> bool {
        self.available() == 0 && !self.is_fallback() && !self.is_ended()
    }

    fn reset(&mut self) {
        self.set_read_timeout(None);
        self.set_write_timeout(self.session_inner().settings.write_timeout);
    }

    fn session(&self) -> &Arc<Inner> {
        self.session_inner()
    }

    fn close(&mut self) {
        Stream::close(self);
    }
}

/// Makes one session (handshake and start); runs on the constructor's or a rebuild thread.
type Connector = dyn Fn(&Path, &Config) -> Result<Arc<Inner>, Error> + Send + Sync;

/// How often a pool looks at an idle session's socket for its peer's exit (a system call):
/// a dead session is skipped from then on; a request that meets it earlier fails clearly.
const LIVENESS_EVERY: Duration = Duration::from_millis(1);

/// One session of the pool and its idle streams.
struct Slot<S> {
    session: Option<Arc<Inner>>,
    /// When `live` last read the session's socket.
    looked_at: Instant,
    idle: Vec<(S, Instant)>,
    /// A rebuild thread owns this slot's reconnection.
    rebuilding: bool,
    /// Why the last attempt to (re)build this session failed.
    last_error: Option<String>,
}

pub(crate) struct Pool<S> {
    /// Unique in the process: keys each thread's preferred session.
    id: u64,
    path: PathBuf,
    config: Config,
    manager: ManagerConfig,
    slots: Vec<Mutex<Slot<S>>>,
    next: AtomicUsize,
    made: AtomicUsize,
    closed: AtomicBool,
    connect: Box<Connector>,
    /// The last look over every session (threads keep to their own session, so a dead one
    /// that no thread uses is found here and its rebuild started).
    swept: Mutex<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a pool makes sessions for `runtime`. Tokio's needs the runtime's handle, taken here
/// (on a task of that runtime), since rebuilds run on threads of their own.
pub(crate) fn connector(runtime: Runtime) -> Result<Box<Connector>, Error> {
    #[cfg(feature = "tokio")]
    if runtime == Runtime::Tokio {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| Error::Config(format!("the tokio manager needs a tokio runtime: {e}")))?;
        return Ok(Box::new(move |path, config| {
            let hs = client_handshake(Conn::connect_unix(path)?, config.clone())?;
            let _entered = handle.enter();
            hs.start(Runtime::Tokio)
        }));
    }
    Ok(Box::new(move |path, config| {
        client_handshake(Conn::connect_unix(path)?, config.clone())?.start(runtime)
    }))
}

impl<S: Pooled> Pool<S> {
    /// A pool with every session connected that can be (on this thread); the others are
    /// rebuilt in the background. Fails only if none could be made.
    pub(crate) fn start(
        path: &Path,
        config: Config,
        manager: ManagerConfig,
        connect: Box<Connector>,
    ) -> Result<Arc<Self>, Error> {
        config.validate()?;
        if manager.sessions == 0 {
            return Err(Error::Config("ManagerConfig::sessions is zero".into()));
        }
        let slots = (0..manager.sessions)
            .map(|_| {
                Mutex::new(Slot {
                    session: None,
                    looked_at: Instant::now(),
                    idle: Vec::new(),
                    rebuilding: false,
                    last_error: None,
                })
            })
            .collect();
        static NEXT_POOL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let pool = Arc::new(Self {
            // SYNC: Relaxed; only uniqueness matters.
            id: NEXT_POOL.fetch_add(1, Ordering::Relaxed),
            path: path.to_owned(),
            config,
            manager,
            slots,
            next: AtomicUsize::new(0),
            made: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            connect,
            swept: Mutex::new(Instant::now()),
        });
        let mut first_error = None;
        for index in 0..pool.slots.len() {
            match (pool.connect)(&pool.path, &pool.config) {
                Ok(inner) => pool.install(index, inner),
                Err(e) => {
                    let mut slot = lock(&pool.slots[index]);
                    slot.last_error = Some(e.to_string());
                    first_error.get_or_insert(e);
                }
            }
        }
        // SYNC: Relaxed; a counter, written by this thread only so far.
        let made = pool.made.load(Ordering::Relaxed);
        match first_error {
            Some(e) if made == 0 => Err(e),
            _ => {
                for (index, slot) in pool.slots.iter().enumerate() {
                    let mut slot = lock(slot);
                    if slot.session.is_none() {
                        pool.rebuild(index, &mut slot);
                    }
                }
                Ok(pool)
            }
        }
    }

    fn install(&self, index: usize, inner: Arc<Inner>) {
        let mut slot = lock(&self.slots[index]);
        // `close` sets the flag before it empties the slots: seen here under the slot's lock,
        // a closing pool never keeps a session made meanwhile.
        if self.is_closed() {
            drop(slot);
            inner.close_gracefully();
            return;
        }
        tracing::info!(target: "shmlink::manager", path = %self.path.display(), slot = index, session = inner.id, "session ready");
        slot.session = Some(inner);
        slot.last_error = None;
        // SYNC: Relaxed; a counter.
        self.made.fetch_add(1, Ordering::Relaxed);
    }

    fn is_closed(&self) -> bool {
        // SYNC: Acquire; pairs with the Release store in close.
        self.closed.load(Ordering::Acquire)
    }

    /// The slot's session if it is live; a dead one is dropped (with its idle streams) and
    /// its rebuild started.
    fn live(self: &Arc<Self>, index: usize, slot: &mut Slot<S>, look: bool) -> Option<Arc<Inner>> {
        if let Some(s) = &slot.session {
            let now = Instant::now();
            if look || now.duration_since(slot.looked_at) >= LIVENESS_EVERY {
                slot.looked_at = now;
                s.pump_now();
            }
            if !s.is_closed() {
                return Some(Arc::clone(s));
            }
            tracing::warn!(target: "shmlink::manager", path = %self.path.display(), slot = index, session = s.id, "session lost; rebuilding");
            slot.last_error = s.close_error().to_string().into();
            slot.idle.clear();
            slot.session = None;
        }
        self.rebuild(index, slot);
        None
    }

    /// Starts a thread that reconnects `index` with back-off, unless one runs.
    fn rebuild(self: &Arc<Self>, index: usize, slot: &mut Slot<S>) {
        if slot.rebuilding || self.is_closed() {
            return;
        }
        slot.rebuilding = true;
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("shmlink-rebuild".into())
            .spawn(move || Self::rebuild_loop(&weak, index));
        if let Err(e) = spawned {
            slot.rebuilding = false;
            slot.last_error = Some(format!("cannot start a rebuild thread: {e}"));
        }
    }

    fn rebuild_loop(weak: &Weak<Self>, index: usize) {
        let mut backoff = None::<Duration>;
        loop {
            if let Some(wait) = backoff {
                // Sleeps in short steps so that a dropped or closed manager ends the thread.
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    match weak.upgrade() {
                        Some(pool) if !pool.is_closed() => {}
                        _ => return,
                    }
                    std::thread::sleep(wait.min(Duration::from_millis(20)));
                }
            }
            let Some(pool) = weak.upgrade() else { return };
            if pool.is_closed() {
                lock(&pool.slots[index]).rebuilding = false;
                return;
            }
            match (pool.connect)(&pool.path, &pool.config) {
                Ok(inner) => {
                    pool.install(index, inner);
                    lock(&pool.slots[index]).rebuilding = false;
                    return;
                }
                Err(e) => {
                    tracing::warn!(target: "shmlink::manager", path = %pool.path.display(), slot = index, error = %e, "rebuild failed");
                    lock(&pool.slots[index]).last_error = Some(e.to_string());
                    let m = &pool.manager;
                    backoff = Some(match backoff {
                        None => m.rebuild_backoff,
                        Some(b) => (b * 2).min(m.max_rebuild_backoff),
                    });
                }
            }
        }
    }

    /// A stream from this thread's session, idle or new; sessions that are dead or unhealthy
    /// are skipped (to the next ones) while others can serve.
    pub(crate) fn get(self: &Arc<Self>) -> Result<(usize, S), Error> {
        if self.is_closed() {
            return Err(Error::ClosedLocally);
        }
        self.sweep();
        let n = self.slots.len();
        let start = if S::PER_REQUEST {
            // SYNC: Relaxed; only spreads the load.
            self.next.fetch_add(1, Ordering::Relaxed) % n
        } else {
            self.preferred_slot()
        };
        let mut last = None;
        // Two rounds: the first skips unhealthy sessions, the second takes them anyway.
        for round in 0..2 {
            for k in 0..n {
                let index = (start + k) % n;
                let mut slot = lock(&self.slots[index]);
                let Some(session) = self.live(index, &mut slot, false) else {
                    last = Some(Error::Unavailable(format!(
                        "session {index} is being rebuilt (last error: {})",
                        slot.last_error.as_deref().unwrap_or("none")
                    )));
                    continue;
                };
                if round == 0 && !session.is_healthy() {
                    last = Some(Error::Unhealthy {
                        retry_in: session.unhealthy_for(),
                    });
                    continue;
                }
                let idle_time = self.manager.stream_idle_time;
                while let Some((stream, since)) = slot.idle.pop() {
                    if since.elapsed() <= idle_time && stream.reusable() {
                        return Ok((index, stream));
                    }
                    // Too old, or the peer closed it meanwhile: dropped (closed).
                }
                drop(slot);
                match S::open(&session) {
                    Ok(stream) => return Ok((index, stream)),
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(last.unwrap_or(Error::ClosedLocally))
    }

    /// Every `LIVENESS_EVERY`, one caller looks at every session (dead ones start their
    /// rebuild); the others do not wait for it.
    fn sweep(self: &Arc<Self>) {
        let Ok(mut swept) = self.swept.try_lock() else {
            return;
        };
        let now = Instant::now();
        if now.duration_since(*swept) < LIVENESS_EVERY {
            return;
        }
        *swept = now;
        drop(swept);
        for (index, slot) in self.slots.iter().enumerate() {
            if let Ok(mut slot) = slot.try_lock() {
                let _ = self.live(index, &mut slot, false);
            }
        }
    }

    /// This thread's session: threads are spread over the sessions round-robin on first use
    /// and then keep theirs (while it serves; `get` moves on past a dead or unhealthy one).
    /// A thread that sends one request after another so meets the same peer thread every
    /// time, which keeps both sides' adaptive spinning warm; rotating a lone thread over the
    /// sessions made every request wait for a sleeping peer.
    fn preferred_slot(&self) -> usize {
        thread_local! {
            static PREFERRED: std::cell::RefCell<Vec<(u64, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        PREFERRED.with(|p| {
            let mut p = p.borrow_mut();
            if let Some(&(_, index)) = p.iter().find(|(id, _)| *id == self.id) {
                return index;
            }
            // SYNC: Relaxed; only spreads the load.
            let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
            if p.len() >= 64 {
                p.remove(0); // a thread that used many pools: forget the oldest
            }
            p.push((self.id, index));
            index
        })
    }

    /// Takes a stream back: into its session's pool, or closed.
    fn put(&self, index: usize, mut stream: S) {
        if !stream.reusable() || self.is_closed() {
            stream.close();
            return;
        }
        stream.reset();
        let mut slot = lock(&self.slots[index]);
        let same_session = slot
            .session
            .as_ref()
            .is_some_and(|s| !s.is_closed() && Arc::ptr_eq(s, stream.session()));
        if same_session && slot.idle.len() < self.manager.max_idle_streams {
            slot.idle.push((stream, Instant::now()));
        } else {
            drop(slot);
            stream.close();
        }
    }

    fn metrics(&self) -> Metrics {
        let mut total = Metrics::default();
        for slot in &self.slots {
            if let Some(s) = &lock(slot).session {
                total.add(&s.metrics());
            }
        }
        total
    }

    fn live_sessions(self: &Arc<Self>) -> usize {
        (0..self.slots.len())
            .filter(|&index| {
                self.live(index, &mut lock(&self.slots[index]), true)
                    .is_some()
            })
            .count()
    }

    fn sessions_made(&self) -> usize {
        // SYNC: Relaxed; a counter.
        self.made.load(Ordering::Relaxed)
    }

    /// Stops handing out streams and rebuilding; closes every session gracefully.
    fn close(&self) {
        // SYNC: Release; pairs with the Acquire load in is_closed.
        self.closed.store(true, Ordering::Release);
        for slot in &self.slots {
            let (session, idle) = {
                let mut slot = lock(slot);
                (slot.session.take(), std::mem::take(&mut slot.idle))
            };
            drop(idle); // closes them, queued before the session's close
            if let Some(s) = session {
                s.close_gracefully();
            }
        }
    }
}

impl<S> Drop for Pool<S> {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            let slot = slot.get_mut().unwrap_or_else(|e| e.into_inner());
            slot.idle.clear();
            if let Some(s) = slot.session.take() {
                s.close_gracefully();
            }
        }
    }
}

/// A borrowed stream and where it goes back to.
struct Lease<S: Pooled> {
    stream: Option<S>,
    index: usize,
    pool: Arc<Pool<S>>,
}

impl<S: Pooled> Lease<S> {
    fn get(&self) -> &S {
        self.stream.as_ref().expect("present until drop")
    }

    fn get_mut(&mut self) -> &mut S {
        self.stream.as_mut().expect("present until drop")
    }

    fn close(mut self) {
        if let Some(mut s) = self.stream.take() {
            s.close();
        }
    }
}

impl<S: Pooled> Drop for Lease<S> {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            self.pool.put(self.index, stream);
        }
    }
}

/// The methods both managers share.
macro_rules! manager_common {
    ($ty:ty) => {
        impl $ty {
            /// Go's metrics summed over the live sessions; readable at any time.
            pub fn metrics(&self) -> Metrics {
                self.pool.metrics()
            }

            /// How many sessions are live now.
            pub fn live_sessions(&self) -> usize {
                self.pool.live_sessions()
            }

            /// Sessions made so far, first ones and rebuilds.
            pub fn sessions_made(&self) -> usize {
                self.pool.sessions_made()
            }

            /// Stops handing out streams (they fail with [`Error::ClosedLocally`]), stops
            /// rebuilding, and closes every session gracefully: the server takes what was
            /// queued for it before the socket closes. Streams still borrowed see the end.
            pub fn close(&self) {
                self.pool.close();
            }
        }

        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("path", &self.pool.path)
                    .field("sessions", &self.pool.slots.len())
                    .finish()
            }
        }
    };
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
/// let mut stream = manager.get_stream()?; // this thread's session of the 4
/// stream.write_all(b"request")?;
/// let mut reply = [0u8; 5];
/// stream.read_exact(&mut reply)?;
/// drop(stream); // back to its session's pool, ready for the next request
/// # Ok::<(), shmlink::Error>(())
/// ```
#[derive(Clone)]
pub struct SessionManager {
    pool: Arc<Pool<Stream>>,
}

manager_common!(SessionManager);

impl SessionManager {
    /// Connects `manager.sessions` sessions to the server at `path`. Fails only if none can
    /// be made; the others are rebuilt in the background.
    pub fn new(
        path: impl AsRef<Path>,
        config: Config,
        manager: ManagerConfig,
    ) -> Result<Self, Error> {
        Ok(Self {
            pool: Pool::start(
                path.as_ref(),
                config,
                manager,
                connector(Runtime::Blocking)?,
            )?,
        })
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

    /// A stream from this thread's session (threads are spread over the sessions
    /// round-robin): an idle one from its pool if there is one young enough, else a new one.
    /// Never waits for a connection: sessions that are dead (being rebuilt) or unhealthy
    /// (circuit breaker open after a fallback) are skipped while others can serve; if none
    /// can, [`Error::Unavailable`] says why.
    pub fn get_stream(&self) -> Result<PooledStream, Error> {
        let (index, stream) = self.pool.get()?;
        Ok(PooledStream(Lease {
            stream: Some(stream),
            index,
            pool: Arc::clone(&self.pool),
        }))
    }
}

/// A stream borrowed from a [`SessionManager`]: dereferences to [`Stream`]; on drop it goes
/// back to its session's pool (deadlines reset), or is closed if it has unread data, is in
/// fallback, was closed by either side, or the pool is full.
pub struct PooledStream(Lease<Stream>);

impl std::fmt::Debug for PooledStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PooledStream").field(self.0.get()).finish()
    }
}

impl Deref for PooledStream {
    type Target = Stream;

    fn deref(&self) -> &Stream {
        self.0.get()
    }
}

impl DerefMut for PooledStream {
    fn deref_mut(&mut self) -> &mut Stream {
        self.0.get_mut()
    }
}

impl PooledStream {
    /// Closes the stream instead of returning it to the pool.
    pub fn close(self) {
        self.0.close();
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

#[cfg(any(feature = "tokio", feature = "smol"))]
pub use async_manager::{AsyncPooledStream, AsyncSessionManager};

#[cfg(any(feature = "tokio", feature = "smol"))]
mod async_manager {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::AsyncStream;

    impl Pooled for AsyncStream {
        const PER_REQUEST: bool = true;

        fn open(inner: &Arc<Inner>) -> Result<Self, Error> {
            AsyncStream::open(inner)
        }

        fn reusable(&self) -> bool {
            self.available() == 0 && !self.is_fallback() && !self.is_ended()
        }

        fn reset(&mut self) {
            AsyncStream::reset(self);
        }

        fn session(&self) -> &Arc<Inner> {
            self.session_inner()
        }

        fn close(&mut self) {
            AsyncStream::close(self);
        }
    }

    /// A pool of sessions to one server for tokio or smol: made by
    /// `shmlink::tokio::manager` or `shmlink::smol::manager`; otherwise as
    /// [`SessionManager`]. Sessions are made (and rebuilt) on short-lived threads, never on
    /// an executor thread; [`get_stream`](Self::get_stream) never waits.
    ///
    /// ```no_run
    /// # #[cfg(feature = "tokio")]
    /// # async fn demo() -> Result<(), shmlink::Error> {
    /// use shmlink::{Config, ManagerConfig};
    ///
    /// let manager = shmlink::tokio::manager(
    ///     "/tmp/svc.sock",
    ///     Config::default(),
    ///     ManagerConfig { sessions: 4, ..ManagerConfig::default() },
    /// )
    /// .await?;
    /// let mut stream = manager.get_stream()?;
    /// stream.send(b"request").await?;
    /// let reply = stream.read_bytes(5).await?;
    /// drop(stream); // back to its session's pool
    /// # Ok(()) }
    /// ```
    #[derive(Clone)]
    pub struct AsyncSessionManager {
        pub(super) pool: Arc<Pool<AsyncStream>>,
    }

    manager_common!(AsyncSessionManager);

    impl AsyncSessionManager {
        /// Connects on a short-lived thread (the handshakes block) and waits for it there.
        pub(crate) async fn start(
            path: &Path,
            config: Config,
            manager: ManagerConfig,
            connect: Box<Connector>,
        ) -> Result<Self, Error> {
            let path = path.to_owned();
            let pool = crate::rt::off_thread("shmlink-connect", move || {
                Pool::start(&path, config, manager, connect)
            })
            .await
            .map_err(Error::Io)??;
            Ok(Self { pool })
        }

        /// A stream from the next session round-robin (requests, and so tasks, spread over
        /// the sessions), otherwise as [`SessionManager::get_stream`]; never waits.
        pub fn get_stream(&self) -> Result<AsyncPooledStream, Error> {
            let (index, stream) = self.pool.get()?;
            Ok(AsyncPooledStream(Lease {
                stream: Some(stream),
                index,
                pool: Arc::clone(&self.pool),
            }))
        }
    }

    /// A stream borrowed from an [`AsyncSessionManager`]: dereferences to [`AsyncStream`]
    /// and implements the same `AsyncRead`/`AsyncWrite`; on drop it goes back to its
    /// session's pool (deadlines reset), or is closed if it has unread data, is in fallback,
    /// was closed by either side (`poll_shutdown` closes it), or the pool is full.
    pub struct AsyncPooledStream(Lease<AsyncStream>);

    impl std::fmt::Debug for AsyncPooledStream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_tuple("AsyncPooledStream")
                .field(self.0.get())
                .finish()
        }
    }

    impl Deref for AsyncPooledStream {
        type Target = AsyncStream;

        fn deref(&self) -> &AsyncStream {
            self.0.get()
        }
    }

    impl DerefMut for AsyncPooledStream {
        fn deref_mut(&mut self) -> &mut AsyncStream {
            self.0.get_mut()
        }
    }

    impl AsyncPooledStream {
        /// Closes the stream instead of returning it to the pool.
        pub fn close(self) {
            self.0.close();
        }

        fn pinned(self: Pin<&mut Self>) -> Pin<&mut AsyncStream> {
            Pin::new(self.get_mut().0.get_mut())
        }
    }

    #[cfg(feature = "tokio")]
    impl tokio::io::AsyncRead for AsyncPooledStream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.pinned().poll_read(cx, buf)
        }
    }

    #[cfg(feature = "tokio")]
    impl tokio::io::AsyncWrite for AsyncPooledStream {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.pinned().poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.pinned().poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.pinned().poll_shutdown(cx)
        }
    }

    #[cfg(feature = "futures-io")]
    impl futures_io::AsyncRead for AsyncPooledStream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            self.pinned().poll_read(cx, buf)
        }
    }

    #[cfg(feature = "futures-io")]
    impl futures_io::AsyncWrite for AsyncPooledStream {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.pinned().poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.pinned().poll_flush(cx)
        }

        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            self.pinned().poll_close(cx)
        }
    }
}
