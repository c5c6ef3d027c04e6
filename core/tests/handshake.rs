//! The handshake state machines replayed against the socket bytes of a real Go V3 memfd
//! session (tests/fixtures/go-memfd-v3-client.txt), plus V2 and the refusals.

mod common;

use shmlink_core::frame::{Decoded, Frame, Message, Paths};
use shmlink_core::handshake::{
    ClientHandshake, HandshakeError, Input, MemMode, Output, ServerHandshake,
};

fn frame(bytes: &[u8]) -> Frame<'_> {
    match Frame::decode(bytes).unwrap() {
        Decoded::Frame(f, n) if n == bytes.len() => f,
        other => panic!("not one frame: {other:?}"),
    }
}

const QUEUE: &[u8] = b"/dev/shm/goclient_25559_queue_0";
const BUFFER: &[u8] = b"/dev/shm/goclient_25559_buffer";

#[test]
fn client_reproduces_the_go_clients_handshake_bytes() {
    let recorded = common::recorded_frames();
    let (c2s, s2c): (Vec<_>, Vec<_>) = recorded[..5].iter().partition(|(dir, _)| dir == "C->S");
    let mut client = ClientHandshake::new(MemMode::Memfd, QUEUE, BUFFER);
    assert_eq!(client.start().unwrap(), Output::Send(c2s[0].1.clone()));
    assert_eq!(client.step(Input::Sent).unwrap(), Output::ReadFrame);
    assert_eq!(
        client.step(Input::Frame(frame(&s2c[0].1))).unwrap(),
        Output::Send(c2s[1].1.clone())
    );
    assert_eq!(client.step(Input::Sent).unwrap(), Output::ReadFrame);
    assert_eq!(
        client.step(Input::Frame(frame(&s2c[1].1))).unwrap(),
        Output::SendFds
    );
    assert_eq!(client.step(Input::Sent).unwrap(), Output::ReadFrame);
    assert_eq!(
        client.step(Input::Frame(frame(&s2c[2].1))).unwrap(),
        Output::Done { version: 3 }
    );
}

#[test]
fn server_reproduces_the_go_servers_handshake_bytes() {
    let recorded = common::recorded_frames();
    let (c2s, s2c): (Vec<_>, Vec<_>) = recorded[..5].iter().partition(|(dir, _)| dir == "C->S");
    let mut server = ServerHandshake::new();
    assert_eq!(server.start(), Output::ReadFrame);
    assert_eq!(
        server.step(Input::Frame(frame(&c2s[0].1))).unwrap(),
        Output::Send(s2c[0].1.clone())
    );
    assert_eq!(server.step(Input::Sent).unwrap(), Output::ReadFrame);
    assert_eq!(
        server.step(Input::Frame(frame(&c2s[1].1))).unwrap(),
        Output::Send(s2c[1].1.clone())
    );
    assert_eq!(server.step(Input::Sent).unwrap(), Output::RecvFds);
    assert_eq!(
        server.step(Input::FdsReceived).unwrap(),
        Output::Map {
            mode: MemMode::Memfd,
            queue_path: QUEUE.to_vec(),
            buffer_path: BUFFER.to_vec()
        }
    );
    assert_eq!(
        server.step(Input::Mapped).unwrap(),
        Output::Send(s2c[2].1.clone())
    );
    assert_eq!(
        server.step(Input::Sent).unwrap(),
        Output::Done { version: 3 }
    );
}

#[test]
fn v2_file_handshake_sends_paths_and_expects_no_reply() {
    let mut client = ClientHandshake::new(MemMode::File, b"/dev/shm/q", b"/dev/shm/b");
    let Output::Send(first) = client.start().unwrap() else {
        panic!()
    };
    let f = frame(&first);
    assert_eq!(
        f,
        Frame::new(
            2,
            Message::ShareMemoryByFilePath(Paths {
                queue: b"/dev/shm/q",
                buffer: b"/dev/shm/b"
            })
        )
    );
    assert_eq!(
        client.step(Input::Sent).unwrap(),
        Output::Done { version: 2 }
    );

    let mut server = ServerHandshake::new();
    let _ = server.start();
    assert!(matches!(
        server.step(Input::Frame(f)).unwrap(),
        Output::Map {
            mode: MemMode::File,
            ..
        }
    ));
    assert_eq!(
        server.step(Input::Mapped).unwrap(),
        Output::Done { version: 2 }
    );
}

#[test]
fn v3_file_handshake_is_accepted_by_the_server_with_an_ack() {
    let mut client = ClientHandshake::v3_file(b"q", b"b");
    let mut server = ServerHandshake::new();
    let _ = server.start();
    let Output::Send(bytes) = client.start().unwrap() else {
        panic!()
    };
    let Output::Send(reply) = server.step(Input::Frame(frame(&bytes))).unwrap() else {
        panic!()
    };
    assert_eq!(server.step(Input::Sent).unwrap(), Output::ReadFrame);
    assert_eq!(client.step(Input::Sent).unwrap(), Output::ReadFrame);
    let Output::Send(paths) = client.step(Input::Frame(frame(&reply))).unwrap() else {
        panic!()
    };
    assert_eq!(
        frame(&paths).message.kind(),
        shmlink_core::frame::MessageType::ShareMemoryByFilePath
    );
    assert!(matches!(
        server.step(Input::Frame(frame(&paths))).unwrap(),
        Output::Map {
            mode: MemMode::File,
            ..
        }
    ));
    let Output::Send(ack) = server.step(Input::Mapped).unwrap() else {
        panic!()
    };
    assert_eq!(
        server.step(Input::Sent).unwrap(),
        Output::Done { version: 3 }
    );
    assert_eq!(client.step(Input::Sent).unwrap(), Output::ReadFrame);
    assert_eq!(
        client.step(Input::Frame(frame(&ack))).unwrap(),
        Output::Done { version: 3 }
    );
}

#[test]
fn server_refuses_versions_other_than_2_and_3_and_out_of_place_frames() {
    for version in [1u8, 4, 0xff] {
        let mut server = ServerHandshake::new();
        let f = Frame::new(version, Message::ExchangeProtoVersion);
        assert_eq!(
            server.step(Input::Frame(f)),
            Err(HandshakeError::UnsupportedVersion { version })
        );
    }
    let mut server = ServerHandshake::new();
    let err = server
        .step(Input::Frame(Frame::new(3, Message::Polling)))
        .unwrap_err();
    assert!(matches!(err, HandshakeError::Unexpected { .. }));
    // V2 does not carry memfds (Go refuses it too).
    let mut server = ServerHandshake::new();
    let f = Frame::new(
        2,
        Message::ShareMemoryByMemfd(Paths {
            queue: b"q",
            buffer: b"b",
        }),
    );
    assert!(matches!(
        server.step(Input::Frame(f)),
        Err(HandshakeError::Unexpected { .. })
    ));
    // A client waiting for AckReadyRecvFD that gets AckShareMemory fails cleanly.
    let mut client = ClientHandshake::new(MemMode::Memfd, b"q", b"b");
    let _ = client.start().unwrap();
    let _ = client.step(Input::Sent).unwrap();
    let _ = client
        .step(Input::Frame(Frame::new(3, Message::ExchangeProtoVersion)))
        .unwrap();
    let _ = client.step(Input::Sent).unwrap();
    let err = client
        .step(Input::Frame(Frame::new(3, Message::AckShareMemory)))
        .unwrap_err();
    assert!(matches!(
        err,
        HandshakeError::Unexpected {
            expected: "AckReadyRecvFD",
            ..
        }
    ));
    assert!(matches!(
        client.step(Input::FdsReceived),
        Err(HandshakeError::OutOfOrder { .. })
    ));
}
