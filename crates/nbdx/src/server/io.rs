//! Stream plumbing: the [`Stream`] bound, a stream that may have been
//! upgraded to TLS, and a buffered reader that moves large payloads straight
//! into their destination.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{timeout_at, Instant};

/// A byte stream a connection runs over: TCP, Unix, TLS, a pipe pair, an
/// in-memory duplex.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A boxed [`Stream`], for streams whose type changes at STARTTLS.
pub type BoxStream = Box<dyn Stream>;

/// The connection's stream before or after `NBD_OPT_STARTTLS`.
pub(crate) enum MaybeTls<S> {
    Plain(S),
    Tls(BoxStream),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTls::Plain($s) => $e,
            MaybeTls::Tls($s) => $e,
        }
    };
}

impl<S: Stream> AsyncRead for MaybeTls<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl<S: Stream> AsyncWrite for MaybeTls<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Reads fixed-size headers through a buffer, and payloads directly into
/// their destination once the buffered bytes are used up.
///
/// Between messages the reader waits without limit. Once a message has
/// started, every read must make progress within `stall`, and the whole
/// message must arrive within `stall` plus its length at
/// [`MIN_PAYLOAD_RATE`]: a peer that stops, or dribbles a header or a
/// payload byte by byte (slowloris), cannot pin a worker, a buffer or the
/// memory budget for longer than that.
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    stall: Duration,
}

/// Reads at least this much at a time into the buffer.
const READ_CHUNK: usize = 64 * 1024;

/// Slowest average rate (bytes per second) at which a message that has
/// started must keep arriving: 64 KiB/s, so a 32 MiB write may take the
/// stall timeout plus 512 s.
pub(crate) const MIN_PAYLOAD_RATE: u64 = 64 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R, leftover: BytesMut, stall: Duration) -> Self {
        let mut buf = leftover;
        buf.reserve(READ_CHUNK);
        Self { inner, buf, stall }
    }

    /// Bytes buffered but not yet consumed.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// When a message of `len` bytes that starts now must be complete.
    fn deadline(&self, len: u64) -> Instant {
        Instant::now() + self.stall + Duration::from_secs(len / MIN_PAYLOAD_RATE)
    }

    /// The time limit for one read of a message due by `deadline`.
    fn read_limit(&self, deadline: Instant) -> Instant {
        deadline.min(Instant::now() + self.stall)
    }

    /// Reads into the buffer; `Ok(0)` at end of stream. Waits without limit
    /// between messages (`deadline` is `None`), else within the limits.
    async fn fill(&mut self, deadline: Option<Instant>) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf.reserve(READ_CHUNK);
        }
        let limit = deadline.map(|d| self.read_limit(d));
        let read = self.inner.read_buf(&mut self.buf);
        match limit {
            None => read.await,
            Some(at) => timeout_at(at, read).await.map_err(|_| stalled())?,
        }
    }

    /// The next `n` bytes as a header, or `None` on a clean end of stream
    /// between messages. The header's clock starts with its first byte.
    pub(crate) async fn header(&mut self, n: usize) -> io::Result<Option<BytesMut>> {
        let mut deadline = None;
        while self.buf.len() < n {
            if !self.buf.is_empty() && deadline.is_none() {
                deadline = Some(self.deadline(n as u64));
            }
            if self.fill(deadline).await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
            }
        }
        Ok(Some(self.buf.split_to(n)))
    }

    /// Fills `dst` completely: buffered bytes first, then straight from the
    /// stream.
    pub(crate) async fn read_exact(&mut self, dst: &mut [u8]) -> io::Result<()> {
        let deadline = self.deadline(dst.len() as u64);
        let have = self.buf.len().min(dst.len());
        dst[..have].copy_from_slice(&self.buf[..have]);
        self.buf.advance(have);
        let mut at = have;
        while at < dst.len() {
            let limit = self.read_limit(deadline);
            let read = self.inner.read(&mut dst[at..]);
            let n = timeout_at(limit, read).await.map_err(|_| stalled())??;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            at += n;
        }
        Ok(())
    }

    /// Reads and drops `n` bytes without holding them.
    pub(crate) async fn discard(&mut self, mut n: u64) -> io::Result<()> {
        let deadline = self.deadline(n);
        loop {
            let have = (self.buf.len() as u64).min(n);
            self.buf.advance(have as usize);
            n -= have;
            if n == 0 {
                return Ok(());
            }
            if self.fill(Some(deadline)).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

fn stalled() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "peer stalled, or sent too slowly, in the middle of a message")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn headers_and_payloads_cross_buffer_boundaries() {
        let (mut a, b) = tokio::io::duplex(16);
        let writer = tokio::spawn(async move {
            a.write_all(b"HEADER").await.unwrap();
            a.write_all(&[7u8; 100_000]).await.unwrap();
            a.write_all(b"NEXT").await.unwrap();
        });
        let mut r = FrameReader::new(b, BytesMut::from(&b"HE"[..]), Duration::from_secs(5));
        assert_eq!(&r.header(8).await.unwrap().unwrap()[..], b"HEHEADER");
        let mut dst = vec![0u8; 100_000];
        r.read_exact(&mut dst).await.unwrap();
        assert!(dst.iter().all(|b| *b == 7));
        assert_eq!(&r.header(4).await.unwrap().unwrap()[..], b"NEXT");
        writer.await.unwrap();
        assert!(r.header(4).await.unwrap().is_none(), "clean end of stream");
    }

    #[tokio::test]
    async fn end_of_stream_inside_a_header_is_an_error() {
        let (mut a, b) = tokio::io::duplex(16);
        a.write_all(b"abc").await.unwrap();
        drop(a);
        let mut r = FrameReader::new(b, BytesMut::new(), Duration::from_secs(5));
        assert!(r.header(4).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_mid_payload_times_out() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[1, 2, 3]).await.unwrap();
        let mut r = FrameReader::new(b, BytesMut::new(), Duration::from_secs(30));
        let mut dst = [0u8; 10];
        let e = r.read_exact(&mut dst).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(a);
    }

    #[tokio::test]
    async fn discard_drops_exactly_the_payload() {
        let (mut a, b) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            a.write_all(&[0u8; 5000]).await.unwrap();
            a.write_all(b"TAIL").await.unwrap();
        });
        let mut r = FrameReader::new(b, BytesMut::new(), Duration::from_secs(5));
        r.discard(5000).await.unwrap();
        assert_eq!(&r.header(4).await.unwrap().unwrap()[..], b"TAIL");
    }

    /// Writes `chunk` bytes every `every` until `total` bytes are written
    /// or the reader goes away.
    fn dribble(mut a: tokio::io::DuplexStream, chunk: usize, every: Duration, total: usize) {
        tokio::spawn(async move {
            let mut sent = 0;
            while sent < total {
                if a.write_all(&vec![0x55; chunk]).await.is_err() {
                    return;
                }
                sent += chunk;
                tokio::time::sleep(every).await;
            }
            // Keep the stream open: only the reader's clock may end this.
            std::future::pending::<()>().await;
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_header_dribbled_one_byte_per_second_times_out_at_the_stall_limit() {
        let (a, b) = tokio::io::duplex(64);
        dribble(a, 1, Duration::from_secs(1), 28);
        let mut r = FrameReader::new(b, BytesMut::new(), Duration::from_secs(10));
        let start = Instant::now();
        let e = r.header(28).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let waited = start.elapsed();
        assert!(waited <= Duration::from_secs(11), "gave up after {waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_payload_below_the_minimum_rate_times_out_though_it_makes_progress() {
        let (a, b) = tokio::io::duplex(1 << 16);
        // 4 KiB every 5 s: progress within the 10 s stall limit, but at
        // 819 bytes/s the 1 MiB payload would take 21 minutes.
        dribble(a, 4096, Duration::from_secs(5), 1 << 20);
        let mut r = FrameReader::new(b, BytesMut::new(), Duration::from_secs(10));
        let start = Instant::now();
        let mut dst = vec![0u8; 1 << 20];
        let e = r.read_exact(&mut dst).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let limit = Duration::from_secs(10 + (1 << 20) / MIN_PAYLOAD_RATE);
        assert!(start.elapsed() <= limit + Duration::from_secs(1), "gave up after {:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_payload_above_the_minimum_rate_arrives_whole() {
        let (a, b) = tokio::io::duplex(1 << 16);
        // 96 KiB/s for 2 MiB: 22 s, longer than the stall limit.
        dribble(a, 96 << 10, Duration::from_secs(1), 2 << 20);
        let mut r = FrameReader::new(b, BytesMut::new(), Duration::from_secs(10));
        let mut dst = vec![0u8; 2 << 20];
        r.read_exact(&mut dst).await.unwrap();
        assert!(dst.iter().all(|b| *b == 0x55));
    }

    #[tokio::test(start_paused = true)]
    async fn a_discarded_payload_obeys_the_same_limits() {
        let (a, b) = tokio::io::duplex(1 << 16);
        dribble(a, 1, Duration::from_secs(1), 1 << 20);
        let mut r = FrameReader::new(b, BytesMut::new(), Duration::from_secs(10));
        let e = r.discard(1 << 20).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
