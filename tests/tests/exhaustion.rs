//! Running out without silent loss: the `Exhaustion` policies. A writer far faster than its
//! reader over 1 MiB of shared memory: with `Wait` every message arrives once and in order,
//! through shared memory only; with `Error` a refused write is reported and never arrives,
//! and the stream goes on once memory is back; a write that can never fit is refused at once.

use std::time::{Duration, Instant};

use shmlink::{Config, Error, Exhaustion, Listener, Session, SizeClass, Stream};
use shmlink_tests::{payload, recv_framed, send_framed, socket_path};

/// 1 MiB of 16 KiB slices: 63 usable.
fn small(policy: Exhaustion) -> Config {
    Config {
        buffer_capacity: 1 << 20,
        size_classes: vec![SizeClass {
            size: 16 << 10,
            percent: 100,
        }],
        on_exhaustion: policy,
        ..Config::default()
    }
}

fn pair(config: Config) -> (Session, Stream, Session, Stream) {
    let sock = socket_path("exhaust");
    let listener = Listener::bind(&sock, Config::default()).unwrap();
    let client = std::thread::spawn(move || Session::connect(&sock, config).unwrap());
    let server = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let client = client.join().unwrap();
    let c = client.open_stream().unwrap();
    send_framed(&c, b"hi").unwrap();
    let mut s = server.accept_stream(Some(Duration::from_secs(10))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20)));
    assert_eq!(recv_framed(&mut s).unwrap().unwrap(), b"hi");
    (client, c, server, s)
}

/// A message with its sequence number in front, so order and identity are checked.
fn message(seq: u32, size: usize) -> Vec<u8> {
    let mut m = seq.to_be_bytes().to_vec();
    m.extend(payload(size, seq as usize));
    m
}

#[test]
fn wait_delivers_every_message_once_and_in_order_through_shared_memory_only() {
    let (client, c, _server, mut s) = pair(small(Exhaustion::Wait));
    const COUNT: u32 = 200;
    const SIZE: usize = 40_000; // 3 slices each: 200 of them are 24 MiB through 1 MiB
    let reader = std::thread::spawn(move || {
        for seq in 0..COUNT {
            let got = recv_framed(&mut s).unwrap().expect("a message");
            assert!(
                got == message(seq, SIZE),
                "message {seq} wrong or out of order"
            );
            if seq % 10 == 0 {
                std::thread::sleep(Duration::from_millis(5)); // a slow reader
            }
        }
        s
    });
    for seq in 0..COUNT {
        send_framed(&c, &message(seq, SIZE)).unwrap();
    }
    let _s = reader.join().unwrap();
    assert!(!c.is_fallback(), "no byte went to the socket");
    let m = client.metrics();
    assert_eq!(m.stability.fallback_write_count, 0);
    assert!(
        m.stability.alloc_shm_error_count > 0,
        "memory did run out: {m:?}"
    );
    assert!(client.is_healthy(), "the circuit breaker stayed closed");
}

#[test]
fn error_refuses_at_once_loses_nothing_accepted_and_recovers() {
    let (_client, c, _server, mut s) = pair(small(Exhaustion::Error));
    let mut accepted = Vec::new();
    let mut refused = 0;
    for seq in 0..100u32 {
        match send_framed(&c, &message(seq, 40_000)) {
            Ok(()) => accepted.push(seq),
            Err(Error::SharedMemoryExhausted { requested }) => {
                assert_eq!(requested, 4 + 4 + 40_000);
                refused += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(refused > 0, "the reader never read, so memory must run out");
    for &seq in &accepted {
        let got = recv_framed(&mut s).unwrap().unwrap();
        assert!(got == message(seq, 40_000), "message {seq}");
    }
    assert_eq!(s.available(), 0, "refused writes never arrive");
    // Memory is back: the stream goes on, still in shared memory.
    send_framed(&c, &message(1000, 40_000)).unwrap();
    assert!(recv_framed(&mut s).unwrap().unwrap() == message(1000, 40_000));
    assert!(!c.is_fallback());
}

#[test]
fn wait_gives_up_at_the_write_timeout_and_refuses_what_can_never_fit() {
    let (_client, mut c, _server, _s) = pair(small(Exhaustion::Wait));
    c.set_write_timeout(Duration::from_millis(200));
    let start = Instant::now();
    let err = loop {
        if let Err(e) = c.send(&payload(40_000, 1)) {
            break e;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never ran out");
    };
    assert!(matches!(err, Error::Timeout), "{err}");
    let err = c.send(&payload(2 << 20, 1)).unwrap_err();
    assert!(
        matches!(err, Error::SharedMemoryExhausted { requested } if requested == 2 << 20),
        "{err}"
    );
}
