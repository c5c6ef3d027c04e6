//! Shared pieces of shmlink's cross-process tests: the echo protocol (4-byte big-endian
//! length + payload, as shmipc-go's examples) on both ends, and a deterministic payload.

use std::io::Read;

pub mod exec;

use shmlink::{Error, Session, Stream};

/// The payload of message `index` of `size` bytes: a pattern that differs per message.
pub fn payload(size: usize, index: usize) -> Vec<u8> {
    (0..size)
        .map(|k| (k.wrapping_mul(31) ^ index.wrapping_mul(131)) as u8)
        .collect()
}

/// Sends one framed message as a single flush.
pub fn send_framed(stream: &Stream, body: &[u8]) -> Result<(), Error> {
    let mut r = stream.reserve(4 + body.len())?;
    r.write_at(0, &(body.len() as u32).to_be_bytes());
    r.write_at(4, body);
    r.commit(4 + body.len())
}

/// Reads one framed message; `None` if the stream ended cleanly before it.
pub fn recv_framed(stream: &mut Stream) -> Result<Option<Vec<u8>>, Error> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Echoes framed messages on `stream` until the peer closes it; after `limit` messages the
/// server closes the stream itself. Returns how many were echoed.
pub fn echo_stream(mut stream: Stream, limit: Option<usize>) -> Result<usize, Error> {
    let mut n = 0;
    while let Some(body) = recv_framed(&mut stream)? {
        send_framed(&stream, &body)?;
        n += 1;
        if limit == Some(n) {
            break;
        }
    }
    stream.close();
    Ok(n)
}

/// Serves every stream of `session` with [`echo_stream`] until the session closes.
pub fn echo_session(session: &Session, limit: Option<usize>) -> Result<usize, Error> {
    let mut workers = Vec::new();
    loop {
        match session.accept_stream(None) {
            Ok(stream) => workers.push(std::thread::spawn(move || echo_stream(stream, limit))),
            Err(e) if e.is_session_closed() => break,
            Err(e) => return Err(e),
        }
    }
    let mut total = 0;
    for w in workers {
        total += w
            .join()
            .map_err(|_| Error::Io(std::io::Error::other("echo thread panicked")))??;
    }
    Ok(total)
}

/// Sends each size on `stream` and checks the echo byte for byte.
pub fn check_echoes(stream: &mut Stream, sizes: &[usize], salt: usize) -> Result<(), String> {
    for (i, &size) in sizes.iter().enumerate() {
        let body = payload(size, i + salt);
        send_framed(stream, &body).map_err(|e| format!("send {size}: {e}"))?;
        match recv_framed(stream).map_err(|e| format!("recv {size}: {e}"))? {
            Some(echo) if echo == body => {}
            Some(echo) => {
                return Err(format!(
                    "echo of {size} bytes differs ({} bytes back)",
                    echo.len()
                ));
            }
            None => return Err(format!("stream ended before the echo of {size} bytes")),
        }
    }
    Ok(())
}

/// Waits (at most 20 s) until `listener` has counted `n` failed handshakes, then returns the
/// recent failures; panics naming what it saw if they do not come.
pub fn wait_failures(listener: &shmlink::Listener, n: u64) -> Vec<shmlink::HandshakeFailure> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while listener.failed_handshakes() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} failed handshakes: {:?}",
            listener.failed_handshakes(),
            listener.recent_failures()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    listener.recent_failures()
}

/// A name unique to this process and moment, for sockets and region prefixes.
pub fn unique(name: &str) -> String {
    // The clock alone can repeat for two tests starting at once: a counter makes it unique.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // SYNC: a unique counter; only atomicity matters, nothing is published through it.
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{name}-{}-{nanos}-{n}", std::process::id())
}

/// The seed of a test's random choices: `SHMLINK_TEST_SEED` if set (to replay a run), else
/// the clock; printed either way.
pub fn test_seed() -> u64 {
    let seed = std::env::var("SHMLINK_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("SHMLINK_TEST_SEED={seed}");
    seed
}

/// A fresh unix socket path in the temporary directory.
pub fn socket_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}.sock", unique(name)))
}

/// Files in /dev/shm whose names start with the file name of `prefix`.
pub fn leftover_files(prefix: &str) -> Vec<String> {
    let stem = prefix.rsplit('/').next().unwrap_or(prefix).to_owned();
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&stem))
                .collect()
        })
        .unwrap_or_default()
}

/// [`leftover_files`] once they are gone or two seconds have passed: a dropped session's
/// last reference may be held for a moment by the `shmlink-monitor` thread (an idle drain or
/// a check in progress), which then releases it.
pub fn leftover_files_settled(prefix: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let left = leftover_files(prefix);
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The async twins of the framing helpers, for [`shmlink::AsyncStream`] and its halves.
pub mod framed {
    use shmlink::{AsyncStream, Error};

    /// Sends one framed message as a single flush, written in place.
    pub async fn send(stream: &AsyncStream, body: &[u8]) -> Result<(), Error> {
        let mut r = stream.reserve(4 + body.len()).await?;
        r.write_at(0, &(body.len() as u32).to_be_bytes());
        r.write_at(4, body);
        r.commit(4 + body.len()).await
    }

    /// Reads one framed message (zero copy when it lies in one slice); `None` at the end.
    pub async fn recv(stream: &mut AsyncStream) -> Result<Option<bytes::Bytes>, Error> {
        let Some(len) = stream.read_bytes(4).await? else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        stream
            .read_bytes(len)
            .await?
            .map(Some)
            .ok_or(Error::StreamEnded)
    }
}

/// Waits (at most `limit`) for a peer process to exit successfully; panics with its stderr
/// if it failed, and kills it if it overstays.
pub fn wait_success(mut child: std::process::Child, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            assert!(status.success(), "peer failed ({status}): {err}");
            return;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("peer did not finish within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A test's own deadline: if the guard is not dropped within `limit`, the test process
/// prints what it waited for and aborts, so a hang fails in seconds instead of holding CI
/// until its own limit. Every runtime test starts with one.
pub fn deadline(what: &'static str, limit: std::time::Duration) -> Deadline {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let watch = std::sync::Arc::clone(&done);
    std::thread::Builder::new()
        .name("test-deadline".into())
        .spawn(move || {
            let until = std::time::Instant::now() + limit;
            // SYNC: Acquire; pairs with the Release store in Deadline's Drop.
            while !watch.load(Ordering::Acquire) {
                if std::time::Instant::now() >= until {
                    eprintln!("DEADLINE: {what} did not finish within {limit:?}; aborting");
                    std::process::abort();
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
        .expect("a deadline thread");
    Deadline { done }
}

/// See [`deadline`].
#[derive(Debug)]
pub struct Deadline {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Deadline {
    fn drop(&mut self) {
        // SYNC: Release; pairs with the deadline thread's Acquire load.
        self.done.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// An echo server of framed messages in this process (a thread, `Listener::serve`) that
/// counts the replies it has sent: (socket path, listener, reply count).
pub fn counting_echo_server(
    name: &str,
) -> (
    std::path::PathBuf,
    std::sync::Arc<shmlink::Listener>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let sock = socket_path(name);
    let listener = Arc::new(shmlink::Listener::bind(&sock, shmlink::Config::default()).unwrap());
    let replies = Arc::new(AtomicUsize::new(0));
    let (serving, counter) = (Arc::clone(&listener), Arc::clone(&replies));
    std::thread::spawn(move || {
        serving.serve(move |mut stream| {
            while let Ok(Some(body)) = recv_framed(&mut stream) {
                if send_framed(&stream, &body).is_err() {
                    break;
                }
                // SYNC: SeqCst; a count the test polls.
                counter.fetch_add(1, Ordering::SeqCst);
            }
        })
    });
    (sock, listener, replies)
}
