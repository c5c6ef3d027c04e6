//! The pump's hand-off, measured where it shows on the wire. A reader that owns the pump and
//! leaves (here: a read cancelled by its timeout) hands the pump to a reader still waiting,
//! which keeps the receive queue's working flag up (Poll mode), so the peer's next message
//! for that reader needs no Polling frame. Without the hand-off the flag goes down when the
//! owner leaves and the peer must send one. The only test of its binary: Poll mode spins, and
//! spin tokens are per process.

use std::time::Duration;

use shmlink::{Config, Listener, SyncMode};
use shmlink_tests::socket_path;

#[test]
fn an_owner_that_leaves_hands_the_pump_to_a_waiting_reader() {
    let _deadline = shmlink_tests::deadline(
        "hand_off::an_owner_that_leaves_hands_the_pump_to_a_waiting_reader",
        std::time::Duration::from_secs(60),
    );
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipped: one CPU, nothing spins");
        return;
    }
    let sock = socket_path("hand-off");
    let listener = Listener::bind(
        &sock,
        Config {
            sync: SyncMode::Event,
            ..Config::default()
        },
    )
    .unwrap();
    // The server: streams "a" (never answered), "b" (gets one message when "c" asks), "c".
    let server = std::thread::spawn(move || {
        let session = listener.accept().unwrap();
        let mut opened = std::collections::HashMap::new();
        for _ in 0..3 {
            let mut s = session
                .accept_stream(Some(Duration::from_secs(10)))
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10)));
            let name = s.read_bytes(1).unwrap().unwrap()[0];
            opened.insert(name, s);
        }
        let mut c = opened.remove(&b'c').unwrap();
        let b = opened.remove(&b'b').unwrap();
        let before = session.metrics().performance.send_sync_event_count;
        assert_eq!(&c.read_bytes(2).unwrap().unwrap()[..], b"go");
        b.send(b"data").unwrap();
        let polled = session.metrics().performance.send_sync_event_count - before;
        // Streams stay open (returned) until the client has read.
        opened.insert(b'c', c);
        opened.insert(b'b', b);
        (polled, opened)
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = Config {
            sync: SyncMode::Poll,
            ..Config::default()
        };
        let session = shmlink::tokio::connect(&sock, config).await.unwrap();
        let mut a = session.open_stream().unwrap();
        let mut b = session.open_stream().unwrap();
        let c = session.open_stream().unwrap();
        a.send(b"a").await.unwrap();
        b.send(b"b").await.unwrap();
        c.send(b"c").await.unwrap();
        // A owns the pump (it waits first) and spins; B waits behind it.
        let owner = tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_millis(300), a.read_view()).await;
            assert!(r.is_err(), "nothing is sent on a");
            a
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waiter = tokio::spawn(async move {
            let view = tokio::time::timeout(Duration::from_secs(10), b.read_view())
                .await
                .expect("b's data never came")
                .unwrap()
                .unwrap();
            assert_eq!(&view[..], b"data");
            drop(view);
            b
        });
        // A's read is cancelled at 300 ms; B has had time to take the pump over.
        let _a = owner.await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.send(b"go").await.unwrap();
        let _b = waiter.await.unwrap();
        let (polled, _streams) = server.join().unwrap();
        assert_eq!(
            polled, 0,
            "the server had to wake us for b's data: nobody kept the pump after a's read \
             was cancelled"
        );
        drop(c);
    });
}
