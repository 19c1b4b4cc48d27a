//! The client's byte stream (plain TCP or TLS, [`ReadHalf`] / [`WriteHalf`]) and its framing:
//! newline-delimited frames read with a hard size bound.
//!
//! Hand-written instead of `FramedRead<LinesCodec>` for one reason: memory per idle
//! connection. The read buffer exists only while bytes are pending and is released as soon as
//! every complete line has been taken, so an idle logged-in connection holds no buffer at all.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::server::tls::TlsStream;

/// The read half of a client connection. An enum, not a type parameter: the session and the
/// ops stay one type, and a match per read or write costs nothing next to a system call.
/// Plain TCP keeps the lock-free owned halves; TLS goes through [`tokio::io::split`], whose
/// lock is never contended (a connection reads and writes from its one task, in turn).
#[derive(Debug)]
pub enum ReadHalf {
    /// Plain TCP.
    Tcp(OwnedReadHalf),
    /// TLS terminated by the node.
    Tls(tokio::io::ReadHalf<TlsStream>),
}

/// The write half of a client connection (see [`ReadHalf`]).
#[derive(Debug)]
pub enum WriteHalf {
    /// Plain TCP.
    Tcp(OwnedWriteHalf),
    /// TLS terminated by the node.
    Tls(tokio::io::WriteHalf<TlsStream>),
}

/// Splits a plain TCP connection.
pub fn split_tcp(stream: TcpStream) -> (ReadHalf, WriteHalf) {
    let (rd, wr) = stream.into_split();
    (ReadHalf::Tcp(rd), WriteHalf::Tcp(wr))
}

/// Splits a TLS connection.
pub fn split_tls(stream: TlsStream) -> (ReadHalf, WriteHalf) {
    let (rd, wr) = tokio::io::split(stream);
    (ReadHalf::Tls(rd), WriteHalf::Tls(wr))
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp(rd) => Pin::new(rd).poll_read(cx, buf),
            ReadHalf::Tls(rd) => Pin::new(rd).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(wr) => Pin::new(wr).poll_write(cx, buf),
            WriteHalf::Tls(wr) => Pin::new(wr).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(wr) => Pin::new(wr).poll_flush(cx),
            WriteHalf::Tls(wr) => Pin::new(wr).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(wr) => Pin::new(wr).poll_shutdown(cx),
            WriteHalf::Tls(wr) => Pin::new(wr).poll_shutdown(cx),
        }
    }
}

/// Bytes reserved for one read from the socket.
const READ_CHUNK: usize = 4096;

thread_local! {
    /// The buffer every read on this thread goes through first.
    static CHUNK: std::cell::RefCell<Box<[u8; READ_CHUNK]>> =
        std::cell::RefCell::new(Box::new([0; READ_CHUNK]));
}

/// What [`LineReader::next_frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// One frame, without its line ending (may be empty).
    Line(Bytes),
    /// A frame longer than the bound; the stream cannot be resynchronised.
    TooLarge,
}

/// Splits a byte stream into frames of at most `max` bytes.
pub struct LineReader {
    buf: BytesMut,
    scanned: usize,
    max: usize,
}

impl LineReader {
    /// A reader for frames of at most `max` bytes (not counting `\n` or `\r\n`).
    pub fn new(max: usize) -> LineReader {
        LineReader {
            buf: BytesMut::new(),
            scanned: 0,
            max,
        }
    }

    /// The next complete frame already buffered, if any.
    pub fn next_frame(&mut self) -> Option<Frame> {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = self.scanned + i;
                let mut line = self.buf.split_to(end + 1).freeze();
                self.scanned = 0;
                if self.buf.is_empty() {
                    // Drop the allocation now; the split-off line frees it when handled.
                    self.buf = BytesMut::new();
                }
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                Some(if line.len() > self.max {
                    Frame::TooLarge
                } else {
                    Frame::Line(line)
                })
            }
            None => {
                self.scanned = self.buf.len();
                // Even with a trailing '\r' to come, this frame is already over the bound.
                (self.buf.len() > self.max + 1).then_some(Frame::TooLarge)
            }
        }
    }

    /// Changes the frame bound (a connection allows longer frames once logged in).
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// A reader that starts with bytes already read from the socket (after a PROXY header).
    pub fn with_buffered(max: usize, buffered: BytesMut) -> LineReader {
        LineReader {
            buf: buffered,
            scanned: 0,
            max,
        }
    }

    /// Waits for and reads more bytes; how many (`Ok(0)` at end of stream).
    ///
    /// Cancel-safe: bytes are only taken from the stream in a poll that returns them.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> io::Result<usize> {
        std::future::poll_fn(|cx| {
            // Read into the thread's chunk and copy what arrived: a buffer reserved for a read
            // that would block would stay allocated while idle. (A fresh zeroed array per read
            // cost a 4 KiB memset per frame.) The borrow never spans an await.
            CHUNK.with(|chunk| {
                let mut chunk = chunk.borrow_mut();
                let mut read = ReadBuf::new(&mut chunk[..]);
                ready!(Pin::new(&mut *rd).poll_read(cx, &mut read))?;
                self.buf.extend_from_slice(read.filled());
                Poll::Ready(Ok(read.filled().len()))
            })
        })
        .await
    }

    /// Appends bytes as if read from the socket (unit tests and tests/fuzz drive the reader
    /// without a socket through this).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Cases per property (reported in docs/operations.md).
    const CASES: u32 = 20_000;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(CASES))]

        /// However the bytes are chunked, the frames come out whole, in order, within the bound.
        #[test]
        fn any_chunking_yields_the_same_frames(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..40), 0..12),
            crlf in any::<bool>(),
            cuts in proptest::collection::vec(1usize..17, 0..30),
        ) {
            let max = 24;
            let mut input = Vec::new();
            for f in &frames {
                input.extend(f);
                input.extend(if crlf { &b"\r\n"[..] } else { &b"\n"[..] });
            }
            let mut reader = LineReader::new(max);
            let mut out = Vec::new();
            let mut rest = &input[..];
            let mut cuts = cuts.into_iter();
            let mut too_large = false;
            while !rest.is_empty() && !too_large {
                let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
                reader.feed(&rest[..n]);
                rest = &rest[n..];
                while let Some(f) = reader.next_frame() {
                    match f {
                        Frame::Line(l) => out.push(l.to_vec()),
                        Frame::TooLarge => { too_large = true; break; }
                    }
                }
            }
            let expected: Vec<Vec<u8>> = frames
                .iter()
                .map(|f| {
                    let mut f = f.clone();
                    if !crlf && f.last() == Some(&b'\r') { f.pop(); }
                    f
                })
                .collect();
            let fitting = expected.iter().take_while(|f| f.len() <= max).count();
            prop_assert_eq!(&out[..], &expected[..fitting.min(out.len())]);
            prop_assert_eq!(too_large, fitting < expected.len());
            if !too_large { prop_assert_eq!(out.len(), expected.len()); }
        }
    }

    fn line(s: &str) -> Option<Frame> {
        Some(Frame::Line(Bytes::copy_from_slice(s.as_bytes())))
    }

    #[test]
    fn splits_joins_and_bounds() {
        let mut r = LineReader::new(8);
        r.feed(b"ab");
        assert_eq!(r.next_frame(), None);
        r.feed(b"c\r\n\nde\n");
        assert_eq!(r.next_frame(), line("abc"));
        assert_eq!(r.next_frame(), line(""));
        assert_eq!(r.next_frame(), line("de"));
        assert_eq!(r.next_frame(), None);
        r.feed(b"12345678\r\n");
        assert_eq!(r.next_frame(), line("12345678"));
        r.feed(b"123456789\n");
        assert_eq!(r.next_frame(), Some(Frame::TooLarge));
        let mut r = LineReader::new(8);
        r.feed(b"1234567890");
        assert_eq!(r.next_frame(), Some(Frame::TooLarge));
    }
}
