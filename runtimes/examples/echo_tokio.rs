//! Echo over shmlink on tokio: a server that echoes every stream and a client that checks
//! the echoes, framed as a 4-byte big-endian length and the payload (shmipc-go's examples'
//! framing, so either side also talks to Go).
//!
//! `server` runs a callback per stream (`shmlink::tokio::serve`); `client` checks sizes from 1 B
//! to 4 MiB on one stream; `pooled` is what a service does: a `SessionManager` of 4 sessions
//! and 32 concurrent tasks, each request on a pooled stream that goes back to its pool.
//!
//! ```text
//! cargo run --features tokio --example echo_tokio -- server /tmp/shmlink-echo.sock
//! cargo run --features tokio --example echo_tokio -- client /tmp/shmlink-echo.sock
//! cargo run --features tokio --example echo_tokio -- pooled /tmp/shmlink-echo.sock
//! ```

use shmlink::{AsyncStream, Config, Error, Listener, ManagerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: echo_tokio server|client|pooled <socket path>";
    let path = args.get(1).ok_or(usage)?;
    match args[0].as_str() {
        "server" => server(path).await,
        "client" => client(path).await,
        "pooled" => pooled(path).await,
        _ => Err(usage.into()),
    }
}

async fn server(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let listener = Listener::bind(path, Config::default())?;
    eprintln!("echo_tokio: listening on {path}");
    // A task per stream, from every client's sessions.
    shmlink::tokio::serve(&listener, |stream| async move {
        if let Err(e) = echo(stream).await {
            eprintln!("echo_tokio: {e}");
        }
    })
    .await?;
    Ok(())
}

/// The largest message this example accepts: the length prefix comes from the peer, and a
/// server must not allocate whatever a client claims.
const MAX_MESSAGE: usize = 16 << 20;

async fn echo(mut stream: AsyncStream) -> Result<(), Error> {
    while let Some(len) = stream.read_bytes(4).await? {
        let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if n > MAX_MESSAGE {
            return Err(Error::TooLarge {
                len: n,
                max: MAX_MESSAGE as u32,
            });
        }
        // Zero copy when the message lies in one slice of shared memory.
        let body = stream.read_bytes(n).await?.ok_or(Error::StreamEnded)?;
        // One reservation, written in place, one queue element.
        let mut r = stream.reserve(4 + n).await?;
        r.write_at(0, &len);
        r.write_at(4, &body);
        drop(body); // its slice goes back to the peer's free list
        r.commit(4 + n).await?;
    }
    Ok(())
}

async fn client(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let session = shmlink::tokio::connect(path, Config::default()).await?;
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

/// 32 tasks share one pool of 4 sessions; every request borrows a stream and returns it.
async fn pooled(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let manager = shmlink::tokio::manager(
        path,
        Config::default(),
        ManagerConfig {
            sessions: 4,
            ..ManagerConfig::default()
        },
    )
    .await?;
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for t in 0..32usize {
        let manager = manager.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..100usize {
                let size = 1 + (t * 100 + i) * 37 % 20_000;
                let body: Vec<u8> = (0..size).map(|k| (k + t + i) as u8).collect();
                let mut stream = manager.get_stream()?; // back to its pool when dropped
                let mut r = stream.reserve(4 + size).await?;
                r.write_at(0, &(size as u32).to_be_bytes());
                r.write_at(4, &body);
                r.commit(4 + size).await?;
                let len = stream.read_bytes(4).await?.ok_or(Error::StreamEnded)?;
                let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let echo = stream.read_bytes(n).await?.ok_or(Error::StreamEnded)?;
                assert!(echo[..] == body[..], "echo of {size} bytes differs");
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let m = manager.metrics();
    println!(
        "3200 pooled requests in {:?} over {} sessions; {} bytes out, {} fallbacks",
        start.elapsed(),
        manager.live_sessions(),
        m.performance.out_flow_bytes,
        m.stability.fallback_write_count
    );
    Ok(())
}
