//! Two real processes talking through shared memory: this test process on one side, the
//! `shmlink-peer` helper binary on the other, in memfd and /dev/shm modes.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shmlink::{Config, Listener, MemMode, Session};
use shmlink_tests::{
    check_echoes, echo_session, leftover_files_settled, socket_path, unique, wait_success,
};

const PEER: &str = env!("CARGO_BIN_EXE_shmlink-peer");
const SIZES: &str = "1,100,8172,8173,131052,200000,1048576,4194304";

/// This process serves; a child process is the client.
fn serve_child_client(mode: &str, extra: &[&str], sessions: usize) {
    let sock = socket_path("shmlink-xp");
    let prefix = format!("/dev/shm/{}", unique("shmlink-xp"));
    let listener = Listener::bind(&sock, Config::default()).unwrap();
    let mut args = vec!["client", sock.to_str().unwrap(), mode, "--prefix", &prefix];
    let sessions_arg = sessions.to_string();
    args.extend(["--sessions", &sessions_arg]);
    args.extend(extra);
    let child = Command::new(PEER)
        .args(&args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let servers: Vec<_> = (0..sessions)
        .map(|_| {
            let session = listener.accept_timeout(Duration::from_secs(30)).unwrap();
            std::thread::spawn(move || {
                let limit = None;
                let echoed = echo_session(&session, limit).unwrap();
                (echoed, session)
            })
        })
        .collect();
    wait_success(child, Duration::from_secs(120));
    for s in servers {
        let (echoed, session) = s.join().unwrap();
        assert!(echoed > 0);
        assert!(session.is_closed());
        assert!(
            session.all_buffers_free(),
            "every free list back to full capacity"
        );
        assert_eq!(session.shared_memory_usage().1, 0);
        drop(session);
    }
    assert_eq!(
        leftover_files_settled(&prefix),
        Vec::<String>::new(),
        "files left in /dev/shm"
    );
}

#[test]
fn memfd_messages_from_1_byte_to_4_mib_echo_between_processes() {
    let _deadline = shmlink_tests::deadline(
        "cross_process::memfd_messages_from_1_byte_to_4_mib_echo_between_processes",
        std::time::Duration::from_secs(60),
    );
    serve_child_client("--memfd", &["--sizes", SIZES], 1);
}

#[test]
fn devshm_messages_from_1_byte_to_4_mib_echo_between_processes() {
    let _deadline = shmlink_tests::deadline(
        "cross_process::devshm_messages_from_1_byte_to_4_mib_echo_between_processes",
        std::time::Duration::from_secs(60),
    );
    serve_child_client("--devshm", &["--sizes", SIZES], 1);
}

#[test]
fn many_streams_on_one_session_keep_their_bytes_apart() {
    let _deadline = shmlink_tests::deadline(
        "cross_process::many_streams_on_one_session_keep_their_bytes_apart",
        std::time::Duration::from_secs(60),
    );
    serve_child_client(
        "--memfd",
        &["--streams", "8", "--sizes", "1,5000,70000,300000"],
        1,
    );
}

#[test]
fn thousands_of_small_and_chained_messages_on_concurrent_streams_arrive_intact() {
    let _deadline = shmlink_tests::deadline(
        "cross_process::thousands_of_small_and_chained_messages_on_concurrent_streams_arrive_intact",
        std::time::Duration::from_secs(60),
    );
    // 8 streams x 300 round trips, sizes from 1 byte to multi-slice chains, all at once: any
    // lost wake-up would hang (bounded by the peer timeout), any mix-up fails a byte compare.
    serve_child_client(
        "--memfd",
        &[
            "--streams",
            "8",
            "--sizes",
            "1,17,300,8172,8173,40000,140000",
            "--repeat",
            "43",
        ],
        1,
    );
}

#[test]
fn several_sessions_from_one_client_process() {
    let _deadline = shmlink_tests::deadline(
        "cross_process::several_sessions_from_one_client_process",
        std::time::Duration::from_secs(60),
    );
    serve_child_client(
        "--memfd",
        &["--streams", "2", "--sizes", "10,9000,200000"],
        3,
    );
    serve_child_client("--devshm", &["--streams", "2", "--sizes", "10,9000"], 2);
}

#[test]
fn server_closing_a_stream_ends_it_for_the_client_process() {
    let _deadline = shmlink_tests::deadline(
        "cross_process::server_closing_a_stream_ends_it_for_the_client_process",
        std::time::Duration::from_secs(60),
    );
    let sock = socket_path("shmlink-close");
    let prefix = format!("/dev/shm/{}", unique("shmlink-close"));
    let listener = Listener::bind(&sock, Config::default()).unwrap();
    let args = [
        "client",
        sock.to_str().unwrap(),
        "--memfd",
        "--prefix",
        &prefix,
        "--sizes",
        "100,200,300",
        "--expect-close-after",
        "2",
    ];
    let child = Command::new(PEER)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let session = listener.accept_timeout(Duration::from_secs(30)).unwrap();
    let echoed = echo_session(&session, Some(2)).unwrap();
    wait_success(child, Duration::from_secs(60));
    assert_eq!(echoed, 2);
    assert!(session.all_buffers_free());
    drop(session);
    assert!(leftover_files_settled(&prefix).is_empty());
}

/// Starts `shmlink-peer server` on `sock` and waits until it listens.
fn spawn_server_peer(sock: &std::path::Path) -> Child {
    let mut child = Command::new(PEER)
        .args(["server", sock.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

/// This process is the client; a child process serves.
fn client_to_child_server(mode: MemMode) {
    let sock = socket_path("shmlink-rev");
    let child = spawn_server_peer(&sock);
    let prefix = format!("/dev/shm/{}", unique("shmlink-rev"));
    let config = Config {
        mem_mode: mode,
        path_prefix: prefix.clone(),
        ..Config::default()
    };
    let session = Session::connect(&sock, config).unwrap();
    let mut stream = session.open_stream().unwrap();
    let sizes: Vec<usize> = SIZES.split(',').map(|s| s.parse().unwrap()).collect();
    check_echoes(&mut stream, &sizes, 0).unwrap();
    stream.close();
    // Our stream closing is seen by the server, which then waits for the session to end.
    assert!(session.all_buffers_free());
    drop(stream);
    drop(session);
    wait_success(child, Duration::from_secs(60));
    assert!(
        leftover_files_settled(&prefix).is_empty(),
        "{:?}",
        leftover_files_settled(&prefix)
    );
}

#[test]
fn client_in_this_process_talks_to_a_server_process_over_memfd() {
    let _deadline = shmlink_tests::deadline(
        "cross_process::client_in_this_process_talks_to_a_server_process_over_memfd",
        std::time::Duration::from_secs(60),
    );
    client_to_child_server(MemMode::Memfd);
}

#[test]
fn client_in_this_process_talks_to_a_server_process_over_devshm() {
    let _deadline = shmlink_tests::deadline(
        "cross_process::client_in_this_process_talks_to_a_server_process_over_devshm",
        std::time::Duration::from_secs(60),
    );
    client_to_child_server(MemMode::File);
}

#[test]
fn a_peer_process_killed_mid_session_ends_the_session_with_an_error_not_a_hang() {
    let _deadline = shmlink_tests::deadline(
        "cross_process::a_peer_process_killed_mid_session_ends_the_session_with_an_error_not_a_hang",
        std::time::Duration::from_secs(60),
    );
    let sock = socket_path("shmlink-kill");
    let mut child = spawn_server_peer(&sock);
    let session = Session::connect(&sock, Config::default()).unwrap();
    let mut stream = session.open_stream().unwrap();
    check_echoes(&mut stream, &[1000], 0).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The next read ends with an error naming the closed session (no hang: the socket EOF
    // wakes the reader).
    stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 4];
    let err = std::io::Read::read(&mut stream, &mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err}");
    assert!(session.is_closed());
    assert!(shmlink_tests::send_framed(&stream, b"x").is_err());
}
