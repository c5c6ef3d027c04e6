//! Our client against a hand-driven server built from the core state machines and the Linux
//! backend: it completes a real V3 memfd handshake, then misbehaves on purpose (never drains,
//! sends a hostile queue element, sends garbage), to show that the client turns each into a
//! clear error instead of a hang or a panic.

mod common;

use std::time::{Duration, Instant};

use shmlink::{Config, Error, Session};
use shmlink_core::buffer::{self, Role};
use shmlink_core::frame::{Frame, Message};
use shmlink_core::queue::{self, Element, Side, Wake};
use shmlink_linux::region::SharedRegion;
use shmlink_linux::socket::{Conn, Listener};
use shmlink_tests::unique;

struct RawServer {
    conn: Conn,
    queue: SharedRegion,
    buffer: SharedRegion,
}

/// Accepts one client and runs the server handshake by hand.
fn raw_accept(listener: &Listener) -> RawServer {
    let conn = listener.accept().unwrap();
    let (queue, buffer, version) = common::server_handshake(&conn);
    assert_eq!(version, 3);
    // No test may hang on a missing frame.
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    RawServer {
        conn,
        queue,
        buffer,
    }
}

/// Reads frames from the raw server's socket until one that is not Polling arrives.
fn next_non_polling(conn: &Conn) -> Vec<u8> {
    let mut buf = Vec::new();
    loop {
        conn.read_frame(&mut buf, "raw read").unwrap();
        if buf[7] != 1 {
            return buf;
        }
    }
}

fn setup(config: Config) -> (RawServer, Session) {
    let sock = std::env::temp_dir().join(format!("{}.sock", unique("raw")));
    let listener = Listener::bind_unix(&sock).unwrap();
    let server = std::thread::spawn(move || raw_accept(&listener));
    let session = Session::connect(&sock, config).unwrap();
    (server.join().unwrap(), session)
}

#[test]
fn a_peer_that_never_drains_gives_queue_full_and_close_falls_back_to_a_stream_close_frame() {
    let _deadline = shmlink_tests::deadline(
        "raw_peer::a_peer_that_never_drains_gives_queue_full_and_close_falls_back_to_a_stream_close_frame",
        std::time::Duration::from_secs(60),
    );
    let (raw, session) = setup(Config {
        queue_cap: 16,
        ..Config::default()
    });
    let mut stream = session.open_stream().unwrap();
    for _ in 0..16 {
        stream.send(b"x").unwrap();
    }
    let start = Instant::now();
    let err = stream.send(b"one too many").unwrap_err();
    assert!(matches!(err, Error::QueueFull), "{err}");
    assert!(
        start.elapsed() >= Duration::from_millis(90),
        "Go's retry window: 10 x 10 ms"
    );
    assert_eq!(session.metrics().stability.queue_full_error_count, 1);
    // Nothing leaked: 16 slices are in flight (the peer holds them), the refused one returned.
    // A small write takes a slice of the smallest class.
    let smallest = u64::from(shmlink::SIZE_CLASSES[0].size);
    assert_eq!(session.shared_memory_usage().1 as u64, 16 * smallest);
    let id = stream.id();
    stream.close();
    // The close element cannot be queued, so it travels as a StreamClose frame.
    let frame = next_non_polling(&raw.conn);
    assert_eq!(frame, [0, 0, 0, 12, 0x77, 0x58, 3, 2, 0, 0, 0, id as u8]);
}

#[test]
fn a_hostile_queue_element_closes_the_session_with_a_clear_error() {
    let _deadline = shmlink_tests::deadline(
        "raw_peer::a_hostile_queue_element_closes_the_session_with_a_clear_error",
        std::time::Duration::from_secs(60),
    );
    let (raw, session) = setup(Config::default());
    let mut stream = session.open_stream().unwrap();
    stream.send(b"hello").unwrap();
    let pair = queue::attach_region(raw.queue.region(), Side::Server).unwrap();
    let (producer, _) = pair.into_roles();
    // Offset 12345 is not a slice boundary of any list.
    if producer.push(Element::data(stream.id(), 12345)).unwrap() == Wake::NotifyPeer {
        let mut polling = Vec::new();
        Frame::new(3, Message::Polling)
            .encode_into(&mut polling)
            .unwrap();
        raw.conn.send(&polling, "raw send").unwrap();
    }
    stream.set_read_timeout(Some(Duration::from_secs(5)));
    let err = stream.read_view().unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("invalid buffer chain") && text.contains("12345"),
        "{text}"
    );
    assert!(session.is_closed());
    assert_eq!(session.metrics().stability.event_conn_error_count, 1);
}

#[test]
fn garbage_on_the_socket_closes_the_session_with_a_clear_error() {
    let _deadline = shmlink_tests::deadline(
        "raw_peer::garbage_on_the_socket_closes_the_session_with_a_clear_error",
        std::time::Duration::from_secs(60),
    );
    let (raw, session) = setup(Config::default());
    let mut stream = session.open_stream().unwrap();
    raw.conn
        .send(&[0, 0, 0, 8, 0xde, 0xad, 3, 1], "raw send")
        .unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5)));
    let err = stream.read_view().unwrap_err();
    assert!(err.to_string().contains("bad frame magic 0xdead"), "{err}");
    assert!(matches!(
        session.open_stream(),
        Err(Error::ProtocolViolation(_))
    ));
}

#[test]
fn fallback_data_for_a_stream_the_client_never_opened_is_dropped() {
    let _deadline = shmlink_tests::deadline(
        "raw_peer::fallback_data_for_a_stream_the_client_never_opened_is_dropped",
        std::time::Duration::from_secs(60),
    );
    let (raw, session) = setup(Config::default());
    let mut stream = session.open_stream().unwrap();
    let mut bytes = Vec::new();
    Frame::new(
        3,
        Message::FallbackData {
            stream_id: 99,
            status: 0,
            data: b"stray",
        },
    )
    .encode_into(&mut bytes)
    .unwrap();
    Frame::new(
        3,
        Message::FallbackData {
            stream_id: stream.id(),
            status: 0,
            data: b"mine",
        },
    )
    .encode_into(&mut bytes)
    .unwrap();
    raw.conn.send(&bytes, "raw send").unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5)));
    let view = stream.read_view().unwrap().unwrap();
    assert!(!view.is_shared_memory());
    assert_eq!(&view[..], b"mine");
    assert!(!session.is_closed());
    assert!(
        !session.is_healthy(),
        "a fallback opens the circuit breaker"
    );
    assert!(matches!(
        session.open_stream(),
        Err(Error::Unhealthy { .. })
    ));
}

impl RawServer {
    /// Pushes `elements` on the server-to-client queue and wakes the client.
    fn push(&self, elements: &[Element]) {
        let pair = queue::attach_region(self.queue.region(), Side::Server).unwrap();
        let (producer, _) = pair.into_roles();
        let mut wake = false;
        for &e in elements {
            wake |= producer.push(e).unwrap() == Wake::NotifyPeer;
        }
        if wake {
            let mut polling = Vec::new();
            Frame::new(3, Message::Polling)
                .encode_into(&mut polling)
                .unwrap();
            self.conn.send(&polling, "raw send").unwrap();
        }
    }
}

/// Issue 6, item 1: a peer that announces one chain in two queue elements. Before the
/// ownership ledger, the client delivered the message twice (and recycled it twice).
#[test]
fn a_chain_announced_twice_is_delivered_once_and_the_session_closes_naming_the_slice() {
    let _deadline = shmlink_tests::deadline(
        "raw_peer::a_chain_announced_twice_is_delivered_once_and_the_session_closes_naming_the_slice",
        std::time::Duration::from_secs(60),
    );
    let (raw, session) = setup(Config::default());
    let mut stream = session.open_stream().unwrap();
    let buffers = buffer::attach(raw.buffer.region(), Role::Mapper).unwrap();
    let slice = buffers.alloc(5).unwrap().first();
    buffers.set_len(slice, 5).unwrap();
    let (data, _) = buffers.data_area(slice).unwrap();
    let mut bytes = raw.buffer.region().sub(data as usize, 5).unwrap();
    // SAFETY: the raw server owns this freshly allocated slice and nothing else writes it.
    unsafe { std::ptr::copy_nonoverlapping(b"twice".as_ptr(), bytes.as_ptr().as_ptr(), 5) };
    let _ = &mut bytes;
    buffers.hand_over(slice).unwrap();
    raw.push(&[
        Element::data(stream.id(), slice),
        Element::data(stream.id(), slice),
    ]);
    stream.set_read_timeout(Some(Duration::from_secs(5)));
    let first = stream.read_view().unwrap().unwrap();
    assert_eq!(&first[..], b"twice");
    let err = stream.read_view().unwrap_err();
    assert!(matches!(err, Error::ProtocolViolation(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains(&slice.to_string()), "{text}");
    assert!(text.contains("received it"), "{text}");
    assert_eq!(text.matches("protocol violation").count(), 1, "{text}");
    drop(first);
}

/// Issue 6, item 1: a peer that names the slice our writer popped and is still filling.
/// Before the ledger, the client delivered it: a `View` (`&[u8]`) over the bytes of a live
/// `Reservation` (`&mut [u8]`).
#[test]
fn a_peer_naming_a_slice_we_are_writing_closes_the_session_instead_of_aliasing_it() {
    let _deadline = shmlink_tests::deadline(
        "raw_peer::a_peer_naming_a_slice_we_are_writing_closes_the_session_instead_of_aliasing_it",
        std::time::Duration::from_secs(60),
    );
    let (raw, session) = setup(Config::default());
    let writer = session.open_stream().unwrap();
    let mut reader = session.open_stream().unwrap();
    let buffers = buffer::attach(raw.buffer.region(), Role::Mapper).unwrap();
    let list = buffers.lists()[0];
    let next = list.base() + list.stats().head;
    let mut reservation = writer.reserve(100).unwrap();
    assert!(reservation.is_shared_memory());
    reservation.write_at(0, &[7; 100]);
    raw.push(&[Element::data(reader.id(), next)]);
    reader.set_read_timeout(Some(Duration::from_secs(5)));
    let err = reader.read_view().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::ProtocolViolation(_)), "{text}");
    assert!(
        text.contains(&next.to_string()) && text.contains("still writing"),
        "{text}"
    );
    // The reservation is still ours alone; committing it fails cleanly on the closed session.
    reservation.write_at(0, &[8; 100]);
    assert!(reservation.commit(100).unwrap_err().is_session_closed());
}

/// Issue 6, item 13: each cause is named once, with its own variant and io::ErrorKind.
#[test]
fn errors_name_their_cause_once_with_a_matching_io_kind() {
    let _deadline = shmlink_tests::deadline(
        "raw_peer::errors_name_their_cause_once_with_a_matching_io_kind",
        std::time::Duration::from_secs(60),
    );
    let (raw, session) = setup(Config::default());
    let mut stream = session.open_stream().unwrap();
    stream.send(b"x").unwrap();
    drop(raw); // the peer goes away
    stream.set_read_timeout(Some(Duration::from_secs(5)));
    let err = stream.read_view().unwrap_err();
    assert!(matches!(err, Error::PeerClosed), "{err:?}");
    assert_eq!(err.to_string(), "the peer closed the connection");
    let io = std::io::Error::from(err);
    assert_eq!(io.kind(), std::io::ErrorKind::BrokenPipe);
    assert_eq!(io.to_string(), "the peer closed the connection");
    // The io::Error converts back to the same variant (a `?` in user code keeps the cause).
    assert!(matches!(Error::from(io), Error::PeerClosed));
    let again = session.open_stream().unwrap_err();
    assert_eq!(again.to_string(), "the peer closed the connection");
    session.close();
    assert!(matches!(session.close_reason(), Some(Error::PeerClosed)));
}

/// Review finding: when the push succeeds but the working flag is corrupt, the slices are
/// already announced; the client must not take them back and recycle them (the peer will).
#[test]
fn a_corrupt_flag_after_a_push_leaves_the_announced_slices_to_the_peer() {
    let _deadline = shmlink_tests::deadline(
        "raw_peer::a_corrupt_flag_after_a_push_leaves_the_announced_slices_to_the_peer",
        std::time::Duration::from_secs(60),
    );
    let (raw, session) = setup(Config::default());
    let stream = session.open_stream().unwrap();
    // The client-to-server queue is the first half; its working flag is at byte 20.
    let flag = raw.queue.region().sub(20, 4).unwrap();
    // SAFETY: a 4-aligned word of the live queue mapping; the raw server plays a peer that
    // scribbles on it.
    unsafe { std::ptr::write_volatile(flag.as_ptr().as_ptr().cast::<u32>(), 7) };
    let err = stream.send(b"announced").unwrap_err();
    assert!(matches!(err, Error::ProtocolViolation(_)), "{err}");
    assert!(session.is_closed());
    // SAFETY: as above; restore a valid flag so the raw server can attach and look.
    unsafe { std::ptr::write_volatile(flag.as_ptr().as_ptr().cast::<u32>(), 1) };
    let pair = queue::attach_region(raw.queue.region(), Side::Server).unwrap();
    let (_, mut consumer) = pair.into_roles();
    let element = consumer
        .pop()
        .unwrap()
        .expect("the element is in the queue");
    assert_eq!(element.stream_id, stream.id());
    assert_eq!(
        session.shared_memory_usage().1 as u64,
        u64::from(shmlink::SIZE_CLASSES[0].size),
        "the announced slice stays allocated for the peer to recycle"
    );
}

/// Review finding: an empty FallbackData frame (length 16, legal on the wire) must not read
/// as the end of the stream, nor put an empty chunk in front of a `Buf` with bytes behind it.
#[test]
fn an_empty_fallback_frame_is_no_data_not_an_end() {
    let _deadline = shmlink_tests::deadline(
        "raw_peer::an_empty_fallback_frame_is_no_data_not_an_end",
        std::time::Duration::from_secs(60),
    );
    use bytes::Buf;
    use std::io::Read;
    let (raw, session) = setup(Config::default());
    let mut stream = session.open_stream().unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5)));
    let id = stream.id();
    let fallback = |data: &[u8]| {
        let mut bytes = Vec::new();
        Frame::new(
            3,
            Message::FallbackData {
                stream_id: id,
                status: 0,
                data,
            },
        )
        .encode_into(&mut bytes)
        .unwrap();
        bytes
    };
    // The empty frame alone first, so that it is all the stream has when the read starts.
    raw.conn.send(&fallback(b""), "raw send").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let late = fallback(b"abcd");
    let mut four = [0u8; 4];
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            raw.conn.send(&late, "raw send").unwrap();
        });
        stream.read_exact(&mut four).unwrap();
    });
    assert_eq!(&four, b"abcd");
    let mut wire = fallback(b"");
    wire.extend(fallback(&7u32.to_be_bytes()));
    raw.conn.send(&wire, "raw send").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while stream.available() < 4 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut pieces = stream.read_buf(4).unwrap().unwrap();
    assert!(!pieces.chunk().is_empty());
    assert_eq!(pieces.get_u32(), 7);
}

impl RawServer {
    /// Pushes without a Polling frame (the flag may even have been down): what a peer does when
    /// its next socket frame follows at once, or what a peer that saw our flag up does.
    fn push_quiet(&self, elements: &[Element]) {
        let pair = queue::attach_region(self.queue.region(), Side::Server).unwrap();
        let (producer, _) = pair.into_roles();
        for &e in elements {
            let _deliberately_silent = producer.push(e).unwrap();
        }
    }

    /// A slice of ours with `bytes` in it, handed over (ready to announce).
    fn message(&self, bytes: &[u8]) -> u32 {
        let buffers = buffer::attach(self.buffer.region(), Role::Mapper).unwrap();
        let slice = buffers.alloc(bytes.len() as u64).unwrap().first();
        buffers.set_len(slice, bytes.len() as u32).unwrap();
        let (data, _) = buffers.data_area(slice).unwrap();
        let dst = self
            .buffer
            .region()
            .sub(data as usize, bytes.len())
            .unwrap();
        // SAFETY: the raw server owns this freshly allocated slice and nothing else writes it.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.as_ptr().as_ptr(), bytes.len())
        };
        buffers.hand_over(slice).unwrap();
        slice
    }
}

/// Review of issue 8's driver: a socket frame must not overtake elements the peer queued
/// before it. The reader is busy reading a 2 MiB fallback frame when the peer pushes one more
/// message (no Polling: it sees our flag up) and then sends a StreamClose frame (as Go does
/// when its queue is full). The old driver read on through the socket, handled the close
/// first and recycled the message as data for a closed stream.
#[test]
fn a_stream_close_frame_does_not_overtake_data_queued_before_it() {
    let _deadline = shmlink_tests::deadline(
        "raw_peer::a_stream_close_frame_does_not_overtake_data_queued_before_it",
        std::time::Duration::from_secs(60),
    );
    let (raw, session) = setup(Config::default());
    let bulk_stream = session.open_stream().unwrap();
    bulk_stream.send(b"open").unwrap();
    let mut stream = session.open_stream().unwrap();
    stream.send(b"open").unwrap();
    let (bulk_id, id) = (bulk_stream.id(), stream.id());
    let reader = std::thread::spawn(move || {
        stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut got = Vec::new();
        while let Some(view) = stream.read_view().unwrap() {
            got.extend_from_slice(&view);
        }
        (got, session, bulk_stream)
    });
    // Keeps the reader busy on the socket: 2 MiB for the other stream.
    let bulk = vec![7u8; 2 << 20];
    let mut frame = Vec::new();
    Frame::new(
        3,
        Message::FallbackData {
            stream_id: bulk_id,
            status: 0,
            data: &bulk,
        },
    )
    .encode_into(&mut frame)
    .unwrap();
    raw.conn.send(&frame, "raw send").unwrap();
    let slice = raw.message(b"last words");
    raw.push_quiet(&[Element::data(id, slice)]);
    let mut close = Vec::new();
    Frame::new(3, Message::StreamClose { stream_id: id })
        .encode_into(&mut close)
        .unwrap();
    raw.conn.send(&close, "raw send").unwrap();
    let (got, _session, _bulk_stream) = reader.join().unwrap();
    assert_eq!(
        &got[..],
        b"last words",
        "the message before the close, once"
    );
}

/// The same for the end of the connection: what the peer pushed before it closed the socket
/// is delivered before the session reports the peer gone (the reader is again busy on a
/// 2 MiB fallback frame when the push and the close happen).
#[test]
fn data_queued_before_the_peer_closes_the_socket_is_delivered() {
    let _deadline = shmlink_tests::deadline(
        "raw_peer::data_queued_before_the_peer_closes_the_socket_is_delivered",
        std::time::Duration::from_secs(60),
    );
    let (raw, session) = setup(Config::default());
    let bulk_stream = session.open_stream().unwrap();
    bulk_stream.send(b"open").unwrap();
    let mut stream = session.open_stream().unwrap();
    stream.send(b"open").unwrap();
    let (bulk_id, id) = (bulk_stream.id(), stream.id());
    let reader = std::thread::spawn(move || {
        stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut got = Vec::new();
        let end = loop {
            match stream.read_view() {
                Ok(Some(view)) => got.extend_from_slice(&view),
                other => break other.map(|_| ()),
            }
        };
        (got, end, session, bulk_stream)
    });
    let bulk = vec![7u8; 2 << 20];
    let mut frame = Vec::new();
    Frame::new(
        3,
        Message::FallbackData {
            stream_id: bulk_id,
            status: 0,
            data: &bulk,
        },
    )
    .encode_into(&mut frame)
    .unwrap();
    raw.conn.send(&frame, "raw send").unwrap();
    let slice = raw.message(b"goodbye");
    raw.push_quiet(&[Element::data(id, slice)]);
    raw.conn.shutdown();
    let (got, end, _session, _bulk_stream) = reader.join().unwrap();
    assert_eq!(&got[..], b"goodbye", "the message before the end, once");
    assert!(matches!(end, Err(Error::PeerClosed)), "{end:?}");
}

/// Issue 9, item 2: closing a stream and then its session back to back. The session's socket
/// must not close before the peer took the queued data and stream close, or the peer sees
/// "session closed" where "end of stream" was meant (Go did, about one run in six). The raw
/// server here takes its queue only after 300 ms; the old client closed the socket at once.
#[test]
fn closing_a_session_waits_until_the_peer_took_the_queued_stream_close() {
    let _deadline = shmlink_tests::deadline(
        "raw_peer::closing_a_session_waits_until_the_peer_took_the_queued_stream_close",
        std::time::Duration::from_secs(60),
    );
    let (raw, session) = setup(Config::default());
    let mut stream = session.open_stream().unwrap();
    stream.send(b"last").unwrap();
    stream.close();
    let closer = std::thread::spawn(move || session.close());
    std::thread::sleep(Duration::from_millis(300));
    // Socket still open? A read times out instead of seeing the end.
    raw.conn
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut frame = Vec::new();
    let early = loop {
        // Polling frames (the client's wake-ups) may come first; then the read must time out.
        match raw.conn.read_frame(&mut frame, "raw read") {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        early.is_timeout(),
        "the client closed the socket before its queued close was taken: {early}"
    );
    let pair = queue::attach_region(raw.queue.region(), Side::Server).unwrap();
    let (_, mut consumer) = pair.into_roles();
    let mut popped = Vec::new();
    while let Some(e) = consumer.pop().unwrap() {
        popped.push(e);
    }
    assert_eq!(popped.len(), 2, "the data and the close element");
    assert_eq!(popped[1], Element::close(popped[0].stream_id));
    closer.join().unwrap();
}

/// A peer that floods the socket with legal Polling frames cannot hold a reader past its
/// deadline (the pump reads within a budget and the deadline is checked between budgets),
/// and the flood does not block another stream's reader of the same session on the pump's
/// lock: both reads end by their own deadlines.
#[test]
fn a_flood_of_polling_frames_holds_no_reader_past_its_deadline() {
    let _deadline = shmlink_tests::deadline(
        "raw_peer::a_flood_of_polling_frames_holds_no_reader_past_its_deadline",
        std::time::Duration::from_secs(60),
    );
    for sync in [shmlink::SyncMode::Event, shmlink::SyncMode::Adaptive] {
        let (raw, session) = setup(Config {
            sync,
            ..Config::default()
        });
        let mut polling = Vec::new();
        Frame::new(3, Message::Polling)
            .encode_into(&mut polling)
            .unwrap();
        let burst: Vec<u8> = polling
            .iter()
            .copied()
            .cycle()
            .take(polling.len() * 4096)
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flooder = {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut sent = 0usize;
                // SYNC: Relaxed; a stop flag for a test thread.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if raw.conn.send(&burst, "flood").is_err() {
                        break;
                    }
                    sent += burst.len();
                }
                (raw, sent)
            })
        };
        // Let the flood fill the socket before the reads start.
        std::thread::sleep(Duration::from_millis(50));
        let reads: Vec<_> = (0..2)
            .map(|_| {
                let mut stream = session.open_stream().unwrap();
                std::thread::spawn(move || {
                    stream.set_read_timeout(Some(Duration::from_millis(200)));
                    let start = Instant::now();
                    let mut buf = [0u8; 8];
                    let r = std::io::Read::read(&mut stream, &mut buf);
                    (r.map_err(|e| e.kind()), start.elapsed())
                })
            })
            .collect();
        for r in reads {
            let (result, took) = r.join().unwrap();
            assert_eq!(result, Err(std::io::ErrorKind::TimedOut), "{sync:?}");
            assert!(
                took < Duration::from_millis(1500),
                "{sync:?}: a 200 ms read took {took:?} under a Polling flood"
            );
        }
        // SYNC: Relaxed; see above.
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(session);
        let (_raw, sent) = flooder.join().unwrap();
        assert!(
            sent > 1 << 20,
            "precondition: the peer flooded ({sent} bytes)"
        );
    }
}
