//! A connection's read buffer: bytes received and not yet consumed.

use futures_lite::AsyncReadExt;

/// Initial capacity; grows up to the largest frame allowed.
const INITIAL_BYTES: usize = 16 * 1024;

pub struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl InBuf {
    pub fn new() -> Self {
        InBuf {
            buf: vec![0; INITIAL_BYTES],
            start: 0,
            end: 0,
        }
    }

    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
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
        let need = want.max(buffered + 1);
        if self.buf.len() - self.start < need || self.end == self.buf.len() {
            // Move the unread bytes to the front, growing if a frame needs it.
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = buffered;
            if self.buf.len() < need {
                self.buf.resize(need.next_power_of_two(), 0);
            }
        }
        let n = reader.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Gives back memory after a large frame, once nothing is buffered.
    pub fn shrink_if_idle(&mut self) {
        if self.start == self.end && self.buf.len() > 4 * INITIAL_BYTES {
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
