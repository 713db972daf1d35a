//! `perf-echo`: a server of the binary protocol that does nothing. It
//! answers a connection's first frame (the handshake) with an empty answer
//! (status 0) and every later frame with the same canned answer, status 0
//! and a value of `--value-size` bytes (a GET hit of that size), read as it
//! comes and written back in one `write` per read.
//!
//! It is the floor of a request's CPU cost over the same sockets that
//! `perf/compare` runs dnd-cache on (issue #18: dnd-cache's server CPU per
//! request at pipeline 1 within 1.1x of this). Its loop is the classic one
//! (memcached's, Redis's): one thread, level-triggered `epoll`, non-blocking
//! sockets, one `read` per readiness and one `write` per read: a lone
//! request costs an `epoll_wait`, a `read` and a `write`.
//!
//!     perf-echo --bind 127.0.0.1 --port 7000 [--value-size 100]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Frames larger than this close the connection (the server's own limit).
const MAX_FRAME: usize = 16 << 20;
/// Bytes read per readiness.
const READ_CHUNK: usize = 64 * 1024;
const LISTENER: u64 = u64::MAX;

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    greeted: bool,
    /// Registered for writability (an answer did not fit the socket).
    writing: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("perf-echo: {e}");
        std::process::exit(1);
    }
}

fn run() -> io::Result<()> {
    let mut bind = "127.0.0.1".to_string();
    let mut port = 7000u16;
    let mut value_size = 100usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| bad(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--bind" => bind = value()?,
            "--port" => port = value()?.parse().map_err(|_| bad("--port: a number"))?,
            "--value-size" => value_size = value()?.parse().map_err(|_| bad("--value-size: a number"))?,
            _ => {
                return Err(bad(&format!(
                    "unknown argument {arg} (--bind ADDR --port P --value-size N)"
                )))
            }
        }
    }
    let listener = TcpListener::bind((bind.as_str(), port))?;
    listener.set_nonblocking(true)?;
    let answer = canned_answer(value_size);
    // SAFETY: epoll_create1 returns a new descriptor or -1.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ep` was just created and is owned here alone.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    ctl(
        &ep,
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        libc::EPOLLIN as u32,
        LISTENER,
    )?;
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        // SAFETY: `events` holds `events.len()` entries for the kernel to fill.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in &events[..n as usize] {
            let token = ev.u64;
            if token == LISTENER {
                accept_all(&listener, &ep, &mut conns)?;
                continue;
            }
            let fd = token as usize;
            let Some(conn) = conns.get_mut(fd).and_then(Option::as_mut) else {
                continue;
            };
            if serve(conn, &ep, &mut chunk, &answer).is_err() {
                // Dropping the stream closes it, which leaves the epoll set.
                conns[fd] = None;
            }
        }
    }
}

fn bad(message: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidInput, message.to_string())
}

/// A frame of a `CacheResponse` with status 0 (omitted) and `data` (field
/// 2) of `value_size` bytes.
fn canned_answer(value_size: usize) -> Vec<u8> {
    let mut body = vec![0x12];
    let mut n = value_size as u64;
    while n >= 0x80 {
        body.push((n as u8) | 0x80);
        n >>= 7;
    }
    body.push(n as u8);
    body.resize(body.len() + value_size, b'v');
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn ctl(ep: &OwnedFd, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid epoll_event for the call's duration.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn accept_all(listener: &TcpListener, ep: &OwnedFd, conns: &mut Vec<Option<Conn>>) -> io::Result<()> {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // Out of descriptors and the like: try again at the next readiness.
            Err(_) => return Ok(()),
        };
        let fd = stream.as_raw_fd();
        // A connection that cannot be set up is dropped (closed), not fatal.
        if stream.set_nonblocking(true).is_err()
            || stream.set_nodelay(true).is_err()
            || ctl(ep, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, fd as u64).is_err()
        {
            continue;
        }
        let fd = fd as usize;
        if conns.len() <= fd {
            conns.resize_with(fd + 1, || None);
        }
        conns[fd] = Some(Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            greeted: false,
            writing: false,
        });
    }
}

/// One readiness of a connection: one read, its whole frames answered, one
/// write. An error or end of stream closes it.
fn serve(conn: &mut Conn, ep: &OwnedFd, chunk: &mut [u8], answer: &[u8]) -> io::Result<()> {
    if conn.output.is_empty() {
        match conn.stream.read(chunk) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                conn.input.extend_from_slice(&chunk[..n]);
                answer_frames(conn, answer)?;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
    }
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(n) => {
                conn.output.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    // Reads wait while answers do not fit the socket (bounded output).
    let writing = !conn.output.is_empty();
    if writing != conn.writing {
        let events = if writing { libc::EPOLLOUT } else { libc::EPOLLIN } as u32;
        let fd = conn.stream.as_raw_fd();
        ctl(ep, libc::EPOLL_CTL_MOD, fd, events, fd as u64)?;
        conn.writing = writing;
    }
    Ok(())
}

fn answer_frames(conn: &mut Conn, answer: &[u8]) -> io::Result<()> {
    let mut at = 0;
    while conn.input.len() - at >= 4 {
        let head = &conn.input[at..at + 4];
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len > MAX_FRAME {
            return Err(ErrorKind::InvalidData.into());
        }
        if conn.input.len() - at < 4 + len {
            break;
        }
        at += 4 + len;
        if conn.greeted {
            conn.output.extend_from_slice(answer);
        } else {
            conn.greeted = true;
            conn.output.extend_from_slice(&0u32.to_be_bytes());
        }
    }
    conn.input.drain(..at);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canned_answer_is_a_frame_of_status_0_and_the_value() {
        let a = canned_answer(300);
        assert_eq!(u32::from_be_bytes([a[0], a[1], a[2], a[3]]) as usize, a.len() - 4);
        assert_eq!(&a[4..7], &[0x12, 0xac, 0x02]);
        assert_eq!(a.len(), 4 + 3 + 300);
    }
}
