//! The shards' listening sockets: bound before any shard starts, listened
//! on once every shard has recovered.
//!
//! glommio's `TcpListener::bind` sets `SO_REUSEPORT`, which lets a second
//! broker listen on the same port and receive part of the connections. We
//! bind with std instead (`SO_REUSEADDR` only, which never lets two
//! listeners share a port) and hand the socket to the shard's executor.

use super::ServerError;
use crate::constants::{LISTEN_BACKLOG, LISTEN_PORT_WAIT_MS, STARTUP_RETRY_PAUSE_MS};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

/// The address shard `shard` listens on, refused if the port overflows.
pub fn shard_address(host: &str, base_port: u16, shard: u32) -> Result<(String, u16), ServerError> {
    let port = u16::try_from(u32::from(base_port) + shard).map_err(|_| {
        ServerError::Config(format!("base port {base_port} leaves no port for shard {shard} (ports end at 65535)"))
    })?;
    Ok((host.to_string(), port))
}

/// A port bound (so no other process can take it) but not listened on:
/// connecting to it is refused until `listen`.
pub struct ReservedPort {
    socket: socket2::Socket,
    address: String,
}

impl ReservedPort {
    /// Starts listening; connections queue from now on.
    /// Two reservations of one port can both succeed (SO_REUSEADDR allows
    /// it while nobody listens); only one can listen.
    pub fn listen(self) -> Result<TcpListener, ServerError> {
        let address = self.address;
        match self.socket.listen(LISTEN_BACKLOG) {
            Ok(()) => Ok(self.socket.into()),
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                Err(ServerError::PortInUse { address, waited_ms: 0 })
            }
            Err(error) => Err(ServerError::Listen { address, detail: error.to_string() }),
        }
    }
}

/// Binds `host:port` without listening, retrying while the port is in use
/// for at most `LISTEN_PORT_WAIT_MS` (a killed predecessor's socket lingers
/// a moment).
pub fn reserve(host: &str, port: u16) -> Result<ReservedPort, ServerError> {
    let address = format!("{host}:{port}");
    let listen_error = |detail: String| ServerError::Listen { address: address.clone(), detail };
    let resolved = (host, port).to_socket_addrs().map_err(|error| listen_error(error.to_string()))?.next();
    let resolved = resolved.ok_or_else(|| listen_error("the host resolves to no address".into()))?;
    let wait = Duration::from_millis(LISTEN_PORT_WAIT_MS);
    let deadline = Instant::now() + wait;
    let mut warned = false;
    loop {
        let socket = Socket::new(Domain::for_address(resolved), Type::STREAM, Some(Protocol::TCP))
            .map_err(|error| listen_error(error.to_string()))?;
        // SO_REUSEADDR only: a TIME_WAIT remnant does not block us, another
        // listener always does.
        socket.set_reuse_address(true).map_err(|error| listen_error(error.to_string()))?;
        match socket.bind(&resolved.into()) {
            Ok(()) => return Ok(ReservedPort { socket, address }),
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                if !warned {
                    tracing::warn!(%address, wait_ms = LISTEN_PORT_WAIT_MS, "port in use; retrying until it is free");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(STARTUP_RETRY_PAUSE_MS));
            }
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(ServerError::PortInUse { address, waited_ms: LISTEN_PORT_WAIT_MS });
            }
            Err(error) => return Err(listen_error(error.to_string())),
        }
    }
}

/// Hands a bound std listener to the glommio executor this runs in.
pub fn into_glommio(listener: TcpListener) -> glommio::net::TcpListener {
    // SAFETY: `into_raw_fd` gives up ownership of a bound, listening TCP
    // socket, which is what glommio's `from_raw_fd` requires; nothing else
    // refers to the descriptor afterwards. This runs inside an executor.
    unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_past_65535_is_refused() {
        assert_eq!(shard_address("127.0.0.1", 65_534, 1).expect("fits").1, 65_535);
        assert!(matches!(shard_address("127.0.0.1", 65_535, 1), Err(ServerError::Config(_))));
    }

    #[test]
    fn a_reserved_port_refuses_connections_until_it_listens() {
        let reserved = reserve("127.0.0.1", 0).expect("reserve");
        let address = reserved.socket.local_addr().expect("address").as_socket().expect("inet");
        assert!(std::net::TcpStream::connect(address).is_err(), "bound but not listening: refused");
        let listener = reserved.listen().expect("listen");
        assert!(std::net::TcpStream::connect(address).is_ok());
        drop(listener);
    }

    #[test]
    fn a_port_already_listened_on_is_not_shared() {
        let first = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = first.local_addr().expect("address").port();
        assert_eq!(
            TcpListener::bind(("127.0.0.1", port)).map_err(|error| error.kind()).err(),
            Some(std::io::ErrorKind::AddrInUse)
        );
    }
}
