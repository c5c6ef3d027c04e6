//! The peer process of the serving tests (`tests/tests/serving.rs`): a server that hands out
//! streams across all its sessions, and a load client, on each runtime.
//!
//! ```text
//! shmlink-serve-peer <blocking|tokio|smol> server <socket> [--fd N] [--tag] [--grace MS]
//!                    [--delay MS]
//! shmlink-serve-peer <blocking|tokio|smol> load <socket> [--sessions S] [--streams K]
//!                    [--requests R] [--buffer BYTES]
//! ```
//!
//! `server`: echoes framed messages (4-byte length + body) on every stream of every client
//! through `Listener::accept_stream` (blocking), `shmlink::tokio::serve`, or
//! `shmlink::smol::accept_stream` (one task under the hand-written executor); with `--tag` each
//! reply is this process's pid (4 bytes, big-endian) followed by the body; `--delay` holds
//! every reply that long (requests are in flight when a shutdown comes). With `--fd N` it
//! serves on an inherited listening socket instead of binding. Prints `ready`; a line on stdin
//! (or its end) shuts it down gracefully (`Listener::shutdown` with `--grace` ms, default
//! 1000), then it prints `stopped` and exits 0.
//!
//! `load`: S sessions with K concurrent streams each, every stream R requests of mixed sizes
//! checked byte for byte; prints `done N` (requests answered) and exits 0 only if all
//! matched.

use std::future::Future;
use std::io::BufRead;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use shmlink::{AsyncStream, Config, Error, Listener, Session, Stream};
use shmlink_tests::{exec, framed, payload, recv_framed, send_framed};

/// The sizes a load stream cycles through: one slice, several, and a chain.
const SIZES: [usize; 4] = [13, 600, 5000, 40_000];

#[derive(Clone, Copy, PartialEq, Debug)]
enum Rt {
    Blocking,
    Tokio,
    Smol,
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match args.first().map(String::as_str) {
        Some("blocking") => Rt::Blocking,
        Some("tokio") => Rt::Tokio,
        Some("smol") => Rt::Smol,
        _ => fail("usage: shmlink-serve-peer <blocking|tokio|smol> <server|load> <socket> ..."),
    };
    let path = args.get(2).cloned().unwrap_or_default();
    let result = match args.get(1).map(String::as_str) {
        Some("server") => server(rt, &path, &args),
        Some("load") => load(rt, &path, &args),
        _ => Err("unknown role".into()),
    };
    if let Err(e) = result {
        fail(&e);
    }
}

fn fail(e: &str) -> ! {
    eprintln!("shmlink-serve-peer: {e}");
    std::process::exit(1);
}

fn tokio_rt() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

// ------------------------------------------------------------------------------- server

fn server(rt: Rt, path: &str, args: &[String]) -> Result<(), String> {
    let config = Config::default();
    let listener = match arg::<i32>(args, "--fd") {
        Some(fd) => {
            use std::os::fd::FromRawFd;
            // SAFETY: the parent cleared close-on-exec on its listening socket and passed its
            // number; the fd is open in this process and nothing else here owns it.
            let socket = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
            Listener::from_std(socket, config)
        }
        None => Listener::bind(path, config),
    }
    .map_err(|e| e.to_string())?;
    let listener = Arc::new(listener);
    let tag = args.iter().any(|a| a == "--tag");
    let delay = Duration::from_millis(arg(args, "--delay").unwrap_or(0));
    let grace = Duration::from_millis(arg(args, "--grace").unwrap_or(1000));
    // A line on stdin, or its end, starts the graceful shutdown.
    let stopper = {
        let listener = Arc::clone(&listener);
        std::thread::spawn(move || {
            let _ = std::io::stdin().lock().lines().next();
            listener.shutdown(grace);
        })
    };
    println!("ready");
    // The runtime outlives `serve` (which returns as soon as the listener closes): the
    // handlers of streams already handed out finish their replies during the shutdown.
    let tokio = if rt == Rt::Tokio {
        Some(tokio_rt()?)
    } else {
        None
    };
    match rt {
        Rt::Blocking => listener
            .serve(move |stream| {
                let _ = echo_blocking(stream, tag, delay);
            })
            .map_err(|e| e.to_string())?,
        Rt::Tokio => tokio
            .as_ref()
            .expect("made above")
            .block_on(shmlink::tokio::serve(&listener, move |stream| async move {
                let _ = echo_async(stream, tag, delay, Rt::Tokio).await;
            }))
            .map_err(|e| e.to_string())?,
        Rt::Smol => exec::block_on(smol_server(&listener, tag, delay))?,
    }
    stopper.join().map_err(|_| "the stopper panicked")?;
    drop(tokio);
    println!("stopped");
    Ok(())
}

fn reply_of(body: &[u8], tag: bool) -> Vec<u8> {
    let mut reply = Vec::with_capacity(body.len() + 4);
    if tag {
        reply.extend_from_slice(&std::process::id().to_be_bytes());
    }
    reply.extend_from_slice(body);
    reply
}

fn echo_blocking(mut stream: Stream, tag: bool, delay: Duration) -> Result<(), Error> {
    while let Some(body) = recv_framed(&mut stream)? {
        std::thread::sleep(delay);
        send_framed(&stream, &reply_of(&body, tag))?;
    }
    Ok(())
}

async fn echo_async(
    mut stream: AsyncStream,
    tag: bool,
    delay: Duration,
    rt: Rt,
) -> Result<(), Error> {
    while let Some(body) = framed::recv(&mut stream).await? {
        if !delay.is_zero() {
            match rt {
                Rt::Tokio => tokio::time::sleep(delay).await,
                _ => {
                    async_io::Timer::after(delay).await;
                }
            }
        }
        framed::send(&stream, &reply_of(&body, tag)).await?;
    }
    Ok(())
}

/// Accepts and echoes in one task under the hand-written executor (accept_stream is
/// cancellation-safe, so a fresh accept future per turn loses nothing).
async fn smol_server(listener: &Listener, tag: bool, delay: Duration) -> Result<(), String> {
    let mut running = FuturesUnordered::new();
    let mut accepting = true;
    loop {
        let accept = shmlink::smol::accept_stream(listener);
        let mut accept = std::pin::pin!(accept);
        let event = std::future::poll_fn(|cx| {
            if accepting {
                if let Poll::Ready(r) = accept.as_mut().poll(cx) {
                    return Poll::Ready(Some(Some(r)));
                }
            }
            match running.poll_next_unpin(cx) {
                Poll::Ready(Some(_)) => Poll::Ready(Some(None)),
                Poll::Ready(None) if !accepting => Poll::Ready(None),
                _ => Poll::Pending,
            }
        })
        .await;
        match event {
            Some(Some(Ok(stream))) => running.push(echo_async(stream, tag, delay, Rt::Smol)),
            Some(Some(Err(Error::ClosedLocally))) => accepting = false,
            Some(Some(Err(e))) => return Err(e.to_string()),
            Some(None) => {}
            None => return Ok(()),
        }
    }
}

// --------------------------------------------------------------------------------- load

struct Load {
    path: String,
    config: Config,
    sessions: usize,
    streams: usize,
    requests: usize,
}

fn load(rt: Rt, path: &str, args: &[String]) -> Result<(), String> {
    let mut config = Config::default();
    if let Some(b) = arg(args, "--buffer") {
        config.buffer_capacity = b;
    }
    let load = Load {
        path: path.to_owned(),
        config,
        sessions: arg(args, "--sessions").unwrap_or(16),
        streams: arg(args, "--streams").unwrap_or(16),
        requests: arg(args, "--requests").unwrap_or(8),
    };
    let answered = match rt {
        Rt::Blocking => load_blocking(&load)?,
        Rt::Tokio => tokio_rt()?.block_on(load_async(rt, &load))?,
        Rt::Smol => exec::block_on(load_async(rt, &load))?,
    };
    println!("done {answered}");
    Ok(())
}

fn request(stream: usize, i: usize) -> Vec<u8> {
    payload(SIZES[(stream + i) % SIZES.len()], stream * 1000 + i)
}

fn load_blocking(load: &Load) -> Result<usize, String> {
    let mut sessions = Vec::new();
    for _ in 0..load.sessions {
        let s = Session::connect(&load.path, load.config.clone()).map_err(|e| e.to_string())?;
        sessions.push(Arc::new(s));
    }
    let mut workers = Vec::new();
    for (s, session) in sessions.iter().enumerate() {
        for k in 0..load.streams {
            let (session, requests) = (Arc::clone(session), load.requests);
            let id = s * load.streams + k;
            workers.push(std::thread::spawn(move || -> Result<usize, String> {
                let mut stream = session.open_stream().map_err(|e| e.to_string())?;
                for i in 0..requests {
                    let body = request(id, i);
                    send_framed(&stream, &body).map_err(|e| format!("stream {id}: {e}"))?;
                    match recv_framed(&mut stream).map_err(|e| format!("stream {id}: {e}"))? {
                        Some(echo) if echo == body => {}
                        other => {
                            return Err(format!(
                                "stream {id} request {i}: bad echo {:?}",
                                other.map(|e| e.len())
                            ));
                        }
                    }
                }
                Ok(requests)
            }));
        }
    }
    let mut answered = 0;
    for w in workers {
        answered += w.join().map_err(|_| "a load thread panicked")??;
    }
    Ok(answered)
}

async fn load_async(rt: Rt, load: &Load) -> Result<usize, String> {
    let mut sessions = Vec::new();
    for _ in 0..load.sessions {
        let s = match rt {
            Rt::Tokio => shmlink::tokio::connect(&load.path, load.config.clone()).await,
            _ => shmlink::smol::connect(&load.path, load.config.clone()).await,
        }
        .map_err(|e| e.to_string())?;
        sessions.push(Arc::new(s));
    }
    let one = |session: Arc<shmlink::AsyncSession>, id: usize, requests: usize| async move {
        let mut stream = session.open_stream().map_err(|e| e.to_string())?;
        for i in 0..requests {
            let body = request(id, i);
            framed::send(&stream, &body)
                .await
                .map_err(|e| format!("stream {id}: {e}"))?;
            match framed::recv(&mut stream)
                .await
                .map_err(|e| format!("stream {id}: {e}"))?
            {
                Some(echo) if echo[..] == body[..] => {}
                other => {
                    return Err(format!(
                        "stream {id} request {i}: bad echo {:?}",
                        other.map(|e| e.len())
                    ));
                }
            }
        }
        Ok::<usize, String>(requests)
    };
    let mut all = FuturesUnordered::new();
    let mut tasks = Vec::new();
    for (s, session) in sessions.iter().enumerate() {
        for k in 0..load.streams {
            let fut = one(Arc::clone(session), s * load.streams + k, load.requests);
            if rt == Rt::Tokio {
                tasks.push(tokio::spawn(fut));
            } else {
                all.push(fut);
            }
        }
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.map_err(|e| e.to_string())??;
    }
    while let Some(r) = all.next().await {
        answered += r?;
    }
    Ok(answered)
}
