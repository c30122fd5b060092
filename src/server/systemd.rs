//! Tells systemd (`Type=notify`) when the broker is ready and when it stops,
//! over the `NOTIFY_SOCKET` datagram socket (the sd_notify protocol: one
//! datagram of `KEY=VALUE` lines). Hand-written: a few lines of std, where
//! a crate would bring libsystemd or a second socket stack. Without
//! `NOTIFY_SOCKET` (not under systemd) nothing is sent.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` to the service manager, if the broker runs under one.
pub fn notify(state: &str) -> io::Result<()> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(socket) => send(&socket.to_string_lossy(), state),
        None => Ok(()),
    }
}

/// Sends `state` to the socket `NOTIFY_SOCKET` names.
fn send(socket: &str, state: &str) -> io::Result<()> {
    // A leading '@' names a Linux abstract socket (systemd's usual choice in
    // containers), anything else a path.
    let address = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(socket)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

/// Ready once every shard listens (after the start gate, so every shard has
/// recovered): a restart under systemd is seen ready when clients are
/// served, not when the first port opens.
pub struct Readiness {
    shards: u32,
    listening: AtomicU32,
    stopping: AtomicBool,
}

impl Readiness {
    pub fn new(shards: u32) -> Self {
        Self { shards, listening: AtomicU32::new(0), stopping: AtomicBool::new(false) }
    }

    /// A shard accepts connections; the last one tells systemd READY=1.
    pub fn shard_listening(&self) {
        if self.listening.fetch_add(1, Ordering::SeqCst) + 1 == self.shards {
            let state = format!("READY=1\nSTATUS={} shards accepting", self.shards);
            match notify(&state) {
                Ok(()) => tracing::info!(shards = self.shards, "every shard accepts: ready"),
                Err(error) => tracing::warn!(%error, "cannot tell systemd the broker is ready"),
            }
        }
    }

    /// The broker stops; the first shard to see it tells systemd STOPPING=1.
    pub fn stopping(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            if let Err(error) = notify("STOPPING=1\nSTATUS=stopping: finishing requests in flight") {
                tracing::warn!(%error, "cannot tell systemd the broker is stopping");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(socket: &UnixDatagram) -> String {
        let mut datagram = [0u8; 256];
        let length = socket.recv(&mut datagram).expect("a datagram");
        String::from_utf8_lossy(&datagram[..length]).into_owned()
    }

    #[test]
    fn a_state_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let by_path = UnixDatagram::bind(&path).expect("bind a path");
        send(path.to_str().expect("utf-8"), "READY=1").expect("send to a path");
        assert_eq!(received(&by_path), "READY=1");

        let name = format!("ringmq-test-notify-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        let by_name = UnixDatagram::bind_addr(&address).expect("bind an abstract name");
        send(&format!("@{name}"), "STOPPING=1").expect("send to an abstract name");
        assert_eq!(received(&by_name), "STOPPING=1");
    }
}
