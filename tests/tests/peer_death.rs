//! Peer death (issue 10, item 3): the peer process is killed with SIGKILL at a random moment
//! of each phase: half way through the handshake, while streaming 1 MiB messages to us and
//! reading ours (mid-write and mid-read), and while holding every slice we sent it. In both
//! roles, in memfd mode and (for the busy phase) in /dev/shm mode.
//!
//! The survivor (this process) must notice within 100 ms: a pending read and a writer each
//! fail with the error naming the closed connection (a pending handshake fails, or is counted
//! as failed by the listener). After the session is dropped no shared memory of that session
//! is left: no memfd or /dev/shm file among our fds or mappings (`/proc/self/fd`,
//! `/proc/self/maps`), none of the killed peer's (its `/proc/PID` is gone), and no file in
//! /dev/shm with either side's prefix. Then a new session with a new peer process works.
//!
//! The delays come from a seed printed at the start; set `SHMLINK_TEST_SEED` to replay.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shmlink::{Config, Error, Listener, MemMode, Session, Stream};
use shmlink_tests::{
    check_echoes, echo_session, leftover_files_settled, send_framed, socket_path, unique,
};

const PEER: &str = env!("CARGO_BIN_EXE_shmlink-peer");
/// How soon the survivor must notice.
const NOTICE: Duration = Duration::from_millis(100);

/// Timing is measured: one case at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ours {
    Server,
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshake,
    Busy,
    Hold,
}

impl Phase {
    fn arg(self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::Busy => "busy",
            Phase::Hold => "hold",
        }
    }
}

/// A small deterministic generator for the delays.
struct Rng(u64);

impl Rng {
    fn from_env() -> Self {
        Self(shmlink_tests::test_seed() | 1)
    }

    /// A delay of 0 to 40 ms.
    fn delay(&mut self) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_micros(self.0 % 40_000)
    }
}

/// A peer process with its stdout lines arriving on a channel.
struct Peer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(PEER)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    fn wait_for(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == want => return,
                Ok(_) => {}
                Err(e) => panic!("the peer never printed {want:?}: {e}"),
            }
        }
    }

    /// SIGKILL; returns the moment the signal was sent, after which the process is reaped.
    fn kill(mut self) -> (Instant, u32) {
        let pid = self.child.id();
        let killed = Instant::now();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        (killed, pid)
    }
}

/// Fds and mappings of this process that are shared memory.
fn our_shared_memory() -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let t = target.to_string_lossy().into_owned();
            if t.contains("memfd:") || t.starts_with("/dev/shm/") {
                found.push(format!("fd {}: {t}", entry.file_name().to_string_lossy()));
            }
        }
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        if line.contains("memfd:") || line.contains("/dev/shm/") {
            found.push(format!("mapping: {line}"));
        }
    }
    found
}

/// Our stream threads: a reader on `down` and a writer on `up`, each reporting when and how
/// it failed.
type Failures = mpsc::Receiver<(&'static str, Instant, Error)>;

fn pending_io(down: Stream, up: Stream) -> (Failures, [std::thread::JoinHandle<()>; 2]) {
    let (tx, rx) = mpsc::channel();
    let t = tx.clone();
    let reader = std::thread::spawn(move || {
        let mut down = down;
        down.set_read_timeout(Some(Duration::from_secs(10)));
        let err = loop {
            match down.read_view() {
                Ok(Some(_)) => {}
                Ok(None) => break Error::StreamEnded,
                Err(e) => break e,
            }
        };
        let _ = t.send(("read", Instant::now(), err));
    });
    let writer = std::thread::spawn(move || {
        let body = vec![5u8; 64 << 10];
        let err = loop {
            if let Err(e) = send_framed(&up, &body) {
                break e;
            }
        };
        let _ = tx.send(("write", Instant::now(), err));
    });
    (rx, [reader, writer])
}

/// Both failed in time with the right error; their threads have dropped their streams.
fn check_noticed((rx, threads): (Failures, [std::thread::JoinHandle<()>; 2]), killed: Instant) {
    for _ in 0..2 {
        let (what, at, err) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("a pending read or write never failed");
        let after = at.saturating_duration_since(killed);
        eprintln!("  {what} failed {after:?} after the kill: {err}");
        assert!(at >= killed, "{what} failed before the kill: {err}");
        assert!(after < NOTICE, "{what} noticed only after {after:?}");
        assert!(matches!(err, Error::PeerClosed), "{what}: {err:?}");
        assert_eq!(err.to_string(), "the peer closed the connection");
    }
    for t in threads {
        t.join().unwrap();
    }
}

fn nothing_left(prefix: &str, peer_pid: u32) {
    // The monitor thread may hold the session for the moment of a drain or check: the last
    // reference can go a few microseconds after our drop.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut ours = our_shared_memory();
    while !ours.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        ours = our_shared_memory();
    }
    assert!(ours.is_empty(), "shared memory still held: {ours:?}");
    assert!(
        !Path::new(&format!("/proc/{peer_pid}")).exists(),
        "the killed peer is still there"
    );
    let files = leftover_files_settled(prefix);
    assert!(files.is_empty(), "files left in /dev/shm: {files:?}");
}

/// A new peer process and a new session work after the death.
fn new_session_works(ours: Ours, listener: Option<&Listener>, sock: &Path) {
    match ours {
        Ours::Server => {
            let listener = listener.unwrap();
            let client = Command::new(PEER)
                .args([
                    "client",
                    sock.to_str().unwrap(),
                    "--memfd",
                    "--sizes",
                    "1,5000,70000",
                ])
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let session = listener.accept_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(echo_session(&session, None).unwrap(), 3);
            shmlink_tests::wait_success(client, Duration::from_secs(10));
        }
        Ours::Client => {
            let sock = socket_path("death-new");
            let peer = Peer::spawn(&["server", sock.to_str().unwrap()]);
            peer.wait_for("ready");
            let session = Session::connect(&sock, Config::default()).unwrap();
            let mut stream = session.open_stream().unwrap();
            check_echoes(&mut stream, &[1, 5000, 70_000], 2).unwrap();
            drop(stream);
            drop(session);
            peer.kill();
        }
    }
}

fn die(ours: Ours, phase: Phase, devshm: bool, delay: Duration) {
    eprintln!("our {ours:?}, peer killed {delay:?} into {phase:?} (devshm: {devshm})");
    let sock = socket_path("death");
    let prefix = format!("/dev/shm/{}", unique("death"));
    let mut args = vec![
        match ours {
            Ours::Server => "client",
            Ours::Client => "server",
        },
        sock.to_str().unwrap(),
        phase.arg(),
        "--prefix",
        &prefix,
    ];
    if devshm && ours == Ours::Server {
        args.push("--devshm");
    }
    let config = Config {
        mem_mode: if devshm {
            MemMode::File
        } else {
            MemMode::Memfd
        },
        path_prefix: prefix.clone(),
        ..Config::default()
    };
    let mut die_args = vec!["die"];
    die_args.extend(args);
    match ours {
        Ours::Server => {
            let listener = Listener::bind(&sock, Config::default()).unwrap();
            let peer = Peer::spawn(&die_args);
            if phase == Phase::Handshake {
                peer.wait_for("ready");
                std::thread::sleep(delay);
                let before = listener.failed_handshakes();
                let (killed, pid) = peer.kill();
                while listener.failed_handshakes() == before {
                    assert!(killed.elapsed() < NOTICE, "the pending handshake lingers");
                    std::thread::sleep(Duration::from_millis(1));
                }
                eprintln!("  handshake failed {:?} after the kill", killed.elapsed());
                nothing_left(&prefix, pid);
            } else {
                let session = listener.accept_timeout(Duration::from_secs(10)).unwrap();
                let down = session
                    .accept_stream(Some(Duration::from_secs(10)))
                    .unwrap();
                let up = session
                    .accept_stream(Some(Duration::from_secs(10)))
                    .unwrap();
                peer.wait_for("ready");
                let io = pending_io(down, up);
                std::thread::sleep(delay);
                let (killed, pid) = peer.kill();
                check_noticed(io, killed);
                assert!(session.is_closed());
                drop(session);
                nothing_left(&prefix, pid);
            }
            new_session_works(ours, Some(&listener), &sock);
        }
        Ours::Client => {
            let peer = Peer::spawn(&die_args);
            peer.wait_for("listening");
            if phase == Phase::Handshake {
                let (tx, rx) = mpsc::channel();
                let connect_sock = sock.clone();
                std::thread::spawn(move || {
                    let r = Session::connect(&connect_sock, config);
                    let _ = tx.send((Instant::now(), r.err()));
                });
                peer.wait_for("ready");
                std::thread::sleep(delay);
                let (killed, pid) = peer.kill();
                let (at, err) = rx
                    .recv_timeout(Duration::from_secs(5))
                    .expect("connect hangs");
                let err = err.expect("the handshake cannot succeed");
                let after = at.saturating_duration_since(killed);
                eprintln!("  connect failed {after:?} after the kill: {err}");
                assert!(after < NOTICE, "noticed only after {after:?}");
                let text = err.to_string();
                assert!(
                    text.contains("handshake")
                        && (text.contains("closed") || text.contains("reset")),
                    "{text}"
                );
                nothing_left(&prefix, pid);
            } else {
                let session = Session::connect(&sock, config).unwrap();
                let down = session.open_stream().unwrap();
                send_framed(&down, b"go").unwrap();
                let up = session.open_stream().unwrap();
                send_framed(&up, b"go").unwrap();
                peer.wait_for("ready");
                let io = pending_io(down, up);
                std::thread::sleep(delay);
                let (killed, pid) = peer.kill();
                check_noticed(io, killed);
                assert!(session.is_closed());
                drop(session);
                nothing_left(&prefix, pid);
            }
            new_session_works(ours, None, &sock);
        }
    }
}

fn run(ours: Ours, phase: Phase, devshm: bool, times: usize) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = Rng::from_env();
    for _ in 0..times {
        die(ours, phase, devshm, rng.delay());
    }
}

#[test]
fn our_server_survives_a_client_killed_mid_handshake() {
    let _deadline = shmlink_tests::deadline(
        "peer_death::our_server_survives_a_client_killed_mid_handshake",
        std::time::Duration::from_secs(60),
    );
    run(Ours::Server, Phase::Handshake, false, 3);
}

#[test]
fn our_client_survives_a_server_killed_mid_handshake() {
    let _deadline = shmlink_tests::deadline(
        "peer_death::our_client_survives_a_server_killed_mid_handshake",
        std::time::Duration::from_secs(60),
    );
    run(Ours::Client, Phase::Handshake, false, 3);
}

#[test]
fn our_server_survives_a_client_killed_mid_write_and_mid_read() {
    let _deadline = shmlink_tests::deadline(
        "peer_death::our_server_survives_a_client_killed_mid_write_and_mid_read",
        std::time::Duration::from_secs(60),
    );
    run(Ours::Server, Phase::Busy, false, 4);
}

#[test]
fn our_client_survives_a_server_killed_mid_write_and_mid_read() {
    let _deadline = shmlink_tests::deadline(
        "peer_death::our_client_survives_a_server_killed_mid_write_and_mid_read",
        std::time::Duration::from_secs(60),
    );
    run(Ours::Client, Phase::Busy, false, 4);
}

#[test]
fn our_server_survives_a_client_killed_holding_slices() {
    let _deadline = shmlink_tests::deadline(
        "peer_death::our_server_survives_a_client_killed_holding_slices",
        std::time::Duration::from_secs(60),
    );
    run(Ours::Server, Phase::Hold, false, 3);
}

#[test]
fn our_client_survives_a_server_killed_holding_slices() {
    let _deadline = shmlink_tests::deadline(
        "peer_death::our_client_survives_a_server_killed_holding_slices",
        std::time::Duration::from_secs(60),
    );
    run(Ours::Client, Phase::Hold, false, 3);
}

#[test]
fn dev_shm_files_are_removed_when_either_side_is_killed() {
    let _deadline = shmlink_tests::deadline(
        "peer_death::dev_shm_files_are_removed_when_either_side_is_killed",
        std::time::Duration::from_secs(60),
    );
    run(Ours::Server, Phase::Busy, true, 2);
    run(Ours::Client, Phase::Busy, true, 2);
}
