//! The `--metrics-listen` endpoint: a plain thread, off every shard's
//! executor, answering `GET /metrics` over HTTP/1.1 with what the shards
//! last published (`metrics::MetricsBoard`). One request per connection,
//! one connection at a time; a request is untrusted: its head is bounded
//! in size (`METRICS_REQUEST_HEAD_BYTES_MAX`) and in time (`METRICS_REQUEST_TIME_MAX`, the
//! answer's write too), and anything but `GET /metrics` is answered 400,
//! 404, 405 or 431, never a panic.

use super::metrics::MetricsBoard;
use super::metrics_text;
use super::ServerError;
use crate::constants::{METRICS_DRAIN_BYTES_MAX, METRICS_REQUEST_HEAD_BYTES_MAX, METRICS_REQUEST_TIME_MAX};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the idle thread looks whether the broker stops.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Listens on `address` (`HOST:PORT`) now, so a port in use stops the start.
pub fn bind(address: &str) -> Result<TcpListener, ServerError> {
    let listen_error = |detail: String| ServerError::Listen { address: address.to_string(), detail };
    let resolved = address.to_socket_addrs().map_err(|error| listen_error(format!("metrics address: {error}")))?;
    let listener = TcpListener::bind(resolved.collect::<Vec<_>>().as_slice())
        .map_err(|error| listen_error(format!("metrics endpoint: {error}")))?;
    listener.set_nonblocking(true).map_err(|error| listen_error(error.to_string()))?;
    Ok(listener)
}

/// Serves scrapes on `listener` until `stop` is true.
pub fn start(
    listener: TcpListener,
    board: Arc<MetricsBoard>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "metrics endpoint listening");
    }
    std::thread::Builder::new().name("ringmq-metrics".into()).spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(error) = answer(stream, &board) {
                        tracing::debug!(%error, "a metrics request failed");
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => std::thread::sleep(STOP_POLL),
                Err(error) => {
                    tracing::warn!(%error, "metrics endpoint: accept failed");
                    std::thread::sleep(STOP_POLL);
                }
            }
        }
    })
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Asked {
    Metrics,
    /// Status line and a one-line reason.
    Refused(&'static str, &'static str),
}

/// Reads one request and answers it.
fn answer(mut stream: TcpStream, board: &MetricsBoard) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let deadline = Instant::now() + METRICS_REQUEST_TIME_MAX;
    let asked = match read_head(&mut stream, deadline)? {
        Some(head) => parse_head(&head),
        None => Asked::Refused("431 Request Header Fields Too Large", "request head too large\n"),
    };
    stream.set_write_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))?;
    let (status, content_type, body) = match asked {
        Asked::Metrics => match metrics_text::encode(board.read()) {
            Ok(text) => ("200 OK", metrics_text::CONTENT_TYPE, text),
            Err(_) => ("500 Internal Server Error", "text/plain", "encoding the metrics failed\n".to_string()),
        },
        Asked::Refused(status, reason) => (status, "text/plain", reason.to_string()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()?;
    drain(stream, deadline)
}

/// Closes our side, then reads what the client still sends (the rest of an
/// oversized head) until it closes, `METRICS_DRAIN_BYTES_MAX` or the deadline: a
/// close with unread bytes would reset the connection before the client
/// read the answer.
fn drain(mut stream: TcpStream, deadline: Instant) -> std::io::Result<()> {
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut chunk = [0u8; 4096];
    let mut drained = 0;
    while drained < METRICS_DRAIN_BYTES_MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut chunk)? {
            0 => break,
            read => drained += read,
        }
    }
    Ok(())
}

/// The request head (up to its blank line), `None` past
/// `METRICS_REQUEST_HEAD_BYTES_MAX`; a timeout or a close before it is an error.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() > METRICS_REQUEST_HEAD_BYTES_MAX {
            return Ok(None);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(ErrorKind::TimedOut, "the request head took too long"));
        }
        stream.set_read_timeout(Some(left))?;
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed before the end of the request head"));
        }
        head.extend_from_slice(&chunk[..read]);
    }
    Ok(Some(head))
}

/// What the request head asks for: only `GET /metrics` (any query) is served.
pub fn parse_head(head: &[u8]) -> Asked {
    let bad = Asked::Refused("400 Bad Request", "bad request\n");
    let Some(line) = head.split(|byte| *byte == b'\n').next() else { return bad };
    let Ok(line) = std::str::from_utf8(line) else { return bad };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return bad;
    }
    if method != "GET" {
        return Asked::Refused("405 Method Not Allowed", "only GET\n");
    }
    match target.split('?').next() {
        Some("/metrics") => Asked::Metrics,
        _ => Asked::Refused("404 Not Found", "not found: the metrics are at /metrics\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_get_of_the_metrics_path_is_served() {
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Asked::Metrics);
        assert_eq!(parse_head(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Asked::Metrics);
        assert!(
            matches!(parse_head(b"GET / HTTP/1.1\r\n\r\n"), Asked::Refused(status, _) if status.starts_with("404"))
        );
        assert!(
            matches!(parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"), Asked::Refused(status, _) if status.starts_with("405"))
        );
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"\xff\xfe\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics SPDY/3 x\r\n\r\n",
        ] {
            assert!(matches!(parse_head(bad), Asked::Refused(status, _) if status.starts_with("400")), "{bad:?}");
        }
    }
}
