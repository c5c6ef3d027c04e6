//! The peer process of the shared cross-process suite (`tests/tests/runtimes.rs`): the same
//! scenarios on each runtime.
//!
//! ```text
//! shmlink-rt-peer <blocking|tokio|smol> client <socket> [--devshm --prefix P] [--streams N]
//!                 [--sizes a,b,c] [--buffer BYTES] [--policy wait|fallback|error] [--slow N]
//!                 [--any-user]
//! shmlink-rt-peer <blocking|tokio|smol> server <socket> [--sessions N]
//! shmlink-rt-peer <blocking|tokio|smol> reader <socket>
//! ```
//!
//! `client`: every stream sends each size framed (4-byte length) and checks the echo; with
//! `--slow N` a writer sends N messages while a slower reader checks them in order.
//! `server`: echoes every stream of N sessions. `reader`: sends one message, prints
//! `reading`, and expects its pending read to fail with `PeerClosed` (the test kills the
//! server). `smol` runs under the hand-written executor of `shmlink_tests::exec`.
//! Exits 0 only if everything matched.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmlink::{AsyncSession, AsyncStream, Config, Error, Exhaustion, Listener, MemMode, Session};
use shmlink_tests::{check_echoes, echo_session, exec, framed, payload, recv_framed, send_framed};

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

#[derive(Clone, Copy, PartialEq)]
enum Rt {
    Blocking,
    Tokio,
    Smol,
}

struct Opts {
    path: String,
    config: Config,
    streams: usize,
    sizes: Vec<usize>,
    slow: Option<usize>,
    sessions: usize,
}

fn main() {
    if std::env::var_os("SHMLINK_PEER_ONE_CPU").is_some() {
        // As under `taskset -c 0`: this process may run on one CPU only.
        let mut one = rustix::thread::CpuSet::new();
        one.set(0);
        rustix::thread::sched_setaffinity(None, &one).expect("pin to CPU 0");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match args.first().map(String::as_str) {
        Some("blocking") => Rt::Blocking,
        Some("tokio") => Rt::Tokio,
        Some("smol") => Rt::Smol,
        _ => fail("usage: shmlink-rt-peer <blocking|tokio|smol> <role> <socket> ...".into()),
    };
    let role = args.get(1).cloned().unwrap_or_default();
    let mut config = Config {
        mem_mode: if args.iter().any(|a| a == "--devshm") {
            MemMode::File
        } else {
            MemMode::Memfd
        },
        ..Config::default()
    };
    if let Some(prefix) = arg::<String>(&args, "--prefix") {
        config.path_prefix = prefix;
    }
    if let Some(buffer) = arg::<usize>(&args, "--buffer") {
        config.buffer_capacity = buffer;
    }
    if args.iter().any(|a| a == "--any-user") {
        config.same_user_only = false;
    }
    config.on_exhaustion = match arg::<String>(&args, "--policy").as_deref() {
        Some("wait") => Exhaustion::Wait,
        Some("error") => Exhaustion::Error,
        _ => Exhaustion::Fallback,
    };
    let opts = Opts {
        path: args.get(2).cloned().unwrap_or_default(),
        config,
        streams: arg(&args, "--streams").unwrap_or(1),
        sizes: arg::<String>(&args, "--sizes")
            .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 100, 8172, 200_000]),
        slow: arg(&args, "--slow"),
        sessions: arg(&args, "--sessions").unwrap_or(1),
    };
    let result = match (rt, role.as_str()) {
        (Rt::Blocking, "client") => blocking_client(&opts),
        (Rt::Blocking, "server") => blocking_server(&opts),
        (Rt::Blocking, "reader") => blocking_reader(&opts),
        (rt, role) => run_async(rt, role, opts),
    };
    if let Err(e) = result {
        fail(e);
    }
}

fn fail(e: String) -> ! {
    eprintln!("shmlink-rt-peer: {e}");
    std::process::exit(1);
}

fn run_async(rt: Rt, role: &str, opts: Opts) -> Result<(), String> {
    let role = role.to_owned();
    match rt {
        Rt::Tokio => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(async_role(rt, &role, opts)),
        _ => exec::block_on(async_role(rt, &role, opts)),
    }
}

async fn async_role(rt: Rt, role: &str, opts: Opts) -> Result<(), String> {
    match role {
        "client" => {
            let session = connect(rt, &opts).await?;
            let session = Arc::new(session);
            match opts.slow {
                Some(n) => slow_reader(rt, &session, n, &opts.sizes).await?,
                None => echo_streams(rt, &session, opts.streams, &opts.sizes).await?,
            }
            report(&session.metrics());
            check_free(&session)
        }
        "server" => {
            let listener =
                Listener::bind(&opts.path, Config::default()).map_err(|e| e.to_string())?;
            println!("ready");
            for _ in 0..opts.sessions {
                let session = match rt {
                    Rt::Tokio => shmlink::tokio::accept(&listener).await,
                    _ => shmlink::smol::accept(&listener).await,
                }
                .map_err(|e| e.to_string())?;
                serve(rt, Arc::new(session)).await?;
            }
            Ok(())
        }
        "reader" => {
            let session = connect(rt, &opts).await?;
            let mut stream = session.open_stream().map_err(|e| e.to_string())?;
            framed::send(&stream, b"hello")
                .await
                .map_err(|e| e.to_string())?;
            let echo = framed::recv(&mut stream).await.map_err(|e| e.to_string())?;
            if echo.as_deref() != Some(&b"hello"[..]) {
                return Err(format!("bad echo {echo:?}"));
            }
            println!("reading");
            let start = Instant::now();
            match framed::recv(&mut stream).await {
                Err(e) if matches!(e, Error::PeerClosed) || e.is_session_closed() => {
                    eprintln!("pending read failed after {:?}: {e}", start.elapsed());
                    Ok(())
                }
                other => Err(format!("expected the peer's death, got {other:?}")),
            }
        }
        other => Err(format!("unknown role {other}")),
    }
}

async fn connect(rt: Rt, opts: &Opts) -> Result<AsyncSession, String> {
    match rt {
        Rt::Tokio => shmlink::tokio::connect(&opts.path, opts.config.clone()).await,
        _ => shmlink::smol::connect(&opts.path, opts.config.clone()).await,
    }
    .map_err(|e| e.to_string())
}

/// The client's counters for the test to check its preconditions (memory ran out, something
/// fell back): one line on stdout.
fn report(m: &shmlink::Metrics) {
    println!(
        "client-metrics alloc_errors={} fallbacks={}",
        m.stability.alloc_shm_error_count, m.stability.fallback_write_count
    );
}

fn check_free(session: &AsyncSession) -> Result<(), String> {
    // Our own slices come back once the server read them; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !session.all_buffers_free() {
        if Instant::now() > deadline {
            return Err(format!(
                "shared memory still in use at the end: {:?}",
                session.shared_memory_usage()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// One stream's echo check.
async fn echo_one(mut stream: AsyncStream, k: usize, sizes: Arc<Vec<usize>>) -> Result<(), String> {
    for (i, &size) in sizes.iter().enumerate() {
        let body = payload(size, i + k * 10);
        framed::send(&stream, &body)
            .await
            .map_err(|e| format!("stream {k}: send {size}: {e}"))?;
        match framed::recv(&mut stream).await {
            Ok(Some(echo)) if echo[..] == body[..] => {}
            Ok(Some(echo)) => {
                return Err(format!(
                    "stream {k}: echo of {size} differs ({} back)",
                    echo.len()
                ));
            }
            other => return Err(format!("stream {k}: echo of {size}: {other:?}")),
        }
    }
    Ok(())
}

/// `n` concurrent streams on one session: tasks on tokio's worker threads, one task of many
/// futures under the hand-written executor.
async fn echo_streams(
    rt: Rt,
    session: &Arc<AsyncSession>,
    n: usize,
    sizes: &[usize],
) -> Result<(), String> {
    let sizes = Arc::new(sizes.to_vec());
    // Every stream is opened before any sends: once one write falls back, the circuit
    // breaker refuses new streams on this session (Error::Unhealthy), as Go's does.
    let streams = (0..n)
        .map(|_| session.open_stream())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let jobs = streams.into_iter().enumerate();
    if rt == Rt::Tokio {
        let tasks: Vec<_> = jobs
            .map(|(k, stream)| tokio::spawn(echo_one(stream, k, Arc::clone(&sizes))))
            .collect();
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        Ok(())
    } else {
        let all = jobs.map(|(k, stream)| echo_one(stream, k, Arc::clone(&sizes)));
        futures_util::future::join_all(all)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, String>>()
            .map(|_| ())
    }
}

/// A writer sends `n` messages while a slower reader (pausing every 16 messages) checks the
/// echoes in order: the echoes pile up in shared memory (and, when it runs out, travel as
/// fallback) and none is lost or reordered.
async fn slow_reader(
    rt: Rt,
    session: &Arc<AsyncSession>,
    n: usize,
    sizes: &[usize],
) -> Result<(), String> {
    let stream = session.open_stream().map_err(|e| e.to_string())?;
    let (mut read, write) = stream.into_split();
    let sizes = sizes.to_vec();
    let sizes2 = sizes.clone();
    let writer = async move {
        for i in 0..n {
            let body = payload(sizes[i % sizes.len()], i);
            let mut r = write
                .reserve(4 + body.len())
                .await
                .map_err(|e| format!("reserve {i}: {e}"))?;
            r.write_at(0, &(body.len() as u32).to_be_bytes());
            r.write_at(4, &body);
            r.commit(4 + body.len())
                .await
                .map_err(|e| format!("send {i}: {e}"))?;
        }
        Ok::<_, String>(write)
    };
    let reader = async move {
        for i in 0..n {
            if i % 16 == 0 {
                pause(rt, Duration::from_millis(2)).await;
            }
            let len = read
                .read_bytes(4)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("early end")?;
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let body = read
                .read_bytes(len)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("early end")?;
            if body[..] != payload(sizes2[i % sizes2.len()], i)[..] {
                return Err(format!("message {i} differs or is out of order"));
            }
        }
        Ok::<_, String>(())
    };
    let (w, r) = futures_util::future::join(writer, reader).await;
    r?;
    drop(w?);
    Ok(())
}

async fn pause(rt: Rt, d: Duration) {
    match rt {
        Rt::Tokio => tokio::time::sleep(d).await,
        _ => {
            let _ = async_io_timer(d).await;
        }
    }
}

/// A timer for the hand-written executor: a thread that wakes the task.
async fn async_io_timer(d: Duration) {
    let at = Instant::now() + d;
    let mut armed = false;
    std::future::poll_fn(|cx| {
        if Instant::now() >= at {
            return std::task::Poll::Ready(());
        }
        if !armed {
            armed = true;
            let waker = cx.waker().clone();
            std::thread::spawn(move || {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                waker.wake();
            });
        }
        std::task::Poll::Pending
    })
    .await
}

async fn serve(rt: Rt, session: Arc<AsyncSession>) -> Result<(), String> {
    use futures_util::StreamExt;
    use futures_util::stream::FuturesUnordered;
    use std::task::Poll;
    if rt == Rt::Tokio {
        let mut tasks = Vec::new();
        loop {
            match session.accept_stream(None).await {
                Ok(stream) => tasks.push(tokio::spawn(echo_async(stream))),
                Err(e) if e.is_session_closed() => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        return Ok(());
    }
    // One task under the hand-written executor: accept and every echo polled together
    // (accept_stream is cancellation-safe, so a fresh accept future per turn loses nothing).
    let mut running = FuturesUnordered::new();
    let mut accepting = true;
    loop {
        let accept = session.accept_stream(None);
        let mut accept = std::pin::pin!(accept);
        let event = std::future::poll_fn(|cx| {
            if accepting {
                if let Poll::Ready(r) = accept.as_mut().poll(cx) {
                    return Poll::Ready(Some(Ok(r)));
                }
            }
            match running.poll_next_unpin(cx) {
                Poll::Ready(Some(r)) => Poll::Ready(Some(Err(r))),
                Poll::Ready(None) if !accepting => Poll::Ready(None),
                _ => Poll::Pending,
            }
        })
        .await;
        match event {
            Some(Ok(Ok(stream))) => running.push(echo_async(stream)),
            Some(Ok(Err(e))) if e.is_session_closed() => accepting = false,
            Some(Ok(Err(e))) => return Err(e.to_string()),
            Some(Err(done)) => {
                done?;
            }
            None => return Ok(()),
        }
    }
}

async fn echo_async(mut stream: AsyncStream) -> Result<usize, String> {
    let mut n = 0;
    while let Some(body) = framed::recv(&mut stream).await.map_err(|e| e.to_string())? {
        framed::send(&stream, &body)
            .await
            .map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}

fn blocking_client(opts: &Opts) -> Result<(), String> {
    let session = Session::connect(&opts.path, opts.config.clone()).map_err(|e| e.to_string())?;
    if let Some(n) = opts.slow {
        // No split halves in the blocking API: the reader trails the writer by a window.
        let mut stream = session.open_stream().map_err(|e| e.to_string())?;
        let window = 64;
        let mut next_read = 0;
        for i in 0..n + window {
            if i < n {
                let body = payload(opts.sizes[i % opts.sizes.len()], i);
                send_framed(&stream, &body).map_err(|e| format!("send {i}: {e}"))?;
            }
            if i >= window || i >= n {
                if next_read % 16 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                if next_read < n {
                    let body = recv_framed(&mut stream)
                        .map_err(|e| e.to_string())?
                        .ok_or("early end")?;
                    if body != payload(opts.sizes[next_read % opts.sizes.len()], next_read) {
                        return Err(format!("message {next_read} differs or is out of order"));
                    }
                    next_read += 1;
                }
            }
        }
        report(&session.metrics());
        return Ok(());
    }
    // Every stream is opened before any sends (see echo_streams).
    let streams = (0..opts.streams)
        .map(|_| session.open_stream())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(k, mut stream)| {
                scope.spawn(move || -> Result<(), String> {
                    check_echoes(&mut stream, &opts.sizes, k * 10)
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "stream thread panicked".to_owned())?)
    })?;
    report(&session.metrics());
    Ok(())
}

fn blocking_server(opts: &Opts) -> Result<(), String> {
    let listener = Listener::bind(&opts.path, Config::default()).map_err(|e| e.to_string())?;
    println!("ready");
    for _ in 0..opts.sessions {
        let session = listener.accept().map_err(|e| e.to_string())?;
        echo_session(&session, None).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn blocking_reader(opts: &Opts) -> Result<(), String> {
    let session = Session::connect(&opts.path, opts.config.clone()).map_err(|e| e.to_string())?;
    let mut stream = session.open_stream().map_err(|e| e.to_string())?;
    send_framed(&stream, b"hello").map_err(|e| e.to_string())?;
    let echo = recv_framed(&mut stream).map_err(|e| e.to_string())?;
    if echo.as_deref() != Some(&b"hello"[..]) {
        return Err(format!("bad echo {echo:?}"));
    }
    println!("reading");
    let start = Instant::now();
    match recv_framed(&mut stream) {
        Err(e) if matches!(e, Error::PeerClosed) || e.is_session_closed() => {
            eprintln!("pending read failed after {:?}: {e}", start.elapsed());
            Ok(())
        }
        other => Err(format!("expected the peer's death, got {other:?}")),
    }
}
