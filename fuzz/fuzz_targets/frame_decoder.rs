//! The frame decoder on arbitrary socket bytes: whole-buffer decoding and the accumulating
//! decoder fed in arbitrary chunks must agree frame for frame and error for error; every
//! frame decoded re-encodes to exactly the bytes it came from; nothing panics and no frame
//! longer than the limit is ever accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shmlink_core::frame::{Decoded, Frame, FrameDecoder, FrameError, HEADER_LEN, MAX_FRAME_LEN};
use shmlink_fuzz::Cursor;

/// What decoding a byte stream yields: the frames (as their bytes) and how it ended.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    error: Option<FrameError>,
}

fn reencode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    let n = frame
        .encode_into(&mut out)
        .expect("a decoded frame must be encodable");
    assert_eq!(n, out.len());
    out
}

fn whole(bytes: &[u8], limit: u32) -> Outcome {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        match Frame::decode_limited(&bytes[at..], limit) {
            Ok(Decoded::Frame(frame, used)) => {
                assert!(used >= HEADER_LEN && used <= bytes.len() - at);
                assert!(used as u64 <= u64::from(limit), "a frame over the limit");
                let again = reencode(&frame);
                assert_eq!(again, &bytes[at..at + used], "re-encoding differs");
                frames.push(again);
                at += used;
            }
            Ok(Decoded::Incomplete { needed }) => {
                assert!(needed > bytes.len() - at, "incomplete but enough bytes");
                return Outcome {
                    frames,
                    error: None,
                };
            }
            Err(e) => {
                return Outcome {
                    frames,
                    error: Some(e),
                };
            }
        }
    }
}

fn chunked(bytes: &[u8], limit: u32, chunk: usize, use_spare: bool) -> Outcome {
    let mut decoder = FrameDecoder::with_limit(limit);
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk) {
        if use_spare {
            // Read into spare room that is larger than what arrives, as a socket read does.
            let spare = decoder.spare(piece.len() + 7);
            spare[..piece.len()].copy_from_slice(piece);
            decoder.commit(piece.len() + 7, piece.len());
        } else {
            decoder.extend(piece);
        }
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(reencode(&frame)),
                Ok(None) => break,
                Err(e) => {
                    // The error sticks.
                    assert_eq!(decoder.next_frame().err(), Some(e));
                    return Outcome {
                        frames,
                        error: Some(e),
                    };
                }
            }
        }
    }
    Outcome {
        frames,
        error: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor::new(data);
    let limit = match input.u8() % 4 {
        0 => 16,
        1 => 64,
        2 => 4096,
        _ => MAX_FRAME_LEN,
    };
    let chunk = usize::from(input.u8()) + 1;
    let use_spare = input.u8() & 1 == 1;
    let bytes = input.rest();
    let a = whole(bytes, limit);
    let b = chunked(bytes, limit, chunk, use_spare);
    assert_eq!(
        a, b,
        "chunked decoding disagrees with whole-buffer decoding"
    );
});
