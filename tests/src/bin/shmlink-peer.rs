//! A peer process for the cross-process tests.
//!
//! ```text
//! shmlink-peer server <socket> [--sessions N] [--close-after K]
//! shmlink-peer client <socket> --memfd|--devshm --prefix P [--sessions N] [--streams N]
//!                     [--sizes a,b,c] [--repeat R] [--expect-close-after K]
//! ```
//! Exits 0 only if every echo matched (client) or every session ended cleanly (server).

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
        _ => Err("usage: shmlink-peer server|client <socket> ...".to_owned()),
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
