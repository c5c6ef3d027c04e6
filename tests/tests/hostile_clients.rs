//! Clients that misbehave during the handshake, against our `Listener`: each costs only its
//! own connection (logged with its peer, counted), never the listener, and a silent client
//! does not hold up the others. Plus the handshake-path confinement and the largest-frame
//! setting.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use shmlink::{Config, Error, Listener, MemMode, Session};
use shmlink_core::frame::{Decoded, Frame, Message, Paths};
use shmlink_linux::region::SharedRegion;
use shmlink_linux::socket::Conn;
use shmlink_tests::{
    check_echoes, echo_session, payload, recv_framed, send_framed, unique, wait_failures,
};

fn sock(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}.sock", unique(name)))
}

fn encode(version: u8, message: Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    Frame::new(version, message).encode_into(&mut out).unwrap();
    out
}

/// A V3 memfd client that hands over two regions of 4 KiB of zeros: no valid queue header.
fn truncated_region_client(path: &std::path::Path) -> Conn {
    let conn = Conn::connect_unix(path).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.send(&encode(3, Message::ExchangeProtoVersion), "send")
        .unwrap();
    let mut buf = Vec::new();
    conn.read_frame(&mut buf, "read").unwrap();
    let paths = Paths {
        queue: b"truncated_queue",
        buffer: b"truncated_buffer",
    };
    conn.send(&encode(3, Message::ShareMemoryByMemfd(paths)), "send")
        .unwrap();
    conn.read_frame(&mut buf, "read").unwrap();
    assert!(matches!(
        Frame::decode(&buf),
        Ok(Decoded::Frame(
            Frame {
                message: Message::AckReadyRecvFd,
                ..
            },
            _
        ))
    ));
    let q = SharedRegion::create_memfd("truncated_queue", 4096).unwrap();
    let b = SharedRegion::create_memfd("truncated_buffer", 4096).unwrap();
    conn.send_fds(b.fd(), q.fd()).unwrap();
    conn
}

/// Issue 6, item 12: garbage, a huge length and a truncated region each end only their own
/// connection; a silent client does not delay a good one; the listener keeps accepting.
#[test]
fn hostile_and_silent_clients_cost_only_their_own_connection() {
    let _deadline = shmlink_tests::deadline(
        "hostile_clients::hostile_and_silent_clients_cost_only_their_own_connection",
        std::time::Duration::from_secs(60),
    );
    let path = sock("hostile");
    let config = Config {
        // Long enough that a listener serialising handshakes behind the silent client could
        // not hand out the good session within the accept timeout below.
        initialize_timeout: Duration::from_secs(30),
        ..Config::default()
    };
    let listener = Listener::bind(&path, config).unwrap();

    let _silent = UnixStream::connect(&path).unwrap();
    let mut garbage = UnixStream::connect(&path).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut huge = UnixStream::connect(&path).unwrap();
    huge.write_all(&[0x7f, 0xff, 0xff, 0xff, 0x77, 0x58, 2, 0])
        .unwrap();
    let _truncated = truncated_region_client(&path);

    let failed = wait_failures(&listener, 3);
    let texts: Vec<&str> = failed.iter().map(|f| f.error.as_str()).collect();
    assert!(
        texts.iter().any(|t| t.contains("bad frame magic")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|t| t.contains("exceeds the limit")),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("queue region") || t.contains("buffer region")),
        "{texts:?}"
    );
    let me = format!("pid {}", std::process::id());
    assert!(failed.iter().all(|f| f.peer.contains(&me)), "{failed:?}");

    // A good client, while the silent one still holds its handshake open.
    let client_path = path.clone();
    let client = std::thread::spawn(move || {
        let session = Session::connect(&client_path, Config::default()).unwrap();
        let mut stream = session.open_stream().unwrap();
        check_echoes(&mut stream, &[1, 9000, 300_000], 1)
    });
    let session = listener
        .accept_timeout(Duration::from_secs(10))
        .expect("the good client is served while the silent one waits");
    let server = std::thread::spawn(move || echo_session(&session, None));
    client.join().unwrap().unwrap();
    assert_eq!(server.join().unwrap().unwrap(), 3);
    assert_eq!(
        listener.failed_handshakes(),
        3,
        "the silent one is still pending"
    );
}

/// Issue 6, item 11: a client announcing file-mode regions outside the configured
/// directories is refused with an error naming the path and the setting; the same client
/// inside them works.
#[test]
fn file_mode_paths_outside_the_shm_directories_are_refused_naming_path_and_setting() {
    let _deadline = shmlink_tests::deadline(
        "hostile_clients::file_mode_paths_outside_the_shm_directories_are_refused_naming_path_and_setting",
        std::time::Duration::from_secs(60),
    );
    let path = sock("confine");
    let listener = Listener::bind(&path, Config::default()).unwrap();
    let prefix = std::env::temp_dir().join(unique("outside"));
    let outside = Config {
        mem_mode: MemMode::File,
        path_prefix: prefix.display().to_string(),
        initialize_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    // V2 (Go's file-mode opening) has no acknowledgement: the client may think it is up
    // until the server closes the connection.
    if let Ok(session) = Session::connect(&path, outside) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !session.is_closed() {
            assert!(Instant::now() < deadline, "the refused session stayed open");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(listener.accept_timeout(Duration::from_millis(100)).is_err());
    let failed = wait_failures(&listener, 1);
    let text = &failed[0].error;
    assert!(text.contains(&prefix.display().to_string()), "{text}");
    assert!(text.contains("Config::shm_dirs"), "{text}");
    assert!(text.contains("outside the allowed directories"), "{text}");

    // A directory of our own, allowed by the server's configuration.
    let dir = std::env::temp_dir().join(unique("allowed"));
    std::fs::create_dir(&dir).unwrap();
    let path2 = sock("confine-ok");
    let listener2 = Listener::bind(
        &path2,
        Config {
            shm_dirs: vec![dir.clone()],
            ..Config::default()
        },
    )
    .unwrap();
    let client = std::thread::spawn({
        let (path2, dir) = (path2.clone(), dir.clone());
        move || {
            let config = Config {
                mem_mode: MemMode::File,
                path_prefix: dir.join("region").display().to_string(),
                ..Config::default()
            };
            let session = Session::connect(&path2, config).unwrap();
            let mut stream = session.open_stream().unwrap();
            check_echoes(&mut stream, &[10, 20_000], 2)
        }
    });
    let session = listener2.accept_timeout(Duration::from_secs(10)).unwrap();
    let server = std::thread::spawn(move || echo_session(&session, None));
    client.join().unwrap().unwrap();
    server.join().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 6, item 14: a message larger than all of shared memory travels as one fallback
/// frame, in both directions (CloudWeGo's crate panics above 32 MiB of fallback; this one is
/// bounded only by `max_frame_len`), and a write above `max_frame_len` is refused by name.
#[test]
fn a_message_larger_than_all_shared_memory_falls_back_both_ways() {
    let _deadline = shmlink_tests::deadline(
        "hostile_clients::a_message_larger_than_all_shared_memory_falls_back_both_ways",
        std::time::Duration::from_secs(60),
    );
    let path = sock("bigger");
    let listener = Listener::bind(&path, Config::default()).unwrap();
    let small = Config {
        buffer_capacity: 1 << 20,
        ..Config::default()
    };
    let client = std::thread::spawn({
        let path = path.clone();
        move || {
            let session = Session::connect(&path, small).unwrap();
            let mut stream = session.open_stream().unwrap();
            let body = payload(3 << 20, 7); // three times the whole buffer region
            send_framed(&stream, &body).unwrap();
            assert!(
                stream.is_fallback(),
                "the write could not fit in shared memory"
            );
            let echo = recv_framed(&mut stream).unwrap().unwrap();
            assert!(echo == body, "the echo differs");
        }
    });
    let session = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let server = std::thread::spawn(move || echo_session(&session, None));
    client.join().unwrap();
    assert_eq!(server.join().unwrap().unwrap(), 1);

    // The setting bounds a single write, with an error that names it.
    let path = sock("limit");
    let listener = Listener::bind(&path, Config::default()).unwrap();
    let client = std::thread::spawn({
        let path = path.clone();
        move || {
            let config = Config {
                max_frame_len: 1 << 20,
                ..Config::default()
            };
            let session = Session::connect(&path, config).unwrap();
            let stream = session.open_stream().unwrap();
            let err = stream.reserve(2 << 20).unwrap_err();
            assert!(matches!(err, Error::TooLarge { .. }), "{err}");
            assert!(err.to_string().contains("max_frame_len"), "{err}");
        }
    });
    let _session = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    client.join().unwrap();
}

/// Issue 6, item 14: a fallback frame above the receiver's `max_frame_len` closes that
/// session with a protocol violation naming the limit.
#[test]
fn a_fallback_frame_above_the_receivers_limit_closes_the_session_naming_it() {
    let _deadline = shmlink_tests::deadline(
        "hostile_clients::a_fallback_frame_above_the_receivers_limit_closes_the_session_naming_it",
        std::time::Duration::from_secs(60),
    );
    let path = sock("recv-limit");
    let listener = Listener::bind(
        &path,
        Config {
            max_frame_len: 1 << 20,
            ..Config::default()
        },
    )
    .unwrap();
    let client = std::thread::spawn({
        let path = path.clone();
        move || {
            let session = Session::connect(
                &path,
                Config {
                    buffer_capacity: 1 << 20,
                    ..Config::default()
                },
            )
            .unwrap();
            let stream = session.open_stream().unwrap();
            // 2 MiB cannot fit 1 MiB of shared memory: it goes out as one 2 MiB frame.
            let _ = stream.send(&payload(2 << 20, 1));
            session
        }
    });
    let session = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !session.is_closed() {
        assert!(Instant::now() < deadline, "the session stayed open");
        std::thread::sleep(Duration::from_millis(10));
    }
    let reason = session.close_reason().unwrap();
    assert!(matches!(reason, Error::ProtocolViolation(_)), "{reason}");
    assert!(reason.to_string().contains("1048576"), "{reason}");
    drop(client.join().unwrap());
}

/// A raw V3 memfd client: runs the client handshake by hand with regions it formatted
/// itself, so that it can announce one buffer region in two sessions (as Go's clients do
/// for every session of a process) and then misbehave across them.
fn raw_memfd_session(
    path: &std::path::Path,
    queue: &SharedRegion,
    buffer: &SharedRegion,
    buffer_name: &str,
) -> Conn {
    let conn = Conn::connect_unix(path).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let queue_name = format!("{}_queue", unique("raw"));
    common::client_handshake(&conn, &queue_name, buffer_name, queue, buffer);
    conn
}

/// Review finding: a server maps one client buffer region once and shares it between that
/// client's sessions, so the ownership ledger must be the region's. A chain delivered in one
/// session and announced again in another must be refused there, not given a second owner.
#[test]
fn a_chain_announced_again_in_another_session_of_the_same_region_is_refused() {
    let _deadline = shmlink_tests::deadline(
        "hostile_clients::a_chain_announced_again_in_another_session_of_the_same_region_is_refused",
        std::time::Duration::from_secs(60),
    );
    use shmlink_core::buffer::{self, DEFAULT_SIZE_CLASSES};
    use shmlink_core::queue::{self, Element, Wake};
    let path = sock("shared-ledger");
    let listener = Listener::bind(&path, Config::default()).unwrap();
    let buffer_name = format!("{}_buffer", unique("raw"));
    let buffer = SharedRegion::create_memfd(&buffer_name, 1 << 20).unwrap();
    let manager = buffer::format(
        buffer.region(),
        &DEFAULT_SIZE_CLASSES[..1]
            .iter()
            .map(|c| shmlink_core::buffer::SizeClass {
                size: c.size,
                percent: 100,
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let queues: Vec<SharedRegion> = (0..2)
        .map(|i| {
            let q = SharedRegion::create_memfd(&format!("q{i}"), queue::region_size(16)).unwrap();
            queue::format_region(q.region(), 16).unwrap();
            q
        })
        .collect();
    let conns: Vec<Conn> = queues
        .iter()
        .map(|q| raw_memfd_session(&path, q, &buffer, &buffer_name))
        .collect();
    let a = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let b = listener.accept_timeout(Duration::from_secs(10)).unwrap();

    // One slice with a payload, announced to session A, then (hostile) to session B.
    let slice = manager.alloc(5).unwrap().first();
    manager.set_len(slice, 5).unwrap();
    manager.hand_over(slice).unwrap();
    let polling = encode(3, Message::Polling);
    let announce = |i: usize| {
        let pair =
            queue::attach_region(queues[i].region(), shmlink_core::queue::Side::Client).unwrap();
        let (producer, _) = pair.into_roles();
        if producer.push(Element::data(2, slice)).unwrap() == Wake::NotifyPeer {
            conns[i].send(&polling, "send").unwrap();
        }
    };
    announce(0);
    let mut stream = a.accept_stream(Some(Duration::from_secs(10))).unwrap();
    let view = stream.read_view().unwrap().unwrap();
    assert_eq!(view.len(), 5);
    announce(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.is_closed() {
        assert!(
            Instant::now() < deadline,
            "session B accepted a slice session A holds"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let reason = b.close_reason().unwrap().to_string();
    assert!(
        reason.contains(&slice.to_string()) && reason.contains("received it"),
        "{reason}"
    );
    assert!(
        matches!(b.accept_stream(Some(Duration::from_millis(10))), Err(e) if e.is_session_closed())
    );
    drop(view);
    assert!(!a.is_closed(), "session A is not affected");
}

/// Issue 10, item 7: by default a server talks only to processes of its own user
/// (`SO_PEERCRED`); another user's client is refused, naming both uids and the setting, and
/// `Config::same_user_only = false` lets it in. Needs root to run the client as another user
/// (uid 65534); without root it says so and checks nothing.
#[test]
fn a_client_of_another_user_is_refused_unless_allowed() {
    let _deadline = shmlink_tests::deadline(
        "hostile_clients::a_client_of_another_user_is_refused_unless_allowed",
        std::time::Duration::from_secs(60),
    );
    use std::os::unix::process::CommandExt;
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!("SKIPPED: running a peer as another user needs root");
        return;
    }
    const PEER: &str = env!("CARGO_BIN_EXE_shmlink-rt-peer");
    let client_as_nobody = |path: &std::path::Path, extra: &[&str]| {
        std::process::Command::new(PEER)
            .args([
                "blocking",
                "client",
                path.to_str().unwrap(),
                "--sizes",
                "10,5000",
            ])
            .args(extra)
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The socket must be reachable by that user for the check to be what refuses it.
    let open = Config {
        socket_mode: 0o666,
        ..Config::default()
    };

    let path = sock("other-user");
    let listener = Listener::bind(&path, open.clone()).unwrap();
    let child = client_as_nobody(&path, &[]);
    let failures = wait_failures(&listener, 1);
    assert!(
        failures.iter().any(|f| f.error.contains("same_user_only")
            && f.error.contains("uid 65534")
            && f.error.contains("uid 0")),
        "{failures:?}"
    );
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "the refused client must fail");
    drop(listener);

    let path = sock("other-user-allowed");
    let listener = Listener::bind(
        &path,
        Config {
            same_user_only: false,
            ..open
        },
    )
    .unwrap();
    // Both sides allow it (the client checks the server's user too).
    let child = client_as_nobody(&path, &["--any-user"]);
    let session = listener.accept_timeout(Duration::from_secs(30)).unwrap();
    let server = std::thread::spawn(move || shmlink_tests::echo_session(&session, None));
    shmlink_tests::wait_success(child, Duration::from_secs(60));
    assert!(server.join().unwrap().unwrap() > 0);

    // And a client checks its server: one run by another user is refused.
    let path = sock("other-user-server");
    let mut server = std::process::Command::new(PEER)
        .args(["blocking", "server", path.to_str().unwrap()])
        .uid(65534)
        .gid(65534)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");
    match Session::connect(&path, Config::default()) {
        Err(Error::PeerRefused(why)) => {
            assert!(why.contains("server") && why.contains("uid 65534"), "{why}");
        }
        other => panic!("a server of another user was not refused: {other:?}"),
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(&path);
}
