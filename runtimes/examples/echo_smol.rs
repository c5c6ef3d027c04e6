//! Echo over shmlink with the `smol` feature (async-io), driven here by `async_io::block_on`
//! on plain threads: no executor crate at all. Any executor works the same way (smol,
//! async-executor, `futures`' block_on, a hand-written one). Framing: a 4-byte big-endian
//! length and the payload.
//!
//! `server` runs a callback per stream (`shmlink::smol::serve`, each task on a thread of its
//! own here); `client` checks sizes from 1 B to 4 MiB on one stream; `pooled` shares a
//! `SessionManager` of 4 sessions between 8 threads, each request on a pooled stream.
//!
//! ```text
//! cargo run --features smol --example echo_smol -- server /tmp/shmlink-echo.sock
//! cargo run --features smol --example echo_smol -- client /tmp/shmlink-echo.sock
//! cargo run --features smol --example echo_smol -- pooled /tmp/shmlink-echo.sock
//! ```

use futures_io::{AsyncRead, AsyncWrite};
use shmlink::{AsyncStream, Config, Error, Listener, ManagerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: echo_smol server|client|pooled <socket path>";
    let path = args.get(1).ok_or(usage)?.clone();
    match args[0].as_str() {
        "server" => server(&path),
        "client" => async_io::block_on(client(&path)),
        "pooled" => pooled(&path),
        _ => Err(usage.into()),
    }
}

fn server(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let listener = Listener::bind(path, Config::default())?;
    eprintln!("echo_smol: listening on {path}");
    // No executor crate: each stream's task runs on a thread of its own with async-io's
    // block_on (async-io's reactor serves them all). With smol, pass
    // `|task| ex.spawn(task).detach()` instead.
    let spawn = |task| {
        std::thread::spawn(move || async_io::block_on(task));
    };
    async_io::block_on(shmlink::smol::serve(
        &listener,
        spawn,
        |stream| async move {
            if let Err(e) = echo(stream).await {
                eprintln!("echo_smol: {e}");
            }
        },
    ))?;
    Ok(())
}

/// Echo through the futures-io traits (copies), as a generic `AsyncRead + AsyncWrite` user
/// would; see `echo_tokio` for the zero-copy methods.
async fn echo(mut stream: AsyncStream) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 4];
        if let Err(e) = read_exact(&mut stream, &mut len).await {
            return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Ok(())
            } else {
                Err(e)
            };
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_MESSAGE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a message of {n} bytes is over this example's {MAX_MESSAGE}"),
            ));
        }
        let mut body = vec![0u8; n];
        read_exact(&mut stream, &mut body).await?;
        write_all(&mut stream, &len).await?;
        write_all(&mut stream, &body).await?;
    }
}

async fn read_exact(s: &mut AsyncStream, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_read(cx, buf)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
    }
    Ok(())
}

async fn write_all(s: &mut AsyncStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_write(cx, buf)).await?;
        buf = &buf[n..];
    }
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_flush(cx)).await
}

/// The largest message this example accepts: the length prefix comes from the peer, and a
/// server must not allocate whatever a client claims.
const MAX_MESSAGE: usize = 16 << 20;

async fn client(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let session = shmlink::smol::connect(path, Config::default()).await?;
    let mut stream = session.open_stream()?;
    for size in [1usize, 100, 8_172, 131_052, 1 << 20, 4 << 20] {
        let body: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
        let mut r = stream.reserve(4 + size).await?;
        r.write_at(0, &(size as u32).to_be_bytes());
        r.write_at(4, &body);
        r.commit(4 + size).await?;
        let len = stream.read_bytes(4).await?.ok_or(Error::StreamEnded)?;
        let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let echo = stream.read_bytes(n).await?.ok_or(Error::StreamEnded)?;
        assert!(echo[..] == body[..], "echo of {size} bytes differs");
        println!("{size} bytes: echoed");
    }
    Ok(())
}

/// 8 threads share one pool of 4 sessions; every request borrows a stream and returns it.
fn pooled(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let manager = async_io::block_on(shmlink::smol::manager(
        path,
        Config::default(),
        ManagerConfig {
            sessions: 4,
            ..ManagerConfig::default()
        },
    ))?;
    let start = std::time::Instant::now();
    let threads: Vec<_> = (0..8usize)
        .map(|t| {
            let manager = manager.clone();
            std::thread::spawn(move || {
                async_io::block_on(async {
                    for i in 0..100usize {
                        let size = 1 + (t * 100 + i) * 37 % 20_000;
                        let body: Vec<u8> = (0..size).map(|k| (k + t + i) as u8).collect();
                        let mut stream = manager.get_stream()?;
                        write_all(&mut stream, &(size as u32).to_be_bytes()).await?;
                        write_all(&mut stream, &body).await?;
                        let mut len = [0u8; 4];
                        read_exact(&mut stream, &mut len).await?;
                        let mut echo = vec![0u8; u32::from_be_bytes(len) as usize];
                        read_exact(&mut stream, &mut echo).await?;
                        assert!(echo == body, "echo of {size} bytes differs");
                    }
                    Ok::<_, std::io::Error>(())
                })
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a client thread panicked")??;
    }
    println!(
        "800 pooled requests in {:?} over {} sessions",
        start.elapsed(),
        manager.live_sessions()
    );
    Ok(())
}
