//! Cancellation and sharing edges of the async API (tokio, both ends in this process), from
//! the review of issue 8's driver.

use std::time::{Duration, Instant};

use shmlink::{AsyncSession, Config, Exhaustion, Listener, SyncMode};
use shmlink_tests::{socket_path, unique};

async fn pair(config: Config) -> (AsyncSession, AsyncSession, Listener) {
    let sock = socket_path(&unique("async-edge"));
    let listener = Listener::bind(&sock, config.clone()).unwrap();
    let client = shmlink::tokio::connect(&sock, config).await.unwrap();
    let server = shmlink::tokio::accept(&listener).await.unwrap();
    (client, server, listener)
}

/// A read that starts spinning and is then cancelled (a timeout around it) must not leave the
/// working flag up for a reader that went to sleep before: the peer sends no Polling while
/// the flag is up, and the old driver had nobody left to look at the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_spinning_read_does_not_strand_a_sleeping_reader() {
    let _deadline = shmlink_tests::deadline(
        "async_edges::a_cancelled_spinning_read_does_not_strand_a_sleeping_reader",
        std::time::Duration::from_secs(60),
    );
    let config = Config {
        sync: SyncMode::Adaptive,
        spin_window: Duration::from_millis(20),
        ..Config::default()
    };
    let (client, server, _listener) = pair(config).await;
    let mut a = client.open_stream().unwrap();
    let mut b = client.open_stream().unwrap();
    a.send(b"a").await.unwrap();
    b.send(b"b").await.unwrap();
    let mut sa = server.accept_stream(None).await.unwrap();
    let mut sb = server.accept_stream(None).await.unwrap();
    assert_eq!(&sa.read_bytes(1).await.unwrap().unwrap()[..], b"a");
    assert_eq!(&sb.read_bytes(1).await.unwrap().unwrap()[..], b"b");

    // A waits; its spin window runs out and it sleeps with the flag down.
    let reader_a = tokio::spawn(async move {
        let started = Instant::now();
        let got = a.read_bytes(5).await;
        (got, started.elapsed(), a)
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    // B starts spinning (raising the flag) and is cancelled before its window ends.
    let cancelled = tokio::time::timeout(Duration::from_millis(5), b.read_bytes(1)).await;
    assert!(cancelled.is_err(), "nothing was sent to B");
    // Data for A: the server pushes while the flag is up, so it sends no Polling frame.
    tokio::time::sleep(Duration::from_millis(10)).await;
    sa.send(b"hello").await.unwrap();
    let (got, _, _a) = tokio::time::timeout(Duration::from_secs(5), reader_a)
        .await
        .expect("A was stranded: its data arrived but nobody looked at the queue")
        .unwrap();
    assert_eq!(&got.unwrap().unwrap()[..], b"hello");
    drop(b);
}

/// A write that waits for queue room and is cancelled gives its slices back: the old code
/// handed them over before the push and lost them when the future was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_write_waiting_for_queue_room_returns_its_memory() {
    let _deadline = shmlink_tests::deadline(
        "async_edges::a_cancelled_write_waiting_for_queue_room_returns_its_memory",
        std::time::Duration::from_secs(60),
    );
    let config = Config {
        queue_cap: 16,
        on_exhaustion: Exhaustion::Wait,
        // The server must not take the queue in while its application reads nothing.
        idle_drain_interval: None,
        ..Config::default()
    };
    let (client, server, _listener) = pair(config).await;
    let stream = client.open_stream().unwrap();
    // The server never reads: 16 messages fill the queue.
    for _ in 0..16 {
        stream.send(&[1u8; 100]).await.unwrap();
    }
    let in_use = client.shared_memory_usage().1;
    for _ in 0..20 {
        let r = tokio::time::timeout(Duration::from_millis(2), stream.send(&[2u8; 100])).await;
        assert!(
            r.is_err(),
            "the queue is full: the send must still be waiting"
        );
    }
    assert_eq!(
        client.shared_memory_usage().1,
        in_use,
        "cancelled sends kept their slices"
    );
    // And the 16 queued messages are intact.
    let mut s = server.accept_stream(None).await.unwrap();
    let all = s.read_bytes(1600).await.unwrap().unwrap();
    assert!(all.iter().all(|&b| b == 1));
}

/// Two halves on two tasks: a writer and a reader of one stream at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_work_from_two_tasks() {
    let _deadline = shmlink_tests::deadline(
        "async_edges::split_halves_work_from_two_tasks",
        std::time::Duration::from_secs(60),
    );
    let (client, server, _listener) = pair(Config::default()).await;
    let stream = client.open_stream().unwrap();
    stream.send(b"x").await.unwrap();
    let mut echo = server.accept_stream(None).await.unwrap();
    let echoer = tokio::spawn(async move {
        while let Ok(Some(v)) = echo.read_view().await {
            let copy = v.to_vec();
            drop(v);
            echo.send(&copy).await.unwrap();
        }
    });
    let (mut read, write) = stream.into_split();
    let writer = tokio::spawn(async move {
        for i in 0..2000u32 {
            write.send(&i.to_be_bytes()).await.unwrap();
        }
        write
    });
    assert_eq!(&read.read_bytes(1).await.unwrap().unwrap()[..], b"x");
    for i in 0..2000u32 {
        let b = read.read_bytes(4).await.unwrap().unwrap();
        assert_eq!(u32::from_be_bytes([b[0], b[1], b[2], b[3]]), i);
    }
    let write = writer.await.unwrap();
    drop(write);
    drop(read);
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), echoer).await;
}
