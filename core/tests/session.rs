//! The session state machine: ids, implicit open, close rules, fallback stickiness on both
//! sides, the circuit breaker, hostile elements, and Go's metrics.

mod common;

use common::{Mapping, peer_sends};
use shmlink_core::buffer::{self, BufferError, Ownership, Role, SizeClass, SliceFault};
use shmlink_core::frame::{Frame, Message, MessageType};
use shmlink_core::queue::{Element, Side};
use shmlink_core::session::{CloseAction, Delivery, Route, Session, SessionError, StreamState};

fn buffers(mapping: &Mapping) -> buffer::BufferManager<'_> {
    buffer::format(
        mapping.region(),
        &[SizeClass {
            size: 1024,
            percent: 100,
        }],
    )
    .unwrap()
}

/// The peer's view of the same region: allocates `lens.len()` slices, links them, and hands
/// them over as a sender does just before its queue push.
fn peer_chain(mapping: &Mapping, lens: &[u32]) -> Vec<u32> {
    peer_sends(
        &buffer::attach(mapping.region(), Role::Mapper).unwrap(),
        lens,
    )
}

fn owned(d: Delivery<'_>) -> String {
    format!("{d:?}")
}

#[test]
fn client_ids_start_at_2_and_are_consecutive_server_ids_at_3() {
    let mut c = Session::new(Side::Client, 3, 0);
    assert_eq!(
        [c.open_stream(0), c.open_stream(0), c.open_stream(0)],
        [Ok(2), Ok(3), Ok(4)]
    );
    let mut s = Session::new(Side::Server, 3, 0);
    assert_eq!(s.open_stream(0), Ok(3));
    assert_eq!(c.metrics().stability.active_stream_count, 3);
}

#[test]
fn data_for_an_unknown_id_opens_a_stream_on_the_server_and_is_recycled_on_the_client() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = buffers(&mapping);
    let first = peer_chain(&mapping, &[10])[0];

    let mut server = Session::new(Side::Server, 3, 0);
    let mut got = Vec::new();
    server
        .on_element(Element::data(2, first), &m, &mut |d| got.push(owned(d)))
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], "Opened(2)");
    assert!(got[1].starts_with("Shm { stream_id: 2"), "{}", got[1]);
    assert_eq!(server.stream_state(2), Some(StreamState::Opened));
    assert_eq!(server.metrics().performance.in_flow_bytes, 10);

    let mut client = Session::new(Side::Client, 3, 0);
    let mut got = Vec::new();
    let other = peer_chain(&mapping, &[10])[0];
    client
        .on_element(Element::data(7, other), &m, &mut |d| got.push(owned(d)))
        .unwrap();
    assert_eq!(got, [format!("Recycle({other})")]);
    assert_eq!(client.stream_state(7), None);
}

#[test]
fn close_element_half_closes_and_a_half_closed_stream_closes_silently() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = buffers(&mapping);
    let mut c = Session::new(Side::Client, 3, 0);
    let a = c.open_stream(0).unwrap();
    let b = c.open_stream(0).unwrap();
    let mut got = Vec::new();
    c.on_element(Element::close(a), &m, &mut |d| got.push(owned(d)))
        .unwrap();
    assert_eq!(got, [format!("Closed({a})")]);
    assert_eq!(c.route(a), Err(SessionError::StreamClosed));
    // Closing after the peer did sends nothing; closing an open stream sends a close element.
    assert_eq!(c.close_stream(a), CloseAction::Nothing);
    assert_eq!(c.close_stream(b), CloseAction::SendClose(Element::close(b)));
    assert_eq!(c.close_stream(b), CloseAction::Nothing);
    // A StreamClose frame has the same meaning as a close element.
    let d = c.open_stream(0).unwrap();
    let mut got = Vec::new();
    c.on_frame(
        &Frame::new(3, Message::StreamClose { stream_id: d }),
        0,
        &mut |x| got.push(owned(x)),
    )
    .unwrap();
    assert_eq!(got, [format!("Closed({d})")]);
}

#[test]
fn fallback_is_sticky_for_the_sender_and_switches_the_receiver_too() {
    let mut c = Session::new(Side::Client, 3, 30_000);
    let id = c.open_stream(0).unwrap();
    let other = c.open_stream(0).unwrap();
    c.sent_fallback(id, 100, 1_000);
    assert_eq!(c.route(id), Ok(Route::Fallback));
    assert_eq!(c.route(other), Ok(Route::Queue));
    assert_eq!(c.metrics().stability.fallback_write_count, 1);
    // The breaker: unhealthy for 30 s after the fallback.
    assert!(matches!(
        c.open_stream(2_000),
        Err(SessionError::Unhealthy { retry_in_ms }) if retry_in_ms > 0
    ));
    assert!(c.open_stream(31_000).is_ok());

    let mut s = Session::new(Side::Server, 3, 30_000);
    let mut got = Vec::new();
    let frame = Frame::new(
        3,
        Message::FallbackData {
            stream_id: 2,
            status: 0,
            data: b"hello",
        },
    );
    s.on_frame(&frame, 5, &mut |d| got.push(owned(d))).unwrap();
    assert_eq!(
        got,
        [
            "Opened(2)".to_owned(),
            "Fallback { stream_id: 2, data: [104, 101, 108, 108, 111] }".to_owned()
        ]
    );
    assert_eq!(
        s.route(2),
        Ok(Route::Fallback),
        "the receiving stream replies over the socket too"
    );
    assert!(!s.is_healthy(10));
    assert_eq!(s.metrics().stability.fallback_read_count, 1);
}

#[test]
fn a_zero_breaker_never_makes_the_session_unhealthy() {
    let mut c = Session::new(Side::Client, 3, 0);
    let id = c.open_stream(0).unwrap();
    c.sent_fallback(id, 1, 0);
    assert!(c.is_healthy(0));
}

#[test]
fn handshake_messages_after_the_handshake_are_protocol_errors() {
    let mut s = Session::new(Side::Server, 3, 0);
    for message in [
        Message::ExchangeProtoVersion,
        Message::AckShareMemory,
        Message::AckReadyRecvFd,
    ] {
        let err = s
            .on_frame(&Frame::new(3, message), 0, &mut |_| {})
            .unwrap_err();
        assert_eq!(
            err,
            SessionError::InvalidMessage {
                kind: message.kind()
            }
        );
    }
    let mut polls = 0;
    s.on_frame(&Frame::new(3, Message::Polling), 0, &mut |_| polls += 1)
        .unwrap();
    assert_eq!(polls, 0);
    assert_eq!(s.metrics().performance.receive_sync_event_count, 1);
    assert_eq!(MessageType::from_u8(1), Some(MessageType::Polling));
}

#[test]
fn a_hostile_element_is_an_error_and_nothing_of_its_chain_is_delivered() {
    let mapping = Mapping::zeroed(64 << 10);
    let m = buffers(&mapping);
    let chain = peer_chain(&mapping, &[10, 10]);
    let (first, second) = (chain[0], chain[1]);
    // The second slice's length is corrupted.
    mapping.poke(second as usize + 4, &5000u32.to_le_bytes());
    let mut s = Session::new(Side::Server, 3, 0);
    let mut got = Vec::new();
    let err = s
        .on_element(Element::data(2, first), &m, &mut |d| got.push(owned(d)))
        .unwrap_err();
    assert_eq!(
        err,
        SessionError::BadChain(BufferError::BadSlice {
            offset: second,
            fault: SliceFault::BadLength {
                start: 0,
                len: 5000
            }
        })
    );
    assert!(got.is_empty());
    assert_eq!(
        s.stream_state(2),
        None,
        "no stream opened for a rejected element"
    );
    assert_eq!(
        m.ownership(first),
        Ok(Ownership::NotOurs),
        "a rejected chain leaves nothing taken"
    );
    // An offset that is not a slice at all.
    let err = s
        .on_element(Element::data(2, 3), &m, &mut |_| {})
        .unwrap_err();
    assert!(matches!(
        err,
        SessionError::BadChain(BufferError::BadSlice {
            fault: SliceFault::NotASlice,
            ..
        })
    ));
}

#[test]
fn open_stream_ids_are_never_reused_while_open() {
    let mut c = Session::new(Side::Client, 3, 0);
    let mut opened = 0;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let id = c.open_stream(0).unwrap();
        assert!(seen.insert(id));
        opened += 1;
    }
    assert_eq!(c.metrics().stability.active_stream_count, opened);
}
