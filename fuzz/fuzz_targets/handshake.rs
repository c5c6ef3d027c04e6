//! Both handshake machines driven against arbitrary peer bytes, with the wrong input fed now
//! and then: every step ends in a next action or an error, never a panic; what we send is
//! always one well-formed frame; the paths we are told to map are exactly the ones the peer
//! announced; a finished handshake speaks version 2 or 3; the machine finishes or fails
//! within a bounded number of steps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmlink_core::frame::{Decoded, Frame, FrameDecoder, Message};
use shmlink_core::handshake::{
    ClientHandshake, HandshakeError, Input, MemMode, Output, ServerHandshake,
};
use shmlink_fuzz::Cursor;

enum Machine {
    Client(ClientHandshake),
    Server(ServerHandshake),
}

impl Machine {
    fn step(&mut self, input: Input<'_>) -> Result<Output, HandshakeError> {
        match self {
            Self::Client(m) => m.step(input),
            Self::Server(m) => m.step(input),
        }
    }
}

fn check_sent(bytes: &[u8]) {
    match Frame::decode(bytes) {
        Ok(Decoded::Frame(_, used)) => assert_eq!(used, bytes.len(), "one frame exactly"),
        other => panic!("we sent a bad frame: {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let role = input.u8();
    // Steps at which the wrong input is fed (bit i: step i).
    let wrong_at = input.u16();
    let n = usize::from(input.u8());
    let queue_path = input.take(n).to_vec();
    let n = usize::from(input.u8());
    let buffer_path = input.take(n).to_vec();
    let mut machine = match role % 4 {
        0 => Machine::Client(ClientHandshake::new(
            MemMode::Memfd,
            &queue_path,
            &buffer_path,
        )),
        1 => Machine::Client(ClientHandshake::new(
            MemMode::File,
            &queue_path,
            &buffer_path,
        )),
        2 => Machine::Client(ClientHandshake::v3_file(&queue_path, &buffer_path)),
        _ => Machine::Server(ServerHandshake::new()),
    };
    let mut peer = FrameDecoder::with_limit(64 << 10);
    peer.extend(input.rest());
    let mut last_paths: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut next = match &mut machine {
        Machine::Client(m) => match m.start() {
            Ok(out) => out,
            Err(_) => return,
        },
        Machine::Server(m) => m.start(),
    };
    // The longest correct exchange is eight steps; allow a few more before calling it a loop.
    for step in 0..16 {
        if wrong_at & (1 << step) != 0 {
            let wrong = match next {
                Output::ReadFrame => Input::Mapped,
                _ => Input::FdsReceived,
            };
            if matches!(next, Output::RecvFds) {
                // FdsReceived is the right input there; Mapped is not.
                assert!(machine.step(Input::Mapped).is_err());
            } else {
                assert!(
                    machine.step(wrong).is_err(),
                    "{wrong:?} accepted after {next:?}"
                );
            }
            return;
        }
        let result = match next {
            Output::Send(ref bytes) => {
                check_sent(bytes);
                machine.step(Input::Sent)
            }
            Output::SendFds => machine.step(Input::Sent),
            Output::RecvFds => machine.step(Input::FdsReceived),
            Output::Map {
                ref queue_path,
                ref buffer_path,
                ..
            } => {
                assert!(
                    !matches!(machine, Machine::Client(_)),
                    "a client never maps"
                );
                let announced = last_paths.clone().expect("map before any paths frame");
                assert_eq!((queue_path, buffer_path), (&announced.0, &announced.1));
                machine.step(Input::Mapped)
            }
            Output::ReadFrame => match peer.next_frame() {
                Ok(Some(frame)) => {
                    if let Message::ShareMemoryByFilePath(p) | Message::ShareMemoryByMemfd(p) =
                        frame.message
                    {
                        last_paths = Some((p.queue.to_vec(), p.buffer.to_vec()));
                    }
                    machine.step(Input::Frame(frame))
                }
                // Waiting for bytes that never come, or bytes that are no frame: the
                // runtime's timeout or error; nothing more to check.
                Ok(None) | Err(_) => return,
            },
            Output::Done { version } => {
                assert!(
                    version == 2 || version == 3,
                    "finished with version {version}"
                );
                assert!(machine.step(Input::Sent).is_err(), "a step after Done");
                return;
            }
        };
        match result {
            Ok(out) => next = out,
            Err(_) => return,
        }
    }
    panic!("the handshake neither finished nor failed in 16 steps");
});
