//! Session set-up at the edges: handshake timeouts on both sides, TCP in file mode, memfd
//! over TCP refused, a bad configuration named, and a peer that speaks the wrong version.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use shmlink::{Config, Error, Listener, MemMode, Session};
use shmlink_tests::{check_echoes, echo_session, socket_path, unique, wait_failures};

fn fast_config() -> Config {
    Config {
        initialize_timeout: Duration::from_millis(300),
        path_prefix: format!("/dev/shm/{}", unique("edges")),
        ..Config::default()
    }
}

#[test]
fn a_server_that_never_answers_times_the_client_handshake_out() {
    let _deadline = shmlink_tests::deadline(
        "session_edges::a_server_that_never_answers_times_the_client_handshake_out",
        std::time::Duration::from_secs(60),
    );
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("silent")));
    let listener = UnixListener::bind(&sock).unwrap();
    let keeper = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        drop(conn);
    });
    let config = fast_config();
    let prefix = config.path_prefix.clone();
    let start = Instant::now();
    let err = Session::connect(&sock, config).unwrap_err();
    assert!(matches!(err, Error::HandshakeTimeout(_)), "{err}");
    assert!(start.elapsed() < Duration::from_secs(2));
    let stem = prefix.rsplit('/').next().unwrap().to_owned();
    let left: Vec<_> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&stem))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    keeper.join().unwrap();
    let _ = std::fs::remove_file(sock);
}

#[test]
fn a_client_that_never_speaks_times_the_server_handshake_out() {
    let _deadline = shmlink_tests::deadline(
        "session_edges::a_client_that_never_speaks_times_the_server_handshake_out",
        std::time::Duration::from_secs(60),
    );
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("mute")));
    let listener = Listener::bind(&sock, fast_config()).unwrap();
    let _client = UnixStream::connect(&sock).unwrap();
    let start = Instant::now();
    let failed = wait_failures(&listener, 1);
    assert!(
        failed[0].error.contains("did not finish within"),
        "{failed:?}"
    );
    assert!(
        failed[0]
            .peer
            .contains(&format!("pid {}", std::process::id())),
        "{failed:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(
        listener.accept_timeout(Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
}

#[test]
fn a_client_opening_with_version_4_is_refused_with_a_clear_error() {
    let _deadline = shmlink_tests::deadline(
        "session_edges::a_client_opening_with_version_4_is_refused_with_a_clear_error",
        std::time::Duration::from_secs(60),
    );
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("v4")));
    let listener = Listener::bind(&sock, fast_config()).unwrap();
    let mut client = UnixStream::connect(&sock).unwrap();
    client.write_all(&[0, 0, 0, 8, 0x77, 0x58, 4, 4]).unwrap();
    let failed = wait_failures(&listener, 1);
    assert!(failed[0].error.contains("version 4"), "{failed:?}");
    // The server closed the connection without answering.
    let mut buf = [0u8; 8];
    assert_eq!(client.read(&mut buf).unwrap_or(0), 0);
}

#[test]
fn file_mode_sessions_work_over_tcp_and_memfd_over_tcp_is_refused() {
    let _deadline = shmlink_tests::deadline(
        "session_edges::file_mode_sessions_work_over_tcp_and_memfd_over_tcp_is_refused",
        std::time::Duration::from_secs(60),
    );
    let listener = Listener::bind_tcp("127.0.0.1:0", fast_config()).unwrap();
    let addr = listener.local_tcp_addr().unwrap();
    let server = std::thread::spawn(move || {
        let session = listener.accept_timeout(Duration::from_secs(30)).unwrap();
        echo_session(&session, None).unwrap()
    });
    let config = Config {
        mem_mode: MemMode::File,
        ..fast_config()
    };
    let session = Session::connect_tcp(addr, config).unwrap();
    assert_eq!(session.version(), 2);
    let mut stream = session.open_stream().unwrap();
    check_echoes(&mut stream, &[1, 9000, 300_000], 0).unwrap();
    drop(stream);
    drop(session);
    assert_eq!(server.join().unwrap(), 3);

    let err = Session::connect_tcp(addr, Config::default()).unwrap_err();
    assert!(
        err.to_string().contains("memfd mode needs a unix socket"),
        "{err}"
    );
}

#[test]
fn an_invalid_configuration_is_named_before_anything_is_created() {
    let _deadline = shmlink_tests::deadline(
        "session_edges::an_invalid_configuration_is_named_before_anything_is_created",
        std::time::Duration::from_secs(60),
    );
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("cfg")));
    let _listener = Listener::bind(&sock, Config::default()).unwrap();
    let config = Config {
        queue_cap: 8200,
        ..Config::default()
    };
    let err = Session::connect(&sock, config).unwrap_err();
    assert!(err.to_string().contains("queue_cap 8200"), "{err}");
    let config = Config {
        buffer_capacity: 1000,
        ..Config::default()
    };
    assert!(
        Session::connect(&sock, config)
            .unwrap_err()
            .to_string()
            .contains("buffer_capacity")
    );
}

#[test]
fn v3_file_mode_is_negotiated_when_asked() {
    let _deadline = shmlink_tests::deadline(
        "session_edges::v3_file_mode_is_negotiated_when_asked",
        std::time::Duration::from_secs(60),
    );
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("v3file")));
    let listener = Listener::bind(&sock, fast_config()).unwrap();
    let server = std::thread::spawn(move || {
        let session = listener.accept_timeout(Duration::from_secs(30)).unwrap();
        let version = session.version();
        echo_session(&session, None).unwrap();
        version
    });
    let config = Config {
        mem_mode: MemMode::File,
        file_mode_v3: true,
        ..fast_config()
    };
    let session = Session::connect(&sock, config).unwrap();
    assert_eq!(session.version(), 3);
    let mut stream = session.open_stream().unwrap();
    check_echoes(&mut stream, &[5, 140_000], 0).unwrap();
    drop(stream);
    drop(session);
    assert_eq!(server.join().unwrap(), 3);
}

#[test]
fn reads_time_out_and_a_zero_copy_view_returns_its_slice_on_drop() {
    let _deadline = shmlink_tests::deadline(
        "session_edges::reads_time_out_and_a_zero_copy_view_returns_its_slice_on_drop",
        std::time::Duration::from_secs(60),
    );
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("view")));
    let listener = Listener::bind(&sock, fast_config()).unwrap();
    let server = std::thread::spawn(move || {
        let session = listener.accept_timeout(Duration::from_secs(30)).unwrap();
        let mut stream = session.accept_stream(Some(Duration::from_secs(5))).unwrap();
        let view = stream.read_view().unwrap().unwrap();
        assert!(view.is_shared_memory());
        assert_eq!(&view[..], b"zero copy");
        let (_, in_use_with_view) = session.shared_memory_usage();
        drop(view);
        let (_, in_use_after) = session.shared_memory_usage();
        stream.send(b"ack").unwrap();
        assert!(
            stream.read_view().unwrap().is_none(),
            "end of stream after the client closes"
        );
        (in_use_with_view, in_use_after)
    });
    let session = Session::connect(&sock, fast_config()).unwrap();
    let mut stream = session.open_stream().unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 3];
    assert_eq!(
        stream.read(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::TimedOut
    );
    stream.send(b"zero copy").unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5)));
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ack");
    stream.close();
    let (with_view, after) = server.join().unwrap();
    assert_eq!(
        with_view,
        shmlink::SIZE_CLASSES[0].size,
        "one slice of the smallest default class held by the view"
    );
    assert_eq!(after, 0, "slice returned when the view dropped");
}

#[test]
fn accept_gives_up_when_nobody_connects() {
    let _deadline = shmlink_tests::deadline(
        "session_edges::accept_gives_up_when_nobody_connects",
        std::time::Duration::from_secs(60),
    );
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("nobody")));
    let listener = Listener::bind(&sock, fast_config()).unwrap();
    let start = Instant::now();
    assert!(matches!(
        listener.accept_timeout(Duration::from_millis(100)),
        Err(Error::Timeout)
    ));
    assert!(start.elapsed() >= Duration::from_millis(100));
}

#[test]
fn metrics_follow_gos_definitions() {
    let _deadline = shmlink_tests::deadline(
        "session_edges::metrics_follow_gos_definitions",
        std::time::Duration::from_secs(60),
    );
    let sock = socket_path("metrics");
    let listener = Listener::bind(&sock, fast_config()).unwrap();
    let server = std::thread::spawn(move || {
        let session = listener.accept_timeout(Duration::from_secs(30)).unwrap();
        echo_session(&session, None).unwrap();
        session.metrics()
    });
    let session = Session::connect(&sock, fast_config()).unwrap();
    let mut stream = session.open_stream().unwrap();
    check_echoes(&mut stream, &[3, 5000, 9000, 200_000], 0).unwrap();
    assert_eq!(session.metrics().stability.active_stream_count, 1);
    stream.close();
    let client = session.metrics();
    drop(session);
    let server = server.join().unwrap();
    // The exchange of core/tests/fixtures/go-memfd-v3-client.txt; the Go client reported
    // SendQueueCount 5, ReceiveQueueCount 4 and 214,019 bytes each way for it.
    let framed: u64 = [3u64, 5000, 9000, 200_000].iter().map(|n| n + 4).sum();
    assert_eq!(framed, 214_019);
    assert_eq!(client.performance.send_queue_count, 5);
    assert_eq!(client.performance.receive_queue_count, 4);
    assert_eq!(client.performance.out_flow_bytes, framed);
    assert_eq!(client.performance.in_flow_bytes, framed);
    assert_eq!(server.performance.in_flow_bytes, framed);
    assert_eq!(server.performance.receive_queue_count, 5);
    assert_eq!(client.stability.active_stream_count, 0);
    assert!(
        client.performance.send_sync_event_count >= 1
            && client.performance.send_sync_event_count <= 5
    );
    assert_eq!(
        client.stability.fallback_write_count + client.stability.fallback_read_count,
        0
    );
    assert_eq!(
        client.stability.queue_full_error_count + client.stability.alloc_shm_error_count,
        0
    );
}

#[test]
fn exhausted_shared_memory_falls_back_to_the_socket_without_losing_or_reordering_bytes() {
    let _deadline = shmlink_tests::deadline(
        "session_edges::exhausted_shared_memory_falls_back_to_the_socket_without_losing_or_reordering_bytes",
        std::time::Duration::from_secs(60),
    );
    let sock = socket_path("exhausted");
    let listener = Listener::bind(&sock, fast_config()).unwrap();
    let server = std::thread::spawn(move || {
        let session = listener.accept_timeout(Duration::from_secs(30)).unwrap();
        let echoed = echo_session(&session, None).unwrap();
        (echoed, session.metrics(), session.all_buffers_free())
    });
    let config = Config {
        buffer_capacity: 1 << 20,
        size_classes: vec![shmlink::SizeClass {
            size: 4096,
            percent: 100,
        }],
        circuit_breaker: Duration::from_secs(30),
        ..fast_config()
    };
    let session = Session::connect(&sock, config).unwrap();
    let mut stream = session.open_stream().unwrap();
    // Through shared memory, then 2 MiB that cannot fit in 1 MiB, then small ones again: the
    // stream stays on the socket after the fallback, so nothing overtakes anything.
    check_echoes(&mut stream, &[100, 2 << 20, 100, 5000], 0).unwrap();
    assert!(stream.is_fallback());
    assert!(!session.is_healthy(), "the circuit breaker opened");
    assert!(matches!(
        session.open_stream(),
        Err(Error::Unhealthy { .. })
    ));
    let client = session.metrics();
    drop(stream);
    drop(session);
    let (echoed, server, all_free) = server.join().unwrap();
    assert_eq!(echoed, 4);
    assert!(all_free);
    assert_eq!(client.stability.fallback_write_count, 3, "{client:?}");
    assert_eq!(client.stability.alloc_shm_error_count, 1, "{client:?}");
    assert_eq!(server.stability.fallback_read_count, 3, "{server:?}");
    assert_eq!(
        server.stability.fallback_write_count, 3,
        "the server's stream switched too: {server:?}"
    );
}

/// A session names its peer: over a unix socket, the process id and user of the other end.
#[test]
fn a_session_names_its_peer_process_and_user() {
    let _deadline = shmlink_tests::deadline(
        "session_edges::a_session_names_its_peer_process_and_user",
        Duration::from_secs(60),
    );
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("peer-creds")));
    let listener = Listener::bind(&sock, fast_config()).unwrap();
    let client = std::thread::spawn(move || Session::connect(&sock, fast_config()).unwrap());
    let server = listener.accept_timeout(Duration::from_secs(30)).unwrap();
    let client = client.join().unwrap();
    let me = std::process::id() as i32;
    let uid = rustix::process::getuid().as_raw();
    for session in [&server, &client] {
        match session.peer() {
            shmlink::Peer::Unix { pid, uid: u, .. } => {
                assert_eq!(pid, me, "both ends are this process");
                assert_eq!(u, uid);
            }
            other => panic!("a unix-socket peer, not {other:?}"),
        }
    }
}
