//! Interop with CloudWeGo's Rust implementation, crate `shmipc` 0.2.1 (tokio-based), in both
//! directions, in V3 memfd and V2 file mode, with messages that need multi-slice chains and a
//! fallback message each way. Both implementations run in this process on their own threads
//! and talk through a unix socket and shared memory exactly as two processes would.
//!
//! Deviations of shmipc 0.2.1 from PROTOCOL.md noticed here: none on the wire for V2/V3. Its
//! server dispatches on the first frame's *type* rather than Go's version byte (PROTOCOL-V4.md
//! 1.1); our client sends exactly what Go sends, so both dispatch the same way. Its streams do
//! not recycle received slices when dropped, only on `close()` (Go needs Close() too), so the
//! echo tasks below close explicitly; otherwise our free lists would not return to full.

use std::os::unix::net::SocketAddr;
use std::time::Duration;

use cloudwego_shmipc::compact::StreamExt;
use cloudwego_shmipc::config::SizePercentPair;
use cloudwego_shmipc::consts::MemMapType;
use cloudwego_shmipc::session::{SessionManager, SessionManagerConfig};
use cloudwego_shmipc::transport::{DefaultUnixConnect, DefaultUnixListen};
use shmlink::{Config, Listener, MemMode, Session, SizeClass};
use shmlink_tests::{
    check_echoes, echo_session, leftover_files, leftover_files_settled, payload, socket_path,
    unique,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sizes that need chains: the largest default slice holds 131,052 bytes.
const SIZES: [usize; 6] = [1, 4000, 8172, 131_052, 200_000, 1 << 20];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn their_config(mode: MemMapType, prefix: &str, small_buffer: bool) -> SessionManagerConfig {
    let mut c = SessionManagerConfig::new().with_session_num(1);
    c.config_mut().mem_map_type = mode;
    c.config_mut().share_memory_path_prefix = prefix.to_owned();
    if small_buffer {
        // 1 MiB of 4 KiB slices: a 2 MiB message cannot fit and must fall back.
        c.config_mut().share_memory_buffer_cap = 1 << 20;
        c.config_mut().buffer_slice_sizes = vec![SizePercentPair {
            size: 4096,
            percent: 100,
        }];
    }
    c
}

async fn their_echo_roundtrip(stream: &mut StreamExt, body: &[u8]) -> Vec<u8> {
    stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(body).await.unwrap();
    stream.flush().await.unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.unwrap();
    let mut echo = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut echo).await.unwrap();
    echo
}

/// Their client (SessionManager) against our server (Listener).
fn their_client_our_server(
    mode: MemMapType,
    sizes: &[usize],
    small_buffer: bool,
) -> (bool, shmlink::Metrics) {
    let expected = sizes.len();
    let sock = socket_path("interop-theirs-c");
    let prefix = format!("/dev/shm/{}", unique("interop-tc"));
    let listener = Listener::bind(&sock, Config::default()).unwrap();
    let server = std::thread::spawn(move || {
        let session = listener.accept_timeout(Duration::from_secs(30)).unwrap();
        let echoed = echo_session(&session, None).unwrap();
        assert_eq!(echoed, expected);
        (session.all_buffers_free(), session.metrics(), session)
    });
    let rt = runtime();
    let sizes = sizes.to_vec();
    let config = their_config(mode, &prefix, small_buffer);
    let fallback = rt.block_on(async move {
        let sm = SessionManager::new(
            config,
            DefaultUnixConnect,
            SocketAddr::from_pathname(&sock).unwrap(),
        )
        .await
        .unwrap();
        let stream = sm.get_stream().unwrap();
        let mut stream = StreamExt::new(stream);
        for (i, &size) in sizes.iter().enumerate() {
            let body = payload(size, i);
            assert!(
                their_echo_roundtrip(&mut stream, &body).await == body,
                "echo of {size} bytes"
            );
        }
        let fallback = stream.inner_mut().fallback_state();
        stream.inner_mut().close().await.unwrap();
        sm.close().await;
        // Let their asynchronous cleanup run before the runtime goes away.
        tokio::time::sleep(Duration::from_millis(200)).await;
        fallback
    });
    drop(rt);
    let (all_free, metrics, session) = server.join().unwrap();
    assert!(all_free, "every slice back in its free list");
    drop(session);
    assert!(
        leftover_files_settled(&prefix).is_empty(),
        "{:?}",
        leftover_files_settled(&prefix)
    );
    if small_buffer {
        assert!(
            fallback,
            "their stream should be in fallback after a 2 MiB write into 1 MiB"
        );
    }
    (fallback, metrics)
}

#[test]
fn their_memfd_v3_client_echoes_chains_through_our_server() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::their_memfd_v3_client_echoes_chains_through_our_server",
        std::time::Duration::from_secs(60),
    );
    let (_, m) = their_client_our_server(MemMapType::MemMapTypeMemFd, &SIZES, false);
    assert_eq!(m.stability.fallback_read_count, 0);
    assert!(m.performance.receive_queue_count >= SIZES.len() as u64);
}

#[test]
fn their_devshm_v2_client_echoes_chains_through_our_server() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::their_devshm_v2_client_echoes_chains_through_our_server",
        std::time::Duration::from_secs(60),
    );
    let (_, m) = their_client_our_server(MemMapType::MemMapTypeDevShmFile, &SIZES, false);
    assert_eq!(m.stability.fallback_read_count, 0);
}

#[test]
fn their_fallback_message_reaches_our_server_and_our_reply_falls_back_too() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::their_fallback_message_reaches_our_server_and_our_reply_falls_back_too",
        std::time::Duration::from_secs(60),
    );
    let (_, m) = their_client_our_server(MemMapType::MemMapTypeMemFd, &[100, 2 << 20], true);
    assert!(m.stability.fallback_read_count >= 1, "{m:?}");
    // Go's rule, which we follow: the receiving stream switches to fallback for its replies.
    assert!(m.stability.fallback_write_count >= 1, "{m:?}");
}

/// Our client against their server (Listener + echo tasks).
fn our_client_their_server(config: Config, sizes: &[usize]) -> (bool, shmlink::Metrics) {
    let sock = socket_path("interop-theirs-s");
    let rt = runtime();
    let listen_addr = SocketAddr::from_pathname(&sock).unwrap();
    let server_config = cloudwego_shmipc::config::Config::default();
    let mut listener = rt
        .block_on(cloudwego_shmipc::Listener::new(
            DefaultUnixListen,
            listen_addr,
            server_config,
        ))
        .unwrap();
    rt.spawn(async move {
        while let Ok(stream) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = StreamExt::new(stream);
                loop {
                    let mut len = [0u8; 4];
                    if stream.read_exact(&mut len).await.is_err() {
                        break;
                    }
                    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                    if stream.read_exact(&mut body).await.is_err() {
                        break;
                    }
                    if stream.write_all(&len).await.is_err()
                        || stream.write_all(&body).await.is_err()
                    {
                        break;
                    }
                    if stream.flush().await.is_err() {
                        break;
                    }
                }
                // Go semantics: closing the stream recycles what it still holds.
                let _ = stream.inner_mut().close().await;
            });
        }
    });
    let prefix = config.path_prefix.clone();
    let session = Session::connect(&sock, config).unwrap();
    let mut stream = session.open_stream().unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20)));
    check_echoes(&mut stream, sizes, 0).unwrap();
    let fallback = stream.is_fallback();
    stream.close();
    // Their reader recycles our request slices asynchronously; give it a moment.
    let start = std::time::Instant::now();
    while !session.all_buffers_free() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        session.all_buffers_free(),
        "every slice back in its free list: {:?}",
        session.shared_memory_usage()
    );
    let metrics = session.metrics();
    drop(stream);
    drop(session);
    rt.shutdown_timeout(Duration::from_secs(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !leftover_files(&prefix).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        leftover_files(&prefix).is_empty(),
        "{:?}",
        leftover_files(&prefix)
    );
    (fallback, metrics)
}

fn our_config(mode: MemMode) -> Config {
    Config {
        mem_mode: mode,
        path_prefix: format!("/dev/shm/{}", unique("interop-oc")),
        ..Config::default()
    }
}

#[test]
fn our_memfd_v3_client_echoes_chains_through_their_server() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::our_memfd_v3_client_echoes_chains_through_their_server",
        std::time::Duration::from_secs(60),
    );
    let (fallback, m) = our_client_their_server(our_config(MemMode::Memfd), &SIZES);
    assert!(!fallback);
    assert_eq!(m.stability.fallback_write_count, 0);
    assert!(m.performance.in_flow_bytes > 0);
}

#[test]
fn our_devshm_v2_client_echoes_chains_through_their_server() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::our_devshm_v2_client_echoes_chains_through_their_server",
        std::time::Duration::from_secs(60),
    );
    let (fallback, m) = our_client_their_server(our_config(MemMode::File), &SIZES);
    assert!(!fallback);
    assert_eq!(m.stability.fallback_write_count, 0);
}

#[test]
fn our_fallback_message_reaches_their_server_and_comes_back() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::our_fallback_message_reaches_their_server_and_comes_back",
        std::time::Duration::from_secs(60),
    );
    let mut config = our_config(MemMode::Memfd);
    config.buffer_capacity = 1 << 20;
    config.size_classes = vec![SizeClass {
        size: 4096,
        percent: 100,
    }];
    let (fallback, m) = our_client_their_server(config, &[100, 2 << 20]);
    assert!(
        fallback,
        "a 2 MiB write into 1 MiB of shared memory must fall back"
    );
    assert!(m.stability.fallback_write_count >= 1, "{m:?}");
    assert!(
        m.stability.fallback_read_count >= 1,
        "their reply falls back too: {m:?}"
    );
}

#[test]
fn our_v3_file_mode_client_echoes_through_their_server() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::our_v3_file_mode_client_echoes_through_their_server",
        std::time::Duration::from_secs(60),
    );
    let config = Config {
        file_mode_v3: true,
        ..our_config(MemMode::File)
    };
    let (fallback, m) = our_client_their_server(config, &[1, 200_000]);
    assert!(!fallback);
    assert_eq!(m.stability.fallback_write_count, 0);
}

// ---------------------------------------------------------------------------------------
// The same through our async API, on tokio and on smol (async-io under the hand-written
// executor of `shmlink_tests::exec`).

#[derive(Clone, Copy)]
enum Ours {
    Tokio,
    Smol,
}

/// Runs `f` on a thread of its own, on our runtime `ours`.
fn on_our_runtime<T: Send + 'static>(
    ours: Ours,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || match ours {
        Ours::Tokio => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f),
        Ours::Smol => shmlink_tests::exec::block_on(f),
    })
}

/// Their client against our async server: every stream echoed through `AsyncStream`.
fn their_client_our_async_server(ours: Ours, mode: MemMapType) {
    let sock = socket_path("interop-async-srv");
    let prefix = format!("/dev/shm/{}", unique("interop-as"));
    let listener = Listener::bind(&sock, Config::default()).unwrap();
    let expected = SIZES.len();
    let server = on_our_runtime(ours, async move {
        let session = match ours {
            Ours::Tokio => shmlink::tokio::accept(&listener).await,
            Ours::Smol => shmlink::smol::accept(&listener).await,
        }
        .unwrap();
        let mut stream = session.accept_stream(None).await.unwrap();
        let mut echoed = 0;
        while let Some(body) = shmlink_tests::framed::recv(&mut stream).await.unwrap() {
            shmlink_tests::framed::send(&stream, &body).await.unwrap();
            echoed += 1;
        }
        drop(stream);
        (echoed, session.all_buffers_free(), session)
    });
    let rt = runtime();
    let config = their_config(mode, &prefix, false);
    rt.block_on(async move {
        let sm = SessionManager::new(
            config,
            DefaultUnixConnect,
            SocketAddr::from_pathname(&sock).unwrap(),
        )
        .await
        .unwrap();
        let mut stream = StreamExt::new(sm.get_stream().unwrap());
        for (i, &size) in SIZES.iter().enumerate() {
            let body = payload(size, i);
            assert!(
                their_echo_roundtrip(&mut stream, &body).await == body,
                "echo of {size} bytes"
            );
        }
        stream.inner_mut().close().await.unwrap();
        sm.close().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    drop(rt);
    let (echoed, all_free, session) = server.join().unwrap();
    assert_eq!(echoed, expected);
    assert!(all_free, "every slice back in its free list");
    drop(session);
    assert!(
        leftover_files_settled(&prefix).is_empty(),
        "{:?}",
        leftover_files_settled(&prefix)
    );
}

/// Their server (Listener + an echo task per stream, framed as ours) on `rt`, at `sock`.
fn their_echo_server(rt: &tokio::runtime::Runtime, sock: &std::path::Path) {
    let mut listener = rt
        .block_on(cloudwego_shmipc::Listener::new(
            DefaultUnixListen,
            SocketAddr::from_pathname(sock).unwrap(),
            cloudwego_shmipc::config::Config::default(),
        ))
        .unwrap();
    rt.spawn(async move {
        while let Ok(stream) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = StreamExt::new(stream);
                loop {
                    let mut len = [0u8; 4];
                    if stream.read_exact(&mut len).await.is_err() {
                        break;
                    }
                    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                    if stream.read_exact(&mut body).await.is_err()
                        || stream.write_all(&len).await.is_err()
                        || stream.write_all(&body).await.is_err()
                        || stream.flush().await.is_err()
                    {
                        break;
                    }
                }
                // Go semantics: closing the stream recycles what it still holds.
                let _ = stream.inner_mut().close().await;
            });
        }
    });
}

/// Our async client against their server.
fn our_async_client_their_server(ours: Ours, mode: MemMode) {
    let sock = socket_path("interop-async-cli");
    let rt = runtime();
    their_echo_server(&rt, &sock);
    let config = our_config(mode);
    let prefix = config.path_prefix.clone();
    let client = on_our_runtime(ours, async move {
        let session = match ours {
            Ours::Tokio => shmlink::tokio::connect(&sock, config).await,
            Ours::Smol => shmlink::smol::connect(&sock, config).await,
        }
        .unwrap();
        let mut stream = session.open_stream().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20)));
        for (i, &size) in SIZES.iter().enumerate() {
            let body = payload(size, i);
            shmlink_tests::framed::send(&stream, &body).await.unwrap();
            let echo = shmlink_tests::framed::recv(&mut stream)
                .await
                .unwrap()
                .unwrap();
            assert!(echo[..] == body[..], "echo of {size} bytes");
        }
        stream.close();
        let start = std::time::Instant::now();
        while !session.all_buffers_free() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            session.all_buffers_free(),
            "{:?}",
            session.shared_memory_usage()
        );
    });
    client.join().unwrap();
    rt.shutdown_timeout(Duration::from_secs(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !leftover_files(&prefix).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        leftover_files(&prefix).is_empty(),
        "{:?}",
        leftover_files(&prefix)
    );
}

#[test]
fn their_client_echoes_through_our_tokio_server_memfd_and_devshm() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::their_client_echoes_through_our_tokio_server_memfd_and_devshm",
        std::time::Duration::from_secs(60),
    );
    their_client_our_async_server(Ours::Tokio, MemMapType::MemMapTypeMemFd);
    their_client_our_async_server(Ours::Tokio, MemMapType::MemMapTypeDevShmFile);
}

#[test]
fn their_client_echoes_through_our_smol_server_memfd_and_devshm() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::their_client_echoes_through_our_smol_server_memfd_and_devshm",
        std::time::Duration::from_secs(60),
    );
    their_client_our_async_server(Ours::Smol, MemMapType::MemMapTypeMemFd);
    their_client_our_async_server(Ours::Smol, MemMapType::MemMapTypeDevShmFile);
}

#[test]
fn our_tokio_client_echoes_through_their_server_memfd_and_devshm() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::our_tokio_client_echoes_through_their_server_memfd_and_devshm",
        std::time::Duration::from_secs(60),
    );
    our_async_client_their_server(Ours::Tokio, MemMode::Memfd);
    our_async_client_their_server(Ours::Tokio, MemMode::File);
}

#[test]
fn our_smol_client_echoes_through_their_server_memfd_and_devshm() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::our_smol_client_echoes_through_their_server_memfd_and_devshm",
        std::time::Duration::from_secs(60),
    );
    our_async_client_their_server(Ours::Smol, MemMode::Memfd);
    our_async_client_their_server(Ours::Smol, MemMode::File);
}

/// Issue 9: our SessionManager (2 sessions, pooled streams) against their server.
#[test]
fn our_session_manager_echoes_through_their_server() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::our_session_manager_echoes_through_their_server",
        std::time::Duration::from_secs(60),
    );
    let sock = socket_path("interop-mgr");
    let rt = runtime();
    their_echo_server(&rt, &sock);
    let manager = shmlink::SessionManager::new(
        &sock,
        our_config(MemMode::Memfd),
        shmlink::ManagerConfig {
            sessions: 2,
            ..shmlink::ManagerConfig::default()
        },
    )
    .unwrap();
    assert_eq!(manager.live_sessions(), 2);
    for k in 0..6 {
        let mut stream = manager.get_stream().unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20)));
        check_echoes(&mut stream, &SIZES[..4], k).unwrap();
    }
    manager.close();
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// Issue 9: our async pools (tokio and smol; 2 sessions, 8 concurrent tasks) against their
/// server.
#[test]
fn our_async_session_managers_echo_through_their_server() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::our_async_session_managers_echo_through_their_server",
        std::time::Duration::from_secs(60),
    );
    for rt_name in ["tokio", "smol"] {
        let sock = socket_path(&format!("interop-amgr-{rt_name}"));
        let rt = runtime();
        their_echo_server(&rt, &sock);
        let mc = shmlink::ManagerConfig {
            sessions: 2,
            ..shmlink::ManagerConfig::default()
        };
        let run = |manager: shmlink::AsyncSessionManager| async move {
            let tasks = (0..8).map(|k| {
                let manager = manager.clone();
                async move {
                    for round in 0..3 {
                        let mut stream = manager.get_stream().unwrap();
                        stream.set_read_timeout(Some(Duration::from_secs(20)));
                        for (i, &size) in SIZES[..4].iter().enumerate() {
                            let body = shmlink_tests::payload(size, k * 100 + round * 10 + i);
                            shmlink_tests::framed::send(&stream, &body).await.unwrap();
                            let echo = shmlink_tests::framed::recv(&mut stream).await.unwrap();
                            assert_eq!(echo.as_deref(), Some(&body[..]), "{rt_name} echo");
                        }
                    }
                }
            });
            futures_util::future::join_all(tasks).await;
            assert_eq!(manager.live_sessions(), 2);
            manager.close();
        };
        if rt_name == "tokio" {
            let manager = rt
                .block_on(shmlink::tokio::manager(
                    &sock,
                    our_config(MemMode::Memfd),
                    mc,
                ))
                .unwrap();
            rt.block_on(run(manager));
        } else {
            let manager = shmlink_tests::exec::block_on(shmlink::smol::manager(
                &sock,
                our_config(MemMode::Memfd),
                mc,
            ))
            .unwrap();
            shmlink_tests::exec::block_on(run(manager));
        }
        rt.shutdown_timeout(Duration::from_secs(1));
    }
}

/// Issue 10, item 7: shmipc (Go, and CloudWeGo's crate) never seals its memfds, so a peer
/// could truncate them under our mapping (SIGBUS). A server with
/// `Config::require_sealed_memory` refuses their client, naming the setting, and still
/// accepts ours (sealed against shrinking and growing); by default theirs is accepted (the
/// other interop tests).
#[test]
fn a_server_that_requires_sealed_memory_refuses_unsealed_clients_and_accepts_ours() {
    let _deadline = shmlink_tests::deadline(
        "interop_cloudwego::a_server_that_requires_sealed_memory_refuses_unsealed_clients_and_accepts_ours",
        std::time::Duration::from_secs(60),
    );
    let sock = socket_path("interop-sealed");
    let strict = Config {
        require_sealed_memory: true,
        ..Config::default()
    };
    let listener = Listener::bind(&sock, strict).unwrap();
    let ours = shmlink::Session::connect(&sock, our_config(MemMode::Memfd)).unwrap();
    let served = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let mut c = ours.open_stream().unwrap();
    std::io::Write::write_all(&mut c, b"sealed").unwrap();
    let mut s = served.accept_stream(Some(Duration::from_secs(10))).unwrap();
    let mut got = [0u8; 6];
    std::io::Read::read_exact(&mut s, &mut got).unwrap();
    assert_eq!(&got, b"sealed");

    let rt = runtime();
    let prefix = format!("/dev/shm/{}", unique("interop-sealed"));
    let config = their_config(MemMapType::MemMapTypeMemFd, &prefix, false);
    let theirs = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            SessionManager::new(
                config,
                DefaultUnixConnect,
                SocketAddr::from_pathname(&sock).unwrap(),
            ),
        )
        .await
    });
    let failures = shmlink_tests::wait_failures(&listener, 1);
    assert!(
        failures
            .iter()
            .any(|f| f.error.contains("require_sealed_memory") && f.error.contains("sealed")),
        "{failures:?}"
    );
    drop(theirs); // their handshake failed or their session is closed: nothing to use
    rt.shutdown_timeout(Duration::from_secs(1));
}
