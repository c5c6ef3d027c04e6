//! The control connection: a unix stream (required for memfd mode) or TCP (file mode only),
//! and shmipc's fd passing: exactly one 0x00 data byte plus one SCM_RIGHTS message with the
//! two fds `[buffer, queue]` (PROTOCOL.md 1.6). Received fds are close-on-exec.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use shmlink_core::frame::{self, Decoded, Frame, FrameError};

/// Errors on the control connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// An I/O error, with what we were doing.
    #[error("{context}: {source}")]
    Io {
        /// What failed.
        context: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// An I/O error on a socket path: what we were doing, where, and what to check.
    #[error("{context} {}: {source}{hint}", path.display())]
    AtPath {
        /// What failed.
        context: &'static str,
        /// The socket path.
        path: std::path::PathBuf,
        /// The OS error.
        source: io::Error,
        /// What to check, for the common causes (may be empty).
        hint: &'static str,
    },
    /// The peer closed the connection.
    #[error("the peer closed the connection ({context})")]
    Closed {
        /// What we were doing.
        context: &'static str,
    },
    /// The fd-passing message was not exactly one byte with two fds.
    #[error("bad fd-passing message from the peer: {reason}")]
    FdPassing {
        /// What was wrong.
        reason: String,
    },
    /// memfds cannot travel over TCP.
    #[error("memfd mode needs a unix socket; TCP can only carry file-mode sessions")]
    MemfdOverTcp,
    /// The bytes on the socket are not a valid frame.
    #[error("bad frame from the peer: {0}")]
    Frame(#[from] FrameError),
}

impl TransportError {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| match source.kind() {
            io::ErrorKind::UnexpectedEof => Self::Closed { context },
            _ => Self::Io { context, source },
        }
    }

    /// Whether this error means the peer is gone: it closed the connection, cleanly (end of
    /// file) or abortively (reset, broken pipe: a peer that exits with unread bytes resets).
    pub fn is_peer_gone(&self) -> bool {
        match self {
            Self::Closed { .. } => true,
            Self::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }

    /// Whether this error is a timeout (an expired read or write deadline).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Io { source, .. }
            if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// A connected control socket.
#[derive(Debug)]
pub enum Conn {
    /// A unix stream socket.
    Unix(UnixStream),
    /// A TCP connection (file mode only).
    Tcp(TcpStream),
}

impl Conn {
    /// Connects to a unix socket path.
    pub fn connect_unix(path: &Path) -> Result<Self, TransportError> {
        UnixStream::connect(path).map(Conn::Unix).map_err(|source| {
            let hint = match source.kind() {
                io::ErrorKind::NotFound => " (is a server listening at this path?)",
                io::ErrorKind::ConnectionRefused => {
                    " (the socket file is there, but no process listens on it)"
                }
                io::ErrorKind::PermissionDenied => {
                    " (this user may not connect to it: check the file's and directory's modes)"
                }
                _ => "",
            };
            TransportError::AtPath {
                context: "connect to the unix socket",
                path: path.to_owned(),
                source,
                hint,
            }
        })
    }

    /// Connects over TCP.
    pub fn connect_tcp(addr: impl ToSocketAddrs) -> Result<Self, TransportError> {
        let s = TcpStream::connect(addr).map_err(TransportError::io("connect over TCP"))?;
        s.set_nodelay(true)
            .map_err(TransportError::io("set TCP_NODELAY"))?;
        Ok(Conn::Tcp(s))
    }

    /// Whether this is a unix socket (memfd mode possible).
    pub fn is_unix(&self) -> bool {
        matches!(self, Conn::Unix(_))
    }

    /// A second handle on the same socket (one thread reads, others write).
    pub fn try_clone(&self) -> Result<Self, TransportError> {
        match self {
            Conn::Unix(s) => s.try_clone().map(Conn::Unix),
            Conn::Tcp(s) => s.try_clone().map(Conn::Tcp),
        }
        .map_err(TransportError::io("duplicate the socket"))
    }

    /// Sets or clears the read timeout (SO_RCVTIMEO).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<(), TransportError> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(timeout),
            Conn::Tcp(s) => s.set_read_timeout(timeout),
        }
        .map_err(TransportError::io("set the read timeout"))
    }

    /// Sets or clears the write timeout (SO_SNDTIMEO).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> Result<(), TransportError> {
        match self {
            Conn::Unix(s) => s.set_write_timeout(timeout),
            Conn::Tcp(s) => s.set_write_timeout(timeout),
        }
        .map_err(TransportError::io("set the write timeout"))
    }

    /// Shuts both directions down, waking a thread blocked reading.
    pub fn shutdown(&self) {
        let _ = match self {
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    /// Writes all of `bytes`.
    pub fn send(&self, bytes: &[u8], context: &'static str) -> Result<(), TransportError> {
        let mut w = self;
        w.write_all(bytes).map_err(TransportError::io(context))
    }

    /// Writes all of several buffers (a frame prefix and its payload) with vectored writes.
    pub fn send_vectored(
        &self,
        parts: &[&[u8]],
        context: &'static str,
    ) -> Result<(), TransportError> {
        let mut w = self;
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut slices = &mut slices[..];
        while !slices.is_empty() {
            match w.write_vectored(slices) {
                Ok(0) => return Err(TransportError::Closed { context }),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TransportError::io(context)(e)),
            }
        }
        Ok(())
    }

    /// Reads exactly one frame into `buf` (cleared first), without reading past it: bytes
    /// after the frame stay in the socket for the session. Returns the frame's length.
    pub fn read_frame(
        &self,
        buf: &mut Vec<u8>,
        context: &'static str,
    ) -> Result<usize, TransportError> {
        let mut r = self;
        buf.clear();
        buf.resize(frame::HEADER_LEN, 0);
        r.read_exact(buf).map_err(TransportError::io(context))?;
        let needed = match Frame::decode(buf)? {
            Decoded::Frame(_, n) => return Ok(n),
            Decoded::Incomplete { needed } => needed,
        };
        buf.resize(needed, 0);
        r.read_exact(&mut buf[frame::HEADER_LEN..])
            .map_err(TransportError::io(context))?;
        Ok(needed)
    }

    /// Reads what is available into `buf`, returning 0 at end of stream.
    pub fn read_some(&self, buf: &mut [u8]) -> Result<usize, TransportError> {
        let mut r = self;
        loop {
            match r.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TransportError::io("read from the socket")(e)),
            }
        }
    }

    /// Sends the two region fds: one 0x00 byte and one SCM_RIGHTS message `[buffer, queue]`.
    pub fn send_fds(
        &self,
        buffer: BorrowedFd<'_>,
        queue: BorrowedFd<'_>,
    ) -> Result<(), TransportError> {
        let Conn::Unix(sock) = self else {
            return Err(TransportError::MemfdOverTcp);
        };
        let fds = [buffer, queue];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(TransportError::FdPassing {
                reason: "control buffer too small".into(),
            });
        }
        let sent = rustix::net::sendmsg(
            sock,
            &[IoSlice::new(&[0u8])],
            &mut control,
            SendFlags::NOSIGNAL,
        )
        .map_err(|e| TransportError::io("send the region fds")(e.into()))?;
        if sent != 1 {
            return Err(TransportError::Closed {
                context: "send the region fds",
            });
        }
        Ok(())
    }

    /// Receives the two region fds `[buffer, queue]`. Anything but exactly one data byte of
    /// 0x00 with exactly one SCM_RIGHTS message of two fds is an error (extra fds are closed).
    pub fn recv_fds(&self) -> Result<[OwnedFd; 2], TransportError> {
        let Conn::Unix(sock) = self else {
            return Err(TransportError::MemfdOverTcp);
        };
        let mut byte = [0xffu8; 1];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| TransportError::io("receive the region fds")(e.into()))?;
        let mut fds = Vec::new();
        let mut other = 0;
        for message in control.drain() {
            match message {
                RecvAncillaryMessage::ScmRights(received) => fds.extend(received),
                _ => other += 1,
            }
        }
        if msg.bytes == 0 && fds.is_empty() {
            return Err(TransportError::Closed {
                context: "receive the region fds",
            });
        }
        let bad = |reason: String| Err(TransportError::FdPassing { reason });
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            return bad("more control data than two fds (control message truncated)".into());
        }
        if other != 0 {
            return bad(format!("{other} unexpected control messages"));
        }
        if msg.bytes != 1 || byte[0] != 0 {
            return bad(format!(
                "expected one 0x00 data byte, got {} byte(s) starting {:#04x}",
                msg.bytes, byte[0]
            ));
        }
        match <[OwnedFd; 2]>::try_from(fds) {
            Ok(pair) => Ok(pair),
            Err(fds) => bad(format!("expected 2 fds [buffer, queue], got {}", fds.len())),
        }
    }
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => (&*s).read(buf),
            Conn::Tcp(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => (&*s).write(buf),
            Conn::Tcp(s) => (&*s).write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => (&*s).write_vectored(bufs),
            Conn::Tcp(s) => (&*s).write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Who is at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A unix-socket peer's credentials at connect time (`SO_PEERCRED`).
    Unix {
        /// Process id.
        pid: i32,
        /// User id.
        uid: u32,
        /// Group id.
        gid: u32,
    },
    /// A TCP peer's address.
    Tcp(std::net::SocketAddr),
    /// Not known (the query failed).
    Unknown,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Unix { pid, uid, .. } => write!(f, "pid {pid} (uid {uid})"),
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Unknown => f.write_str("unknown peer"),
        }
    }
}

impl Conn {
    /// The peer: its credentials for a unix socket (`getsockopt(SO_PEERCRED)`, see
    /// `unix(7)`), its address for TCP.
    pub fn peer(&self) -> Peer {
        match self {
            Conn::Unix(s) => {
                rustix::net::sockopt::socket_peercred(s).map_or(Peer::Unknown, |c| Peer::Unix {
                    pid: c.pid.as_raw_nonzero().get(),
                    uid: c.uid.as_raw(),
                    gid: c.gid.as_raw(),
                })
            }
            Conn::Tcp(s) => s.peer_addr().map_or(Peer::Unknown, Peer::Tcp),
        }
    }
}

impl AsFd for Conn {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Unix(s) => s.as_fd(),
            Conn::Tcp(s) => s.as_fd(),
        }
    }
}

/// A listening socket. A unix listener that bound its path removes the socket file on drop.
#[derive(Debug)]
pub enum Listener {
    /// Listening on a unix socket; the path is `None` for an adopted socket (not ours to
    /// remove).
    Unix(UnixListener, Option<PathBuf>),
    /// Listening on a TCP address.
    Tcp(TcpListener),
}

impl Listener {
    /// Listens on a unix socket path, replacing a stale socket file there (as Go does).
    pub fn bind_unix(path: &Path) -> Result<Self, TransportError> {
        Self::bind_unix_mode(path, 0o600)
    }

    /// Binds a unix socket at `path` with file mode `mode`. An existing socket file is
    /// removed only when no process listens on it (a connect is refused): a live listener
    /// makes this fail with `AddrInUse` instead of stealing its path. Anything that is not a
    /// socket is left alone (the bind then fails).
    pub fn bind_unix_mode(path: &Path, mode: u32) -> Result<Self, TransportError> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                match UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(TransportError::AtPath {
                            context: "bind the unix socket",
                            path: path.to_owned(),
                            source: io::ErrorKind::AddrInUse.into(),
                            hint: " (a listener is live on it, in this process or another: \
                                   close it or choose another path)",
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        let _ = std::fs::remove_file(path);
                    }
                    Err(_) => {}
                }
            }
        }
        let l = UnixListener::bind(path).map_err(|source| {
            let hint = match source.kind() {
                io::ErrorKind::PermissionDenied => {
                    " (this user may not create files in that directory)"
                }
                io::ErrorKind::NotFound => " (its directory does not exist)",
                io::ErrorKind::AddrInUse => " (something that is not a socket is at that path)",
                _ => "",
            };
            TransportError::AtPath {
                context: "bind the unix socket",
                path: path.to_owned(),
                source,
                hint,
            }
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(TransportError::io("set the unix socket's file mode"))?;
        l.set_nonblocking(true)
            .map_err(TransportError::io("make the unix socket non-blocking"))?;
        Ok(Listener::Unix(l, Some(path.to_owned())))
    }

    /// Adopts a socket that already listens (inherited from a parent, systemd's socket
    /// activation, or shared by several worker processes). Its file is left in place on
    /// drop. Accepting never blocks when another process took the connection first.
    pub fn adopt_unix(l: UnixListener) -> Result<Self, TransportError> {
        l.set_nonblocking(true)
            .map_err(TransportError::io("make the unix socket non-blocking"))?;
        Ok(Listener::Unix(l, None))
    }

    /// Listens on a TCP address.
    pub fn bind_tcp(addr: impl ToSocketAddrs) -> Result<Self, TransportError> {
        let l = TcpListener::bind(addr).map_err(TransportError::io("bind the TCP socket"))?;
        l.set_nonblocking(true)
            .map_err(TransportError::io("make the TCP socket non-blocking"))?;
        Ok(Listener::Tcp(l))
    }

    /// The local TCP address (for `bind_tcp("127.0.0.1:0")`).
    pub fn local_tcp_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// Waits up to `timeout` for a connection, then accepts it. A timeout is reported as a
    /// [`TransportError`] for which [`TransportError::is_timeout`] is true.
    pub fn accept_timeout(&self, timeout: std::time::Duration) -> Result<Conn, TransportError> {
        let fd = match self {
            Listener::Unix(l, _) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        };
        let mut fds = [rustix::event::PollFd::from_borrowed_fd(
            fd,
            rustix::event::PollFlags::IN,
        )];
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let ready = loop {
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Err(rustix::io::Errno::INTR) => continue,
                other => break other,
            }
        }
        .map_err(|e| TransportError::io("wait for a connection")(e.into()))?;
        let timed_out = || TransportError::Io {
            context: "wait for a connection",
            source: io::Error::from(io::ErrorKind::TimedOut),
        };
        if ready == 0 {
            return Err(timed_out());
        }
        match self.accept_now() {
            // Another process sharing the socket took it first.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(timed_out()),
            other => other.map_err(TransportError::io("accept a connection")),
        }
    }

    /// Accepts one connection, waiting for it.
    pub fn accept(&self) -> Result<Conn, TransportError> {
        loop {
            match self.accept_timeout(std::time::Duration::from_secs(3600)) {
                Err(e) if e.is_timeout() => {}
                other => return other,
            }
        }
    }

    /// One non-blocking accept; the connection itself is blocking.
    fn accept_now(&self) -> io::Result<Conn> {
        match self {
            Listener::Unix(l, _) => l.accept().and_then(|(s, _)| {
                s.set_nonblocking(false)?;
                Ok(Conn::Unix(s))
            }),
            Listener::Tcp(l) => l.accept().and_then(|(s, _)| {
                s.set_nonblocking(false)?;
                let _ = s.set_nodelay(true);
                Ok(Conn::Tcp(s))
            }),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, Some(path)) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::SharedRegion;

    fn pair() -> (Conn, Conn) {
        let (a, b) = UnixStream::pair().unwrap();
        (Conn::Unix(a), Conn::Unix(b))
    }

    #[test]
    fn two_fds_arrive_in_order_close_on_exec_with_one_zero_byte() {
        let (a, b) = pair();
        let buffer = SharedRegion::create_memfd("/t/b", 4096).unwrap();
        let queue = SharedRegion::create_memfd("/t/q", 8192).unwrap();
        a.send_fds(buffer.fd(), queue.fd()).unwrap();
        let [fb, fq] = b.recv_fds().unwrap();
        assert_eq!(rustix::fs::fstat(&fb).unwrap().st_size, 4096);
        assert_eq!(rustix::fs::fstat(&fq).unwrap().st_size, 8192);
        assert!(
            rustix::io::fcntl_getfd(&fb)
                .unwrap()
                .contains(rustix::io::FdFlags::CLOEXEC)
        );
        // Nothing beyond the one byte was sent: the next read sees the next write.
        a.send(b"xy", "t").unwrap();
        let mut two = [0u8; 2];
        (&b).read_exact(&mut two).unwrap();
        assert_eq!(&two, b"xy");
    }

    #[test]
    fn wrong_fd_count_or_missing_fds_is_an_error() {
        let (a, b) = pair();
        let r = SharedRegion::create_memfd("/t/one", 4096).unwrap();
        let fds = [r.fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        let Conn::Unix(sa) = &a else { unreachable!() };
        rustix::net::sendmsg(
            sa,
            &[IoSlice::new(&[0u8])],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        let err = b.recv_fds().unwrap_err();
        assert!(matches!(err, TransportError::FdPassing { .. }), "{err}");
        // A plain byte without fds.
        a.send(&[0], "t").unwrap();
        assert!(matches!(
            b.recv_fds(),
            Err(TransportError::FdPassing { .. })
        ));
        drop(a);
        assert!(matches!(b.recv_fds(), Err(TransportError::Closed { .. })));
    }

    #[test]
    fn read_frame_stops_at_the_frame_boundary() {
        let (a, b) = pair();
        a.send(
            &[
                0, 0, 0, 12, 0x77, 0x58, 3, 2, 0, 0, 0, 9, 0, 0, 0, 8, 0x77, 0x58, 3, 1,
            ],
            "t",
        )
        .unwrap();
        let mut buf = Vec::new();
        assert_eq!(b.read_frame(&mut buf, "t").unwrap(), 12);
        assert_eq!(b.read_frame(&mut buf, "t").unwrap(), 8);
        a.send(&[0, 0, 0, 9, 0x77, 0x58, 3, 1], "t").unwrap();
        assert!(matches!(
            b.read_frame(&mut buf, "t"),
            Err(TransportError::Frame(_))
        ));
    }

    #[test]
    fn fd_passing_over_tcp_is_refused() {
        let l = Listener::bind_tcp("127.0.0.1:0").unwrap();
        let c = Conn::connect_tcp(l.local_tcp_addr().unwrap()).unwrap();
        let r = SharedRegion::create_memfd("/t/tcp", 4096).unwrap();
        assert!(matches!(
            c.send_fds(r.fd(), r.fd()),
            Err(TransportError::MemfdOverTcp)
        ));
        assert!(matches!(c.recv_fds(), Err(TransportError::MemfdOverTcp)));
    }
}
