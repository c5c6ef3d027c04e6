//! The server side: listen on a socket and turn each connection into a [`Session`].

use std::path::Path;

use shmlink_linux::socket;

use crate::{Config, Error, Session};

/// A listening shmipc server. Each accepted connection runs the server handshake and maps the
/// client's regions. The unix socket file is removed when the listener is dropped.
#[derive(Debug)]
pub struct Listener {
    inner: socket::Listener,
    config: Config,
}

impl Listener {
    /// Listens on a unix socket path (a stale socket file there is replaced, as Go does).
    pub fn bind(path: impl AsRef<Path>, config: Config) -> Result<Self, Error> {
        Ok(Self {
            inner: socket::Listener::bind_unix(path.as_ref())?,
            config,
        })
    }

    /// Listens on a TCP address (clients must use file mode).
    pub fn bind_tcp(addr: impl std::net::ToSocketAddrs, config: Config) -> Result<Self, Error> {
        Ok(Self {
            inner: socket::Listener::bind_tcp(addr)?,
            config,
        })
    }

    /// The bound TCP address, for TCP listeners.
    pub fn local_tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.local_tcp_addr()
    }

    /// Like [`accept`](Self::accept), but gives up with [`Error::Timeout`] if no client
    /// connects within `timeout`.
    pub fn accept_timeout(&self, timeout: std::time::Duration) -> Result<Session, Error> {
        let conn = self.inner.accept_timeout(timeout).map_err(|e| {
            if e.is_timeout() {
                Error::Timeout
            } else {
                e.into()
            }
        })?;
        Session::server(conn, self.config.clone())
    }

    /// Accepts one connection and completes its handshake (bounded by the configured
    /// initialize timeout).
    pub fn accept(&self) -> Result<Session, Error> {
        let conn = self.inner.accept()?;
        Session::server(conn, self.config.clone())
    }
}
