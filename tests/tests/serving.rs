//! Issue 9, across processes and on every runtime: one listener serving 64 clients of 16
//! streams each while a silent client connects; a pool whose sessions are split over two
//! worker processes, one killed with SIGKILL (the other keeps serving, the dead sessions are
//! rebuilt); graceful shutdown under load where every request gets its reply or a clear
//! error, never silence. The server side is `shmlink-serve-peer`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shmlink::{AsyncSessionManager, Config, Error, ManagerConfig, SessionManager};
use shmlink_tests::{
    exec, framed, payload, recv_framed, send_framed, socket_path, unique, wait_success,
};

const PEER: &str = env!("CARGO_BIN_EXE_shmlink-serve-peer");

/// A server peer: started, `ready` read; `stop` ends it gracefully.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Server {
    fn spawn(rt: &str, args: &[&str]) -> Server {
        let mut child = Command::new(PEER)
            .arg(rt)
            .arg("server")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the server did not start");
        Server {
            child,
            stdin,
            stdout,
        }
    }

    /// Asks for a graceful shutdown and waits (at most `limit`) for a clean exit.
    fn stop(mut self, limit: Duration) {
        let mut stdin = self.stdin.take().unwrap();
        let _ = stdin.write_all(b"shutdown\n");
        drop(stdin);
        let start = Instant::now();
        let mut line = String::new();
        let _ = self.stdout.read_line(&mut line);
        assert_eq!(
            line.trim(),
            "stopped",
            "the server did not report its shutdown"
        );
        wait_success(self.child, limit.saturating_sub(start.elapsed()));
    }
}

// ------------------------------------------------------------------------ 64 x 16 streams

/// 4 load processes x 16 sessions x 16 concurrent streams against one listener, every
/// request checked byte for byte, while one client connects and never speaks and another
/// sends half a frame: they cost only their own connections.
fn sixty_four_clients_and_silent_ones(rt: &str) {
    let sock = socket_path(&unique(&format!("serve64-{rt}")));
    let server = Server::spawn(rt, &[sock.to_str().unwrap()]);
    let mut silent = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut half = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    half.write_all(&[0, 0, 0]).unwrap();
    let loaders: Vec<Child> = (0..4)
        .map(|_| {
            Command::new(PEER)
                .args([rt, "load", sock.to_str().unwrap()])
                .args(["--sessions", "16", "--streams", "16", "--requests", "6"])
                .args(["--buffer", &(4 << 20).to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for l in loaders {
        wait_success(l, Duration::from_secs(240));
    }
    // The server gave up on both after its initialize timeout: they read the end.
    for (name, conn) in [("silent", &mut silent), ("half", &mut half)] {
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 64];
        match conn.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("the {name} client was not dropped by the server: {other:?}"),
        }
    }
    server.stop(Duration::from_secs(30));
}

#[test]
fn sixty_four_clients_of_sixteen_streams_and_silent_ones_blocking() {
    let _deadline = shmlink_tests::deadline(
        "serving::sixty_four_clients_of_sixteen_streams_and_silent_ones_blocking",
        std::time::Duration::from_secs(60),
    );
    sixty_four_clients_and_silent_ones("blocking");
}

#[test]
fn sixty_four_clients_of_sixteen_streams_and_silent_ones_tokio() {
    let _deadline = shmlink_tests::deadline(
        "serving::sixty_four_clients_of_sixteen_streams_and_silent_ones_tokio",
        std::time::Duration::from_secs(60),
    );
    sixty_four_clients_and_silent_ones("tokio");
}

#[test]
fn sixty_four_clients_of_sixteen_streams_and_silent_ones_smol() {
    let _deadline = shmlink_tests::deadline(
        "serving::sixty_four_clients_of_sixteen_streams_and_silent_ones_smol",
        std::time::Duration::from_secs(60),
    );
    sixty_four_clients_and_silent_ones("smol");
}

// -------------------------------------------------------------- a pool over two workers

/// The three managers behind one face: a request returns the pid of the worker that served
/// it.
enum Manager {
    Blocking(SessionManager),
    Tokio(AsyncSessionManager, tokio::runtime::Runtime),
    Smol(AsyncSessionManager),
}

impl Manager {
    fn new(kind: &str, path: &std::path::Path) -> Manager {
        let mc = ManagerConfig {
            sessions: 4,
            rebuild_backoff: Duration::from_millis(20),
            ..ManagerConfig::default()
        };
        let config = Config::default();
        match kind {
            "blocking" => Manager::Blocking(SessionManager::new(path, config, mc).unwrap()),
            "tokio" => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                let m = rt
                    .block_on(shmlink::tokio::manager(path, config, mc))
                    .unwrap();
                Manager::Tokio(m, rt)
            }
            _ => Manager::Smol(exec::block_on(shmlink::smol::manager(path, config, mc)).unwrap()),
        }
    }

    /// One request: Ok(pid of the worker), or the error (`Error::Timeout` is silence).
    fn request(&self, salt: usize) -> Result<u32, Error> {
        let body = payload(100 + salt % 3000, salt);
        let check = |reply: Option<Vec<u8>>| -> Result<u32, Error> {
            let reply = reply.ok_or(Error::StreamEnded)?;
            assert_eq!(&reply[4..], &body[..], "a reply to another request");
            Ok(u32::from_be_bytes(reply[..4].try_into().unwrap()))
        };
        match self {
            Manager::Blocking(m) => {
                let mut s = m.get_stream()?;
                s.set_read_timeout(Some(Duration::from_secs(5)));
                send_framed(&s, &body)?;
                check(recv_framed(&mut s)?)
            }
            Manager::Tokio(m, rt) => check(rt.block_on(request_async(m, &body))?),
            Manager::Smol(m) => check(exec::block_on(request_async(m, &body))?),
        }
    }

    fn live(&self) -> usize {
        match self {
            Manager::Blocking(m) => m.live_sessions(),
            Manager::Tokio(m, _) | Manager::Smol(m) => m.live_sessions(),
        }
    }

    fn made(&self) -> usize {
        match self {
            Manager::Blocking(m) => m.sessions_made(),
            Manager::Tokio(m, _) | Manager::Smol(m) => m.sessions_made(),
        }
    }
}

async fn request_async(m: &AsyncSessionManager, body: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    let mut s = m.get_stream()?;
    s.set_read_timeout(Some(Duration::from_secs(5)));
    framed::send(&s, body).await?;
    Ok(framed::recv(&mut s).await?.map(|b| b.to_vec()))
}

/// Two worker processes share one listening socket (inherited); the pool's four sessions
/// land on both. SIGKILL one worker: requests keep being served by the other's sessions
/// (every one answered or failed clearly, none silent), and the dead sessions are rebuilt
/// (on the survivor) with back-off.
fn killed_worker(kind: &str) {
    let sock = socket_path(&unique(&format!("workers-{kind}")));
    let listening = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    // The workers inherit the socket: no close-on-exec on it.
    rustix::io::fcntl_setfd(&listening, rustix::io::FdFlags::empty()).unwrap();
    let fd = listening.as_raw_fd().to_string();
    let args = [sock.to_str().unwrap(), "--fd", fd.as_str(), "--tag"];
    let a = Server::spawn("blocking", &args);
    let b = Server::spawn("blocking", &args);
    drop(listening); // the workers hold it now
    let (pid_a, pid_b) = (a.child.id(), b.child.id());

    // A pool with sessions on both workers (which worker wins a connection is up to them).
    // Each new thread is given the next session (a thread then keeps its own), so four
    // threads reach all four.
    let mut salt = 0;
    let manager = (0..20)
        .find_map(|round| {
            let m = Manager::new(kind, &sock);
            let pids: Vec<u32> = std::thread::scope(|scope| {
                let m = &m;
                let asks: Vec<_> = (0..4)
                    .map(|k| scope.spawn(move || m.request(round * 10 + k).unwrap()))
                    .collect();
                asks.into_iter().map(|a| a.join().unwrap()).collect()
            });
            (pids.contains(&pid_a) && pids.contains(&pid_b)).then_some(m)
        })
        .expect("the sessions never spread over both workers");
    salt += 1000;
    let made = manager.made();

    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();

    // The survivor serves at once; no request is silent.
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..40 {
        salt += 1;
        let start = Instant::now();
        match manager.request(salt) {
            Ok(pid) => {
                assert_eq!(pid, pid_b, "served by a dead worker?");
                ok += 1;
            }
            Err(Error::Timeout) => panic!("a request went unanswered"),
            Err(_) => failed += 1,
        }
        assert!(start.elapsed() < Duration::from_secs(5), "a request hung");
    }
    assert!(
        ok >= 30,
        "the live sessions kept serving: {ok} ok, {failed} failed"
    );

    // The dead sessions come back (on the survivor) and serve.
    let deadline = Instant::now() + Duration::from_secs(20);
    while manager.live() < 4 {
        assert!(
            Instant::now() < deadline,
            "rebuilt only to {} sessions",
            manager.live()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(manager.made() > made, "rebuilds are counted");
    for _ in 0..8 {
        salt += 1;
        assert_eq!(manager.request(salt).unwrap(), pid_b);
    }
    drop(manager);
    b.stop(Duration::from_secs(30));
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn a_killed_worker_loses_only_its_sessions_blocking_manager() {
    let _deadline = shmlink_tests::deadline(
        "serving::a_killed_worker_loses_only_its_sessions_blocking_manager",
        std::time::Duration::from_secs(60),
    );
    killed_worker("blocking");
}

#[test]
fn a_killed_worker_loses_only_its_sessions_tokio_manager() {
    let _deadline = shmlink_tests::deadline(
        "serving::a_killed_worker_loses_only_its_sessions_tokio_manager",
        std::time::Duration::from_secs(60),
    );
    killed_worker("tokio");
}

#[test]
fn a_killed_worker_loses_only_its_sessions_smol_manager() {
    let _deadline = shmlink_tests::deadline(
        "serving::a_killed_worker_loses_only_its_sessions_smol_manager",
        std::time::Duration::from_secs(60),
    );
    killed_worker("smol");
}

// ---------------------------------------------------------- graceful shutdown under load

/// Eight client threads hammer a server through a pool; the server shuts down gracefully
/// in the middle. Every request gets its reply (checked) or a clear error; none is silent.
fn graceful_shutdown_under_load(rt: &str) {
    let grace = std::env::var("SHMLINK_TEST_GRACE_MS").unwrap_or_else(|_| "500".into());
    let sock = socket_path(&unique(&format!("grace-{rt}")));
    // Replies take 100 ms: several requests are always in flight when the shutdown comes.
    let server = Server::spawn(
        rt,
        &[sock.to_str().unwrap(), "--grace", &grace, "--delay", "100"],
    );
    let manager = Arc::new(
        SessionManager::new(
            &sock,
            Config::default(),
            ManagerConfig {
                sessions: 4,
                ..ManagerConfig::default()
            },
        )
        .unwrap(),
    );
    let stopping = Arc::new(AtomicBool::new(false));
    let (ok, clear, silent, lost) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients: Vec<_> = (0..8)
        .map(|t| {
            let (manager, stopping) = (Arc::clone(&manager), Arc::clone(&stopping));
            let (ok, clear, silent, lost) = (
                Arc::clone(&ok),
                Arc::clone(&clear),
                Arc::clone(&silent),
                Arc::clone(&lost),
            );
            std::thread::spawn(move || {
                let mut errors_in_a_row = 0;
                for i in 0.. {
                    let body = payload(10 + (i * 977) % 20_000, t * 1_000_000 + i);
                    // Whether the request was fully sent before the shutdown was asked for.
                    let mut before_stop = false;
                    let outcome = manager.get_stream().and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(10)));
                        send_framed(&s, &body)?;
                        // SYNC: Relaxed; the flag is set before the server is told to stop,
                        // on the test thread, and only compared loosely in time.
                        before_stop = !stopping.load(Ordering::Relaxed);
                        recv_framed(&mut s)
                    });
                    if before_stop && !matches!(outcome, Ok(Some(_))) {
                        // Sent to a running server: a graceful shutdown must answer it.
                        eprintln!("request sent before the shutdown failed: {outcome:?}");
                        // SYNC: Relaxed; a counter, read after the threads are joined.
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                    // SYNC: Relaxed; counters and a flag read after joins or loosely.
                    match outcome {
                        Ok(Some(reply)) => {
                            assert_eq!(reply, body, "a reply to another request");
                            // SYNC: Relaxed; a counter, read after the threads are joined.
                            ok.fetch_add(1, Ordering::Relaxed);
                            errors_in_a_row = 0;
                        }
                        Err(Error::Timeout) => {
                            // SYNC: Relaxed; a counter, read after the threads are joined.
                            silent.fetch_add(1, Ordering::Relaxed);
                            errors_in_a_row += 1;
                        }
                        Ok(None) | Err(_) => {
                            // SYNC: Relaxed; a counter, read after the threads are joined.
                            clear.fetch_add(1, Ordering::Relaxed);
                            errors_in_a_row += 1;
                        }
                    }
                    // SYNC: Relaxed; a flag polled by the clients.
                    if stopping.load(Ordering::Relaxed) && errors_in_a_row >= 3 {
                        return; // the server is gone for good
                    }
                    if errors_in_a_row > 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    // SYNC: Relaxed; a counter.
    while ok.load(Ordering::Relaxed) < 50 {
        assert!(Instant::now() < deadline, "the load did not get going");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SYNC: Relaxed; the threads only poll it.
    stopping.store(true, Ordering::Relaxed);
    server.stop(Duration::from_secs(30));
    for c in clients {
        c.join().unwrap();
    }
    // SYNC: Relaxed; read after the joins.
    let (ok, clear, silent, lost) = (
        ok.load(Ordering::Relaxed),
        clear.load(Ordering::Relaxed),
        silent.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed),
    );
    eprintln!("{rt}: {ok} answered, {clear} clear errors, {silent} silent, {lost} lost");
    assert_eq!(silent, 0, "requests went unanswered without an error");
    assert_eq!(
        lost, 0,
        "requests sent before the shutdown were not answered"
    );
    assert!(ok >= 50);
}

#[test]
fn graceful_shutdown_under_load_blocking() {
    let _deadline = shmlink_tests::deadline(
        "serving::graceful_shutdown_under_load_blocking",
        std::time::Duration::from_secs(60),
    );
    graceful_shutdown_under_load("blocking");
}

#[test]
fn graceful_shutdown_under_load_tokio() {
    let _deadline = shmlink_tests::deadline(
        "serving::graceful_shutdown_under_load_tokio",
        std::time::Duration::from_secs(60),
    );
    graceful_shutdown_under_load("tokio");
}

#[test]
fn graceful_shutdown_under_load_smol() {
    let _deadline = shmlink_tests::deadline(
        "serving::graceful_shutdown_under_load_smol",
        std::time::Duration::from_secs(60),
    );
    graceful_shutdown_under_load("smol");
}
