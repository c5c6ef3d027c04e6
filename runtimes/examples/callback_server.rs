//! A blocking echo server written as a callback per stream (`Listener::serve`), with a
//! graceful shutdown: when stdin closes (or a line arrives), the listener stops accepting,
//! streams already handed out get up to two seconds to finish, and every client takes its
//! last replies before its session closes. Framing: a 4-byte big-endian length and the
//! payload, so `echo_client`, `echo_tokio client|pooled` and shmipc-go clients all work.
//!
//! ```text
//! cargo run --example callback_server -- /tmp/shmlink-echo.sock
//! ```

use std::io::{BufRead, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use shmlink::{Config, Listener, Stream};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: callback_server <socket path>")?;
    let listener = Arc::new(Listener::bind(&path, Config::default())?);
    eprintln!("callback_server: listening on {path}; close stdin to stop");
    let stopper = {
        let listener = Arc::clone(&listener);
        std::thread::spawn(move || {
            let _ = std::io::stdin().lock().lines().next();
            listener.shutdown(Duration::from_secs(2));
        })
    };
    // Each stream of each client on a thread of its own, until the listener closes.
    listener.serve(|stream| {
        if let Err(e) = echo(stream) {
            eprintln!("callback_server: {e}");
        }
    })?;
    stopper.join().map_err(|_| "the stopper panicked")?;
    eprintln!("callback_server: stopped");
    Ok(())
}

/// The largest message this example accepts: the length prefix comes from the peer, and a
/// server must not allocate whatever a client claims.
const MAX_MESSAGE: usize = 16 << 20;

fn echo(mut stream: Stream) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 4];
        match stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let n = u32::from_be_bytes(len) as usize;
        if n > MAX_MESSAGE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a message of {n} bytes is over this example's {MAX_MESSAGE}"),
            ));
        }
        let mut body = vec![0u8; n];
        stream.read_exact(&mut body)?;
        // One reservation: the reply is a single message, as the client expects.
        let mut reply = stream.reserve(4 + body.len())?;
        reply.write_all(&len)?;
        reply.write_all(&body)?;
        reply.commit_written()?;
    }
}
