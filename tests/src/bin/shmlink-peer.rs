//! A peer process for the cross-process tests.
//!
//! ```text
//! shmlink-peer server <socket> [--sessions N] [--close-after K]
//! shmlink-peer client <socket> --memfd|--devshm --prefix P [--sessions N] [--streams N]
//!                     [--sizes a,b,c] [--repeat R] [--expect-close-after K]
//! shmlink-peer die <client|server> <socket> <handshake|busy|hold> [--devshm] [--prefix P]
//! ```
//! Exits 0 only if every echo matched (client) or every session ended cleanly (server).
//!
//! `die` is the peer that the peer-death tests kill -9: it reaches its phase, prints `ready`,
//! and stays in it until killed. `handshake`: stops half way through the handshake (a client
//! after its first frame; a server after asking for the fds, which stay in flight). `busy`:
//! one stream carrying 1 MiB messages to the other side while a second thread reads
//! everything the other side sends. `hold`: reads and keeps every message (the slices stay
//! held) and never writes.

use shmlink::{Config, Listener, MemMode, Session};
use shmlink_tests::{check_echoes, echo_session, payload, recv_framed, send_framed};

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("server") => server(&args),
        Some("client") => client(&args),
        Some("die") => die(&args),
        _ => Err("usage: shmlink-peer server|client|die <socket> ...".to_owned()),
    };
    if let Err(e) = result {
        eprintln!("shmlink-peer: {e}");
        std::process::exit(1);
    }
}

fn server(args: &[String]) -> Result<(), String> {
    let path = args.get(1).ok_or("missing socket path")?;
    let sessions: usize = arg(args, "--sessions").unwrap_or(1);
    let limit: Option<usize> = arg(args, "--close-after");
    let listener = Listener::bind(path, Config::default()).map_err(|e| e.to_string())?;
    println!("ready");
    let mut workers = Vec::new();
    for _ in 0..sessions {
        let session = listener.accept().map_err(|e| e.to_string())?;
        workers.push(std::thread::spawn(move || {
            let n = echo_session(&session, limit)?;
            if !session.all_buffers_free() {
                return Err(shmlink::Error::Io(std::io::Error::other(
                    "buffers not all free at the end",
                )));
            }
            Ok(n)
        }));
    }
    for w in workers {
        w.join()
            .map_err(|_| "session thread panicked")?
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn client(args: &[String]) -> Result<(), String> {
    let path = args.get(1).ok_or("missing socket path")?.clone();
    let mode = if args.iter().any(|a| a == "--devshm") {
        MemMode::File
    } else {
        MemMode::Memfd
    };
    let mut config = Config {
        mem_mode: mode,
        ..Config::default()
    };
    if let Some(prefix) = arg::<String>(args, "--prefix") {
        config.path_prefix = prefix;
    }
    let sessions: usize = arg(args, "--sessions").unwrap_or(1);
    let streams: usize = arg(args, "--streams").unwrap_or(1);
    let sizes: Vec<usize> = arg::<String>(args, "--sizes")
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 100, 8172, 200_000]);
    let expect_close: Option<usize> = arg(args, "--expect-close-after");
    let repeat: usize = arg(args, "--repeat").unwrap_or(1);
    let sizes: Vec<usize> = sizes
        .iter()
        .copied()
        .cycle()
        .take(sizes.len() * repeat)
        .collect();

    let mut workers = Vec::new();
    for s in 0..sessions {
        let session = Session::connect(&path, config.clone()).map_err(|e| e.to_string())?;
        let sizes = sizes.clone();
        workers.push(std::thread::spawn(move || -> Result<(), String> {
            std::thread::scope(|scope| {
                let mut handles = Vec::new();
                for k in 0..streams {
                    let session = &session;
                    let sizes = &sizes;
                    handles.push(scope.spawn(move || -> Result<(), String> {
                        let mut stream = session.open_stream().map_err(|e| e.to_string())?;
                        match expect_close {
                            None => check_echoes(&mut stream, sizes, s * 1000 + k * 10),
                            Some(k) => {
                                check_echoes(&mut stream, &sizes[..k], 0)?;
                                // The server closes after k echoes: the next read sees the end,
                                // and writing is refused once the close has arrived.
                                let end = recv_framed(&mut stream);
                                if send_framed(&stream, &payload(10, 99)).is_ok() {
                                    return Err("write after the peer closed succeeded".into());
                                }
                                match end {
                                    Ok(None) => Ok(()),
                                    other => Err(format!("expected end of stream, got {other:?}")),
                                }
                            }
                        }
                    }));
                }
                handles
                    .into_iter()
                    .try_for_each(|h| h.join().map_err(|_| "stream thread panicked".to_owned())?)
            })?;
            // Close the session and wait until the server's view of shared memory is clean.
            drop(session);
            Ok(())
        }));
    }
    for w in workers {
        w.join().map_err(|_| "session thread panicked")??;
    }
    Ok(())
}

/// Stays in the given phase until killed (see the module docs).
fn die(args: &[String]) -> Result<(), String> {
    use std::io::{Read, Write};
    let role = args.get(1).ok_or("missing role")?.as_str();
    let path = args.get(2).ok_or("missing socket path")?.clone();
    let phase = args.get(3).ok_or("missing phase")?.as_str();
    let forever = || -> ! {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    };
    // The 8-byte frames of the handshake, as shmipc writes them.
    let frame = |kind: u8| [0, 0, 0, 8, 0x77, 0x58, 3, kind];
    if phase == "handshake" {
        if role == "client" {
            let mut conn =
                std::os::unix::net::UnixStream::connect(&path).map_err(|e| e.to_string())?;
            conn.write_all(&frame(4)).map_err(|e| e.to_string())?;
            println!("ready");
            forever();
        }
        let listener = std::os::unix::net::UnixListener::bind(&path).map_err(|e| e.to_string())?;
        println!("listening");
        let (mut conn, _) = listener.accept().map_err(|e| e.to_string())?;
        let mut head = [0u8; 8];
        conn.read_exact(&mut head).map_err(|e| e.to_string())?;
        conn.write_all(&frame(4)).map_err(|e| e.to_string())?;
        // The paths frame: its length, then the rest.
        conn.read_exact(&mut head).map_err(|e| e.to_string())?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let mut rest = vec![0u8; len.saturating_sub(8)];
        conn.read_exact(&mut rest).map_err(|e| e.to_string())?;
        conn.write_all(&frame(7)).map_err(|e| e.to_string())?;
        println!("ready");
        forever();
    }
    let mut config = Config::default();
    if args.iter().any(|a| a == "--devshm") {
        config.mem_mode = MemMode::File;
    }
    if let Some(prefix) = arg::<String>(args, "--prefix") {
        config.path_prefix = prefix;
    }
    // Two streams: on `down` the peer (this process) writes, on `up` the other side does.
    // The client opens both and says "go" on each, so the server accepts them in order.
    let (_listener, _session, down, mut up) = if role == "client" {
        let session = Session::connect(&path, config).map_err(|e| e.to_string())?;
        let down = session.open_stream().map_err(|e| e.to_string())?;
        send_framed(&down, b"go").map_err(|e| e.to_string())?;
        let up = session.open_stream().map_err(|e| e.to_string())?;
        send_framed(&up, b"go").map_err(|e| e.to_string())?;
        (None, session, down, up)
    } else {
        let listener = Listener::bind(&path, config).map_err(|e| e.to_string())?;
        println!("listening");
        let session = listener.accept().map_err(|e| e.to_string())?;
        let down = session.accept_stream(None).map_err(|e| e.to_string())?;
        let up = session.accept_stream(None).map_err(|e| e.to_string())?;
        (Some(listener), session, down, up)
    };
    match phase {
        "busy" => {
            std::thread::spawn(move || while let Ok(Some(_)) = up.read_view() {});
            println!("ready");
            let body = payload(1 << 20, 1);
            loop {
                send_framed(&down, &body).map_err(|e| e.to_string())?;
            }
        }
        "hold" => {
            println!("ready");
            let mut held = Vec::new();
            while let Ok(Some(view)) = up.read_view() {
                held.push(view);
            }
            forever();
        }
        other => Err(format!("unknown phase {other}")),
    }
}
