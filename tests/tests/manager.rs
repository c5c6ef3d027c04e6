//! Issue 9, item 3: the client's session pool.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shmlink::{Config, Error, Listener, ManagerConfig, SessionManager};
use shmlink_tests::{check_echoes, echo_session, socket_path, unique};

const PEER: &str = env!("CARGO_BIN_EXE_shmlink-peer");

/// An in-process echo server serving every session it accepts, until the listener closes.
fn echo_server(path: &std::path::Path) -> Arc<Listener> {
    let listener = Arc::new(Listener::bind(path, Config::default()).unwrap());
    let l = Arc::clone(&listener);
    std::thread::spawn(move || {
        while let Ok(session) = l.accept() {
            std::thread::spawn(move || echo_session(&session, None));
        }
    });
    listener
}

fn manager(path: &std::path::Path, sessions: usize) -> SessionManager {
    SessionManager::new(
        path,
        Config::default(),
        ManagerConfig {
            sessions,
            rebuild_backoff: Duration::from_millis(20),
            max_rebuild_backoff: Duration::from_millis(200),
            ..ManagerConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn pooled_streams_go_back_to_their_pool_and_are_handed_out_again() {
    let _deadline = shmlink_tests::deadline(
        "manager::pooled_streams_go_back_to_their_pool_and_are_handed_out_again",
        std::time::Duration::from_secs(60),
    );
    let path = socket_path(&unique("mgr-rr"));
    let _server = echo_server(&path);
    let m = manager(&path, 4);
    assert_eq!(m.live_sessions(), 4);
    assert_eq!(m.sessions_made(), 4);
    let mut held: Vec<_> = (0..8).map(|_| m.get_stream().unwrap()).collect();
    for (k, s) in held.iter_mut().enumerate() {
        check_echoes(s, &[1, 1000, 200_000], k).unwrap();
    }
    let ids: Vec<u32> = held.iter().map(|s| s.id()).collect();
    drop(held);
    // Eight more: all from the pools (the same ids), none newly opened.
    let again: Vec<_> = (0..8).map(|_| m.get_stream().unwrap()).collect();
    let mut reused: Vec<u32> = again.iter().map(|s| s.id()).collect();
    let mut before = ids.clone();
    reused.sort_unstable();
    before.sort_unstable();
    assert_eq!(reused, before, "pooled streams are handed out again");
    let m2 = m.metrics();
    assert!(m2.performance.out_flow_bytes > 0);
}

#[test]
fn a_stream_with_unread_data_is_closed_not_pooled_and_old_idle_streams_expire() {
    let _deadline = shmlink_tests::deadline(
        "manager::a_stream_with_unread_data_is_closed_not_pooled_and_old_idle_streams_expire",
        std::time::Duration::from_secs(60),
    );
    let path = socket_path(&unique("mgr-unread"));
    let _server = echo_server(&path);
    let m = SessionManager::new(
        &path,
        Config::default(),
        ManagerConfig {
            stream_idle_time: Duration::from_millis(100),
            ..ManagerConfig::default()
        },
    )
    .unwrap();
    let s = m.get_stream().unwrap();
    shmlink_tests::send_framed(&s, b"echo me").unwrap();
    // Wait until the echo is in, then return the stream without reading it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.available() == 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let dirty = s.id();
    drop(s);
    let s = m.get_stream().unwrap();
    assert_ne!(
        s.id(),
        dirty,
        "a stream with unread data must not be reused"
    );
    let clean = s.id();
    drop(s);
    std::thread::sleep(Duration::from_millis(150));
    let s = m.get_stream().unwrap();
    assert_ne!(
        s.id(),
        clean,
        "an idle stream older than stream_idle_time is not reused"
    );
}

fn spawn_server(path: &std::path::Path, sessions: usize) -> Child {
    let mut child = Command::new(PEER)
        .args([
            "server",
            path.to_str().unwrap(),
            "--sessions",
            &sessions.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

/// kill -9 of the server: requests fail with clear errors (never hang), and once a server is
/// back the manager rebuilds its sessions with back-off and serves again.
#[test]
fn a_killed_server_gives_clear_errors_then_the_sessions_are_rebuilt() {
    let _deadline = shmlink_tests::deadline(
        "manager::a_killed_server_gives_clear_errors_then_the_sessions_are_rebuilt",
        std::time::Duration::from_secs(60),
    );
    let path = socket_path(&unique("mgr-kill"));
    let mut first = spawn_server(&path, 2);
    let m = manager(&path, 2);
    for k in 0..4 {
        let mut s = m.get_stream().unwrap();
        check_echoes(&mut s, &[10, 50_000], k).unwrap();
    }
    first.kill().unwrap();
    first.wait().unwrap();
    // Every request now ends in an error, promptly.
    for _ in 0..5 {
        let start = Instant::now();
        let outcome = m.get_stream().map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)));
            check_echoes(&mut s, &[10], 0)
        });
        assert!(
            matches!(outcome, Err(_) | Ok(Err(_))),
            "a request to a dead server succeeded"
        );
        assert!(start.elapsed() < Duration::from_secs(6), "a request hung");
    }
    let made = m.sessions_made();
    let mut second = spawn_server(&path, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served = 0;
    while served < 4 {
        assert!(Instant::now() < deadline, "the sessions were not rebuilt");
        match m.get_stream() {
            Ok(mut s) => {
                if check_echoes(&mut s, &[10, 50_000], served).is_ok() {
                    served += 1;
                }
            }
            Err(Error::Unavailable(_)) | Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert!(m.sessions_made() > made, "rebuilt sessions are counted");
    m.close();
    let _ = second.wait();
}
