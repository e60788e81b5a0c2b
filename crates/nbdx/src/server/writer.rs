//! The single writer of a connection: replies arrive in completion order
//! from concurrently running requests and leave in batches, as vectored
//! writes, so that a reply never interleaves with another and many small
//! replies share one system call.

use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::pool::{BudgetPermit, Buf};

/// Replies gathered into one vectored write at most.
const MAX_BATCH: usize = 64;
/// Bytes gathered into one vectored write at most (beyond the first reply).
const MAX_BATCH_BYTES: usize = 4 << 20;

/// One encoded reply: header bytes (a simple reply, or one or more chunks)
/// and optional read data that follows them.
#[derive(Debug)]
pub(crate) struct Reply {
    header: BytesMut,
    data: Option<Buf>,
    permit: Option<BudgetPermit>,
    in_flight: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Reply {
    /// A reply without data.
    pub(crate) fn header(header: BytesMut) -> Self {
        Self { header, data: None, permit: None, in_flight: None }
    }

    /// A reply whose header is followed by `data`.
    pub(crate) fn with_data(header: BytesMut, data: Buf) -> Self {
        Self { header, data: Some(data), permit: None, in_flight: None }
    }

    /// Keeps the request's budget and in-flight slot until the reply is
    /// written, so memory is counted until it is really gone.
    pub(crate) fn hold(
        mut self,
        permit: Option<BudgetPermit>,
        in_flight: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Self {
        self.permit = permit;
        self.in_flight = in_flight;
        self
    }

    fn len(&self) -> usize {
        self.header.len() + self.data.as_ref().map_or(0, |d| d.len())
    }
}

/// Writes replies until the channel closes (all senders gone) or the peer
/// stops reading for longer than `stall`. The limit applies to each write
/// making progress, not to a whole batch: a slow reader of a large reply is
/// served, one that stops reading is dropped.
pub(crate) async fn run<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Reply>,
    stall: Duration,
) -> io::Result<()> {
    let mut batch: Vec<Reply> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        let mut bytes = first.len();
        batch.push(first);
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(r) => {
                    bytes += r.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        write_batch(&mut w, &batch, stall).await?;
        // Dropping the replies returns buffers and budget.
        batch.clear();
    }
    tokio::time::timeout(stall, w.flush()).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    // Ends TLS with close_notify, then the stream ("the server MUST close
    // down the TLS session (if one is running), and close the TCP session").
    tokio::time::timeout(stall, w.shutdown()).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

async fn write_batch<W: AsyncWrite + Unpin>(w: &mut W, batch: &[Reply], stall: Duration) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 2);
    for r in batch {
        slices.push(IoSlice::new(&r.header));
        if let Some(d) = &r.data {
            if !d.is_empty() {
                slices.push(IoSlice::new(d));
            }
        }
    }
    let mut rest: &mut [IoSlice<'_>] = &mut slices;
    while !rest.is_empty() {
        let n = tokio::time::timeout(stall, w.write_vectored(rest))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading replies"))??;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    // A socket has nothing to flush; TLS may hold records back until asked.
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn replies_leave_whole_and_in_the_order_they_completed() {
        let (a, mut b) = tokio::io::duplex(7);
        let (tx, rx) = mpsc::channel(8);
        let writer = tokio::spawn(run(a, rx, Duration::from_secs(5)));
        let pool = super::super::pool::BufferPool::new();
        let mut data = pool.get(3);
        data.copy_from_slice(b"xyz");
        tx.send(Reply::header(BytesMut::from(&b"one|"[..]))).await.unwrap();
        tx.send(Reply::with_data(BytesMut::from(&b"two:"[..]), data)).await.unwrap();
        tx.send(Reply::header(BytesMut::from(&b"|three"[..]))).await.unwrap();
        drop(tx);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"one|two:xyz|three");
        writer.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_replies_is_timed_out() {
        let (a, _b) = tokio::io::duplex(4);
        let (tx, rx) = mpsc::channel(8);
        tx.send(Reply::header(BytesMut::from(&[0u8; 64][..]))).await.unwrap();
        let e = run(a, rx, Duration::from_secs(10)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_of_a_large_reply_is_served_while_it_makes_progress() {
        let (a, mut b) = tokio::io::duplex(64 << 10);
        let (tx, rx) = mpsc::channel(8);
        let writer = tokio::spawn(run(a, rx, Duration::from_secs(10)));
        let pool = super::super::pool::BufferPool::new();
        let mut data = pool.get(4 << 20);
        data.fill(7);
        tx.send(Reply::with_data(BytesMut::from(&b"head"[..]), data)).await.unwrap();
        drop(tx);
        // 64 KiB every 5 s: 4 MiB take 320 s, far beyond the stall limit,
        // but every write makes progress within it.
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let n = b.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        assert_eq!(got.len(), 4 + (4 << 20));
        writer.await.unwrap().unwrap();
    }
}
