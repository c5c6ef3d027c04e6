//! The error type of the `shmlink` crate.

use shmlink_core::buffer::BufferError;
use shmlink_core::handshake::HandshakeError;
use shmlink_core::queue::QueueError;
use shmlink_core::session::SessionError;
use shmlink_linux::region::RegionError;
use shmlink_linux::socket::TransportError;

/// Everything that can go wrong in a session or stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Creating or mapping shared memory failed.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The control socket failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The handshake did not finish within the initialize timeout.
    #[error("handshake did not finish within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    /// The peer's queue region is invalid.
    #[error("queue region: {0}")]
    Queue(#[from] QueueError),
    /// The peer's buffer region is invalid, or shared memory ran out.
    #[error("buffer region: {0}")]
    Buffer(#[from] BufferError),
    /// The peer broke the protocol; the session is closed.
    #[error("protocol error: {0}")]
    Protocol(#[from] SessionError),
    /// The session is closed (by us, by the peer, or after an error).
    #[error("session closed: {0}")]
    SessionClosed(String),
    /// The stream is closed for this operation.
    #[error("stream closed")]
    StreamClosed,
    /// A deadline passed.
    #[error("timed out")]
    Timeout,
    /// The session is unhealthy after a fallback (circuit breaker); retry later.
    #[error("session is unhealthy after a fallback; retry later")]
    Unhealthy,
    /// The IO queue stayed full for the whole retry window.
    #[error("the io queue stayed full; the peer is not consuming")]
    QueueFull,
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        let kind = match &e {
            Error::Timeout => std::io::ErrorKind::TimedOut,
            Error::StreamClosed | Error::SessionClosed(_) => std::io::ErrorKind::BrokenPipe,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e)
    }
}
