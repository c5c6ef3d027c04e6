//! Many streams on one session, as users run it: shmipc-go's own headline shape
//! (BenchmarkParallelPingPong: P concurrent streams on one session, each a ping-pong; ns/op =
//! wall time / all round trips), beside P unix-socket connections; and one active stream
//! beside 64 idle readers. Client in this process, server in a peer process (a thread per
//! stream or connection). Every round trip's reply is checked; every shmlink row reports how
//! many messages fell back to the socket, and one that had any gets no verdict.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shmlink::SyncMode;

use crate::report::{Idle, Par, Parallel};
use crate::transports::{self, Client, Kind, Mode, SHMLINK, StreamRef, checksum};
use crate::{Peer, check, machine};

fn fill_of(i: u64) -> u8 {
    (i % 250) as u8 + 1
}

/// Counts round trips across workers, and carries the first error.
#[derive(Default)]
struct Tally {
    ops: AtomicU64,
    stop: AtomicBool,
    error: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn fail(&self, e: String) {
        self.error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(e);
        // SYNC: Relaxed; a stop flag polled in loops, ordering nothing.
        self.stop.store(true, Ordering::Relaxed);
    }

    fn stopped(&self) -> bool {
        // SYNC: Relaxed; see fail.
        self.stop.load(Ordering::Relaxed)
    }

    fn add(&self) {
        // SYNC: Relaxed; a counter read after the workers are joined.
        self.ops.fetch_add(1, Ordering::Relaxed);
    }
}

/// A ping-pong worker's loop over a blocking round trip.
fn work(tally: &Tally, size: usize, mut rt: impl FnMut(u8) -> std::io::Result<u64>) {
    let mut i = 0u64;
    while !tally.stopped() {
        i += 1;
        let fill = fill_of(i);
        match rt(fill) {
            Ok(sum) => {
                if let Err(e) = check(sum, size, fill) {
                    return tally.fail(e);
                }
                tally.add();
            }
            Err(e) => return tally.fail(e.to_string()),
        }
    }
}

fn unix_round_trip(sock: &mut UnixStream, buf: &mut [u8], fill: u8) -> std::io::Result<u64> {
    buf.fill(fill);
    sock.write_all(buf)?;
    sock.read_exact(buf)?;
    Ok(checksum(buf))
}

/// Runs P workers for `budget`; returns (round trips, wall seconds, fallbacks).
fn measure(
    par: Par,
    p: usize,
    size: usize,
    budget: Duration,
    endpoint: &Path,
    in_process: bool,
) -> Result<(u64, f64, u64), String> {
    let tally = Arc::new(Tally::default());
    let started;
    let mut fallbacks = 0;
    match par {
        Par::Unix => {
            if in_process {
                let listener =
                    std::os::unix::net::UnixListener::bind(endpoint).map_err(|e| e.to_string())?;
                std::thread::spawn(move || {
                    let mut workers = Vec::new();
                    while let Ok((mut s, _)) = listener.accept() {
                        let mut hello = [0u8; 1];
                        if s.read_exact(&mut hello).is_err() || hello[0] == 0 {
                            break;
                        }
                        workers.push(std::thread::spawn(move || {
                            transports::serve_stream(s, Mode::Streams(size))
                        }));
                    }
                    for w in workers {
                        let _ = w.join();
                    }
                });
            }
            let mut socks = Vec::new();
            for _ in 0..p {
                let mut s = UnixStream::connect(endpoint).map_err(|e| e.to_string())?;
                s.write_all(&[1]).map_err(|e| e.to_string())?;
                socks.push(s);
            }
            // The end of connecting: the peer stops accepting.
            let mut last = UnixStream::connect(endpoint).map_err(|e| e.to_string())?;
            last.write_all(&[0]).map_err(|e| e.to_string())?;
            started = Instant::now();
            std::thread::scope(|s| {
                for mut sock in socks {
                    let tally = &tally;
                    s.spawn(move || {
                        let mut buf = vec![0u8; size];
                        work(tally, size, |fill| {
                            unix_round_trip(&mut sock, &mut buf, fill)
                        });
                    });
                }
                std::thread::sleep(budget);
                // SYNC: Relaxed; see Tally.
                tally.stop.store(true, Ordering::Relaxed);
            });
        }
        Par::Blocking => {
            if in_process {
                let listener = shmlink::Listener::bind(
                    endpoint,
                    transports::shmlink_config(SyncMode::Adaptive),
                )
                .map_err(|e| e.to_string())?;
                std::thread::spawn(move || {
                    if let Ok(session) = listener.accept() {
                        transports::pong_every_stream(&session, size);
                    }
                });
            }
            let session = shmlink::Session::connect(
                endpoint,
                transports::shmlink_config(shmlink::SyncMode::Adaptive),
            )
            .map_err(|e| e.to_string())?;
            let streams: Vec<_> = (0..p)
                .map(|_| session.open_stream())
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            started = Instant::now();
            std::thread::scope(|s| {
                for mut stream in streams {
                    let tally = &tally;
                    s.spawn(move || {
                        work(tally, size, |fill| {
                            StreamRef(&mut stream).round_trip(size, fill)
                        });
                    });
                }
                std::thread::sleep(budget);
                // SYNC: Relaxed; see Tally.
                tally.stop.store(true, Ordering::Relaxed);
            });
            fallbacks = session.metrics().stability.fallback_write_count;
        }
        Par::Tokio => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let config = transports::shmlink_config(shmlink::SyncMode::Adaptive);
            if in_process {
                // Go's shape: the server's tasks share the client's runtime.
                let listener =
                    shmlink::Listener::bind(endpoint, config.clone()).map_err(|e| e.to_string())?;
                rt.spawn(async move {
                    if let Ok(session) = shmlink::tokio::accept(&listener).await {
                        while let Ok(stream) = session.accept_stream(None).await {
                            tokio::spawn(transports::shmlink_pong_async(stream, size));
                        }
                    }
                });
            }
            let session = rt
                .block_on(shmlink::tokio::connect(endpoint, config))
                .map_err(|e| e.to_string())?;
            let streams: Vec<_> = (0..p)
                .map(|_| session.open_stream())
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            started = Instant::now();
            let tasks: Vec<_> = streams
                .into_iter()
                .map(|stream| rt.spawn(async_worker(Arc::clone(&tally), stream, size)))
                .collect();
            std::thread::sleep(budget);
            // SYNC: Relaxed; see Tally.
            tally.stop.store(true, Ordering::Relaxed);
            rt.block_on(async {
                for t in tasks {
                    let _ = t.await;
                }
            });
            fallbacks = session.metrics().stability.fallback_write_count;
        }
        Par::Smol => {
            let ex = Arc::new(async_executor::Executor::new());
            let (done_tx, done_rx) = async_io_channel();
            let config = transports::shmlink_config(shmlink::SyncMode::Adaptive);
            // Two executor threads, as the tokio rows have two workers.
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let ex = Arc::clone(&ex);
                    let done = Arc::clone(&done_rx);
                    std::thread::spawn(move || async_io::block_on(ex.run(wait_flag(done))))
                })
                .collect();
            if in_process {
                // Go's shape: the server's tasks share the client's executor.
                let listener =
                    shmlink::Listener::bind(endpoint, config.clone()).map_err(|e| e.to_string())?;
                let spawner = Arc::clone(&ex);
                ex.spawn(async move {
                    if let Ok(session) = shmlink::smol::accept(&listener).await {
                        while let Ok(stream) = session.accept_stream(None).await {
                            spawner
                                .spawn(transports::shmlink_pong_async(stream, size))
                                .detach();
                        }
                    }
                })
                .detach();
            }
            let session = async_io::block_on(shmlink::smol::connect(endpoint, config))
                .map_err(|e| e.to_string())?;
            let streams: Vec<_> = (0..p)
                .map(|_| session.open_stream())
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            started = Instant::now();
            let tasks: Vec<_> = streams
                .into_iter()
                .map(|stream| ex.spawn(async_worker(Arc::clone(&tally), stream, size)))
                .collect();
            std::thread::sleep(budget);
            // SYNC: Relaxed; see Tally.
            tally.stop.store(true, Ordering::Relaxed);
            async_io::block_on(ex.run(async {
                for t in tasks {
                    t.await;
                }
            }));
            // SYNC: Release; pairs with the Acquire load in wait_flag (the executor threads end).
            done_tx.store(true, Ordering::Release);
            for t in threads {
                let _ = t.join();
            }
            fallbacks = session.metrics().stability.fallback_write_count;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    if let Some(e) = tally.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(format!("{} P={p} {size} B: {e}", par.name()));
    }
    // SYNC: Relaxed; the workers are joined.
    Ok((tally.ops.load(Ordering::Relaxed), wall, fallbacks))
}

fn async_io_channel() -> (Arc<AtomicBool>, Arc<AtomicBool>) {
    let flag = Arc::new(AtomicBool::new(false));
    (Arc::clone(&flag), flag)
}

/// Ready once `flag` is set (looked at every millisecond): ends an executor thread.
async fn wait_flag(flag: Arc<AtomicBool>) {
    // SYNC: Acquire; pairs with the Release store after the tasks finished.
    while !flag.load(Ordering::Acquire) {
        async_io::Timer::after(Duration::from_millis(1)).await;
    }
}

async fn async_worker(tally: Arc<Tally>, mut stream: shmlink::AsyncStream, size: usize) {
    let mut i = 0u64;
    while !tally.stopped() {
        i += 1;
        let fill = fill_of(i);
        let r = async {
            transports::shmlink_send_async(&stream, size, fill).await?;
            transports::shmlink_recv_async(&mut stream, size)
                .await?
                .map(|(sum, _)| sum)
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
        }
        .await;
        match r {
            Ok(sum) => {
                if let Err(e) = check(sum, size, fill) {
                    return tally.fail(e);
                }
                tally.add();
            }
            Err(e) => return tally.fail(e.to_string()),
        }
    }
}

/// The parallel ping-pong section.
pub(crate) fn run(
    sizes: &[usize],
    ps: &[usize],
    budget: Duration,
    in_process: bool,
    rows: &mut Vec<Parallel>,
) -> Result<(), String> {
    for &size in sizes {
        for &p in ps {
            for par in [Par::Unix, Par::Blocking, Par::Tokio, Par::Smol] {
                machine::wait_idle(0.15, Duration::from_secs(5));
                // The server runs on the client's runtime: threads, tokio or smol tasks.
                let kind = match par {
                    Par::Unix => Kind::Unix,
                    Par::Blocking => SHMLINK,
                    Par::Tokio => Kind::Shmlink(transports::Rt::Tokio, SyncMode::Adaptive),
                    Par::Smol => Kind::Shmlink(transports::Rt::Smol, SyncMode::Adaptive),
                };
                let endpoint =
                    transports::endpoint(kind, &format!("par-{}-{p}-{size}", par.name()));
                let (ops, wall, fallbacks, usage) = if in_process {
                    let _ = std::fs::remove_file(&endpoint);
                    let window = machine::Window::start(std::process::id());
                    let (ops, wall, fallbacks) = measure(par, p, size, budget, &endpoint, true)?;
                    let mut usage = window.end();
                    // One process: its CPU is counted once, under "harness".
                    usage.cpu_ns[1] = 0;
                    let _ = std::fs::remove_file(&endpoint);
                    (ops, wall, fallbacks, usage)
                } else {
                    let peer = Peer::start(kind, &endpoint, size, Mode::Streams(size))?;
                    let window = machine::Window::start(peer.pid());
                    let (ops, wall, fallbacks) = measure(par, p, size, budget, &endpoint, false)?;
                    let usage = window.end();
                    peer.finish();
                    (ops, wall, fallbacks, usage)
                };
                let row = Parallel {
                    par,
                    p,
                    size,
                    in_process,
                    rate: ops as f64 / wall,
                    cpu_ns: usage.cpu_ns.map(|c| c as f64 / ops.max(1) as f64),
                    fallbacks: (par != Par::Unix).then_some(fallbacks),
                };
                eprintln!(
                    "parallel {:>6} P={:<3} {:<16} {:>10.0} round trips/s, {:>8.0} ns/op{}",
                    crate::report::bytes(size),
                    p,
                    par.name(),
                    row.rate,
                    1e9 / row.rate,
                    if fallbacks > 0 {
                        format!(", {fallbacks} fell back")
                    } else {
                        String::new()
                    }
                );
                rows.push(row);
            }
        }
    }
    Ok(())
}

/// One active stream beside `idle` readers waiting on other streams of the same session
/// (blocking threads), against the same stream alone.
pub(crate) fn run_idle(idle: usize, budget: Duration) -> Result<Idle, String> {
    let mut rates = [0.0; 2];
    for (i, readers) in [0, idle].into_iter().enumerate() {
        machine::wait_idle(0.15, Duration::from_secs(5));
        let endpoint = transports::endpoint(SHMLINK, &format!("idle-{readers}"));
        let peer = Peer::start(SHMLINK, &endpoint, 64, Mode::Streams(64))?;
        let session = shmlink::Session::connect(
            endpoint.as_path(),
            transports::shmlink_config(shmlink::SyncMode::Adaptive),
        )
        .map_err(|e| e.to_string())?;
        let mut active = session.open_stream().map_err(|e| e.to_string())?;
        std::thread::scope(|s| {
            let mut idlers = Vec::new();
            for _ in 0..readers {
                let mut stream = session.open_stream().map_err(|e| e.to_string())?;
                // Reads that wait for the whole run (nothing is sent on these streams).
                idlers.push(s.spawn(move || {
                    let mut b = [0u8; 1];
                    let _ = stream.read(&mut b);
                }));
            }
            // Let the idle readers register before timing.
            std::thread::sleep(Duration::from_millis(50));
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < budget {
                n += 1;
                let fill = fill_of(n);
                let sum = StreamRef(&mut active)
                    .round_trip(64, fill)
                    .map_err(|e| e.to_string())?;
                check(sum, 64, fill)?;
            }
            rates[i] = n as f64 / start.elapsed().as_secs_f64();
            // Ends the idle reads: the session closes under them.
            session.close();
            for t in idlers {
                let _ = t.join();
            }
            Ok::<(), String>(())
        })?;
        peer.finish();
    }
    eprintln!(
        "one active stream: {:.0} round trips/s alone, {:.0} beside {idle} idle readers",
        rates[0], rates[1]
    );
    Ok(Idle {
        readers: idle,
        alone: rates[0],
        beside: rates[1],
    })
}
