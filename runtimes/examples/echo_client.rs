//! Echo client: sends messages of several sizes (some larger than the largest slice, so they
//! travel as chains of slices), each framed as a 4-byte big-endian length and the payload, and
//! checks every echo byte for byte.
//!
//! ```text
//! cargo run --example echo_client -- /tmp/shmlink-echo.sock --memfd
//! cargo run --example echo_client -- /tmp/shmlink-echo.sock --devshm
//! ```

use std::io::Read;

use shmlink::{Config, MemMode, Session};

const SIZES: [usize; 8] = [1, 100, 8_000, 8_172, 131_052, 200_000, 1 << 20, 4 << 20];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: echo_client <socket path> --memfd|--devshm";
    let path = args.iter().find(|a| !a.starts_with("--")).ok_or(usage)?;
    let mem_mode = match args
        .iter()
        .find(|a| a.starts_with("--"))
        .map(String::as_str)
    {
        Some("--memfd") | None => MemMode::Memfd,
        Some("--devshm") => MemMode::File,
        Some(other) => return Err(format!("unknown option {other}; {usage}").into()),
    };
    let config = Config {
        mem_mode,
        ..Config::default()
    };
    let session = Session::connect(path, config)?;
    let mut stream = session.open_stream()?;
    for (i, &size) in SIZES.iter().enumerate() {
        let payload: Vec<u8> = (0..size).map(|k| (k * 31 + i * 7) as u8).collect();
        let mut request = stream.reserve(4 + size)?;
        request.write_at(0, &(size as u32).to_be_bytes());
        request.write_at(4, &payload);
        request.commit(4 + size)?;

        let mut len = [0u8; 4];
        stream.read_exact(&mut len)?;
        let n = u32::from_be_bytes(len) as usize;
        let mut echo = vec![0u8; n];
        stream.read_exact(&mut echo)?;
        if echo != payload {
            return Err(format!("echo of {size} bytes differs from what was sent").into());
        }
        println!("echo ok: {size} bytes");
    }
    stream.close();
    let metrics = session.metrics();
    println!(
        "done: {} bytes out, {} bytes in, {} fallback writes, protocol version {}",
        metrics.performance.out_flow_bytes,
        metrics.performance.in_flow_bytes,
        metrics.stability.fallback_write_count,
        session.version()
    );
    Ok(())
}
