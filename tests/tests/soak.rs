//! Soak (issue 10, item 6): mixed sizes over many streams and sessions, with random stream
//! closes (some before the reply is read) and random session reconnects, for
//! `SHMLINK_SOAK_SECS` seconds (default 10; CI sets 60). The run is cut into five cycles;
//! each ends with every client session's free lists full again (every slice back), and
//! after it no session fd, mapping or /dev/shm file is left. The resident memory measured
//! after each cycle stays flat: no cycle after the first ends more than 16 MiB above it.
//!
//! The random choices come from a seed printed at the start (`SHMLINK_TEST_SEED` replays).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmlink::{Config, Listener, MemMode, Session};
use shmlink_tests::{
    echo_stream, leftover_files, payload, recv_framed, send_framed, socket_path, unique,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Mostly small messages, some of a few slices, a few large chains.
    fn size(&mut self) -> usize {
        match self.below(10) {
            0..=5 => 1 + self.below(512) as usize,
            6..=8 => 1 + self.below(40_000) as usize,
            _ => 1 + self.below(400_000) as usize,
        }
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn our_shared_memory() -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|t| t.contains("memfd:") || t.starts_with("/dev/shm/"))
        .collect();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    found.extend(
        maps.lines()
            .filter(|l| l.contains("memfd:") || l.contains("/dev/shm/"))
            .map(str::to_owned),
    );
    found
}

fn connect(sock: &std::path::Path, index: usize, prefix: &str) -> Session {
    let config = Config {
        // Every third session in /dev/shm mode, so that files are exercised too.
        mem_mode: if index % 3 == 2 {
            MemMode::File
        } else {
            MemMode::Memfd
        },
        path_prefix: prefix.to_owned(),
        buffer_capacity: 4 << 20,
        ..Config::default()
    };
    Session::connect(sock, config).unwrap()
}

/// One worker's actions until `until`; returns (round trips checked, streams, reconnects).
fn work(
    sock: &std::path::Path,
    prefix: &str,
    sessions: &Mutex<Vec<Arc<Session>>>,
    mut rng: Rng,
    until: Instant,
) -> (u64, u64, u64) {
    let (mut trips, mut streams, mut reconnects) = (0, 0, 0);
    while Instant::now() < until {
        let index = rng.below(sessions.lock().unwrap().len() as u64) as usize;
        if rng.below(40) == 0 {
            // Reconnect: the old session closes (gracefully) once its last user lets go;
            // other workers' operations on it may fail with a closed-session error.
            let fresh = Arc::new(connect(sock, index, prefix));
            sessions.lock().unwrap()[index] = fresh;
            reconnects += 1;
            continue;
        }
        let session = Arc::clone(&sessions.lock().unwrap()[index]);
        let mut stream = match session.open_stream() {
            Ok(s) => s,
            Err(e) if expected_close(&e) => continue,
            Err(shmlink::Error::Unhealthy { .. }) => continue,
            Err(e) => panic!("open: {e}"),
        };
        streams += 1;
        stream.set_read_timeout(Some(Duration::from_secs(20)));
        let exchanges = 1 + rng.below(5);
        let abandon = rng.below(8) == 0;
        for k in 0..exchanges {
            let body = payload(rng.size(), (trips + k) as usize);
            let sent = send_framed(&stream, &body);
            match sent {
                Ok(()) => {}
                Err(e) if expected_close(&e) => break,
                Err(e) => panic!("send: {e}"),
            }
            if abandon {
                break; // closed with the reply still coming
            }
            match recv_framed(&mut stream) {
                Ok(Some(echo)) => {
                    assert!(echo == body, "an echo of {} bytes differs", body.len());
                    trips += 1;
                }
                Ok(None) => break,
                Err(e) if expected_close(&e) => break,
                Err(e) => panic!("recv: {e}"),
            }
        }
        stream.close();
    }
    (trips, streams, reconnects)
}

#[test]
fn soak_with_random_closes_and_reconnects_leaves_nothing_behind_and_memory_flat() {
    let _deadline = shmlink_tests::deadline(
        "soak::soak_with_random_closes_and_reconnects_leaves_nothing_behind_and_memory_flat",
        std::time::Duration::from_secs(600),
    );
    let secs: u64 = std::env::var("SHMLINK_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    eprintln!("SHMLINK_SOAK_SECS={secs}");
    let seed = shmlink_tests::test_seed();
    let mut rng = Rng(seed | 1);
    let sock = socket_path("soak");
    let prefix = format!("/dev/shm/{}", unique("soak"));
    let listener = Arc::new(Listener::bind(&sock, Config::default()).unwrap());
    let server = {
        let listener = Arc::clone(&listener);
        std::thread::spawn(move || {
            listener.serve(|stream| {
                let _ = echo_stream(stream, None);
            })
        })
    };
    const CYCLES: u32 = 5;
    const SESSIONS: usize = 6;
    const WORKERS: u64 = 6;
    let cycle = Duration::from_secs(secs) / CYCLES;
    let mut rss = Vec::new();
    for c in 0..CYCLES {
        let sessions: Mutex<Vec<Arc<Session>>> = Mutex::new(
            (0..SESSIONS)
                .map(|i| Arc::new(connect(&sock, i, &prefix)))
                .collect(),
        );
        let until = Instant::now() + cycle;
        let totals = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..WORKERS)
                .map(|_| {
                    let worker_rng = Rng(rng.next() | 1);
                    let (sock, prefix, sessions) = (&sock, &prefix, &sessions);
                    scope.spawn(move || work(sock, prefix, sessions, worker_rng, until))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
        });
        // Every slice comes home: the server has read or recycled everything.
        let sessions = sessions.into_inner().unwrap();
        for (i, s) in sessions.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !s.all_buffers_free() {
                assert!(
                    Instant::now() < deadline,
                    "cycle {c}: session {i} still has {} bytes of shared memory in use",
                    s.shared_memory_usage().1
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        drop(sessions);
        // Nothing left: no fd, mapping or file (the server's side closes as it sees the end).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let held = our_shared_memory();
            let files = leftover_files(&prefix);
            if held.is_empty() && files.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cycle {c}: left behind: {held:?} {files:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let resident = resident_bytes();
        eprintln!(
            "cycle {c}: {} round trips on {} streams, {} reconnects; resident {:.1} MiB",
            totals.0,
            totals.1,
            totals.2,
            resident as f64 / f64::from(1 << 20)
        );
        assert!(totals.0 > 0, "cycle {c} did no work");
        rss.push(resident);
    }
    listener.close();
    server.join().unwrap().unwrap();
    let baseline = rss[0];
    let worst = rss[1..].iter().copied().max().unwrap();
    assert!(
        worst <= baseline + (16 << 20),
        "resident memory grew from {baseline} to {worst} bytes: {rss:?}"
    );
}

/// The only ways a session may end under the soak: a reconnect closed it here (gracefully),
/// or the server closed its side of it. A protocol violation or a lost connection between
/// two correct peers is a defect, not load.
fn expected_close(e: &shmlink::Error) -> bool {
    matches!(
        e,
        shmlink::Error::PeerClosed | shmlink::Error::ClosedLocally
    )
}
