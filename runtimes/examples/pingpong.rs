//! 64-byte ping-pong between two processes on one runtime and sync mode, for looking at
//! what a round trip costs (for example `strace -f -c`, which counts the system calls of
//! both processes). The benchmark harness (`cargo run --release -p shmlink-bench`) is the
//! place for numbers; this is the smallest program that shows one mode's behaviour.
//!
//! ```text
//! cargo run --release --features tokio,smol --example pingpong -- blocking|tokio|smol event|adaptive|poll [round trips]
//! ```

use std::io::{BufRead, BufReader};
use std::time::Instant;

use shmlink::{Config, Listener, Session, SyncMode};

const SIZE: usize = 64;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: pingpong blocking|tokio|smol event|adaptive|poll [round trips]";
    let rt = args.first().ok_or(usage)?.clone();
    let sync = match args.get(1).map(String::as_str) {
        Some("event") => SyncMode::Event,
        Some("adaptive") => SyncMode::Adaptive,
        Some("poll") => SyncMode::Poll,
        _ => return Err(usage.into()),
    };
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let config = Config {
        sync,
        ..Config::default()
    };
    if let Ok(path) = std::env::var("PINGPONG_SERVER") {
        let listener = Listener::bind(&path, config)?;
        println!("ready");
        return serve(&rt, &listener);
    }
    let path = std::env::temp_dir().join(format!("shmlink-pingpong-{}.sock", std::process::id()));
    let mut server = std::process::Command::new(std::env::current_exe()?)
        .args(&args)
        .env("PINGPONG_SERVER", &path)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let elapsed = match rt.as_str() {
        "blocking" => {
            let session = Session::connect(&path, config)?;
            let mut stream = session.open_stream()?;
            let start = Instant::now();
            for _ in 0..n {
                stream.send(&[7u8; SIZE])?;
                let mut got = 0;
                while got < SIZE {
                    got += stream.read_view()?.ok_or("early end")?.len();
                }
            }
            let e = start.elapsed();
            println!(
                "wake-ups sent by the client: {}",
                session.metrics().performance.send_sync_event_count
            );
            e
        }
        "tokio" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async_client(true, &path, config, n))?,
        _ => async_io::block_on(async_client(false, &path, config, n))?,
    };
    server.wait()?;
    println!(
        "{rt} {sync:?}: {n} round trips of {SIZE} B, {:.2} us each",
        elapsed.as_secs_f64() * 1e6 / n as f64
    );
    Ok(())
}

async fn async_client(
    tokio: bool,
    path: &std::path::Path,
    config: Config,
    n: usize,
) -> Result<std::time::Duration, shmlink::Error> {
    let session = if tokio {
        shmlink::tokio::connect(path, config).await?
    } else {
        shmlink::smol::connect(path, config).await?
    };
    let mut stream = session.open_stream()?;
    let start = Instant::now();
    for _ in 0..n {
        stream.send(&[7u8; SIZE]).await?;
        let mut got = 0;
        while got < SIZE {
            got += stream
                .read_view()
                .await?
                .ok_or(shmlink::Error::StreamEnded)?
                .len();
        }
    }
    let e = start.elapsed();
    println!(
        "wake-ups sent by the client: {}",
        session.metrics().performance.send_sync_event_count
    );
    Ok(e)
}

fn serve(rt: &str, listener: &Listener) -> Result<(), Box<dyn std::error::Error>> {
    match rt {
        "blocking" => {
            let session = listener.accept()?;
            let mut stream = session.accept_stream(None)?;
            while let Some(view) = stream.read_view()? {
                let copy = view.to_vec();
                drop(view);
                stream.send(&copy)?;
            }
        }
        "tokio" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async_serve(true, listener))?,
        _ => async_io::block_on(async_serve(false, listener))?,
    }
    Ok(())
}

async fn async_serve(tokio: bool, listener: &Listener) -> Result<(), shmlink::Error> {
    let session = if tokio {
        shmlink::tokio::accept(listener).await?
    } else {
        shmlink::smol::accept(listener).await?
    };
    let mut stream = session.accept_stream(None).await?;
    while let Some(view) = stream.read_view().await? {
        let copy = view.to_vec();
        drop(view);
        stream.send(&copy).await?;
    }
    Ok(())
}
