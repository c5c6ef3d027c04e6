//! The shared cross-process suite, written once and run for each runtime: the
//! `shmlink-rt-peer` helper process runs the runtime under test (blocking, tokio, or smol
//! under a hand-written executor); this process is the other side, with the blocking API.
//!
//! Each scenario: 1 B to 4 MiB echoes in memfd and /dev/shm mode, the runtime as server,
//! 1,000 concurrent streams on one session, a reader slower than its writer, exhaustion of a
//! tiny shared memory under the Wait and Fallback policies (every message checked, once and
//! in order), and the peer's death under a pending read.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmlink::{Config, Listener, MemMode, Session};
use shmlink_tests::{
    check_echoes, echo_session, leftover_files, socket_path, unique, wait_success,
};

const PEER: &str = env!("CARGO_BIN_EXE_shmlink-rt-peer");
const SIZES: &str = "1,100,8172,8173,131052,200000,1048576,4194304";

/// This process serves (blocking, every session echoed); the peer runs `rt` as the client.
/// What a run showed: the server session's metrics here, and the client's allocation
/// failures and fallbacks (its report line).
struct Run {
    server: shmlink::Metrics,
    client_alloc_errors: u64,
    client_fallbacks: u64,
}

/// Runs the peer's client against an echo server here.
fn client_against_echo(rt: &str, extra: &[&str], config: Config) -> Run {
    let sock = socket_path(&format!("rt-{rt}"));
    let listener = Listener::bind(&sock, config).unwrap();
    let mut child = Command::new(PEER)
        .args([rt, "client", sock.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reading = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut text);
        text
    });
    let session = listener.accept_timeout(Duration::from_secs(30)).unwrap();
    let server = std::thread::spawn(move || {
        let echoed = echo_session(&session, None);
        (echoed, session)
    });
    wait_success(child, Duration::from_secs(240));
    let (echoed, session) = server.join().unwrap();
    assert!(echoed.unwrap() > 0);
    let metrics = session.metrics();
    assert_eq!(
        metrics.stability.refused_recycle_count, 0,
        "a slice was recycled twice"
    );
    drop(session);
    let text = reading.join().unwrap();
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix("client-metrics "))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            })
            .unwrap_or_else(|| panic!("no client-metrics {name} in the peer's output: {text:?}"))
    };
    Run {
        server: metrics,
        client_alloc_errors: field("alloc_errors"),
        client_fallbacks: field("fallbacks"),
    }
}

fn echoes_in_both_memory_modes(rt: &str) {
    let _ = client_against_echo(rt, &["--sizes", SIZES], Config::default());
    let prefix = format!("/dev/shm/{}", unique("rt-devshm"));
    client_against_echo(
        rt,
        &[
            "--devshm",
            "--prefix",
            &prefix,
            "--sizes",
            SIZES,
            "--streams",
            "3",
        ],
        Config::default(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !leftover_files(&prefix).is_empty() {
        assert!(
            Instant::now() < deadline,
            "files left: {:?}",
            leftover_files(&prefix)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn serves_a_blocking_client(rt: &str) {
    let sock = socket_path(&format!("rt-srv-{rt}"));
    let mut child = Command::new(PEER)
        .args([rt, "server", sock.to_str().unwrap(), "--sessions", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    for mode in [MemMode::Memfd, MemMode::File] {
        let config = Config {
            mem_mode: mode,
            path_prefix: format!("/dev/shm/{}", unique("rt-srv")),
            ..Config::default()
        };
        let session = Session::connect(&sock, config).unwrap();
        std::thread::scope(|scope| {
            for k in 0..4 {
                let session = &session;
                scope.spawn(move || {
                    let mut stream = session.open_stream().unwrap();
                    let sizes = [1, 100, 8172, 8173, 131_052, 1 << 20, 4 << 20];
                    check_echoes(&mut stream, &sizes, k).unwrap();
                });
            }
        });
        drop(session);
    }
    wait_success(child, Duration::from_secs(60));
}

fn thousand_concurrent_streams(rt: &str) {
    client_against_echo(
        rt,
        &["--streams", "1000", "--sizes", "1,100,5000"],
        Config::default(),
    );
}

fn slow_reader(rt: &str) {
    // ~90 MB of echoes against 32 MiB of shared memory: the server runs out and falls back.
    // The reader trails the writer by 64 messages of 1 to 64 KB: more than 1 MiB of replies
    // wait for it, so the server's memory runs out whatever the machine's speed.
    let run = client_against_echo(
        rt,
        &[
            "--slow",
            "3000",
            "--sizes",
            "1000,30000,64000",
            "--buffer",
            "1048576",
        ],
        Config::default(),
    );
    let ran_out = run.server.stability.alloc_shm_error_count + run.client_alloc_errors;
    assert!(
        ran_out > 0,
        "precondition: memory ran out ({:?})",
        run.server
    );
}

fn exhaustion_delivers_every_message_once_in_order(rt: &str) {
    // 8 streams of messages up to 300 KB through 1 MiB. Whether they meet exhaustion depends
    // on how they interleave, so nothing is asserted about it under Wait (exhaustion.rs
    // forces it for Wait); under Fallback one message is larger than all of shared memory,
    // so running out and falling back are certain, and the stream must stay in order.
    for (policy, sizes) in [
        ("wait", "1000,60000,200000,100,300000,5,130000"),
        ("fallback", "1000,60000,200000,100,1100000,300000,5,130000"),
    ] {
        let run = client_against_echo(
            rt,
            &[
                "--buffer",
                "1048576",
                "--policy",
                policy,
                "--streams",
                "8",
                "--sizes",
                sizes,
            ],
            Config::default(),
        );
        if policy == "fallback" {
            assert!(
                run.client_alloc_errors > 0 && run.client_fallbacks > 0,
                "precondition: a message larger than all of shared memory fell back \
                 (client: {} allocation failures, {} fallbacks; server {:?})",
                run.client_alloc_errors,
                run.client_fallbacks,
                run.server
            );
        }
    }
}

fn peer_death_fails_a_pending_read(rt: &str) {
    let sock = socket_path(&format!("rt-death-{rt}"));
    let mut server = Command::new(PEER)
        .args(["blocking", "server", sock.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut reader = Command::new(PEER)
        .args([rt, "reader", sock.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(reader.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "reading");
    // The reader has its echo and waits in its next read when the server dies.
    std::thread::sleep(Duration::from_millis(100));
    server.kill().unwrap();
    server.wait().unwrap();
    wait_success(reader, Duration::from_secs(10));
}

/// A process that may run on one CPU never spins (its peer would need that CPU to answer):
/// an Adaptive server pinned to one CPU goes to sleep after every message, so our client's
/// every request finds its flag down and sends a Polling frame.
fn one_cpu_never_spins(rt: &str) {
    let sock = socket_path(&format!("rt-onecpu-{rt}"));
    let mut child = Command::new(PEER)
        .args([rt, "server", sock.to_str().unwrap()])
        .env("SHMLINK_PEER_ONE_CPU", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let session = Session::connect(&sock, Config::default()).unwrap();
    let mut stream = session.open_stream().unwrap();
    let rounds = 200;
    check_echoes(&mut stream, &vec![64; rounds], 0).unwrap();
    let polling = session.metrics().performance.send_sync_event_count;
    drop(stream);
    drop(session);
    wait_success(child, Duration::from_secs(30));
    // Every request (two flushes: length and body go as one) woke a sleeping server.
    assert!(
        polling >= rounds as u64 * 9 / 10,
        "the pinned server spun: only {polling} Polling frames for {rounds} requests"
    );
}

macro_rules! suite {
    ($rt:ident) => {
        mod $rt {
            #[test]
            fn echoes_1b_to_4mib_in_memfd_and_devshm() {
                let _deadline = shmlink_tests::deadline(
                    "runtimes::echoes_1b_to_4mib_in_memfd_and_devshm",
                    std::time::Duration::from_secs(60),
                );
                super::echoes_in_both_memory_modes(stringify!($rt));
            }

            #[test]
            fn serves_a_blocking_client_in_both_modes() {
                let _deadline = shmlink_tests::deadline(
                    "runtimes::serves_a_blocking_client_in_both_modes",
                    std::time::Duration::from_secs(60),
                );
                super::serves_a_blocking_client(stringify!($rt));
            }

            #[test]
            fn one_thousand_concurrent_streams_on_one_session() {
                let _deadline = shmlink_tests::deadline(
                    "runtimes::one_thousand_concurrent_streams_on_one_session",
                    std::time::Duration::from_secs(60),
                );
                super::thousand_concurrent_streams(stringify!($rt));
            }

            #[test]
            fn a_reader_slower_than_its_writer_loses_nothing() {
                let _deadline = shmlink_tests::deadline(
                    "runtimes::a_reader_slower_than_its_writer_loses_nothing",
                    std::time::Duration::from_secs(60),
                );
                super::slow_reader(stringify!($rt));
            }

            #[test]
            fn exhaustion_delivers_every_message_once_and_in_order() {
                let _deadline = shmlink_tests::deadline(
                    "runtimes::exhaustion_delivers_every_message_once_and_in_order",
                    std::time::Duration::from_secs(60),
                );
                super::exhaustion_delivers_every_message_once_in_order(stringify!($rt));
            }

            #[test]
            fn a_process_on_one_cpu_never_spins() {
                let _deadline = shmlink_tests::deadline(
                    "runtimes::a_process_on_one_cpu_never_spins",
                    std::time::Duration::from_secs(60),
                );
                super::one_cpu_never_spins(stringify!($rt));
            }

            #[test]
            fn the_peers_death_fails_a_pending_read() {
                let _deadline = shmlink_tests::deadline(
                    "runtimes::the_peers_death_fails_a_pending_read",
                    std::time::Duration::from_secs(60),
                );
                super::peer_death_fails_a_pending_read(stringify!($rt));
            }
        }
    };
}

suite!(blocking);
suite!(tokio);
suite!(smol);
