//! The handshake run by hand from core's state machines, for the tests whose peer then
//! misbehaves (`raw_peer.rs`, `hostile_peer.rs`, `hostile_clients.rs`).

#![allow(dead_code, unreachable_pub)]

use shmlink_core::frame::{Decoded, Frame};
use shmlink_core::handshake::{ClientHandshake, Input, MemMode, Output, ServerHandshake};
use shmlink_linux::region::SharedRegion;
use shmlink_linux::socket::Conn;

fn read_frame<'b>(conn: &Conn, buf: &'b mut Vec<u8>) -> Frame<'b> {
    conn.read_frame(buf, "raw read").unwrap();
    let Ok(Decoded::Frame(frame, _)) = Frame::decode(buf) else {
        panic!("a bad frame from the other side's handshake")
    };
    frame
}

/// The client handshake in memfd mode on `conn`, announcing `queue_name` and `buffer_name`
/// and passing the two regions' fds. Panics if our side refuses.
pub fn client_handshake(
    conn: &Conn,
    queue_name: &str,
    buffer_name: &str,
    queue: &SharedRegion,
    buffer: &SharedRegion,
) {
    let mut hs = ClientHandshake::new(
        MemMode::Memfd,
        queue_name.as_bytes(),
        buffer_name.as_bytes(),
    );
    let mut out = hs.start().unwrap();
    let mut buf = Vec::new();
    loop {
        out = match out {
            Output::Send(bytes) => {
                conn.send(&bytes, "raw send").unwrap();
                hs.step(Input::Sent).unwrap()
            }
            Output::ReadFrame => {
                let frame = read_frame(conn, &mut buf);
                hs.step(Input::Frame(frame)).unwrap()
            }
            Output::SendFds => {
                conn.send_fds(buffer.fd(), queue.fd()).unwrap();
                hs.step(Input::Sent).unwrap()
            }
            Output::Done { .. } => return,
            other => panic!("unexpected client step {other:?}"),
        };
    }
}

/// The server handshake on an accepted `conn`; returns the client's (queue, buffer) regions
/// and the version spoken.
pub fn server_handshake(conn: &Conn) -> (SharedRegion, SharedRegion, u8) {
    let mut hs = ServerHandshake::new();
    let mut buf = Vec::new();
    let mut fds = None;
    let mut regions = None;
    let mut out = hs.start();
    loop {
        out = match out {
            Output::ReadFrame => {
                let frame = read_frame(conn, &mut buf);
                hs.step(Input::Frame(frame)).unwrap()
            }
            Output::Send(bytes) => {
                conn.send(&bytes, "raw send").unwrap();
                hs.step(Input::Sent).unwrap()
            }
            Output::RecvFds => {
                fds = Some(conn.recv_fds().unwrap());
                hs.step(Input::FdsReceived).unwrap()
            }
            Output::Map { .. } => {
                let [b, q] = fds.take().expect("memfd mode");
                regions = Some((
                    SharedRegion::from_fd(q, "q").unwrap(),
                    SharedRegion::from_fd(b, "b").unwrap(),
                ));
                hs.step(Input::Mapped).unwrap()
            }
            Output::Done { version } => {
                let (queue, buffer) = regions.expect("mapped");
                return (queue, buffer, version);
            }
            Output::SendFds => panic!("a server never sends fds"),
        };
    }
}
