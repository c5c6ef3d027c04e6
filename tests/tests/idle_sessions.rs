//! Sessions whose application reads nothing for a while. What the peer sends meanwhile is
//! taken in the background (`Config::idle_drain_interval`): replies to streams closed before
//! they came give their shared memory back, data for open streams waits in their buffers,
//! and a peer watching for stalls (`peer_stall_timeout`) does not take the idle session for
//! a hung one. Each test runs in both sync modes that matter here: Event (the flag is down
//! while idle: the peer announces pushes on the socket) and Adaptive (it may be left up:
//! the peer pushes silently).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shmlink::{Config, Listener, Session, SyncMode};
use shmlink_tests::{counting_echo_server, framed, payload, recv_framed, send_framed, socket_path};

const MODES: [SyncMode; 2] = [SyncMode::Event, SyncMode::Adaptive];

/// Waits up to `limit` for `done`, touching nothing else.
fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

const REPLIES: usize = 16;

fn request(i: usize) -> Vec<u8> {
    payload(100 + i * 700, i)
}

#[test]
fn replies_left_unread_on_closed_streams_give_their_memory_back_while_the_session_idles() {
    let _deadline = shmlink_tests::deadline(
        "idle_sessions::replies_left_unread_on_closed_streams_give_their_memory_back_while_the_session_idles",
        std::time::Duration::from_secs(60),
    );
    for sync in MODES {
        let (sock, listener, replies) = counting_echo_server("idle-replies");
        let config = Config {
            sync,
            ..Config::default()
        };
        let session = Session::connect(&sock, config).unwrap();
        let mut streams = Vec::new();
        for i in 0..REPLIES {
            let stream = session.open_stream().unwrap();
            send_framed(&stream, &request(i)).unwrap();
            streams.push(stream);
        }
        // Every reply is in our shared memory before the streams close unread.
        assert!(
            wait_for(Duration::from_secs(5), || replies.load(Ordering::SeqCst)
                == REPLIES),
            "the server did not reply"
        );
        drop(streams);
        // From here on nothing reads, accepts or writes on this session.
        let home = wait_for(Duration::from_secs(3), || session.all_buffers_free());
        assert!(
            home,
            "{sync:?}: {} bytes of shared memory still held by replies nobody will read",
            session.shared_memory_usage().1
        );
        drop(session);
        listener.close();
    }
}

#[test]
fn a_tokio_session_that_nobody_polls_gives_the_memory_of_unread_replies_back() {
    let _deadline = shmlink_tests::deadline(
        "idle_sessions::a_tokio_session_that_nobody_polls_gives_the_memory_of_unread_replies_back",
        std::time::Duration::from_secs(60),
    );
    let (sock, listener, replies) = counting_echo_server("idle-tokio");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (session, streams) = rt.block_on(async {
        let session = shmlink::tokio::connect(&sock, Config::default())
            .await
            .unwrap();
        let mut streams = Vec::new();
        for i in 0..REPLIES {
            let stream = session.open_stream().unwrap();
            framed::send(&stream, &request(i)).await.unwrap();
            streams.push(stream);
        }
        (session, streams)
    });
    assert!(
        wait_for(Duration::from_secs(5), || replies.load(Ordering::SeqCst)
            == REPLIES),
        "the server did not reply"
    );
    drop(streams); // closed unread
    // No task of ours runs from here on; the runtime only turns its reactor.
    let home = wait_for(Duration::from_secs(3), || session.all_buffers_free());
    assert!(
        home,
        "{} bytes of shared memory still held by replies nobody will read",
        session.shared_memory_usage().1
    );
    drop(session);
    drop(rt);
    listener.close();
}

#[test]
fn a_drain_interval_below_a_millisecond_is_refused_by_name() {
    let _deadline = shmlink_tests::deadline(
        "idle_sessions::a_drain_interval_below_a_millisecond_is_refused_by_name",
        std::time::Duration::from_secs(60),
    );
    let config = Config {
        idle_drain_interval: Some(Duration::from_micros(100)),
        ..Config::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("idle_drain_interval"), "{err}");
    let off = Config {
        idle_drain_interval: None,
        ..Config::default()
    };
    off.validate().unwrap();
}

#[test]
fn an_idle_client_is_not_taken_for_a_stalled_peer_and_finds_what_came_meanwhile() {
    let _deadline = shmlink_tests::deadline(
        "idle_sessions::an_idle_client_is_not_taken_for_a_stalled_peer_and_finds_what_came_meanwhile",
        std::time::Duration::from_secs(60),
    );
    for sync in MODES {
        // The server sends its replies late, after the client has gone quiet, and closes
        // sessions whose peer takes nothing for 300 ms.
        let sock = socket_path("idle-stall");
        let listener = Arc::new(
            Listener::bind(
                &sock,
                Config {
                    peer_stall_timeout: Some(Duration::from_millis(300)),
                    ..Config::default()
                },
            )
            .unwrap(),
        );
        let serving = Arc::clone(&listener);
        std::thread::spawn(move || {
            serving.serve(|mut stream| {
                while let Ok(Some(body)) = recv_framed(&mut stream) {
                    std::thread::sleep(Duration::from_millis(100));
                    if send_framed(&stream, &body).is_err() {
                        break;
                    }
                }
            })
        });
        let config = Config {
            sync,
            ..Config::default()
        };
        let session = Session::connect(&sock, config).unwrap();
        let mut streams = Vec::new();
        for i in 0..4 {
            let stream = session.open_stream().unwrap();
            send_framed(&stream, &payload(3000 * (i + 1), i)).unwrap();
            streams.push(stream);
        }
        // Quiet for well over the server's stall timeout while its replies arrive.
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !session.is_closed(),
            "{sync:?}: the server closed an idle session: {:?}",
            session.close_reason()
        );
        for (i, stream) in streams.iter_mut().enumerate() {
            let echo = recv_framed(stream).unwrap().unwrap();
            assert!(
                echo == payload(3000 * (i + 1), i),
                "{sync:?}: reply {i} differs"
            );
        }
        // And the session still works.
        let mut stream = session.open_stream().unwrap();
        send_framed(&stream, b"again").unwrap();
        assert_eq!(recv_framed(&mut stream).unwrap().unwrap(), b"again");
        drop(streams);
        drop(stream);
        drop(session);
        listener.close();
    }
}
