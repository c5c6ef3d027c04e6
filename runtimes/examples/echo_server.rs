//! Echo server: for every stream, reads messages framed as a 4-byte big-endian length and the
//! payload, and sends each one back the same way (as shmipc-go's examples frame them).
//!
//! ```text
//! cargo run --example echo_server -- /tmp/shmlink-echo.sock [--memfd|--devshm]
//! ```
//! The memory mode is the client's choice; the flag is accepted for symmetry with the client.

use std::io::Read;

use shmlink::{Config, Listener, Session, Stream};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .ok_or("usage: echo_server <socket path> [--memfd|--devshm]")?;
    let once = args.iter().any(|a| a == "--once");
    let listener = Listener::bind(path, Config::default())?;
    eprintln!("echo_server: listening on {path}");
    loop {
        let session = listener.accept()?;
        eprintln!(
            "echo_server: session up (protocol version {})",
            session.version()
        );
        let worker = std::thread::spawn(move || serve_session(session));
        if once {
            worker.join().map_err(|_| "session thread panicked")??;
            return Ok(());
        }
    }
}

fn serve_session(session: Session) -> Result<(), shmlink::Error> {
    let mut workers = Vec::new();
    loop {
        match session.accept_stream(None) {
            Ok(stream) => workers.push(std::thread::spawn(move || echo(stream))),
            Err(reason) if reason.is_session_closed() => {
                let m = session.metrics();
                eprintln!(
                    "echo_server: session closed: {reason} ({} bytes in, {} out, fallback {} read / {} written)",
                    m.performance.in_flow_bytes,
                    m.performance.out_flow_bytes,
                    m.stability.fallback_read_count,
                    m.stability.fallback_write_count
                );
                break;
            }
            Err(e) => return Err(e),
        }
    }
    for w in workers {
        if let Ok(Err(e)) = w.join() {
            eprintln!("echo_server: stream failed: {e}");
        }
    }
    Ok(())
}

/// The largest message this example accepts: the length prefix comes from the peer, and a
/// server must not allocate whatever a client claims.
const MAX_MESSAGE: usize = 16 << 20;

/// Echoes framed messages until the client closes the stream.
fn echo(mut stream: Stream) -> Result<(), shmlink::Error> {
    let mut len = [0u8; 4];
    let mut payload = Vec::new();
    loop {
        if let Err(e) = stream.read_exact(&mut len) {
            return match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Ok(()), // the client closed the stream
                _ => Err(e.into()),
            };
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_MESSAGE {
            return Err(shmlink::Error::TooLarge {
                len: n,
                max: MAX_MESSAGE as u32,
            });
        }
        payload.resize(n, 0);
        // An end here is the client closing mid-message: Error::StreamEnded says so.
        stream.read_exact(&mut payload)?;
        // One flush per echo: length and payload written in place into shared memory.
        let mut reply = stream.reserve(4 + n)?;
        reply.write_at(0, &len);
        reply.write_at(4, &payload);
        reply.commit(4 + n)?;
    }
}
