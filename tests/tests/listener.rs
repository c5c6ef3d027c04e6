//! Issue 9, item 1: the listener's socket file (stale or live, its mode), `close`, and
//! callback serving on the blocking API and on tokio.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use shmlink::{Config, Error, Listener, Session};
use shmlink_tests::{check_echoes, socket_path, unique};

#[test]
fn a_stale_socket_file_is_replaced_but_a_live_listener_is_not_stolen() {
    let _deadline = shmlink_tests::deadline(
        "listener::a_stale_socket_file_is_replaced_but_a_live_listener_is_not_stolen",
        std::time::Duration::from_secs(60),
    );
    let path = socket_path(&unique("stale"));
    // A socket file whose listener is gone (bound, then the fd closed without unlinking).
    {
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(l);
    }
    assert!(path.exists(), "the stale file is there");
    let live = Listener::bind(&path, Config::default()).expect("a stale file is replaced");
    let second = Listener::bind(&path, Config::default());
    let err = second.expect_err("a live listener's path is not taken over");
    assert!(
        err.to_string().contains("a listener is live on it"),
        "{err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "the error names the path: {err}"
    );
    // The live one still works.
    let session = Session::connect(&path, Config::default()).unwrap();
    let _server = live.accept_timeout(Duration::from_secs(10)).unwrap();
    drop(session);
}

#[test]
fn the_socket_file_is_private_unless_configured() {
    let _deadline = shmlink_tests::deadline(
        "listener::the_socket_file_is_private_unless_configured",
        std::time::Duration::from_secs(60),
    );
    let path = socket_path(&unique("mode"));
    let l = Listener::bind(&path, Config::default()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(l);
    let shared = Config {
        socket_mode: 0o660,
        ..Config::default()
    };
    let l = Listener::bind(&path, shared).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    drop(l);
}

#[test]
fn close_stops_accepting_and_unlinks_but_running_sessions_keep_working() {
    let _deadline = shmlink_tests::deadline(
        "listener::close_stops_accepting_and_unlinks_but_running_sessions_keep_working",
        std::time::Duration::from_secs(60),
    );
    let path = socket_path(&unique("close"));
    let listener = Listener::bind(&path, Config::default()).unwrap();
    let client = Session::connect(&path, Config::default()).unwrap();
    let server = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    listener.close();
    assert!(!path.exists(), "the socket file is removed");
    assert!(matches!(listener.accept(), Err(Error::ClosedLocally)));
    assert!(Session::connect(&path, Config::default()).is_err());
    // The accepted session still serves.
    let mut c = client.open_stream().unwrap();
    c.write_all(b"still here").unwrap();
    let mut s = server.accept_stream(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still here");
}

fn echo_stream(mut stream: shmlink::Stream) {
    while let Ok(Some(body)) = shmlink_tests::recv_framed(&mut stream) {
        if shmlink_tests::send_framed(&stream, &body).is_err() {
            break;
        }
    }
}

#[test]
fn serve_runs_the_callback_for_every_stream_of_every_client_until_closed() {
    let _deadline = shmlink_tests::deadline(
        "listener::serve_runs_the_callback_for_every_stream_of_every_client_until_closed",
        std::time::Duration::from_secs(60),
    );
    let path = socket_path(&unique("serve"));
    let listener = Arc::new(Listener::bind(&path, Config::default()).unwrap());
    let server = {
        let listener = Arc::clone(&listener);
        std::thread::spawn(move || listener.serve(echo_stream))
    };
    std::thread::scope(|scope| {
        for c in 0..3 {
            let path = &path;
            scope.spawn(move || {
                let session = Session::connect(path, Config::default()).unwrap();
                for k in 0..4 {
                    let mut stream = session.open_stream().unwrap();
                    check_echoes(&mut stream, &[1, 100, 10_000, 200_000], c * 10 + k).unwrap();
                }
            });
        }
    });
    listener.close();
    server.join().unwrap().unwrap();
}

#[test]
fn tokio_serve_runs_the_callback_for_every_stream() {
    let _deadline = shmlink_tests::deadline(
        "listener::tokio_serve_runs_the_callback_for_every_stream",
        std::time::Duration::from_secs(60),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let path = socket_path(&unique("serve-tokio"));
    let listener = Arc::new(Listener::bind(&path, Config::default()).unwrap());
    let server = {
        let listener = Arc::clone(&listener);
        rt.spawn(async move {
            shmlink::tokio::serve(&listener, |mut stream| async move {
                while let Ok(Some(body)) = shmlink_tests::framed::recv(&mut stream).await {
                    if shmlink_tests::framed::send(&stream, &body).await.is_err() {
                        break;
                    }
                }
            })
            .await
        })
    };
    let session = Session::connect(&path, Config::default()).unwrap();
    for k in 0..4 {
        let mut stream = session.open_stream().unwrap();
        check_echoes(&mut stream, &[1, 100, 10_000, 200_000], k).unwrap();
    }
    drop(session);
    listener.close();
    rt.block_on(server).unwrap().unwrap();
}

/// `accept_stream` hands out the streams of every session, whichever session a client uses
/// and even when nothing else reads any of them: one blocking wait covers all their sockets.
/// (It once watched only the last session it looked at: a stream opened on another, quiet
/// session was never noticed.)
#[test]
fn accept_stream_covers_every_session_even_quiet_ones() {
    let _deadline = shmlink_tests::deadline(
        "listener::accept_stream_covers_every_session_even_quiet_ones",
        std::time::Duration::from_secs(60),
    );
    let path = socket_path(&unique("hub"));
    let listener = Arc::new(Listener::bind(&path, Config::default()).unwrap());
    let clients: Vec<Session> = (0..3)
        .map(|_| Session::connect(&path, Config::default()).unwrap())
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let acceptor = {
        let listener = Arc::clone(&listener);
        std::thread::spawn(move || {
            while let Ok(mut stream) = listener.accept_stream() {
                let mut buf = [0u8; 1];
                stream.read_exact(&mut buf).unwrap();
                tx.send(buf[0]).unwrap();
            }
        })
    };
    // Each client in turn opens one stream while the acceptor sleeps on all sessions.
    for round in 0..2u8 {
        for (i, c) in clients.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(50));
            let mut s = c.open_stream().unwrap();
            let tag = round * 10 + i as u8;
            s.write_all(&[tag]).unwrap();
            let got = rx
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("the stream of client {i} was not accepted"));
            assert_eq!(got, tag);
        }
    }
    listener.close();
    acceptor.join().unwrap();
}

#[test]
fn tokio_and_smol_accept_stream_cover_every_session() {
    let _deadline = shmlink_tests::deadline(
        "listener::tokio_and_smol_accept_stream_cover_every_session",
        std::time::Duration::from_secs(60),
    );
    for rt_name in ["tokio", "smol"] {
        let path = socket_path(&unique(&format!("hub-{rt_name}")));
        let listener = Arc::new(Listener::bind(&path, Config::default()).unwrap());
        let clients: Vec<Session> = (0..3)
            .map(|_| Session::connect(&path, Config::default()).unwrap())
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let acceptor = {
            let listener = Arc::clone(&listener);
            let rt_name = rt_name.to_owned();
            std::thread::spawn(move || {
                let run = async {
                    loop {
                        let next = if rt_name == "tokio" {
                            shmlink::tokio::accept_stream(&listener).await
                        } else {
                            shmlink::smol::accept_stream(&listener).await
                        };
                        let Ok(mut stream) = next else { break };
                        let got = stream.read_bytes(1).await.unwrap().unwrap();
                        tx.send(got[0]).unwrap();
                    }
                };
                if rt_name == "tokio" {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(run);
                } else {
                    shmlink_tests::exec::block_on(run);
                }
            })
        };
        for (i, c) in clients.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(50));
            let mut s = c.open_stream().unwrap();
            s.write_all(&[i as u8]).unwrap();
            let got = rx
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("{rt_name}: client {i}'s stream was not accepted"));
            assert_eq!(got, i as u8);
        }
        listener.close();
        acceptor.join().unwrap();
    }
}

/// After `close`, the listener's own sessions (those of `serve`) do not linger unserved: a
/// stream a client opens then fails clearly within the grace, instead of waiting for ever.
/// (They once stayed open with nobody accepting until the listener was dropped.)
#[test]
fn closing_a_serving_listener_ends_its_sessions_instead_of_leaving_them_silent() {
    let _deadline = shmlink_tests::deadline(
        "listener::closing_a_serving_listener_ends_its_sessions_instead_of_leaving_them_silent",
        std::time::Duration::from_secs(60),
    );
    let path = socket_path(&unique("close-hub"));
    let config = Config {
        shutdown_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let listener = Arc::new(Listener::bind(&path, config).unwrap());
    let server = {
        let listener = Arc::clone(&listener);
        std::thread::spawn(move || listener.serve(echo_stream))
    };
    let session = Session::connect(&path, Config::default()).unwrap();
    let mut first = session.open_stream().unwrap();
    check_echoes(&mut first, &[10], 0).unwrap();
    drop(first);
    listener.close();
    server.join().unwrap().unwrap();
    let mut late = session.open_stream().unwrap();
    late.set_read_timeout(Some(Duration::from_secs(10)));
    let start = std::time::Instant::now();
    let outcome = shmlink_tests::send_framed(&late, b"anyone?")
        .and_then(|()| shmlink_tests::recv_framed(&mut late));
    assert!(
        !matches!(outcome, Ok(Some(_)) | Err(Error::Timeout)),
        "a stream opened after close got {outcome:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
}
