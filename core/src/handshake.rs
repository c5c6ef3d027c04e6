//! The V2/V3 connection handshake as sans-IO state machines (PROTOCOL.md 1.4-1.6).
//!
//! The machines never touch a socket: the caller feeds them what happened ([`Input`]) and
//! performs what they ask for ([`Output`]): write these bytes, read one frame, pass or receive
//! the two fds, map the regions. A server dispatches on the version byte of the first frame,
//! exactly like Go: 2 means V2 (file paths, no acknowledgement), 3 means V3 (version exchange,
//! then memfd or file paths, with acknowledgements); anything else is refused.
//!
//! ```
//! use shmlink_core::frame::{Frame, Message};
//! use shmlink_core::handshake::{ClientHandshake, Input, MemMode, Output};
//!
//! let mut client = ClientHandshake::new(MemMode::Memfd, b"/dev/shm/q", b"/dev/shm/b");
//! let Ok(Output::Send(first)) = client.start() else { unreachable!() };
//! assert_eq!(first, [0, 0, 0, 8, 0x77, 0x58, 3, 4]); // ExchangeProtoVersion, version 3
//! assert_eq!(client.step(Input::Sent).unwrap(), Output::ReadFrame);
//! let reply = Frame::new(3, Message::ExchangeProtoVersion);
//! assert!(matches!(client.step(Input::Frame(reply)).unwrap(), Output::Send(_)));
//! ```

use alloc::vec::Vec;
use core::fmt;

use crate::frame::{Frame, FrameError, Message, MessageType, Paths};

/// The first protocol version a session speaks.
pub const PROTO_VERSION: u8 = 2;
/// The highest version this implementation (and Go) speaks.
pub const MAX_SUPPORTED_VERSION: u8 = 3;

/// How the client shares its regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemMode {
    /// Files (normally under /dev/shm) that the server opens by path.
    File,
    /// memfds passed over the unix socket with SCM_RIGHTS.
    Memfd,
}

/// What just happened, fed to a state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input<'a> {
    /// The bytes of the last [`Output::Send`] (or the fds of [`Output::SendFds`]) were written.
    Sent,
    /// A frame arrived (after [`Output::ReadFrame`]).
    Frame(Frame<'a>),
    /// The two fds arrived (after [`Output::RecvFds`]).
    FdsReceived,
    /// The regions are mapped and validated (after [`Output::Map`]).
    Mapped,
}

/// What the caller must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the socket.
    Send(Vec<u8>),
    /// Read exactly one frame (no more bytes: later bytes belong to the session).
    ReadFrame,
    /// Send one 0x00 byte with SCM_RIGHTS [buffer fd, queue fd].
    SendFds,
    /// Receive one byte with SCM_RIGHTS carrying exactly two fds [buffer, queue].
    RecvFds,
    /// Map the regions the client announced: by path (file mode) or from the received fds.
    Map {
        /// How to find the regions.
        mode: MemMode,
        /// The announced queue path (an identity in memfd mode).
        queue_path: Vec<u8>,
        /// The announced buffer path (an identity in memfd mode).
        buffer_path: Vec<u8>,
    },
    /// The handshake is complete; the session speaks `version` from now on.
    Done {
        /// The negotiated protocol version.
        version: u8,
    },
}

/// Why a handshake failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The first frame carried a version the Go factory does not know (only 2 and 3).
    UnsupportedVersion {
        /// The version byte received.
        version: u8,
    },
    /// A frame of the wrong type arrived at this point.
    Unexpected {
        /// What the state machine was waiting for.
        expected: &'static str,
        /// What arrived.
        got: MessageType,
    },
    /// The state machine was fed an input it did not ask for (a caller bug).
    OutOfOrder {
        /// The input's description.
        input: &'static str,
    },
    /// A path is longer than a frame can carry.
    Frame(FrameError),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedVersion { version } => {
                write!(
                    f,
                    "peer opened with protocol version {version}; only 2 and 3 are supported"
                )
            }
            Self::Unexpected { expected, got } => {
                write!(f, "handshake expected {expected}, got {got:?}")
            }
            Self::OutOfOrder { input } => write!(f, "handshake fed {input} out of order"),
            Self::Frame(e) => write!(f, "handshake frame: {e}"),
        }
    }
}

impl core::error::Error for HandshakeError {}

fn encode(version: u8, message: Message<'_>) -> Result<Vec<u8>, HandshakeError> {
    let mut out = Vec::new();
    Frame::new(version, message)
        .encode_into(&mut out)
        .map_err(HandshakeError::Frame)?;
    Ok(out)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    Init,
    SentFirst,
    AwaitVersion,
    SentPaths,
    AwaitReadyRecvFd,
    SentFds,
    AwaitAck,
    Done,
}

/// The client side: creates nothing itself, but announces the regions the caller created.
#[derive(Debug)]
pub struct ClientHandshake {
    mode: MemMode,
    queue_path: Vec<u8>,
    buffer_path: Vec<u8>,
    state: ClientState,
    version: u8,
    legacy_v2: bool,
}

impl ClientHandshake {
    /// A client announcing `queue_path` and `buffer_path`. memfd mode uses V3; file mode uses
    /// V2, as Go's client does "for compatibility" (use [`ClientHandshake::v3_file`] for V3
    /// with file paths, which Go's server also accepts).
    pub fn new(mode: MemMode, queue_path: &[u8], buffer_path: &[u8]) -> Self {
        Self {
            mode,
            queue_path: queue_path.to_vec(),
            buffer_path: buffer_path.to_vec(),
            state: ClientState::Init,
            version: MAX_SUPPORTED_VERSION,
            legacy_v2: mode == MemMode::File,
        }
    }

    /// A file-mode client that negotiates V3 instead of sending V2.
    pub fn v3_file(queue_path: &[u8], buffer_path: &[u8]) -> Self {
        let mut hs = Self::new(MemMode::File, queue_path, buffer_path);
        hs.legacy_v2 = false;
        hs
    }

    fn paths_frame(&self, version: u8) -> Result<Vec<u8>, HandshakeError> {
        let paths = Paths {
            queue: &self.queue_path,
            buffer: &self.buffer_path,
        };
        let message = match self.mode {
            MemMode::File => Message::ShareMemoryByFilePath(paths),
            MemMode::Memfd => Message::ShareMemoryByMemfd(paths),
        };
        encode(version, message)
    }

    /// The first thing to do: send the opening frame. Fails only if a path is too long
    /// for a frame.
    pub fn start(&mut self) -> Result<Output, HandshakeError> {
        self.state = ClientState::SentFirst;
        if self.legacy_v2 {
            self.version = PROTO_VERSION;
            return self.paths_frame(PROTO_VERSION).map(Output::Send);
        }
        encode(MAX_SUPPORTED_VERSION, Message::ExchangeProtoVersion).map(Output::Send)
    }

    /// Advances the machine.
    pub fn step(&mut self, input: Input<'_>) -> Result<Output, HandshakeError> {
        use ClientState as S;
        match (self.state, input) {
            (S::SentFirst, Input::Sent) if self.legacy_v2 => {
                self.state = S::Done;
                Ok(Output::Done {
                    version: PROTO_VERSION,
                })
            }
            (S::SentFirst, Input::Sent) => {
                self.state = S::AwaitVersion;
                Ok(Output::ReadFrame)
            }
            (S::AwaitVersion, Input::Frame(frame)) => {
                expect(
                    &frame,
                    MessageType::ExchangeProtoVersion,
                    "ExchangeProtoVersion",
                )?;
                self.version = frame.version.min(MAX_SUPPORTED_VERSION);
                if self.version < 3 {
                    return Err(HandshakeError::UnsupportedVersion {
                        version: frame.version,
                    });
                }
                self.state = S::SentPaths;
                Ok(Output::Send(self.paths_frame(self.version)?))
            }
            (S::SentPaths, Input::Sent) => {
                self.state = match self.mode {
                    MemMode::Memfd => S::AwaitReadyRecvFd,
                    MemMode::File => S::AwaitAck,
                };
                Ok(Output::ReadFrame)
            }
            (S::AwaitReadyRecvFd, Input::Frame(frame)) => {
                expect(&frame, MessageType::AckReadyRecvFd, "AckReadyRecvFD")?;
                self.state = S::SentFds;
                Ok(Output::SendFds)
            }
            (S::SentFds, Input::Sent) => {
                self.state = S::AwaitAck;
                Ok(Output::ReadFrame)
            }
            (S::AwaitAck, Input::Frame(frame)) => {
                expect(&frame, MessageType::AckShareMemory, "AckShareMemory")?;
                self.state = S::Done;
                Ok(Output::Done {
                    version: self.version,
                })
            }
            (_, input) => Err(out_of_order(input)),
        }
    }
}

fn expect(
    frame: &Frame<'_>,
    kind: MessageType,
    expected: &'static str,
) -> Result<(), HandshakeError> {
    if frame.message.kind() == kind {
        Ok(())
    } else {
        Err(HandshakeError::Unexpected {
            expected,
            got: frame.message.kind(),
        })
    }
}

fn out_of_order(input: Input<'_>) -> HandshakeError {
    HandshakeError::OutOfOrder {
        input: match input {
            Input::Sent => "Sent",
            Input::Frame(_) => "Frame",
            Input::FdsReceived => "FdsReceived",
            Input::Mapped => "Mapped",
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerState {
    AwaitFirst,
    SentVersion,
    AwaitPaths,
    SentReadyRecvFd,
    AwaitFds,
    Mapping,
    SentAck,
    Done,
}

/// The server side: maps what the client announces.
#[derive(Debug)]
pub struct ServerHandshake {
    state: ServerState,
    version: u8,
    mode: MemMode,
    paths: Option<(Vec<u8>, Vec<u8>)>,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerHandshake {
    /// A server waiting for the client's first frame.
    pub fn new() -> Self {
        Self {
            state: ServerState::AwaitFirst,
            version: PROTO_VERSION,
            mode: MemMode::File,
            paths: None,
        }
    }

    /// The first thing to do: read the opening frame.
    pub fn start(&mut self) -> Output {
        Output::ReadFrame
    }

    fn map(&mut self, mode: MemMode, paths: Paths<'_>) -> Output {
        self.mode = mode;
        self.paths = Some((paths.queue.to_vec(), paths.buffer.to_vec()));
        Output::Map {
            mode,
            queue_path: paths.queue.to_vec(),
            buffer_path: paths.buffer.to_vec(),
        }
    }

    /// The paths the client announced, once known.
    pub fn paths(&self) -> Option<(&[u8], &[u8])> {
        self.paths
            .as_ref()
            .map(|(q, b)| (q.as_slice(), b.as_slice()))
    }

    /// Advances the machine.
    pub fn step(&mut self, input: Input<'_>) -> Result<Output, HandshakeError> {
        use ServerState as S;
        match (self.state, input) {
            (S::AwaitFirst, Input::Frame(frame)) => match frame.version {
                2 => match frame.message {
                    Message::ShareMemoryByFilePath(paths) => {
                        self.version = 2;
                        self.state = S::Mapping;
                        Ok(self.map(MemMode::File, paths))
                    }
                    other => Err(HandshakeError::Unexpected {
                        expected: "ShareMemoryByFilePath (V2)",
                        got: other.kind(),
                    }),
                },
                3 => {
                    expect(
                        &frame,
                        MessageType::ExchangeProtoVersion,
                        "ExchangeProtoVersion",
                    )?;
                    self.version = frame.version.min(MAX_SUPPORTED_VERSION);
                    self.state = S::SentVersion;
                    Ok(Output::Send(encode(
                        MAX_SUPPORTED_VERSION,
                        Message::ExchangeProtoVersion,
                    )?))
                }
                version => Err(HandshakeError::UnsupportedVersion { version }),
            },
            (S::SentVersion, Input::Sent) => {
                self.state = S::AwaitPaths;
                Ok(Output::ReadFrame)
            }
            (S::AwaitPaths, Input::Frame(frame)) => match frame.message {
                Message::ShareMemoryByFilePath(paths) => {
                    self.state = S::Mapping;
                    Ok(self.map(MemMode::File, paths))
                }
                Message::ShareMemoryByMemfd(paths) => {
                    self.mode = MemMode::Memfd;
                    self.paths = Some((paths.queue.to_vec(), paths.buffer.to_vec()));
                    self.state = S::SentReadyRecvFd;
                    Ok(Output::Send(encode(self.version, Message::AckReadyRecvFd)?))
                }
                other => Err(HandshakeError::Unexpected {
                    expected: "ShareMemoryByFilePath or ShareMemoryByMemfd",
                    got: other.kind(),
                }),
            },
            (S::SentReadyRecvFd, Input::Sent) => {
                self.state = S::AwaitFds;
                Ok(Output::RecvFds)
            }
            (S::AwaitFds, Input::FdsReceived) => {
                self.state = S::Mapping;
                let (queue_path, buffer_path) = self.paths.clone().unwrap_or_default();
                Ok(Output::Map {
                    mode: MemMode::Memfd,
                    queue_path,
                    buffer_path,
                })
            }
            (S::Mapping, Input::Mapped) if self.version == 2 => {
                self.state = S::Done;
                Ok(Output::Done { version: 2 })
            }
            (S::Mapping, Input::Mapped) => {
                self.state = S::SentAck;
                Ok(Output::Send(encode(self.version, Message::AckShareMemory)?))
            }
            (S::SentAck, Input::Sent) => {
                self.state = S::Done;
                Ok(Output::Done {
                    version: self.version,
                })
            }
            (_, input) => Err(out_of_order(input)),
        }
    }
}
