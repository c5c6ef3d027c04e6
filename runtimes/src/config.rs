//! Session configuration, with shmipc-go's defaults (PROTOCOL.md 7).

use std::time::Duration;

use shmlink_core::buffer::{self, DEFAULT_SIZE_CLASSES, SizeClass};
use shmlink_core::queue;

use crate::Error;

pub use shmlink_core::handshake::MemMode;

/// shmlink's default size classes (slice size, percent of the buffer region). Go's defaults
/// ([`GO_SIZE_CLASSES`]: 8 / 32 / 128 KiB) give a 64 B message an 8 KiB slice, so the default
/// 32 MiB region holds only about 2,000 small messages in flight and a burst falls back to the
/// socket. These put 256 B (about 6,500 of them) and 2 KiB slices (about 3,300) first and keep
/// Go's three classes for larger messages. Sizes are 20 bytes short of a round number: the
/// slice header (PROTOCOL.md 4.2).
pub const SIZE_CLASSES: [SizeClass; 5] = [
    SizeClass {
        size: 236,
        percent: 5,
    },
    SizeClass {
        size: 2028,
        percent: 20,
    },
    SizeClass {
        size: 8172,
        percent: 35,
    },
    SizeClass {
        size: 32748,
        percent: 25,
    },
    SizeClass {
        size: 131_052,
        percent: 15,
    },
];

/// shmipc-go's default size classes (8 / 32 / 128 KiB at 50 / 30 / 20 %), for a region laid
/// out exactly as Go's default one.
pub const GO_SIZE_CLASSES: [SizeClass; 3] = DEFAULT_SIZE_CLASSES;

/// What a write does when shared memory (or the IO queue) cannot take it now.
///
/// The default is [`Fallback`](Exhaustion::Fallback), Go's behaviour, so that a Go peer and
/// a shmlink peer behave alike and a slow reader never blocks a writer; services that would
/// rather wait than move a stream to the socket (and open the circuit breaker) choose
/// [`Wait`](Exhaustion::Wait).
///
/// ```
/// use std::time::Duration;
/// use shmlink::{Config, Exhaustion};
/// // Never move a stream to the socket; wait up to 2 s for the reader to free memory.
/// let config = Config {
///     on_exhaustion: Exhaustion::Wait,
///     write_timeout: Duration::from_secs(2),
///     ..Config::default()
/// };
/// # let _ = config;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Exhaustion {
    /// Send the bytes in a FallbackData frame on the socket (Go): the stream stays on the
    /// socket from then on, so bytes never overtake each other, and the circuit breaker
    /// opens. Unlike Go, a reservation first waits up to 20 ms for the reader to give memory
    /// back (a burst stays in shared memory), and a write larger than all shared memory,
    /// which could never fit, does not open the breaker. A full queue is retried for about
    /// 100 ms, then [`Error::QueueFull`].
    #[default]
    Fallback,
    /// Wait for the peer to give memory (or queue room) back, up to the stream's write
    /// timeout, then [`Error::Timeout`]. A write larger than all of shared memory can never
    /// fit and fails at once with [`Error::SharedMemoryExhausted`].
    Wait,
    /// Fail at once with [`Error::SharedMemoryExhausted`]; nothing is sent.
    Error,
}

/// How a reader waits for the peer (DESIGN.md, "Sync modes"). Every mode speaks the same wire
/// protocol: the receive queue's working flag means what it means in Go (1: the consumer is
/// awake and will look at the queue, so the producer sends no Polling frame).
///
/// The default is [`Adaptive`](SyncMode::Adaptive): measured with the ping-pong harness on a
/// 2-CPU machine it removes the wake-up syscalls of a round trip whose answer comes within the
/// spin window, which is most of the round-trip time in `Event` mode, and it stops spinning
/// after a few windows without an answer, so an idle or slow peer costs almost nothing
/// (BENCHMARKS.md has the numbers per mode and runtime).
///
/// ```
/// use shmlink::{Config, SyncMode};
/// // Go's behaviour, for a service that must not spend CPU waiting:
/// let config = Config { sync: SyncMode::Event, ..Config::default() };
/// # let _ = config;
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// Go's behaviour: after draining the queue the reader lowers the flag and sleeps; the
    /// peer sends a Polling frame on its next push (one socket write and one read per idle
    /// period).
    Event,
    /// After draining, the reader keeps the flag up and looks at the queue again for up to
    /// [`Config::spin_window`] before sleeping, re-polling by yielding (other tasks on its
    /// executor thread run in between). One reader per session spins at a time; after three
    /// windows in a row that ended without data it stops spinning, probing with a window four
    /// times as long every 16 waits (long enough to cover a sleeping peer's wake-up, so two
    /// peers that both backed off find each other again); a process that can run on only one
    /// CPU never spins.
    #[default]
    Adaptive,
    /// A reader spins (yielding between looks) for as long as it waits: the lowest latency,
    /// one busy CPU per waiting session. Falls back to `Event` on a single CPU.
    Poll,
}

/// How a client creates and shares its memory. The server follows whatever the client does.
#[derive(Clone, Debug)]
pub struct Config {
    /// memfd (default, needs a unix socket) or files under `path_prefix`'s directory.
    pub mem_mode: MemMode,
    /// Elements per IO queue (default 8192). Must be a multiple of 16 (PROTOCOL.md 3.6).
    pub queue_cap: u32,
    /// Bytes of the buffer region (default 32 MiB, at least 1 MiB).
    pub buffer_capacity: usize,
    /// Slice sizes and their share of the buffer region (default [`SIZE_CLASSES`]: 256 B and
    /// 2 KiB slices before Go's 8 / 32 / 128 KiB ones, so a burst of small messages stays in
    /// shared memory). The creator of the region (the client) decides; every peer, shmipc-go
    /// and CloudWeGo's `shmipc` included, reads the classes from the region's header.
    pub size_classes: Vec<SizeClass>,
    /// Prefix of region names; the client adds its pid and a random part. In file mode the
    /// prefix is a path (default `/dev/shm/shmlink`): a missing directory in it is created
    /// (with the process's umask) and left in place when the session closes, only the region
    /// files are removed. The server maps files only from its `shm_dirs`, so a prefix outside
    /// them is refused by the server.
    pub path_prefix: String,
    /// Bound on the whole handshake (default 1 s).
    pub initialize_timeout: Duration,
    /// Bound on a socket write (fallback data, close frames; default 10 s).
    pub connection_write_timeout: Duration,
    /// How long a session stays unhealthy after a fallback (default 30 s; zero disables).
    pub circuit_breaker: Duration,
    /// In file mode, negotiate V3 instead of sending Go's V2 opening.
    pub file_mode_v3: bool,
    /// The largest frame accepted from the peer or sent to it, header included (default
    /// 256 MiB). Only fallback data is large: a write that falls back to the socket travels
    /// as one frame, so this also bounds a single write. A longer frame from the peer closes
    /// the session with an error naming this setting.
    pub max_frame_len: u32,
    /// What a write does when shared memory is exhausted (default: fall back, as Go).
    pub on_exhaustion: Exhaustion,
    /// The default write timeout of a stream (default 10 s): how long
    /// [`Exhaustion::Wait`] waits for memory or queue room. A stream can set its own.
    pub write_timeout: Duration,
    /// Directories a client may name for file-mode regions (default `/dev/shm`). The server
    /// maps an announced path only if it resolves inside one of them, is a regular file and
    /// is owned by the connecting process's uid; anything else ends that handshake with an
    /// error naming the path and this setting.
    pub shm_dirs: Vec<std::path::PathBuf>,
    /// File mode of a [`Listener`](crate::Listener)'s unix socket (default `0o600`: only this
    /// user may connect). A stale socket file left by a dead listener is replaced; a live one
    /// makes `bind` fail.
    pub socket_mode: u32,
    /// Accept only shared memory that cannot shrink under us (default false, since
    /// shmipc-go never seals its memfds). A peer that truncates an unsealed region while we
    /// have it mapped makes our next access to it raise SIGBUS, which kills this process;
    /// with this set, a server refuses a client whose memfds are not sealed against shrinking
    /// (shmlink's are) and refuses file mode, whose files cannot be sealed. See SECURITY.md.
    pub require_sealed_memory: bool,
    /// Talk only to processes of this user (default true): a unix-socket peer whose uid
    /// (`SO_PEERCRED`) differs from this process's effective uid is refused, on both sides
    /// of the handshake, with an error naming both uids and this setting. TCP peers have no
    /// uid and are not checked.
    pub same_user_only: bool,
    /// How long closing a session waits for the peer to take what is still queued for it
    /// (stream closes, data) before the socket closes (default 1 s). Without this wait a
    /// stream close queued just before the session close could be overtaken by the end of the
    /// connection, and the peer would see "session closed" where "end of stream" was meant.
    pub shutdown_timeout: Duration,
    /// How readers wait for the peer (default [`SyncMode::Adaptive`]). Either side may choose
    /// its own mode; the wire protocol is the same.
    pub sync: SyncMode,
    /// How long an [`Adaptive`](SyncMode::Adaptive) reader looks at the queue before it
    /// sleeps (default 50 us: above a same-host peer's turnaround for small messages, below
    /// the cost of the two wake-ups it saves).
    pub spin_window: Duration,
    /// Receives every session's metrics each `monitor_interval` and when it closes (Go's
    /// `Monitor`; see [`Monitor`](crate::Monitor)). Default none.
    pub monitor: Option<std::sync::Arc<dyn crate::Monitor>>,
    /// How often the monitor hears from each session (default 30 s, as Go).
    pub monitor_interval: Duration,
    /// Closes the session when the peer has taken nothing we sent it for this long
    /// (default none: never). A peer that hangs without dying (its process stopped, its
    /// event loop stuck) keeps the socket open, so no error ever comes by itself; with this
    /// set, a session whose queue or socket holds something for the peer that it has not
    /// touched for `peer_stall_timeout` closes with [`Error::ConnectionLost`](crate::Error)
    /// naming the silence, and every pending read and write fails with it.
    ///
    /// An idle peer is not a stalled one: shmipc has no heartbeat frame (Go answers none),
    /// so a session with nothing outstanding is never closed by this check. A live peer takes
    /// what we queue even while its application reads nothing: shmipc-go and CloudWeGo's
    /// crate in a background task, shmlink every [`idle_drain_interval`](Self::idle_drain_interval)
    /// (a shmlink peer that turned that off takes nothing while its application is idle, and
    /// looks stalled). Keep the timeout well above the peer's longest pause (GC, CPU
    /// throttling) and its drain interval: seconds, not milliseconds. Checked every quarter
    /// of the timeout (at most every 250 ms) by the process-wide `shmlink-monitor` thread.
    pub peer_stall_timeout: Option<Duration>,
    /// How often a session that nothing waits on takes in what the peer sent (default
    /// 20 ms, at least 1 ms; `None`: never). Readers and acceptors take the peer's messages
    /// themselves, so a session whose application is busy elsewhere would otherwise leave
    /// them where the peer put them: replies to streams already closed would hold shared memory, data and
    /// new streams would wait in the queue, and the peer would see its messages untaken
    /// (its `peer_stall_timeout` may then close the session). With this set, the
    /// process-wide `shmlink-monitor` thread looks at every idle session this often (one
    /// `poll(2)` for all of them) and drains those with something waiting: data goes to its
    /// stream's buffer, memory of closed streams goes back to the free lists. A session with
    /// a reader or acceptor waiting is left to it. The thread holds a session only for the
    /// moment of a look, so a dropped session may be released a moment later, on that thread.
    pub idle_drain_interval: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mem_mode: MemMode::Memfd,
            queue_cap: 8192,
            buffer_capacity: 32 << 20,
            size_classes: SIZE_CLASSES.to_vec(),
            path_prefix: "/dev/shm/shmlink".to_owned(),
            initialize_timeout: Duration::from_secs(1),
            connection_write_timeout: Duration::from_secs(10),
            circuit_breaker: Duration::from_secs(30),
            file_mode_v3: false,
            max_frame_len: shmlink_core::frame::MAX_FRAME_LEN,
            shm_dirs: vec!["/dev/shm".into()],
            on_exhaustion: Exhaustion::Fallback,
            write_timeout: Duration::from_secs(10),
            sync: SyncMode::Adaptive,
            spin_window: Duration::from_micros(50),
            shutdown_timeout: Duration::from_secs(1),
            socket_mode: 0o600,
            require_sealed_memory: false,
            same_user_only: true,
            monitor: None,
            monitor_interval: Duration::from_secs(30),
            peer_stall_timeout: None,
            idle_drain_interval: Some(Duration::from_millis(20)),
        }
    }
}

impl Config {
    /// Checks the configuration, naming the first problem.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.queue_cap == 0
            || self.queue_cap % 16 != 0
            || !queue::capacity_is_safe(self.queue_cap)
        {
            return bad(format!(
                "queue_cap {} must be a non-zero multiple of 16",
                self.queue_cap
            ));
        }
        if self.buffer_capacity < 1 << 20 {
            return bad(format!(
                "buffer_capacity {} is below the 1 MiB minimum",
                self.buffer_capacity
            ));
        }
        if let Err(e) = buffer::plan(self.buffer_capacity as u64, &self.size_classes) {
            return bad(format!("size_classes: {e}"));
        }
        if self.path_prefix.is_empty() {
            return bad("path_prefix is empty".to_owned());
        }
        if self.monitor.is_some() && self.monitor_interval.is_zero() {
            return bad("monitor_interval is zero".to_owned());
        }
        if self.initialize_timeout.is_zero() {
            return bad("initialize_timeout is zero".to_owned());
        }
        if self.peer_stall_timeout.is_some_and(|t| t.is_zero()) {
            return bad("peer_stall_timeout is zero (use None to turn the check off)".to_owned());
        }
        if self
            .idle_drain_interval
            .is_some_and(|t| t < Duration::from_millis(1))
        {
            return bad(format!(
                "idle_drain_interval {:?} is below 1 ms (use None to turn draining off)",
                self.idle_drain_interval.unwrap_or_default()
            ));
        }
        if self.max_frame_len < 4096 {
            return bad(format!(
                "max_frame_len {} is below the 4 KiB minimum",
                self.max_frame_len
            ));
        }
        Ok(())
    }
}
