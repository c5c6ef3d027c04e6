//! The control messages that travel on the socket (PROTOCOL.md 2): an 8-byte header
//! (u32 BE total length, u16 BE magic 0x7758, u8 version, u8 type) and a per-type payload.
//!
//! [`Frame::decode`] parses one frame from the front of a byte buffer and says how many bytes
//! it used, or that more bytes are needed; it never panics and rejects anything Go would
//! reject (bad magic, version 0, unknown type) plus lengths that would desynchronise the
//! stream (a Polling frame longer than 8 bytes, a path payload whose lengths disagree).
//! With the `alloc` feature, [`FrameDecoder`] accumulates socket reads and yields frames.
//!
//! ```
//! use shmlink_core::frame::{Decoded, Frame, Message};
//!
//! let frame = Frame::new(3, Message::StreamClose { stream_id: 2 });
//! let mut wire = [0u8; 12];
//! assert_eq!(frame.encode(&mut wire).unwrap(), 12);
//! assert_eq!(wire, [0, 0, 0, 12, 0x77, 0x58, 3, 2, 0, 0, 0, 2]);
//!
//! // Half a frame waits for more bytes; the whole frame decodes to what was sent.
//! assert_eq!(Frame::decode(&wire[..10]).unwrap(), Decoded::Incomplete { needed: 12 });
//! assert_eq!(Frame::decode(&wire).unwrap(), Decoded::Frame(frame, 12));
//! ```

use core::fmt;

/// Bytes of the frame header.
pub const HEADER_LEN: usize = 8;
/// The magic number, `77 58` on the wire.
pub const MAGIC: u16 = 0x7758;
/// Largest frame [`Frame::decode`] accepts by default: 256 MiB. Only FallbackData can be
/// large (one whole Flush); anything bigger is treated as a corrupt length rather than
/// buffered. [`Frame::decode_limited`] and [`FrameDecoder::with_limit`] take another limit.
pub const MAX_FRAME_LEN: u32 = 256 << 20;

/// The message types of PROTOCOL.md 2.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// 0: handshake, client to server: queue and buffer paths (file mode).
    ShareMemoryByFilePath = 0,
    /// 1: "SyncEvent": the peer's queue has elements; exactly 8 bytes.
    Polling = 1,
    /// 2: stream close, sent when the queue is full at close time.
    StreamClose = 2,
    /// 3: stream data sent over the socket when shared memory is exhausted.
    FallbackData = 3,
    /// 4: V3 version exchange, no payload.
    ExchangeProtoVersion = 4,
    /// 5: handshake, client to server: paths, then the fds (memfd mode).
    ShareMemoryByMemfd = 5,
    /// 6: handshake, server to client: regions mapped.
    AckShareMemory = 6,
    /// 7: handshake, server to client: ready to receive the fds.
    AckReadyRecvFd = 7,
    /// 8: server to client: hot restart with an epoch.
    HotRestart = 8,
    /// 9: client to server: hot restart acknowledged.
    HotRestartAck = 9,
}

impl MessageType {
    /// The type for a wire byte, if known.
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => Self::ShareMemoryByFilePath,
            1 => Self::Polling,
            2 => Self::StreamClose,
            3 => Self::FallbackData,
            4 => Self::ExchangeProtoVersion,
            5 => Self::ShareMemoryByMemfd,
            6 => Self::AckShareMemory,
            7 => Self::AckReadyRecvFd,
            8 => Self::HotRestart,
            9 => Self::HotRestartAck,
            _ => return None,
        })
    }
}

/// The queue and buffer paths of a ShareMemoryBy* message (u16 BE length + bytes, twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Paths<'a> {
    /// The queue region's path (a logical name in memfd mode).
    pub queue: &'a [u8],
    /// The buffer region's path (a logical name in memfd mode).
    pub buffer: &'a [u8],
}

/// A control message with its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Message<'a> {
    /// Type 0.
    ShareMemoryByFilePath(Paths<'a>),
    /// Type 1.
    Polling,
    /// Type 2.
    StreamClose {
        /// The stream being closed.
        stream_id: u32,
    },
    /// Type 3.
    FallbackData {
        /// The stream the data belongs to.
        stream_id: u32,
        /// The status word (low byte: stream state, 0 = opened).
        status: u32,
        /// The stream bytes.
        data: &'a [u8],
    },
    /// Type 4.
    ExchangeProtoVersion,
    /// Type 5.
    ShareMemoryByMemfd(Paths<'a>),
    /// Type 6.
    AckShareMemory,
    /// Type 7.
    AckReadyRecvFd,
    /// Type 8.
    HotRestart {
        /// The restart epoch.
        epoch: u64,
    },
    /// Type 9.
    HotRestartAck {
        /// The acknowledged epoch.
        epoch: u64,
    },
}

impl Message<'_> {
    /// The wire type.
    pub const fn kind(&self) -> MessageType {
        match self {
            Self::ShareMemoryByFilePath(_) => MessageType::ShareMemoryByFilePath,
            Self::Polling => MessageType::Polling,
            Self::StreamClose { .. } => MessageType::StreamClose,
            Self::FallbackData { .. } => MessageType::FallbackData,
            Self::ExchangeProtoVersion => MessageType::ExchangeProtoVersion,
            Self::ShareMemoryByMemfd(_) => MessageType::ShareMemoryByMemfd,
            Self::AckShareMemory => MessageType::AckShareMemory,
            Self::AckReadyRecvFd => MessageType::AckReadyRecvFd,
            Self::HotRestart { .. } => MessageType::HotRestart,
            Self::HotRestartAck { .. } => MessageType::HotRestartAck,
        }
    }
}

/// A header version plus a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frame<'a> {
    /// The protocol version byte (2 or 3 in practice; never 0).
    pub version: u8,
    /// The message.
    pub message: Message<'a>,
}

/// The result of [`Frame::decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame, and the bytes it took from the front of the buffer.
    Frame(Frame<'a>, usize),
    /// The buffer holds only part of a frame; at least `needed` bytes in total are required.
    Incomplete {
        /// Total bytes the buffer must hold before decoding can make progress.
        needed: usize,
    },
}

/// Why bytes are not a valid frame (decoding) or a frame cannot be written (encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The magic was not 0x7758.
    BadMagic {
        /// The value found.
        found: u16,
    },
    /// The version byte was 0.
    BadVersion {
        /// The value found.
        found: u8,
    },
    /// The type byte is not one of 0..=9.
    UnknownType {
        /// The value found.
        found: u8,
    },
    /// The length field does not fit the message type.
    BadLength {
        /// The message type.
        kind: MessageType,
        /// The length found (header included).
        length: u32,
        /// What the type requires.
        expected: &'static str,
    },
    /// The length field exceeds the decoder's limit ([`MAX_FRAME_LEN`] by default).
    TooLong {
        /// The length found.
        length: u32,
        /// The limit in force.
        limit: u32,
    },
    /// The path lengths inside a ShareMemoryBy* payload disagree with the frame length.
    BadPaths {
        /// The frame length.
        length: u32,
    },
    /// Encoding: the output buffer is too small.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// Encoding: a path longer than 65,535 bytes, or a frame longer than [`MAX_FRAME_LEN`].
    Unencodable {
        /// What cannot be encoded.
        what: &'static str,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic { found } => write!(f, "bad frame magic {found:#06x}, expected 0x7758"),
            Self::BadVersion { found } => write!(f, "bad frame version {found}"),
            Self::UnknownType { found } => write!(f, "unknown message type {found}"),
            Self::BadLength {
                kind,
                length,
                expected,
            } => {
                write!(
                    f,
                    "{kind:?} frame with length {length}, expected {expected}"
                )
            }
            Self::TooLong { length, limit } => {
                write!(
                    f,
                    "frame length {length} exceeds the limit of {limit} bytes \
                     (max_frame_len)"
                )
            }
            Self::BadPaths { length } => {
                write!(f, "path lengths disagree with the frame length {length}")
            }
            Self::BufferTooSmall { needed, available } => {
                write!(
                    f,
                    "output buffer too small: need {needed} bytes, have {available}"
                )
            }
            Self::Unencodable { what } => write!(f, "cannot encode: {what}"),
        }
    }
}

impl core::error::Error for FrameError {}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

/// Validates a header and returns `(length, version, type)`; `bytes` holds at least 8 bytes.
fn parse_header(bytes: &[u8], limit: u32) -> Result<(u32, u8, MessageType), FrameError> {
    let length = be_u32(bytes, 0);
    let magic = be_u16(bytes, 4);
    let version = bytes[6];
    let kind_byte = bytes[7];
    if magic != MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    if version == 0 {
        return Err(FrameError::BadVersion { found: version });
    }
    let kind =
        MessageType::from_u8(kind_byte).ok_or(FrameError::UnknownType { found: kind_byte })?;
    let bad = |expected| {
        Err(FrameError::BadLength {
            kind,
            length,
            expected,
        })
    };
    match kind {
        MessageType::Polling
        | MessageType::ExchangeProtoVersion
        | MessageType::AckShareMemory
        | MessageType::AckReadyRecvFd
            if length != 8 =>
        {
            return bad("exactly 8");
        }
        MessageType::StreamClose if length != 12 => return bad("exactly 12"),
        MessageType::HotRestart | MessageType::HotRestartAck if length != 16 => {
            return bad("exactly 16");
        }
        MessageType::FallbackData if length < 16 => return bad("at least 16"),
        MessageType::ShareMemoryByFilePath | MessageType::ShareMemoryByMemfd if length < 12 => {
            return bad("at least 12");
        }
        _ => {}
    }
    if length > limit {
        return Err(FrameError::TooLong { length, limit });
    }
    Ok((length, version, kind))
}

fn parse_paths(body: &[u8], length: u32) -> Result<Paths<'_>, FrameError> {
    let bad = FrameError::BadPaths { length };
    let queue_len = usize::from(be_u16(body, 0));
    let queue_end = 2 + queue_len;
    // Need the buffer path's length field after the queue path.
    if body.len() < queue_end + 2 {
        return Err(bad);
    }
    let buffer_len = usize::from(be_u16(body, queue_end));
    if body.len() != queue_end + 2 + buffer_len {
        return Err(bad);
    }
    Ok(Paths {
        queue: &body[2..queue_end],
        buffer: &body[queue_end + 2..],
    })
}

impl<'a> Frame<'a> {
    /// A frame with the given header version.
    pub const fn new(version: u8, message: Message<'a>) -> Self {
        Self { version, message }
    }

    /// Decodes one frame from the front of `bytes`.
    ///
    /// Returns [`Decoded::Incomplete`] until the whole frame is present (a header that is
    /// already invalid is reported at once, without waiting for its body).
    pub fn decode(bytes: &'a [u8]) -> Result<Decoded<'a>, FrameError> {
        Self::decode_limited(bytes, MAX_FRAME_LEN)
    }

    /// [`decode`](Self::decode) with `limit` as the largest frame length accepted.
    pub fn decode_limited(bytes: &'a [u8], limit: u32) -> Result<Decoded<'a>, FrameError> {
        if bytes.len() < HEADER_LEN {
            return Ok(Decoded::Incomplete { needed: HEADER_LEN });
        }
        let (length, version, kind) = parse_header(bytes, limit)?;
        let total = length as usize;
        if bytes.len() < total {
            return Ok(Decoded::Incomplete { needed: total });
        }
        let body = &bytes[HEADER_LEN..total];
        let message = match kind {
            MessageType::ShareMemoryByFilePath => {
                Message::ShareMemoryByFilePath(parse_paths(body, length)?)
            }
            MessageType::ShareMemoryByMemfd => {
                Message::ShareMemoryByMemfd(parse_paths(body, length)?)
            }
            MessageType::Polling => Message::Polling,
            MessageType::ExchangeProtoVersion => Message::ExchangeProtoVersion,
            MessageType::AckShareMemory => Message::AckShareMemory,
            MessageType::AckReadyRecvFd => Message::AckReadyRecvFd,
            MessageType::StreamClose => Message::StreamClose {
                stream_id: be_u32(body, 0),
            },
            MessageType::FallbackData => Message::FallbackData {
                stream_id: be_u32(body, 0),
                status: be_u32(body, 4),
                data: &body[8..],
            },
            MessageType::HotRestart => Message::HotRestart {
                epoch: be_u64(body, 0),
            },
            MessageType::HotRestartAck => Message::HotRestartAck {
                epoch: be_u64(body, 0),
            },
        };
        Ok(Decoded::Frame(Frame { version, message }, total))
    }

    /// Bytes this frame takes on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + match self.message {
                Message::ShareMemoryByFilePath(p) | Message::ShareMemoryByMemfd(p) => {
                    4 + p.queue.len() + p.buffer.len()
                }
                Message::StreamClose { .. } => 4,
                Message::FallbackData { data, .. } => 8 + data.len(),
                Message::HotRestart { .. } | Message::HotRestartAck { .. } => 8,
                Message::Polling
                | Message::ExchangeProtoVersion
                | Message::AckShareMemory
                | Message::AckReadyRecvFd => 0,
            }
    }

    /// The header, plus for FallbackData the stream id and status: everything but the
    /// payload bytes, so a sender can write the data from where it already is (`writev`).
    /// Returns the prefix and its length (8 or 16; for other messages with a payload, only
    /// the 8 header bytes).
    pub fn prefix(&self) -> Result<([u8; 16], usize), FrameError> {
        let total = self.encoded_len();
        let length = u32::try_from(total)
            .ok()
            .filter(|&l| l <= MAX_FRAME_LEN)
            .ok_or(FrameError::Unencodable {
                what: "frame longer than MAX_FRAME_LEN",
            })?;
        let mut out = [0u8; 16];
        out[0..4].copy_from_slice(&length.to_be_bytes());
        out[4..6].copy_from_slice(&MAGIC.to_be_bytes());
        out[6] = self.version;
        out[7] = self.message.kind() as u8;
        if let Message::FallbackData {
            stream_id, status, ..
        } = self.message
        {
            out[8..12].copy_from_slice(&stream_id.to_be_bytes());
            out[12..16].copy_from_slice(&status.to_be_bytes());
            return Ok((out, 16));
        }
        Ok((out, HEADER_LEN))
    }

    /// Writes the frame to the front of `out`, returning the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, FrameError> {
        let total = self.encoded_len();
        if out.len() < total {
            return Err(FrameError::BufferTooSmall {
                needed: total,
                available: out.len(),
            });
        }
        let (prefix, prefix_len) = self.prefix()?;
        out[..prefix_len].copy_from_slice(&prefix[..prefix_len]);
        let body = &mut out[prefix_len..total];
        match self.message {
            Message::ShareMemoryByFilePath(p) | Message::ShareMemoryByMemfd(p) => {
                let too_long = FrameError::Unencodable {
                    what: "path longer than 65,535 bytes",
                };
                let q = u16::try_from(p.queue.len()).map_err(|_| too_long)?;
                let b = u16::try_from(p.buffer.len()).map_err(|_| too_long)?;
                let (q_len, rest) = body.split_at_mut(2);
                q_len.copy_from_slice(&q.to_be_bytes());
                let (q_bytes, rest) = rest.split_at_mut(p.queue.len());
                q_bytes.copy_from_slice(p.queue);
                let (b_len, b_bytes) = rest.split_at_mut(2);
                b_len.copy_from_slice(&b.to_be_bytes());
                b_bytes.copy_from_slice(p.buffer);
            }
            Message::StreamClose { stream_id } => body.copy_from_slice(&stream_id.to_be_bytes()),
            Message::FallbackData { data, .. } => body.copy_from_slice(data),
            Message::HotRestart { epoch } | Message::HotRestartAck { epoch } => {
                body.copy_from_slice(&epoch.to_be_bytes());
            }
            Message::Polling
            | Message::ExchangeProtoVersion
            | Message::AckShareMemory
            | Message::AckReadyRecvFd => {}
        }
        Ok(total)
    }

    /// Appends the encoded frame to `out`.
    #[cfg(feature = "alloc")]
    pub fn encode_into(&self, out: &mut alloc::vec::Vec<u8>) -> Result<usize, FrameError> {
        let start = out.len();
        out.resize(start + self.encoded_len(), 0);
        match self.encode(&mut out[start..]) {
            Ok(n) => Ok(n),
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }
}

/// Accumulates bytes read from the socket and yields whole frames (PROTOCOL.md 2.4).
///
/// After a decoding error the byte stream cannot be resynchronised; the decoder keeps
/// returning that error.
///
/// ```
/// use shmlink_core::frame::{FrameDecoder, Message};
///
/// let mut decoder = FrameDecoder::new();
/// decoder.extend(&[0, 0, 0, 8, 0x77]);
/// assert!(decoder.next_frame().unwrap().is_none()); // half a Polling frame
/// decoder.extend(&[0x58, 3, 1]);
/// let frame = decoder.next_frame().unwrap().unwrap();
/// assert_eq!((frame.version, frame.message), (3, Message::Polling));
/// ```
#[cfg(feature = "alloc")]
#[derive(Debug)]
pub struct FrameDecoder {
    buf: alloc::vec::Vec<u8>,
    start: usize,
    failed: Option<FrameError>,
    limit: u32,
}

#[cfg(feature = "alloc")]
impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "alloc")]
impl FrameDecoder {
    /// An empty decoder accepting frames up to [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_limit(MAX_FRAME_LEN)
    }

    /// An empty decoder accepting frames up to `limit` bytes; a longer length field is a
    /// [`FrameError::TooLong`], reported before any of the frame is buffered.
    pub fn with_limit(limit: u32) -> Self {
        Self {
            // Room for a few control frames from the start: a session whose first Polling
            // frame comes late (a spinning reader) must not allocate on its message path then.
            buf: alloc::vec::Vec::with_capacity(4 * HEADER_LEN + 64),
            start: 0,
            failed: None,
            limit,
        }
    }

    /// Makes room for `additional` more bytes, so that reads of up to that size never
    /// allocate (a runtime reserves its read size once).
    pub fn reserve(&mut self, additional: usize) {
        self.buf.reserve(additional);
    }

    /// Appends bytes read from the socket.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(bytes);
    }

    /// A zeroed area of `n` bytes at the end of the buffer to read into; call
    /// [`commit`](Self::commit) with the number of bytes actually read.
    pub fn spare(&mut self, n: usize) -> &mut [u8] {
        self.compact();
        let len = self.buf.len();
        self.buf.resize(len + n, 0);
        &mut self.buf[len..]
    }

    /// Keeps `read` bytes of the last [`spare`](Self::spare) area and drops the rest.
    pub fn commit(&mut self, spare: usize, read: usize) {
        let keep = self.buf.len() - spare + read.min(spare);
        self.buf.truncate(keep);
    }

    /// Bytes held that no frame has consumed yet.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole frame, or `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let Self {
            buf,
            start,
            failed,
            limit,
        } = self;
        match Frame::decode_limited(&buf[*start..], *limit) {
            Ok(Decoded::Frame(frame, used)) => {
                *start += used;
                Ok(Some(frame))
            }
            Ok(Decoded::Incomplete { .. }) => Ok(None),
            Err(e) => {
                *failed = Some(e);
                Err(e)
            }
        }
    }

    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
        } else {
            self.buf.drain(..self.start);
        }
        self.start = 0;
    }
}
