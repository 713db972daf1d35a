//! A client socket read through the shard's ring and written with `send(2)`.

use std::cell::{Cell, UnsafeCell};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite, Future};
use io_uring::{opcode, types};

use super::driver::{user_data, Driver, OpTag, UNTRACKED};

/// Bytes one receive through the ring can bring; allocated on the first
/// read. Small, because every open connection holds one: it fits a
/// pipelined batch of small requests, and when a receive fills it the next
/// read goes straight into the caller's (growing) buffer instead.
const RECV_BUF_BYTES: usize = 4 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadState {
    /// No receive in flight and nothing buffered.
    Idle,
    InFlight,
    /// `buf[start..end]` arrived and is not yet handed out.
    Ready {
        start: u32,
        end: u32,
    },
    Eof,
    Failed(i32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteState {
    Writable,
    /// The socket's send buffer was full: a `POLLOUT` poll is in flight.
    Waiting,
}

/// What a connection shares with the driver. Operations in flight hold a
/// strong reference, so the socket and the receive buffer outlive them.
pub(crate) struct ConnIo {
    fd: OwnedFd,
    /// The kernel writes here while a receive is in flight; read only when
    /// `read` is `Ready`.
    buf: UnsafeCell<Box<[u8]>>,
    read: Cell<ReadState>,
    /// The last receive filled the buffer: more is likely queued, so the
    /// next read tries the socket directly first.
    filled: Cell<bool>,
    read_waker: Cell<Option<Waker>>,
    write: Cell<WriteState>,
    write_waker: Cell<Option<Waker>>,
    /// Its receives carry binary protocol frames in the clear: the driver
    /// may warm their lookups (see [`super::Warm`]).
    warm: Cell<bool>,
}

impl ConnIo {
    /// Whether the driver should warm what this connection received.
    pub(super) fn warms(&self) -> bool {
        self.warm.get()
    }

    /// What the last receive brought and nobody has taken yet.
    pub(super) fn received(&self) -> &[u8] {
        match self.read.get() {
            // SAFETY: no receive is in flight while the state is `Ready`,
            // and the buffer is only replaced while it is `Idle`.
            ReadState::Ready { start, end } => unsafe { &(&*self.buf.get())[start as usize..end as usize] },
            _ => &[],
        }
    }

    /// Called by the driver with an operation's result.
    pub(super) fn complete(&self, tag: OpTag, result: i32) {
        match tag {
            OpTag::Recv => {
                let state = match result {
                    n if n > 0 => {
                        // SAFETY: the receive is over; nothing else holds the buffer.
                        let cap = unsafe { (&*self.buf.get()).len() };
                        self.filled.set(n as usize == cap);
                        ReadState::Ready {
                            start: 0,
                            end: n as u32,
                        }
                    }
                    0 => ReadState::Eof,
                    e => ReadState::Failed(-e),
                };
                self.read.set(state);
                if let Some(waker) = self.read_waker.take() {
                    waker.wake();
                }
            }
            OpTag::PollOut => {
                // Writable, or an error the next send reports.
                self.write.set(WriteState::Writable);
                if let Some(waker) = self.write_waker.take() {
                    waker.wake();
                }
            }
        }
    }
}

/// A connected TCP socket served by one shard.
pub struct UringStream {
    io: Rc<ConnIo>,
    driver: Rc<Driver>,
    /// A write that makes no progress for this long fails with `TimedOut`.
    write_stall: Duration,
    stall: Option<glommio::timer::Timer>,
}

impl UringStream {
    /// Takes over an accepted socket (non-blocking, `TCP_NODELAY` set by
    /// the caller or here).
    pub fn new(driver: &Rc<Driver>, fd: OwnedFd, write_stall: Duration) -> Self {
        set_nodelay(&fd);
        UringStream {
            io: Rc::new(ConnIo {
                fd,
                buf: UnsafeCell::new(Box::default()),
                read: Cell::new(ReadState::Idle),
                filled: Cell::new(false),
                read_waker: Cell::new(None),
                write: Cell::new(WriteState::Writable),
                write_waker: Cell::new(None),
                warm: Cell::new(false),
            }),
            driver: driver.clone(),
            write_stall,
            stall: None,
        }
    }

    /// Takes over a socket accepted by glommio.
    pub fn from_glommio(
        driver: &Rc<Driver>,
        stream: glommio::net::TcpStream,
        write_stall: Duration,
    ) -> io::Result<Self> {
        let fd = stream.as_raw_fd();
        // SAFETY: `fd` is open for as long as `stream` lives; the duplicate
        // is ours, and dropping glommio's stream closes only its own copy.
        let dup = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        drop(stream);
        Ok(UringStream::new(driver, dup, write_stall))
    }

    /// Marks the connection as one whose receives are plain binary protocol
    /// frames, so the driver warms their lookups.
    pub fn warm_lookups(&self) {
        self.io.warm.set(true);
    }

    fn fd(&self) -> i32 {
        self.io.fd.as_raw_fd()
    }

    /// Copies buffered bytes out, if any.
    fn take_buffered(&self, out: &mut [u8]) -> Option<io::Result<usize>> {
        match self.io.read.get() {
            ReadState::Ready { start, end } => {
                let (start, end) = (start as usize, end as usize);
                let n = (end - start).min(out.len());
                // SAFETY: no receive is in flight while the state is `Ready`.
                let buf = unsafe { &mut *self.io.buf.get() };
                out[..n].copy_from_slice(&buf[start..start + n]);
                // Nothing received stays behind in the receive buffer: it
                // may be the plaintext of a value to encrypt (issue 19).
                zeroize::Zeroize::zeroize(&mut buf[start..start + n]);
                self.io.read.set(if start + n == end {
                    ReadState::Idle
                } else {
                    ReadState::Ready {
                        start: (start + n) as u32,
                        end: end as u32,
                    }
                });
                Some(Ok(n))
            }
            ReadState::Eof => Some(Ok(0)),
            ReadState::Failed(errno) => Some(Err(io::Error::from_raw_os_error(errno))),
            ReadState::Idle | ReadState::InFlight => None,
        }
    }

    fn start_recv(&self) {
        // SAFETY: no receive is in flight (state `Idle`), so the buffer is ours.
        let buf = unsafe { &mut *self.io.buf.get() };
        if buf.is_empty() {
            *buf = vec![0u8; RECV_BUF_BYTES].into_boxed_slice();
        }
        let entry = opcode::Recv::new(types::Fd(self.fd()), buf.as_mut_ptr(), buf.len() as u32)
            .build()
            .user_data(user_data(self.io.clone(), OpTag::Recv));
        self.io.read.set(ReadState::InFlight);
        // SAFETY: the entry holds a strong reference to `io`, which owns the
        // buffer and the socket, until its completion is reaped.
        unsafe { self.driver.push(entry) };
    }

    fn cancel(&self, tag: OpTag) {
        let target = Rc::as_ptr(&self.io) as u64 | tag as u64;
        let entry = opcode::AsyncCancel::new(target).build().user_data(UNTRACKED);
        // SAFETY: a cancellation points at no memory.
        unsafe { self.driver.push(entry) };
    }
}

impl AsyncRead for UringStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(result) = this.take_buffered(out) {
            return Poll::Ready(result);
        }
        if this.io.read.get() == ReadState::Idle {
            if this.io.filled.replace(false) {
                // A full buffer last time: the rest is probably queued already.
                if let Some(result) = recv_now(this.fd(), out) {
                    // Filled again: keep reading directly.
                    this.io.filled.set(matches!(result, Ok(n) if n == out.len()));
                    return Poll::Ready(result);
                }
            }
            this.start_recv();
        }
        this.io.read_waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

impl AsyncWrite for UringStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.io.write.get() == WriteState::Writable {
            loop {
                // SAFETY: `data` is valid for its length; the call does not keep it.
                let n = unsafe {
                    libc::send(
                        this.fd(),
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if n >= 0 {
                    this.stall = None;
                    return Poll::Ready(Ok(n as usize));
                }
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    _ => return Poll::Ready(Err(err)),
                }
            }
            let entry = opcode::PollAdd::new(types::Fd(this.fd()), libc::POLLOUT as u32)
                .build()
                .user_data(user_data(this.io.clone(), OpTag::PollOut));
            this.io.write.set(WriteState::Waiting);
            // SAFETY: a poll points at no memory; the entry holds `io`.
            unsafe { this.driver.push(entry) };
        }
        this.io.write_waker.set(Some(cx.waker().clone()));
        let stall = this.write_stall;
        let timer = this
            .stall
            .get_or_insert_with(|| glommio::timer::Timer::new(stall));
        if Pin::new(timer).poll(cx).is_ready() {
            this.stall = None;
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "write stalled")));
        }
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: shutdown(2) on our own socket.
        let rc = unsafe { libc::shutdown(self.fd(), libc::SHUT_WR) };
        Poll::Ready(if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        })
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        // Operations in flight keep the socket open until they end: cancel
        // them so it closes now. (A receive still queued is submitted before
        // its cancellation, so it never runs on a reused descriptor.)
        if self.io.read.get() == ReadState::InFlight {
            self.cancel(OpTag::Recv);
        }
        if self.io.write.get() == WriteState::Waiting {
            self.cancel(OpTag::PollOut);
        }
    }
}

/// One non-blocking `recv(2)`; `None` when nothing is there yet.
fn recv_now(fd: i32, out: &mut [u8]) -> Option<io::Result<usize>> {
    loop {
        // SAFETY: `out` is valid for writes of its length.
        let n = unsafe { libc::recv(fd, out.as_mut_ptr().cast(), out.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Some(Ok(n as usize));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return None,
            _ => return Some(Err(err)),
        }
    }
}

fn set_nodelay(fd: &OwnedFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt(2) with a valid pointer and length; failure (not a
    // TCP socket) is harmless.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
