//! The error type of the `shmlink` crate: one variant per cause, each cause named once in its
//! message, and a sensible [`std::io::ErrorKind`] for each when it crosses `Read`/`Write`.

use std::time::Duration;

use shmlink_core::buffer::BufferError;
use shmlink_core::handshake::HandshakeError;
use shmlink_core::queue::QueueError;
use shmlink_core::session::SessionError;
use shmlink_linux::region::RegionError;
use shmlink_linux::socket::TransportError;

/// Everything that can go wrong in a session or stream.
///
/// Once a session is over, every operation on it and its streams returns the variant that
/// says why: [`PeerClosed`](Error::PeerClosed), [`ClosedLocally`](Error::ClosedLocally),
/// [`ProtocolViolation`](Error::ProtocolViolation) or [`ConnectionLost`](Error::ConnectionLost)
/// ([`is_session_closed`](Error::is_session_closed) tells them apart from the rest).
///
/// ```
/// use std::io::ErrorKind;
/// use shmlink::Error;
///
/// let e = Error::PeerClosed;
/// assert!(e.is_session_closed());
/// assert_eq!(e.to_string(), "the peer closed the connection");
/// assert_eq!(std::io::Error::from(Error::StreamEnded).kind(), ErrorKind::UnexpectedEof);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Creating or mapping shared memory failed.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The control socket failed before the session was up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The handshake did not finish within the initialize timeout.
    #[error("handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer's queue region is invalid.
    #[error("queue region: {0}")]
    Queue(#[from] QueueError),
    /// The peer's buffer region is invalid, or shared memory is in a state we refuse.
    #[error("buffer region: {0}")]
    Buffer(#[from] BufferError),
    /// The peer closed the connection; the session is over.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// This process closed the session ([`Session::close`](crate::Session::close) or drop).
    #[error("the session was closed locally")]
    ClosedLocally,
    /// The peer broke the protocol (a bad frame, queue element or chain); the session is
    /// closed. The detail names what was wrong and where.
    #[error("protocol violation by the peer: {0}")]
    ProtocolViolation(String),
    /// The socket failed under an established session; the session is closed.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The stream was closed (by us) for this operation, or the peer closed it and writes
    /// are no longer possible.
    #[error("stream closed")]
    StreamClosed,
    /// The peer closed the stream in the middle of what the reader asked for.
    #[error("the stream ended before the bytes asked for")]
    StreamEnded,
    /// A deadline passed.
    #[error("timed out")]
    Timeout,
    /// The session refuses new streams for a while: a write fell back to the socket because
    /// shared memory ran out, and the circuit breaker ([`Config::circuit_breaker`](crate::Config),
    /// Go's behaviour) opened. A write larger than all of shared memory does not open it.
    #[error(
        "session is unhealthy: a write fell back to the socket because shared memory ran out, \
         so the circuit breaker (Config::circuit_breaker) refuses new streams for another \
         {retry_in:?}; size Config::buffer_capacity for your bursts, or choose Exhaustion::Wait"
    )]
    Unhealthy {
        /// How long until new streams are accepted again.
        retry_in: std::time::Duration,
    },
    /// The IO queue stayed full for the whole retry window.
    #[error("the io queue stayed full; the peer is not consuming")]
    QueueFull,
    /// Shared memory cannot hold the write ([`Exhaustion::Error`](crate::Exhaustion), or a
    /// write larger than all of shared memory under [`Exhaustion::Wait`](crate::Exhaustion)).
    #[error(
        "shared memory cannot hold a write of {requested} bytes now (if it is larger than all \
         of shared memory, it never can: raise Config::buffer_capacity or the largest size class)"
    )]
    SharedMemoryExhausted {
        /// The bytes asked for.
        requested: usize,
    },
    /// Every stream id is in use.
    #[error("all stream ids are in use")]
    StreamsExhausted,
    /// A write larger than the largest frame allowed ([`Config::max_frame_len`](crate::Config)).
    #[error("a write of {len} bytes exceeds max_frame_len ({max} bytes, header included)")]
    TooLarge {
        /// The bytes asked for.
        len: usize,
        /// The configured limit.
        max: u32,
    },
    /// A length-prefixed message announced by the peer is longer than the reader allows
    /// ([`Stream::recv_message`](crate::Stream::recv_message)); nothing of it was consumed.
    #[error("the peer announced a message of {len} bytes, over this read's limit of {max}")]
    MessageTooLarge {
        /// The length the peer announced.
        len: usize,
        /// The reader's limit.
        max: usize,
    },
    /// A [`SessionManager`](crate::SessionManager) has no live session to hand out a stream
    /// from (each is being rebuilt after its peer went away); says why the last rebuild failed.
    #[error("no session available: {0}")]
    Unavailable(String),

    /// The peer is not one this process talks to (another user, or memory it cannot trust),
    /// by a security setting the message names.
    #[error("peer refused: {0}")]
    PeerRefused(String),
    /// An I/O error from `Read`/`Write` that was not one of ours.
    #[error("i/o: {0}")]
    Io(std::io::Error),
}

impl Error {
    /// Whether this error means the session is over (for whatever reason); accept loops
    /// end on these.
    pub fn is_session_closed(&self) -> bool {
        matches!(
            self,
            Error::PeerClosed
                | Error::ClosedLocally
                | Error::ProtocolViolation(_)
                | Error::ConnectionLost(_)
        )
    }
}

impl From<SessionError> for Error {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Unhealthy { retry_in_ms } => Error::Unhealthy {
                retry_in: std::time::Duration::from_millis(retry_in_ms),
            },
            SessionError::StreamClosed => Error::StreamClosed,
            SessionError::StreamsExhausted => Error::StreamsExhausted,
            other => Error::ProtocolViolation(other.to_string()),
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match &e {
            Error::Io(io) => return std::io::Error::new(io.kind(), e),
            Error::Timeout | Error::HandshakeTimeout(_) => K::TimedOut,
            Error::StreamClosed | Error::PeerClosed => K::BrokenPipe,
            Error::ClosedLocally | Error::Unavailable(_) => K::NotConnected,
            Error::ConnectionLost(_) => K::ConnectionAborted,
            Error::StreamEnded => K::UnexpectedEof,
            Error::ProtocolViolation(_) | Error::Handshake(_) | Error::MessageTooLarge { .. } => {
                K::InvalidData
            }
            Error::Config(_) | Error::TooLarge { .. } => K::InvalidInput,
            Error::QueueFull | Error::SharedMemoryExhausted { .. } => K::ResourceBusy,
            _ => K::Other,
        };
        std::io::Error::new(kind, e)
    }
}

/// Recovers our error from an `io::Error` that carried one through `Read`/`Write`, and names
/// an unexpected end of file for what it is on a stream.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        let kind = e.kind();
        if e.get_ref().is_none_or(|inner| !inner.is::<Error>()) {
            return match kind {
                std::io::ErrorKind::UnexpectedEof => Error::StreamEnded,
                _ => Error::Io(e),
            };
        }
        match e.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(ours)) => *ours,
            Some(Err(other)) => Error::Io(std::io::Error::new(kind, other)),
            None => Error::Io(std::io::Error::from(kind)),
        }
    }
}

/// Why a session ended, kept by the session and turned into the matching [`Error`] for every
/// later operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    Local,
    Peer,
    Violation(String),
    Lost(String),
}

impl CloseReason {
    pub(crate) fn error(&self) -> Error {
        match self {
            CloseReason::Local => Error::ClosedLocally,
            CloseReason::Peer => Error::PeerClosed,
            CloseReason::Violation(detail) => Error::ProtocolViolation(detail.clone()),
            CloseReason::Lost(detail) => Error::ConnectionLost(detail.clone()),
        }
    }
}
