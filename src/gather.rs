//! Gathered writes: many buffers out in one `writev`, without copying the
//! large ones.
//!
//! Both directions of the proxy coalesce what is ready into one write (many
//! clients' commands to Redis; many replies to one client). Small pieces are
//! copied together, which is cheaper than an I/O vector entry each; pieces of
//! [`COPY_BELOW`] bytes or more (large values) are written from their own
//! buffers, so a 10 KB value is not copied once more on its way through.

use std::io::IoSlice;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Pieces shorter than this are copied into a shared buffer.
const COPY_BELOW: usize = 2048;
/// Most I/O vector entries passed to one `writev` (Linux allows 1024).
const MAX_SLICES: usize = 64;

/// Buffers queued for one write.
#[derive(Debug, Default)]
pub struct Gather {
    chunks: Vec<Bytes>,
    small: BytesMut,
    len: usize,
}

impl Gather {
    /// Queues `bytes` after everything queued before.
    pub fn push(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        if bytes.len() < COPY_BELOW {
            self.small.extend_from_slice(&bytes);
        } else {
            self.seal_small();
            self.chunks.push(bytes);
        }
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn seal_small(&mut self) {
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
    }

    /// Writes everything queued, in order, and empties the queue. Flushes
    /// too: a TLS stream holds encrypted bytes back until then (for plain
    /// TCP the flush does nothing).
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, write: &mut W) -> std::io::Result<()> {
        self.seal_small();
        let result = write_chunks(write, &self.chunks).await;
        self.chunks.clear();
        self.len = 0;
        result?;
        write.flush().await
    }
}

async fn write_chunks<W: AsyncWrite + Unpin>(write: &mut W, chunks: &[Bytes]) -> std::io::Result<()> {
    if let [only] = chunks {
        return write.write_all(only).await;
    }
    let (mut index, mut offset) = (0, 0);
    while index < chunks.len() {
        let slices: Vec<IoSlice<'_>> = chunks[index..]
            .iter()
            .take(MAX_SLICES)
            .enumerate()
            .map(|(i, chunk)| IoSlice::new(if i == 0 { &chunk[offset..] } else { chunk }))
            .collect();
        let mut written = write.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while index < chunks.len() && written >= chunks[index].len() - offset {
            written -= chunks[index].len() - offset;
            index += 1;
            offset = 0;
        }
        offset += written;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `step` bytes per call, to exercise
    /// partial vectored writes.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let mut room = self.step;
            let mut written = 0;
            for buf in bufs {
                let n = buf.len().min(room);
                self.out.extend_from_slice(&buf[..n]);
                written += n;
                room -= n;
                if room == 0 {
                    break;
                }
            }
            std::task::Poll::Ready(Ok(written))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_and_large_pieces_arrive_in_order_through_partial_writes() {
        let pieces: Vec<Bytes> = (0..200)
            .map(|i| {
                let len = if i % 7 == 0 { 5000 + i } else { 1 + i % 30 };
                Bytes::from(vec![(i % 251) as u8; len])
            })
            .collect();
        let expected: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        for step in [1, 3, 1000, 4096, 1 << 20] {
            let mut gather = Gather::default();
            for piece in &pieces {
                gather.push(piece.clone());
            }
            assert_eq!(gather.len(), expected.len());
            let mut sink = Trickle { out: Vec::new(), step };
            gather.write_to(&mut sink).await.unwrap();
            assert!(sink.out == expected, "step {step}");
            assert!(gather.is_empty());
        }
    }
}
