//! The two halves of a connection: [`Reader`] (bounded line framing, then [`Frame`]s) and
//! [`Writer`] (requests with client-generated `ref`s, and raw bytes), over any [`Transport`].

use std::io;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

use super::{ClientError, Frame, Ref};
use crate::protocol::Request;

/// A byte stream a [`Client`](super::Client) can run over, split into independently owned
/// read and write halves (so that one task can write requests while another reads).
///
/// Implemented for [`TcpStream`] (its owned halves, no lock) and, through [`Split`], for any
/// `AsyncRead + AsyncWrite` stream: that is the seam for TLS or an in-memory duplex.
pub trait Transport: Send + 'static {
    /// The read half.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The write half.
    type Write: AsyncWrite + Unpin + Send + 'static;
    /// Splits the stream.
    fn split(self) -> (Self::Read, Self::Write);
}

impl Transport for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

/// Any `AsyncRead + AsyncWrite` stream (a TLS stream, [`tokio::io::duplex`]) as a
/// [`Transport`], split with [`tokio::io::split`].
#[derive(Debug)]
pub struct Split<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Send + 'static> Transport for Split<S> {
    type Read = tokio::io::ReadHalf<S>;
    type Write = tokio::io::WriteHalf<S>;
    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self.0)
    }
}

/// Bytes read from the socket at a time (at least).
const READ_CHUNK: usize = 8 * 1024;

/// The read half: frames, one line at a time, each at most `max_frame_bytes` long.
#[derive(Debug)]
pub struct Reader<R> {
    rd: R,
    buf: BytesMut,
    codec: LinesCodec,
    eof: bool,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads from `rd`; a line longer than `max_frame_bytes` is an error (and skipped).
    pub fn new(rd: R, max_frame_bytes: usize) -> Reader<R> {
        Reader {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK),
            codec: LinesCodec::new_with_max_length(max_frame_bytes),
            eof: false,
        }
    }

    /// The next non-blank line, without its line ending; `None` once the server has closed
    /// the connection. A line over the limit or not UTF-8 is a [`ClientError::Protocol`]
    /// (and skipped: the next call reads on after it).
    ///
    /// Cancellation safe: when a `select!` drops the future, nothing read is lost.
    pub async fn next_line(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            let decoded = if self.eof {
                self.codec.decode_eof(&mut self.buf)
            } else {
                self.codec.decode(&mut self.buf)
            };
            match decoded {
                Ok(Some(line)) if line.trim().is_empty() => continue,
                Ok(Some(line)) => return Ok(Some(line)),
                Ok(None) if self.eof => return Ok(None),
                Ok(None) => {}
                Err(LinesCodecError::MaxLineLengthExceeded) => {
                    return Err(ClientError::Protocol(format!(
                        "a frame from the server is longer than {} bytes",
                        self.codec.max_length()
                    )));
                }
                Err(LinesCodecError::Io(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(ClientError::Protocol("a frame is not UTF-8".into()));
                }
                Err(LinesCodecError::Io(e)) => return Err(ClientError::Io(e)),
            }
            self.buf.reserve(READ_CHUNK);
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                self.eof = true;
            }
        }
    }

    /// The next frame with its head read; `None` once the server has closed the connection.
    /// Cancellation safe, like [`next_line`](Reader::next_line).
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        match self.next_line().await? {
            Some(line) => Frame::parse(line).map(Some),
            None => Ok(None),
        }
    }
}

/// The write half: requests numbered by `ref` (1, 2, 3, … per connection), and raw bytes.
#[derive(Debug)]
pub struct Writer<W> {
    wr: W,
    buf: Vec<u8>,
    next_ref: Ref,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Writes to `wr`.
    pub fn new(wr: W) -> Writer<W> {
        Writer {
            wr,
            buf: Vec::with_capacity(256),
            next_ref: 1,
        }
    }

    /// Writes `request` with the next `ref`, which it returns: the reply carries the same
    /// one. Replies come in request order, so many requests may be in flight at once.
    ///
    /// Not cancellation safe: a request cut off mid-write leaves a partial line.
    pub async fn send(&mut self, request: &Request<'_>) -> Result<Ref, ClientError> {
        let reference = self.next_ref;
        self.next_ref += 1;
        self.buf.clear();
        encode(&mut self.buf, reference, request);
        self.wr.write_all(&self.buf).await?;
        // A no-op on TCP; over TLS it sends what the TLS layer kept when the socket was full.
        self.wr.flush().await?;
        Ok(reference)
    }

    /// Writes `bytes` as they are (tests of bad input; a request of a newer protocol).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.wr.write_all(bytes).await?;
        self.wr.flush().await?;
        Ok(())
    }

    /// Half-closes the connection (no more requests); replies and events still arrive.
    pub async fn shutdown(&mut self) -> Result<(), ClientError> {
        self.wr.shutdown().await?;
        Ok(())
    }

    /// The `ref` the next request will carry.
    pub fn next_ref(&self) -> Ref {
        self.next_ref
    }
}

/// Appends `request` with `"ref":reference` as one line to `out`.
pub fn encode(out: &mut Vec<u8>, reference: Ref, request: &Request<'_>) {
    out.extend_from_slice(b"{\"ref\":");
    out.extend_from_slice(reference.to_string().as_bytes());
    let start = out.len();
    // Writing into a Vec cannot fail, and requests always serialize (to an object with `op`,
    // so never `{}`): its `{` becomes the `,` after the ref.
    let _ = serde_json::to_writer(&mut *out, request);
    out[start] = b',';
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Frame as RequestFrame, OpKind, SendArgs};

    #[test]
    fn requests_carry_their_ref_and_read_back_as_sent() {
        let req = Request::Send(SendArgs {
            to: 2,
            text: "h\u{e9}\n\"".into(),
            client_id: Some("c1".into()),
        });
        let mut out = Vec::new();
        encode(&mut out, 42, &req);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let line = &out[..out.len() - 1];
        let frame = RequestFrame::parse(line).unwrap();
        assert_eq!(frame.reference.map(|r| r.get()), Some("42"));
        assert_eq!(frame.request(OpKind::Send).unwrap(), req);
        let mut out = Vec::new();
        encode(&mut out, 1, &Request::Ping);
        assert_eq!(out, b"{\"ref\":1,\"op\":\"ping\"}\n");
    }

    #[tokio::test]
    async fn lines_are_bounded_and_blank_ones_skipped() {
        let input: &[u8] = b"\r\n{\"event\":\"synced\",\"unread\":0}\r\n\n  \n\
            {\"event\":\"typing\"}\n{\"re\":\"ping\",\"ok\":true,\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}\n\
            {\"re\":\"ping\",\"ref\":3,\"ok\":true}";
        let mut r = Reader::new(input, 64);
        let f = r.next_frame().await.unwrap().unwrap();
        assert_eq!(f.event_name(), Some("synced"));
        assert_eq!(f.line(), "{\"event\":\"synced\",\"unread\":0}", "no CR");
        assert_eq!(
            r.next_frame().await.unwrap().unwrap().event_name(),
            Some("typing")
        );
        assert!(matches!(
            r.next_frame().await,
            Err(ClientError::Protocol(m)) if m.contains("longer than 64")
        ));
        // The over-long line was skipped; the last line needs no newline.
        let f = r.next_frame().await.unwrap().unwrap();
        assert_eq!(f.reference(), Some(3));
        assert!(r.next_frame().await.unwrap().is_none());
        assert!(r.next_frame().await.unwrap().is_none(), "stays at the end");
    }

    #[tokio::test]
    async fn refs_count_up_and_raw_bytes_pass_through() {
        let (client, server) = tokio::io::duplex(1024);
        let (_, wr) = Split(client).split();
        let mut w = Writer::new(wr);
        assert_eq!(w.send(&Request::Ping).await.unwrap(), 1);
        assert_eq!(w.send(&Request::Logout).await.unwrap(), 2);
        w.send_raw(b"garbage\n").await.unwrap();
        assert_eq!(w.next_ref(), 3);
        w.shutdown().await.unwrap();
        let mut r = Reader::new(server, 1024);
        assert_eq!(
            r.next_line().await.unwrap().unwrap(),
            "{\"ref\":1,\"op\":\"ping\"}"
        );
        assert_eq!(
            r.next_line().await.unwrap().unwrap(),
            "{\"ref\":2,\"op\":\"logout\"}"
        );
        assert_eq!(r.next_line().await.unwrap().unwrap(), "garbage");
        assert!(r.next_line().await.unwrap().is_none());
    }
}
