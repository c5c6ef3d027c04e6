//! Zero-copy reads and writes that fit framed protocols: a reservation a serializer writes
//! into (`bytes::BufMut`, `io::Write`), exact reads as `bytes::Bytes` that point into shared
//! memory and give their slice back when the last one drops, `peek`, and a chain of slices as
//! a `bytes::Buf`. Both ends in this process, over a real session.

use std::io::Write as _;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use shmlink::{Config, Error, Listener, Session, Stream};
use shmlink_tests::{payload, socket_path};

/// A connected pair: (client session, client stream, server session, server stream).
fn pair() -> (Session, Stream, Session, Stream) {
    let sock = socket_path("bytes");
    let listener = Listener::bind(&sock, Config::default()).unwrap();
    let client = std::thread::spawn(move || Session::connect(&sock, Config::default()).unwrap());
    let server = listener.accept_timeout(Duration::from_secs(10)).unwrap();
    let client = client.join().unwrap();
    let mut c = client.open_stream().unwrap();
    c.send(b"!").unwrap(); // opens the stream on the server
    let mut s = server.accept_stream(Some(Duration::from_secs(10))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10)));
    c.set_read_timeout(Some(Duration::from_secs(10)));
    assert_eq!(&s.read_bytes(1).unwrap().unwrap()[..], b"!");
    (client, c, server, s)
}

fn wait_all_free(session: &Session) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !session.all_buffers_free() {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            session.shared_memory_usage()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_serializer_writes_through_bufmut_and_io_write_across_slice_boundaries() {
    let _deadline = shmlink_tests::deadline(
        "bytes_api::a_serializer_writes_through_bufmut_and_io_write_across_slice_boundaries",
        std::time::Duration::from_secs(60),
    );
    let (client, c, _server, mut s) = pair();
    // 200,000 bytes need a chain of two 131,052-byte slices: the writes cross the boundary.
    let body = payload(200_000, 3);
    let mut r = c.reserve(4 + body.len() + 6).unwrap();
    assert!(r.is_shared_memory());
    r.put_u32(body.len() as u32);
    r.put_slice(&body[..100_000]);
    r.write_all(&body[100_000..]).unwrap();
    write!(r, "{:>6}", "end").unwrap();
    assert_eq!(r.remaining_mut(), 0);
    assert_eq!(
        r.write(b"x").unwrap(),
        0,
        "a full reservation takes no more bytes"
    );
    assert_eq!(r.written(), 4 + body.len() + 6);
    r.commit_written().unwrap();

    let len = s.read_bytes(4).unwrap().unwrap();
    assert_eq!(
        u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize,
        body.len()
    );
    let got = s.read_bytes(body.len()).unwrap().unwrap();
    assert!(got == body, "the body spans two slices and arrives intact");
    assert_eq!(&s.read_bytes(6).unwrap().unwrap()[..], b"   end");
    drop((len, got));
    wait_all_free(&client);
}

#[test]
fn read_bytes_within_a_slice_is_zero_copy_and_the_slice_returns_when_the_last_bytes_drops() {
    let _deadline = shmlink_tests::deadline(
        "bytes_api::read_bytes_within_a_slice_is_zero_copy_and_the_slice_returns_when_the_last_bytes_drops",
        std::time::Duration::from_secs(60),
    );
    let (client, c, _server, mut s) = pair();
    let body = payload(3000, 9);
    c.send(&body).unwrap();
    let first = s.read_bytes(1000).unwrap().unwrap();
    let second = s.read_bytes(1000).unwrap().unwrap();
    assert_eq!(&first[..], &body[..1000]);
    assert_eq!(&second[..], &body[1000..2000]);
    // Views into one buffer, not copies: the second starts where the first ends.
    assert_eq!(second.as_ptr(), first.as_ptr().wrapping_add(1000));
    let peeked = s.peek(500).unwrap().unwrap();
    assert_eq!(&peeked[..], &body[2000..2500]);
    assert_eq!(
        peeked.as_ptr(),
        second.as_ptr().wrapping_add(1000),
        "peek is zero copy too"
    );
    let third = s.read_bytes(1000).unwrap().unwrap();
    assert_eq!(&third[..], &body[2000..]);
    assert_eq!(s.available(), 0);
    // Everything read, but the slice is still lent out.
    assert!(!client.all_buffers_free());
    drop((first, second, peeked));
    assert!(!client.all_buffers_free(), "`third` still uses the slice");
    drop(third);
    wait_all_free(&client);
}

#[test]
fn read_buf_gives_the_slices_as_a_buf_and_mixes_with_other_reads() {
    let _deadline = shmlink_tests::deadline(
        "bytes_api::read_buf_gives_the_slices_as_a_buf_and_mixes_with_other_reads",
        std::time::Duration::from_secs(60),
    );
    let (client, c, _server, mut s) = pair();
    let a = payload(10_000, 1);
    let b = payload(20_000, 2);
    c.send(&a).unwrap();
    c.send(&b).unwrap();
    // Wait until both pieces are in.
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.available() < 30_000 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let head = s.read_bytes(100).unwrap().unwrap();
    assert_eq!(&head[..], &a[..100]);
    let mut buf = s.read_buf(25_000).unwrap().unwrap();
    assert_eq!(buf.remaining(), 25_000);
    assert_eq!(buf.iter().count(), 2, "one piece per slice, not coalesced");
    let mut out = vec![0u8; 25_000];
    buf.copy_to_slice(&mut out);
    let mut expected = a[100..].to_vec();
    expected.extend_from_slice(&b[..15_100]);
    assert!(out == expected);
    let mut tail = Vec::new();
    std::io::Read::read_to_end(&mut (&mut s).take_exact(4_900), &mut tail).unwrap();
    assert!(tail == b[15_100..]);
    drop((head, buf));
    wait_all_free(&client);
}

#[test]
fn a_stream_that_ends_mid_read_says_so_and_keeps_the_bytes() {
    let _deadline = shmlink_tests::deadline(
        "bytes_api::a_stream_that_ends_mid_read_says_so_and_keeps_the_bytes",
        std::time::Duration::from_secs(60),
    );
    let (_client, mut c, _server, mut s) = pair();
    c.send(b"half").unwrap();
    c.close();
    let err = s.read_bytes(8).unwrap_err();
    assert!(matches!(err, Error::StreamEnded), "{err}");
    assert_eq!(&s.read_bytes(4).unwrap().unwrap()[..], b"half");
    assert!(s.read_bytes(1).unwrap().is_none(), "then the end");
}

/// `Read::take` for a `&mut Stream`, bounded so the test never waits for more.
trait TakeExact {
    fn take_exact(self, n: u64) -> std::io::Take<Self>
    where
        Self: Sized;
}

impl TakeExact for &mut Stream {
    fn take_exact(self, n: u64) -> std::io::Take<Self> {
        std::io::Read::take(self, n)
    }
}

/// Length-prefixed messages (4-byte big-endian length, then the body, as shmlink's and
/// shmipc-go's examples frame them): sent in one reservation, received whole as `Bytes`, in
/// order, of every size from empty to 1 MiB; a message over the reader's limit is refused
/// without consuming it (a bigger limit then reads it); the bytes on the wire are the frame.
#[test]
fn length_prefixed_messages_round_trip_and_a_limit_refuses_without_consuming() {
    let _deadline = shmlink_tests::deadline(
        "bytes_api::length_prefixed_messages",
        Duration::from_secs(60),
    );
    let (client, c, server, mut s) = pair();
    let sizes = [0usize, 1, 100, 5000, 200_000, 1 << 20];
    for (i, &n) in sizes.iter().enumerate() {
        c.send_message(&payload(n, i)).unwrap();
    }
    for (i, &n) in sizes.iter().enumerate() {
        let m = s.recv_message(1 << 20).unwrap().expect("a message");
        assert!(m == payload(n, i), "message {i} of {n} bytes");
    }
    // The framing is the plain one: a raw read sees the prefix and the body.
    c.send_message(b"abc").unwrap();
    assert_eq!(&s.read_bytes(7).unwrap().unwrap()[..], b"\0\0\0\x03abc");
    // Over the limit: refused, nothing consumed.
    c.send_message(&payload(100, 9)).unwrap();
    match s.recv_message(10) {
        Err(Error::MessageTooLarge { len: 100, max: 10 }) => {}
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert!(s.recv_message(1000).unwrap().unwrap() == payload(100, 9));
    // A clean end is None; an end inside a message is an error.
    c.send(&[0, 0, 0, 50, 1, 2]).unwrap();
    drop(c);
    assert!(matches!(s.recv_message(100), Err(Error::StreamEnded)));
    drop(s);
    wait_all_free(&server);
    wait_all_free(&client);
}

/// The async twin: tokio tasks exchange length-prefixed messages.
#[test]
fn length_prefixed_messages_on_tokio() {
    let _deadline = shmlink_tests::deadline(
        "bytes_api::length_prefixed_messages_on_tokio",
        Duration::from_secs(60),
    );
    let sock = socket_path("bytes-msg-tokio");
    let listener = Listener::bind(&sock, Config::default()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let server = tokio::spawn(async move {
            let session = shmlink::tokio::accept(&listener).await.unwrap();
            let mut s = session.accept_stream(None).await.unwrap();
            while let Some(m) = s.recv_message(1 << 20).await.unwrap() {
                s.send_message(&m).await.unwrap();
            }
        });
        let session = shmlink::tokio::connect(&sock, Config::default())
            .await
            .unwrap();
        let mut c = session.open_stream().unwrap();
        for (i, n) in [0usize, 7, 9000, 300_000].into_iter().enumerate() {
            c.send_message(&payload(n, i)).await.unwrap();
            let echo = c.recv_message(1 << 20).await.unwrap().unwrap();
            assert!(echo == payload(n, i), "echo {i} of {n} bytes");
        }
        drop(c);
        server.await.unwrap();
    });
}
