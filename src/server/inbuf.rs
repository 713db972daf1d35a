//! A connection's read buffer: bytes received and not yet consumed.

use futures_lite::AsyncReadExt;

/// Initial capacity; grows up to the largest frame allowed. Small, because
/// every open connection holds one: requests are tens to hundreds of bytes,
/// and a larger frame grows the buffer while it is read.
const INITIAL_BYTES: usize = 4 * 1024;
/// An idle buffer larger than this goes back to `INITIAL_BYTES`. A read
/// that fills the buffer's free space doubles it up to this size: a client
/// that pipelines keeps a buffer that takes its batches in one read.
const SHRINK_ABOVE: usize = 64 * 1024;

pub struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last read filled all the free space.
    filled: bool,
}

impl InBuf {
    pub fn new() -> Self {
        InBuf {
            buf: vec![0; INITIAL_BYTES],
            start: 0,
            end: 0,
            filled: false,
        }
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Zeroes the first `n` buffered bytes (about to be consumed): they
    /// held the plaintext of an encrypted value.
    pub fn wipe_front(&mut self, n: usize) {
        let end = (self.start + n).min(self.end);
        zeroize::Zeroize::zeroize(&mut self.buf[self.start..end]);
    }

    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `reader`, making room for at least `want` buffered
    /// bytes in total (a whole frame whose size is known). Returns the bytes
    /// read; 0 at end of stream.
    pub async fn read_from<R: futures_lite::AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        want: usize,
    ) -> std::io::Result<usize> {
        let buffered = self.end - self.start;
        let mut need = want.max(buffered + 1);
        if self.filled && self.buf.len() < SHRINK_ABOVE {
            need = need.max(self.buf.len() * 2);
        }
        if self.buf.len() - self.start < need || self.end == self.buf.len() {
            // Move the unread bytes to the front, growing if a frame needs it.
            self.buf.copy_within(self.start..self.end, 0);
            // The moved bytes' old place keeps no copy of them (they may be
            // the plaintext of a value to encrypt).
            let stale = self.start.max(buffered)..self.end;
            zeroize::Zeroize::zeroize(&mut self.buf[stale]);
            self.start = 0;
            self.end = buffered;
            if self.buf.len() < need {
                // A new buffer, the old one zeroed: it may have held the
                // plaintext of an encrypted value (a plain resize would
                // free it as it is).
                let mut grown = vec![0; need.next_power_of_two()];
                grown[..buffered].copy_from_slice(&self.buf[..buffered]);
                zeroize::Zeroize::zeroize(&mut self.buf);
                self.buf = grown;
            }
        }
        let room = self.buf.len() - self.end;
        let n = reader.read(&mut self.buf[self.end..]).await?;
        self.filled = n == room;
        self.end += n;
        Ok(n)
    }

    /// Gives back memory after a large frame, once nothing is buffered.
    pub fn shrink_if_idle(&mut self) {
        if self.start == self.end && self.buf.len() > SHRINK_ABOVE {
            zeroize::Zeroize::zeroize(&mut self.buf);
            self.buf = vec![0; INITIAL_BYTES];
            self.start = 0;
            self.end = 0;
        }
    }
}

impl Default for InBuf {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(buf: &mut InBuf, reader: &mut futures_lite::io::Cursor<Vec<u8>>) -> usize {
        futures_lite::future::block_on(buf.read_from(reader, 0)).unwrap()
    }

    #[test]
    fn reads_that_fill_the_buffer_double_it_up_to_the_cap() {
        let mut reader = futures_lite::io::Cursor::new(vec![7u8; 1 << 20]);
        let mut buf = InBuf::new();
        let mut sizes = Vec::new();
        for _ in 0..8 {
            let n = read(&mut buf, &mut reader);
            sizes.push(n);
            buf.consume(n);
        }
        assert_eq!(sizes[0], INITIAL_BYTES);
        assert_eq!(
            sizes[1],
            2 * INITIAL_BYTES,
            "the full first read doubles the buffer"
        );
        assert_eq!(*sizes.last().unwrap(), SHRINK_ABOVE, "growth stops at the cap");
    }

    #[test]
    fn small_reads_keep_the_initial_size_and_a_large_idle_buffer_shrinks() {
        let mut reader = futures_lite::io::Cursor::new(vec![1u8; 100]);
        let mut buf = InBuf::new();
        assert_eq!(read(&mut buf, &mut reader), 100);
        buf.consume(100);
        assert_eq!(buf.buf.len(), INITIAL_BYTES);
        // A frame larger than the cap grows the buffer; once consumed, it shrinks.
        let mut big = futures_lite::io::Cursor::new(vec![2u8; 200_000]);
        let n = futures_lite::future::block_on(buf.read_from(&mut big, 200_000)).unwrap();
        assert_eq!(n, 200_000);
        buf.consume(n);
        buf.shrink_if_idle();
        assert_eq!(buf.buf.len(), INITIAL_BYTES);
    }
}
