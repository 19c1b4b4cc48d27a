//! PROXY protocol v1/v2 on the chat listener, so per-address limits see the real client
//! behind a load balancer. Parsing is the `ppp` crate's; this file only frames the header.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header accepted (v1 is at most 107 bytes; v2 with TLVs is bounded here).
const MAX_HEADER_BYTES: usize = 1024;
/// The first 12 bytes of every v2 header.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Time a client has to send the whole header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a PROXY header from the start of `stream`. Returns the client's real address (the
/// peer's own when the header says LOCAL/UNKNOWN) and the bytes read past the header.
pub async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> io::Result<(SocketAddr, BytesMut)> {
    let invalid =
        |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("PROXY header: {why}"));
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if buf.len() >= MAX_HEADER_BYTES {
            return Err(invalid("too long"));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(invalid("connection closed before the header ended"));
        }
        // Both versions start with a fixed signature: "PROXY " or "\r\n\r\n\0\r\nQUIT\n".
        if !(b"PROXY ".starts_with(&buf[..buf.len().min(6)])
            || V2_SIGNATURE.starts_with(&buf[..buf.len().min(12)]))
        {
            return Err(invalid("missing"));
        }
        let parsed = HeaderResult::parse(&buf);
        if parsed.is_incomplete() {
            // A v1 header ends at its first CRLF: incomplete after one means malformed.
            if buf.starts_with(b"PROXY ") && buf.windows(2).any(|w| w == b"\r\n") {
                return Err(invalid("malformed v1 header"));
            }
            continue;
        }
        let (len, source) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_source(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_source(&h.addresses)),
            HeaderResult::V1(Err(e)) => return Err(invalid(&e.to_string())),
            HeaderResult::V2(Err(e)) => return Err(invalid(&e.to_string())),
        };
        let rest = buf.split_off(len);
        return Ok((source.unwrap_or(peer), rest));
    }
}

fn v1_source(a: &v1::Addresses) -> Option<SocketAddr> {
    match a {
        v1::Addresses::Tcp4(ip) => Some((ip.source_address, ip.source_port).into()),
        v1::Addresses::Tcp6(ip) => Some((ip.source_address, ip.source_port).into()),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(a: &v2::Addresses) -> Option<SocketAddr> {
    match a {
        v2::Addresses::IPv4(ip) => Some((ip.source_address, ip.source_port).into()),
        v2::Addresses::IPv6(ip) => Some((ip.source_address, ip.source_port).into()),
        _ => None,
    }
}
