//! Every transport the harness compares, each as a client (in the harness process) and a peer
//! (a process the harness starts). The workload is the same everywhere: the client writes every
//! byte of an N-byte request, the peer reads every byte (a checksum) and writes every byte of an
//! N-byte reply derived from it, and the client reads and checks every reply byte. Pipelined
//! runs send many messages and get one acknowledgement carrying the checksum of all of them.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::slot::{Slots, Wait};

/// shmlink's runtimes, each measured through its own API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rt {
    /// The blocking API.
    Blocking,
    /// The async API on tokio (a current-thread runtime in the harness, one per peer).
    Tokio,
    /// The async API through async-io (`async_io::block_on`).
    Smol,
}

/// The transports, by the name the report and the peer's command line use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A unix stream socket, read and write with copies.
    Unix,
    /// TCP over loopback with TCP_NODELAY.
    Tcp,
    /// shmlink (memfd, V3) on one runtime in one sync mode: zero-copy reserve/commit and views.
    Shmlink(Rt, shmlink::SyncMode),
    /// CloudWeGo's crate `shmipc` 0.2.1, default (V3, Polling frames on the socket).
    CloudwegoV3,
    /// CloudWeGo's crate `shmipc` 0.2.1, V4 with eventfd wake-ups.
    CloudwegoV4,
    /// A shared-memory slot per direction, busy-waiting: no protocol, the floor.
    SpinSlot,
    /// The same slot, the receiver sleeping on a futex: the floor of a design that never spins.
    FutexSlot,
}

/// shmlink's default: the blocking API in the default sync mode.
pub(crate) const SHMLINK: Kind = Kind::Shmlink(Rt::Blocking, shmlink::SyncMode::Adaptive);

impl Kind {
    /// Every transport, in report order.
    pub(crate) fn all() -> Vec<Kind> {
        use shmlink::SyncMode;
        let mut all = vec![Kind::Unix, Kind::Tcp];
        for rt in [Rt::Blocking, Rt::Tokio, Rt::Smol] {
            for mode in [SyncMode::Adaptive, SyncMode::Event, SyncMode::Poll] {
                all.push(Kind::Shmlink(rt, mode));
            }
        }
        all.extend([
            Kind::CloudwegoV3,
            Kind::CloudwegoV4,
            Kind::SpinSlot,
            Kind::FutexSlot,
        ]);
        all
    }

    /// The name in tables, plots and the peer's command line.
    pub(crate) fn name(self) -> &'static str {
        use shmlink::SyncMode::{Adaptive, Event, Poll};
        match self {
            Kind::Unix => "unix-socket",
            Kind::Tcp => "tcp-loopback",
            Kind::Shmlink(Rt::Blocking, Adaptive) => "shmlink-blocking-adaptive",
            Kind::Shmlink(Rt::Blocking, Event) => "shmlink-blocking-event",
            Kind::Shmlink(Rt::Blocking, Poll) => "shmlink-blocking-poll",
            Kind::Shmlink(Rt::Tokio, Adaptive) => "shmlink-tokio-adaptive",
            Kind::Shmlink(Rt::Tokio, Event) => "shmlink-tokio-event",
            Kind::Shmlink(Rt::Tokio, Poll) => "shmlink-tokio-poll",
            Kind::Shmlink(Rt::Smol, Adaptive) => "shmlink-smol-adaptive",
            Kind::Shmlink(Rt::Smol, Event) => "shmlink-smol-event",
            Kind::Shmlink(Rt::Smol, Poll) => "shmlink-smol-poll",
            Kind::CloudwegoV3 => "cloudwego-shmipc-v3",
            Kind::CloudwegoV4 => "cloudwego-shmipc-v4-eventfd",
            Kind::SpinSlot => "shm-slot-busy-wait",
            Kind::FutexSlot => "shm-slot-futex",
        }
    }

    /// The transport named `name`.
    pub(crate) fn parse(name: &str) -> Option<Kind> {
        Kind::all().into_iter().find(|k| k.name() == name)
    }

    /// Whether this is shmlink (any runtime, any mode).
    pub(crate) fn is_shmlink(self) -> bool {
        matches!(self, Kind::Shmlink(..))
    }
}

pub(crate) fn shmlink_config(mode: shmlink::SyncMode) -> shmlink::Config {
    shmlink::Config {
        sync: mode,
        ..shmlink::Config::default()
    }
}

/// The byte sum of `bytes`: cheap, and it reads every byte.
pub(crate) fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b)).sum()
}

/// The reply's fill byte for a request whose `n` bytes summed to `sum`.
pub(crate) fn reply_fill(sum: u64, n: usize) -> u8 {
    ((sum / n.max(1) as u64) as u8).wrapping_add(1)
}

/// The client half: one connection to a peer.
pub(crate) trait Client {
    /// Sends `n` bytes of `fill`, waits for the `n`-byte reply, returns the reply's checksum.
    fn round_trip(&mut self, n: usize, fill: u8) -> io::Result<u64>;

    /// Sends `count` messages of `n` bytes of `fill` back to back (each its own write or
    /// flush), then waits for the peer's acknowledgement: the checksum of everything it read
    /// and how many reads (socket reads, or views) it took.
    fn pipeline(&mut self, n: usize, count: usize, fill: u8) -> io::Result<(u64, u64)>;

    /// Wake-ups this side has sent the peer so far, when the transport can tell (shmlink:
    /// Polling frames).
    fn wakeups_sent(&self) -> Option<u64> {
        None
    }

    /// Messages this side sent over the socket because shared memory could not take them
    /// (shmlink: FallbackData frames), when the transport can tell.
    fn fallbacks(&self) -> Option<u64> {
        None
    }

    /// The timed loop of a ping-pong measurement: at least `min` round trips, then more until
    /// `budget` or `max`, each timed into `rtts`. Stops at the first reply whose checksum is
    /// wrong and returns its (fill, sum), or (0, 0). Async clients override it to enter their
    /// runtime once per measurement, as an application would, not once per round trip.
    fn measure(
        &mut self,
        size: usize,
        min: u64,
        budget: std::time::Duration,
        max: u64,
        next_fill: &mut dyn FnMut() -> u8,
        rtts: &mut Vec<u64>,
    ) -> io::Result<(u8, u64)> {
        let start = std::time::Instant::now();
        while (rtts.len() as u64) < min || (start.elapsed() < budget && (rtts.len() as u64) < max) {
            let f = next_fill();
            let t = std::time::Instant::now();
            let sum = self.round_trip(size, f)?;
            rtts.push(t.elapsed().as_nanos() as u64);
            if sum != expected_sum(size, f) {
                return Ok((f, sum));
            }
            if rtts.len() == rtts.capacity() {
                break;
            }
        }
        Ok((0, 0))
    }
}

/// The checksum of a correct reply to `size` bytes of `fill`.
pub(crate) fn expected_sum(size: usize, fill: u8) -> u64 {
    size as u64 * u64::from(fill.wrapping_add(1))
}

/// What the peer does with its connection.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    /// Ping-pong with `n`-byte messages until the client hangs up.
    PingPong(usize),
    /// Read `count` messages of `n` bytes, then acknowledge (checksum, reads).
    Pipeline(usize, usize),
    /// shmlink only: ping-pong `n`-byte messages on every stream the client opens, each on a
    /// thread of its own, until the session ends.
    Streams(usize),
    /// shmlink only: `Streams` over each of `sessions` sessions (a client's pool).
    Pooled(usize, usize),
}

impl Mode {
    /// For the peer's command line.
    pub(crate) fn args(self) -> Vec<String> {
        match self {
            Mode::PingPong(n) => vec!["pingpong".into(), n.to_string()],
            Mode::Pipeline(n, c) => vec!["pipeline".into(), n.to_string(), c.to_string()],
            Mode::Streams(n) => vec!["streams".into(), n.to_string()],
            Mode::Pooled(n, s) => vec!["pooled".into(), n.to_string(), s.to_string()],
        }
    }

    /// From the peer's command line.
    pub(crate) fn parse(args: &[String]) -> Option<Mode> {
        match args.first()?.as_str() {
            "pingpong" => Some(Mode::PingPong(args.get(1)?.parse().ok()?)),
            "pipeline" => Some(Mode::Pipeline(
                args.get(1)?.parse().ok()?,
                args.get(2)?.parse().ok()?,
            )),
            "streams" => Some(Mode::Streams(args.get(1)?.parse().ok()?)),
            "pooled" => Some(Mode::Pooled(
                args.get(1)?.parse().ok()?,
                args.get(2)?.parse().ok()?,
            )),
            _ => None,
        }
    }
}

fn ack(sum: u64, reads: u64) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..8].copy_from_slice(&sum.to_le_bytes());
    a[8..].copy_from_slice(&reads.to_le_bytes());
    a
}

fn unack(a: &[u8; 16]) -> (u64, u64) {
    let word = |r: std::ops::Range<usize>| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&a[r]);
        u64::from_le_bytes(w)
    };
    (word(0..8), word(8..16))
}

// ---------------------------------------------------------------------------------------
// Byte-stream sockets (unix, TCP)

/// A client over any blocking byte stream.
pub(crate) struct StreamClient<S> {
    sock: S,
    buf: Vec<u8>,
}

impl<S> StreamClient<S> {
    /// Wraps a connected socket.
    pub(crate) fn new(sock: S) -> Self {
        Self {
            sock,
            buf: Vec::new(),
        }
    }
}

impl<S: Read + Write> Client for StreamClient<S> {
    fn round_trip(&mut self, n: usize, fill: u8) -> io::Result<u64> {
        self.buf.resize(n, 0);
        self.buf.fill(fill);
        self.sock.write_all(&self.buf)?;
        self.sock.read_exact(&mut self.buf)?;
        Ok(checksum(&self.buf))
    }

    fn pipeline(&mut self, n: usize, count: usize, fill: u8) -> io::Result<(u64, u64)> {
        self.buf.resize(n, 0);
        for _ in 0..count {
            self.buf.fill(fill);
            self.sock.write_all(&self.buf)?;
        }
        let mut a = [0u8; 16];
        self.sock.read_exact(&mut a)?;
        Ok(unack(&a))
    }
}

pub(crate) fn serve_stream<S: Read + Write>(mut sock: S, mode: Mode) -> io::Result<()> {
    match mode {
        Mode::PingPong(n) | Mode::Streams(n) | Mode::Pooled(n, _) => {
            let mut buf = vec![0u8; n];
            loop {
                match sock.read_exact(&mut buf) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
                let fill = reply_fill(checksum(&buf), n);
                buf.fill(fill);
                sock.write_all(&buf)?;
            }
        }
        Mode::Pipeline(n, count) => {
            let mut buf = vec![0u8; 256 << 10];
            let (mut left, mut sum, mut reads) = (n * count, 0u64, 0u64);
            while left > 0 {
                let want = left.min(buf.len());
                let got = sock.read(&mut buf[..want])?;
                if got == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                sum = sum.wrapping_add(checksum(&buf[..got]));
                reads += 1;
                left -= got;
            }
            sock.write_all(&ack(sum, reads))?;
            // Wait for the client to hang up.
            let _ = sock.read(&mut buf[..1]);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// shmlink (blocking API)

/// A shmlink client: one session, one stream.
pub(crate) struct ShmlinkClient {
    session: shmlink::Session,
    stream: shmlink::Stream,
}

impl ShmlinkClient {
    /// Connects with the default configuration (memfd, V3) in sync `mode`.
    pub(crate) fn connect(path: &Path, mode: shmlink::SyncMode) -> io::Result<Self> {
        let session = shmlink::Session::connect(path, shmlink_config(mode))?;
        let stream = session.open_stream()?;
        Ok(Self { session, stream })
    }

    /// The session, for metrics.
    pub(crate) fn session(&self) -> &shmlink::Session {
        &self.session
    }
}

/// How the harness waits on an async shmlink client: a tokio current-thread runtime or
/// async-io's `block_on`.
enum Exec {
    Tokio(tokio::runtime::Runtime),
    Smol,
}

impl Exec {
    fn new(rt: Rt) -> io::Result<Self> {
        Ok(match rt {
            Rt::Tokio => Exec::Tokio(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?,
            ),
            _ => Exec::Smol,
        })
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        match self {
            Exec::Tokio(rt) => rt.block_on(f),
            Exec::Smol => async_io::block_on(f),
        }
    }
}

/// A shmlink client through the async API: one session, one stream.
pub(crate) struct AsyncShmlinkClient {
    // Declared first: dropped (closing the stream and session) before the runtime.
    stream: Option<shmlink::AsyncStream>,
    session: Option<shmlink::AsyncSession>,
    exec: Exec,
}

impl AsyncShmlinkClient {
    pub(crate) fn connect(path: &Path, rt: Rt, mode: shmlink::SyncMode) -> io::Result<Self> {
        let exec = Exec::new(rt)?;
        let config = shmlink_config(mode);
        let session = exec.block_on(async {
            match rt {
                Rt::Tokio => shmlink::tokio::connect(path, config).await,
                _ => shmlink::smol::connect(path, config).await,
            }
        })?;
        let stream = exec.block_on(async { session.open_stream() })?;
        Ok(Self {
            stream: Some(stream),
            session: Some(session),
            exec,
        })
    }
}

impl Drop for AsyncShmlinkClient {
    fn drop(&mut self) {
        let (stream, session) = (self.stream.take(), self.session.take());
        // Inside the runtime: tokio's reactor registrations are released there.
        self.exec.block_on(async move {
            drop(stream);
            drop(session);
        });
    }
}

pub(crate) async fn shmlink_send_async(
    stream: &shmlink::AsyncStream,
    n: usize,
    fill: u8,
) -> io::Result<()> {
    use bytes::BufMut;
    let mut r = stream.reserve(n).await?;
    r.put_bytes(fill, n);
    r.commit_written().await?;
    Ok(())
}

pub(crate) async fn shmlink_recv_async(
    stream: &mut shmlink::AsyncStream,
    n: usize,
) -> io::Result<Option<(u64, u64)>> {
    let (mut left, mut sum, mut views) = (n, 0u64, 0u64);
    while left > 0 {
        let Some(view) = stream.read_view().await? else {
            return Ok(None);
        };
        if view.len() > left {
            return Err(io::Error::other("a view ran past the message"));
        }
        sum = sum.wrapping_add(checksum(&view));
        left -= view.len();
        views += 1;
    }
    Ok(Some((sum, views)))
}

impl Client for AsyncShmlinkClient {
    fn round_trip(&mut self, n: usize, fill: u8) -> io::Result<u64> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("closed"))?;
        self.exec.block_on(async {
            shmlink_send_async(stream, n, fill).await?;
            shmlink_recv_async(stream, n)
                .await?
                .map(|(sum, _)| sum)
                .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
        })
    }

    fn pipeline(&mut self, n: usize, count: usize, fill: u8) -> io::Result<(u64, u64)> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("closed"))?;
        self.exec.block_on(async {
            for _ in 0..count {
                shmlink_send_async(stream, n, fill).await?;
            }
            let a = stream
                .read_bytes(16)
                .await?
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            let mut b = [0u8; 16];
            b.copy_from_slice(&a);
            Ok(unack(&b))
        })
    }

    fn wakeups_sent(&self) -> Option<u64> {
        self.session
            .as_ref()
            .map(|s| s.metrics().performance.send_sync_event_count)
    }

    fn fallbacks(&self) -> Option<u64> {
        self.session
            .as_ref()
            .map(|s| s.metrics().stability.fallback_write_count)
    }
}

pub(crate) async fn shmlink_pong_async(
    mut stream: shmlink::AsyncStream,
    n: usize,
) -> io::Result<()> {
    loop {
        match shmlink_recv_async(&mut stream, n).await {
            Ok(Some((sum, _))) => shmlink_send_async(&stream, n, reply_fill(sum, n)).await?,
            Ok(None) => return Ok(()),
            Err(e) => {
                return match shmlink::Error::from(e) {
                    shmlink::Error::PeerClosed => Ok(()),
                    e => Err(e.into()),
                };
            }
        }
    }
}

/// The parallel section's async server: a task per stream, on a 2-worker tokio runtime or
/// on smol's executor with two threads (as the client).
fn serve_streams_async(listener: shmlink::Listener, rt: Rt, n: usize) -> io::Result<()> {
    match rt {
        Rt::Tokio => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let session = shmlink::tokio::accept(&listener).await?;
                let mut tasks = Vec::new();
                while let Ok(stream) = session.accept_stream(None).await {
                    tasks.push(tokio::spawn(shmlink_pong_async(stream, n)));
                }
                for t in tasks {
                    let _ = t.await;
                }
                Ok(())
            })
        }
        _ => {
            let ex = std::sync::Arc::new(async_executor::Executor::new());
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (ex, stop) = (std::sync::Arc::clone(&ex), std::sync::Arc::clone(&stop));
                    std::thread::spawn(move || {
                        async_io::block_on(ex.run(async move {
                            // SYNC: Acquire; pairs with the Release store below.
                            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                                async_io::Timer::after(std::time::Duration::from_millis(5)).await;
                            }
                        }))
                    })
                })
                .collect();
            let result = async_io::block_on(ex.run(async {
                let session = shmlink::smol::accept(&listener).await?;
                let mut tasks = Vec::new();
                while let Ok(stream) = session.accept_stream(None).await {
                    tasks.push(ex.spawn(shmlink_pong_async(stream, n)));
                }
                for t in tasks {
                    let _ = t.await;
                }
                Ok::<(), io::Error>(())
            }));
            // SYNC: Release; pairs with the Acquire loads of the executor threads.
            stop.store(true, std::sync::atomic::Ordering::Release);
            for t in threads {
                let _ = t.join();
            }
            result
        }
    }
}

fn serve_shmlink_async(listener: shmlink::Listener, rt: Rt, mode: Mode) -> io::Result<()> {
    if let Mode::Streams(n) = mode {
        return serve_streams_async(listener, rt, n);
    }
    let exec = Exec::new(rt)?;
    exec.block_on(async {
        let session = match rt {
            Rt::Tokio => shmlink::tokio::accept(&listener).await,
            _ => shmlink::smol::accept(&listener).await,
        }?;
        let mut stream = session.accept_stream(None).await?;
        match mode {
            Mode::PingPong(n) | Mode::Streams(n) | Mode::Pooled(n, _) => {
                shmlink_pong_async(stream, n).await?
            }
            Mode::Pipeline(n, count) => {
                let (mut left, mut sum, mut views) = (n * count, 0u64, 0u64);
                while left > 0 {
                    let batch = stream
                        .read_batch()
                        .await?
                        .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                    // By value: each slice goes back as soon as it is read.
                    for piece in batch {
                        sum = sum.wrapping_add(checksum(&piece));
                        left = left.saturating_sub(piece.len());
                    }
                    views += 1;
                }
                stream.send(&ack(sum, views)).await?;
                let _ = stream.read_view().await;
            }
        }
        Ok(())
    })
}

/// Writes `n` bytes of `fill` as one zero-copy flush.
fn shmlink_send(stream: &shmlink::Stream, n: usize, fill: u8) -> io::Result<()> {
    use bytes::BufMut;
    let mut r = stream.reserve(n)?;
    r.put_bytes(fill, n); // through BufMut: straight into shared memory, no list of chunks
    r.commit_written()?;
    Ok(())
}

/// Reads `total` bytes of a pipelined burst zero copy, a batch (every piece received so far)
/// per call: their checksum and how many calls it took.
fn shmlink_drain(stream: &mut shmlink::Stream, total: usize) -> io::Result<(u64, u64)> {
    let (mut left, mut sum, mut calls) = (total, 0u64, 0u64);
    while left > 0 {
        let batch = stream
            .read_batch()?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        // By value: each slice goes back as soon as it is read.
        for piece in batch {
            sum = sum.wrapping_add(checksum(&piece));
            left = left.saturating_sub(piece.len());
        }
        calls += 1;
    }
    Ok((sum, calls))
}

/// Reads `n` bytes zero copy, returning their checksum and how many views it took.
fn shmlink_recv(stream: &mut shmlink::Stream, n: usize) -> io::Result<Option<(u64, u64)>> {
    let (mut left, mut sum, mut views) = (n, 0u64, 0u64);
    while left > 0 {
        let Some(view) = stream.read_view()? else {
            return Ok(None);
        };
        if view.len() > left {
            return Err(io::Error::other("a view ran past the message"));
        }
        sum = sum.wrapping_add(checksum(&view));
        left -= view.len();
        views += 1;
    }
    Ok(Some((sum, views)))
}

impl Client for ShmlinkClient {
    fn round_trip(&mut self, n: usize, fill: u8) -> io::Result<u64> {
        shmlink_send(&self.stream, n, fill)?;
        shmlink_recv(&mut self.stream, n)?
            .map(|(sum, _)| sum)
            .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }

    fn pipeline(&mut self, n: usize, count: usize, fill: u8) -> io::Result<(u64, u64)> {
        for _ in 0..count {
            shmlink_send(&self.stream, n, fill)?;
        }
        let mut a = [0u8; 16];
        self.stream.read_exact(&mut a)?;
        Ok(unack(&a))
    }

    fn wakeups_sent(&self) -> Option<u64> {
        Some(self.session.metrics().performance.send_sync_event_count)
    }

    fn fallbacks(&self) -> Option<u64> {
        Some(self.session.metrics().stability.fallback_write_count)
    }
}

fn shmlink_pong(mut stream: shmlink::Stream, n: usize) -> io::Result<()> {
    loop {
        match shmlink_recv(&mut stream, n) {
            Ok(Some((sum, _))) => shmlink_send(&stream, n, reply_fill(sum, n))?,
            Ok(None) => return Ok(()),
            // The client dropping its session is how a measurement ends.
            Err(e) => {
                return match shmlink::Error::from(e) {
                    shmlink::Error::PeerClosed => Ok(()),
                    e => Err(e.into()),
                };
            }
        }
    }
}

/// Ping-pong on every stream of `session`, a thread each, until the session ends.
pub(crate) fn pong_every_stream(session: &shmlink::Session, n: usize) {
    let mut workers = Vec::new();
    while let Ok(stream) = session.accept_stream(None) {
        workers.push(std::thread::spawn(move || shmlink_pong(stream, n)));
    }
    for w in workers {
        let _ = w.join();
    }
}

fn serve_shmlink(listener: shmlink::Listener, mode: Mode) -> io::Result<()> {
    if let Mode::Pooled(n, sessions) = mode {
        let mut each = Vec::new();
        for _ in 0..sessions {
            let session = listener.accept()?;
            each.push(std::thread::spawn(move || pong_every_stream(&session, n)));
        }
        for s in each {
            let _ = s.join();
        }
        return Ok(());
    }
    let session = listener.accept()?;
    if let Mode::Streams(n) = mode {
        pong_every_stream(&session, n);
        return Ok(());
    }
    let mut stream = session.accept_stream(None)?;
    match mode {
        Mode::PingPong(n) | Mode::Streams(n) | Mode::Pooled(n, _) => shmlink_pong(stream, n)?,
        Mode::Pipeline(n, count) => {
            let (sum, views) = shmlink_drain(&mut stream, n * count)?;
            stream.send(&ack(sum, views))?;
            let _ = stream.read_view();
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// CloudWeGo's shmipc 0.2.1 (tokio)

fn tokio_runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

fn cloudwego_config(v4: bool) -> cloudwego_shmipc::config::Config {
    let c = cloudwego_shmipc::config::Config::default();
    if v4 { c.with_v4_eventfd() } else { c }
}

/// A client of CloudWeGo's crate: their SessionManager, one stream, their `AsyncRead` and
/// `AsyncWrite` (copies, as their examples do).
pub(crate) struct CloudwegoClient {
    rt: tokio::runtime::Runtime,
    stream: Option<cloudwego_shmipc::compact::StreamExt>,
    manager: Option<
        cloudwego_shmipc::session::SessionManager<cloudwego_shmipc::transport::DefaultUnixConnect>,
    >,
    buf: Vec<u8>,
}

impl CloudwegoClient {
    /// Connects with their defaults, V3 or V4 with eventfd.
    pub(crate) fn connect(path: &Path, v4: bool) -> io::Result<Self> {
        use cloudwego_shmipc::session::{SessionManager, SessionManagerConfig};
        let rt = tokio_runtime()?;
        let addr = std::os::unix::net::SocketAddr::from_pathname(path)?;
        let (manager, stream) = rt.block_on(async {
            let mut config = SessionManagerConfig::new().with_session_num(1);
            *config.config_mut() = cloudwego_config(v4);
            let manager = SessionManager::new(
                config,
                cloudwego_shmipc::transport::DefaultUnixConnect,
                addr,
            )
            .await
            .map_err(io::Error::other)?;
            let stream = manager.get_stream().map_err(io::Error::other)?;
            Ok::<_, io::Error>((manager, cloudwego_shmipc::compact::StreamExt::new(stream)))
        })?;
        Ok(Self {
            rt,
            stream: Some(stream),
            manager: Some(manager),
            buf: Vec::new(),
        })
    }
}

impl Client for CloudwegoClient {
    fn round_trip(&mut self, n: usize, fill: u8) -> io::Result<u64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Self {
            rt, stream, buf, ..
        } = self;
        let stream = stream.as_mut().ok_or_else(|| io::Error::other("closed"))?;
        buf.resize(n, 0);
        buf.fill(fill);
        rt.block_on(async {
            stream.write_all(buf).await?;
            stream.flush().await?;
            stream.read_exact(buf).await?;
            Ok::<_, io::Error>(())
        })?;
        Ok(checksum(buf))
    }

    fn pipeline(&mut self, n: usize, count: usize, fill: u8) -> io::Result<(u64, u64)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Self {
            rt, stream, buf, ..
        } = self;
        let stream = stream.as_mut().ok_or_else(|| io::Error::other("closed"))?;
        buf.resize(n, 0);
        rt.block_on(async {
            for _ in 0..count {
                buf.fill(fill);
                stream.write_all(buf).await?;
                stream.flush().await?;
            }
            let mut a = [0u8; 16];
            stream.read_exact(&mut a).await?;
            Ok::<_, io::Error>(unack(&a))
        })
    }
}

impl Drop for CloudwegoClient {
    fn drop(&mut self) {
        let (stream, manager) = (self.stream.take(), self.manager.take());
        self.rt.block_on(async move {
            if let Some(mut s) = stream {
                let _ = s.inner_mut().close().await;
            }
            if let Some(m) = manager {
                m.close().await;
            }
        });
    }
}

fn serve_cloudwego(path: &Path, v4: bool, mode: Mode, ready: impl FnOnce()) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio_runtime()?;
    rt.block_on(async {
        let addr = std::os::unix::net::SocketAddr::from_pathname(path)?;
        let mut listener = cloudwego_shmipc::Listener::new(
            cloudwego_shmipc::transport::DefaultUnixListen,
            addr,
            cloudwego_config(v4),
        )
        .await?;
        ready();
        let stream = listener.accept().await.map_err(io::Error::other)?;
        let mut stream = cloudwego_shmipc::compact::StreamExt::new(stream);
        match mode {
            Mode::PingPong(n) | Mode::Streams(n) | Mode::Pooled(n, _) => {
                let mut buf = vec![0u8; n];
                while stream.read_exact(&mut buf).await.is_ok() {
                    let fill = reply_fill(checksum(&buf), n);
                    buf.fill(fill);
                    stream.write_all(&buf).await?;
                    stream.flush().await?;
                }
            }
            Mode::Pipeline(n, count) => {
                let mut buf = vec![0u8; n];
                let mut sum = 0u64;
                for _ in 0..count {
                    stream.read_exact(&mut buf).await?;
                    sum = sum.wrapping_add(checksum(&buf));
                }
                stream.write_all(&ack(sum, count as u64)).await?;
                stream.flush().await?;
                let _ = stream.read(&mut buf[..1]).await;
            }
        }
        let _ = stream.inner_mut().close().await;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------
// The shared-memory slot references

/// A client of the slot references.
pub(crate) struct SlotClient {
    slots: Slots,
}

impl SlotClient {
    /// Creates the slot file at `path` for messages up to `max` bytes.
    pub(crate) fn create(path: &Path, max: usize, wait: Wait) -> io::Result<Self> {
        let slots = Slots::create(path, max, wait)?;
        slots.remove_on_drop();
        Ok(Self { slots })
    }
}

impl Client for SlotClient {
    fn round_trip(&mut self, n: usize, fill: u8) -> io::Result<u64> {
        self.slots.send(n, |b| b.fill(fill));
        Ok(self.slots.recv(checksum))
    }

    fn pipeline(&mut self, _: usize, _: usize, _: u8) -> io::Result<(u64, u64)> {
        Err(io::Error::other("the slot holds one message at a time"))
    }
}

impl Drop for SlotClient {
    fn drop(&mut self) {
        // A zero-length message tells the peer to stop.
        self.slots.send(0, |_| {});
    }
}

fn serve_slot(path: &Path, max: usize, wait: Wait) -> io::Result<()> {
    let mut slots = Slots::open(path, max, wait)?;
    loop {
        let (sum, n) = slots.recv(|b| (checksum(b), b.len()));
        if n == 0 {
            return Ok(());
        }
        let fill = reply_fill(sum, n);
        slots.send(n, |b| b.fill(fill));
    }
}

// ---------------------------------------------------------------------------------------
// The peer process

/// Where a measurement's peer listens: a socket path, a TCP port, or a slot file.
pub(crate) fn endpoint(kind: Kind, tag: &str) -> PathBuf {
    let dir = if matches!(kind, Kind::SpinSlot | Kind::FutexSlot) {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    dir.join(format!("shmlink-bench-{}-{tag}", std::process::id()))
}

/// Runs the peer side: binds, prints `ready` (and for TCP the port), serves one connection.
pub(crate) fn run_peer(kind: Kind, endpoint: &Path, max: usize, mode: Mode) -> io::Result<()> {
    let ready = |extra: &str| {
        println!("ready {extra}");
        let _ = io::stdout().flush();
    };
    match kind {
        Kind::Unix => {
            let _ = std::fs::remove_file(endpoint);
            let l = UnixListener::bind(endpoint)?;
            ready("");
            if let Mode::Streams(_) = mode {
                // The parallel section: a connection per client stream, a thread per
                // connection, until the client stops connecting (a zero-length hello).
                let mut workers = Vec::new();
                loop {
                    let (mut s, _) = l.accept()?;
                    let mut hello = [0u8; 1];
                    s.read_exact(&mut hello)?;
                    if hello[0] == 0 {
                        break;
                    }
                    workers.push(std::thread::spawn(move || serve_stream(s, mode)));
                }
                let _ = std::fs::remove_file(endpoint);
                for w in workers {
                    let _ = w.join();
                }
                return Ok(());
            }
            let (s, _) = l.accept()?;
            let _ = std::fs::remove_file(endpoint);
            serve_stream(s, mode)
        }
        Kind::Tcp => {
            let l = TcpListener::bind("127.0.0.1:0")?;
            ready(&l.local_addr()?.port().to_string());
            let (s, _) = l.accept()?;
            s.set_nodelay(true)?;
            serve_stream(s, mode)
        }
        Kind::Shmlink(rt, sync) => {
            let l = shmlink::Listener::bind(endpoint, shmlink_config(sync))?;
            ready("");
            match rt {
                Rt::Blocking => serve_shmlink(l, mode),
                rt => serve_shmlink_async(l, rt, mode),
            }
        }
        Kind::CloudwegoV3 | Kind::CloudwegoV4 => {
            let _ = std::fs::remove_file(endpoint);
            let r = serve_cloudwego(endpoint, kind == Kind::CloudwegoV4, mode, || ready(""));
            let _ = std::fs::remove_file(endpoint);
            r
        }
        Kind::SpinSlot => {
            ready("");
            serve_slot(endpoint, max, Wait::Spin)
        }
        Kind::FutexSlot => {
            ready("");
            serve_slot(endpoint, max, Wait::Futex)
        }
    }
}

/// Connects the client side to a peer that printed `ready <extra>`.
pub(crate) fn connect(kind: Kind, endpoint: &Path, extra: &str) -> io::Result<Box<dyn Client>> {
    Ok(match kind {
        Kind::Unix => Box::new(StreamClient::new(UnixStream::connect(endpoint)?)),
        Kind::Tcp => {
            let port: u16 = extra.trim().parse().map_err(io::Error::other)?;
            let s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_nodelay(true)?;
            Box::new(StreamClient::new(s))
        }
        Kind::Shmlink(Rt::Blocking, sync) => Box::new(ShmlinkClient::connect(endpoint, sync)?),
        Kind::Shmlink(rt, sync) => Box::new(AsyncShmlinkClient::connect(endpoint, rt, sync)?),
        Kind::CloudwegoV3 => Box::new(CloudwegoClient::connect(endpoint, false)?),
        Kind::CloudwegoV4 => Box::new(CloudwegoClient::connect(endpoint, true)?),
        Kind::SpinSlot | Kind::FutexSlot => {
            unreachable!("slot clients are created before the peer starts")
        }
    })
}

/// A client over one borrowed shmlink stream (streams at scale: one per thread).
pub(crate) struct StreamRef<'a>(pub(crate) &'a mut shmlink::Stream);

impl Client for StreamRef<'_> {
    fn round_trip(&mut self, n: usize, fill: u8) -> io::Result<u64> {
        shmlink_send(self.0, n, fill)?;
        shmlink_recv(self.0, n)?
            .map(|(sum, _)| sum)
            .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }

    fn pipeline(&mut self, _: usize, _: usize, _: u8) -> io::Result<(u64, u64)> {
        Err(io::Error::other("not used"))
    }
}
