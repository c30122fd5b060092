//! The shards' listening sockets, bound before any shard starts.
//!
//! glommio's `TcpListener::bind` sets `SO_REUSEPORT`, which lets a second
//! broker listen on the same port and receive part of the connections. We
//! bind with std instead (`SO_REUSEADDR` only, which never lets two
//! listeners share a port) and hand the socket to the shard's executor.

use super::ServerError;
use crate::constants::{LISTEN_BACKLOG, LISTEN_PORT_WAIT_MS, STARTUP_RETRY_PAUSE_MS};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::time::{Duration, Instant};

/// The address shard `shard` listens on, refused if the port overflows.
pub fn shard_address(host: &str, base_port: u16, shard: u32) -> Result<(String, u16), ServerError> {
    let port = u16::try_from(u32::from(base_port) + shard).map_err(|_| {
        ServerError::Config(format!("base port {base_port} leaves no port for shard {shard} (ports end at 65535)"))
    })?;
    Ok((host.to_string(), port))
}

/// Binds `host:port`, retrying while the port is in use for at most
/// `LISTEN_PORT_WAIT_MS` (a killed predecessor's socket lingers a moment).
pub fn bind(host: &str, port: u16) -> Result<TcpListener, ServerError> {
    let address = format!("{host}:{port}");
    let wait = Duration::from_millis(LISTEN_PORT_WAIT_MS);
    let deadline = Instant::now() + wait;
    let mut warned = false;
    loop {
        match TcpListener::bind((host, port)) {
            Ok(listener) => {
                widen_backlog(&listener).map_err(|error| ServerError::Listen { address, detail: error.to_string() })?;
                return Ok(listener);
            }
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
            Err(error) => return Err(ServerError::Listen { address, detail: error.to_string() }),
        }
    }
}

/// std listens with a backlog of 128; a burst of connecting clients needs
/// more. Calling listen again on a listening socket only changes it.
fn widen_backlog(listener: &TcpListener) -> std::io::Result<()> {
    // SAFETY: listen only reads the descriptor number, which `listener` owns
    // and keeps open for the duration of the call.
    let result = unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
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
    fn a_port_already_listened_on_is_not_shared() {
        let first = TcpListener::bind(("127.0.0.1", 0)).expect("bind");
        let port = first.local_addr().expect("address").port();
        assert_eq!(
            TcpListener::bind(("127.0.0.1", port)).map_err(|error| error.kind()).err(),
            Some(std::io::ErrorKind::AddrInUse)
        );
    }
}
