//! One pinned worker thread: an edge-triggered epoll loop (mio) over its
//! connections. Each pass reads what arrived, matches answers to the oldest
//! requests in flight, refills every connection's pipeline and writes once per
//! socket. Nothing on this path allocates or takes a lock; a timerfd wakes the
//! loop at the next open-loop send time with nanosecond precision.
//!
//! The client's CPU per request is part of what a benchmark reports, so the
//! per-request work is kept small: gets are copies of a pre-encoded request,
//! all sockets read into one buffer that stays in cache (a socket keeps bytes
//! only while an answer is cut in two), answers read together share one
//! clock read and one histogram update.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::config::LoadConfig;
use crate::cpu::now_ns;
use crate::inflight::{InflightQueue, Pending};
use crate::pacer::Pacer;
use crate::protocol::template::GetTemplate;
use crate::protocol::{Kind, Parsed};
use crate::rng::Rng;
use crate::stats::{ErrLabel, Stats};
use crate::workload::MAX_KEY_LEN;

const TIMER: Token = Token(usize::MAX - 1);
const READ_BUF: usize = 64 << 10;
/// How often a worker hands its progress counters to the main thread.
const PUBLISH_EVERY_NS: u64 = 100_000_000;
/// In open loop, a send due within this long is waited for by polling, not
/// with a timer.
const SPIN_BELOW_NS: u64 = 50_000;

/// Which keys a worker sends.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Drawn from the configured distribution.
    Random,
    /// Each key of `next..end` once, in order (prefill).
    Sequential { next: u64, end: u64 },
}

/// What one worker is asked to do.
pub struct WorkerPlan {
    /// Logical connections: each one socket, or one per shard.
    pub conns: Vec<Vec<std::net::TcpStream>>,
    /// Global index of this worker's first connection and the total count
    /// (open-loop phases interleave across all workers).
    pub first_conn: usize,
    pub total_conns: usize,
    /// CPU to pin to.
    pub cpu: Option<usize>,
    /// Generator seed.
    pub seed: u64,
    /// When the worker starts sending.
    pub start_ns: u64,
    /// Requests intended before this are warm-up: sent, not measured.
    pub measure_from_ns: u64,
    /// Requests intended at or after this are not sent (duration mode).
    pub stop_at_ns: Option<u64>,
    /// Measured requests this worker sends (request-count mode).
    pub quota: Option<u64>,
    /// Keys to send.
    pub keys: KeySource,
    /// Force every request to be a set (prefill).
    pub sets_only: bool,
    /// Open loop: total rate of all workers, requests per second.
    pub rate: Option<f64>,
    /// Key ownership when connections are shard-aware.
    pub route: crate::connect::Route,
    /// Where to publish progress counters.
    pub progress: Arc<Mutex<Stats>>,
}

/// What one worker measured.
#[derive(Debug)]
pub struct WorkerResult {
    /// Answered measured requests, plus measured requests lost without answer
    /// (in `errors`: `conn_closed`, `protocol_error`, `timeout`).
    pub stats: Stats,
    /// Measured requests sent.
    pub sent: u64,
    /// Open loop: requests that were due but never sent (the server fell
    /// behind so far that the pipeline stayed full).
    pub backlog: u64,
    /// Time of the last answer.
    pub last_answer_ns: u64,
    /// Sockets closed by the server or by an error before the run ended.
    pub sockets_lost: u64,
}

struct Socket {
    stream: TcpStream,
    conn: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// The start of an answer not yet whole. Empty almost always: then the
    /// socket reads into the worker's shared buffer; otherwise it reads
    /// here, after those bytes, until the answer is complete (a large value
    /// is read in place, not copied over at every read).
    partial: Vec<u8>,
    inflight: InflightQueue,
    alive: bool,
}

struct Conn {
    /// Index of the connection's first socket; shard `i` is `first_socket + i`.
    first_socket: usize,
    sockets: usize,
    inflight: usize,
    pacer: Option<Pacer>,
    alive: bool,
}

/// Consecutive answers with the same latency, recorded with one histogram
/// update.
struct LatencyRun {
    kind: Kind,
    latency_ns: u64,
    measured: bool,
    n: u64,
}

impl LatencyRun {
    fn flush(&mut self, interval: Option<&mut Stats>, stats: &mut Stats) {
        if self.n > 0 {
            if let Some(interval) = interval {
                interval.record_latency(self.kind, self.latency_ns, self.n);
            }
            if self.measured {
                stats.record_latency(self.kind, self.latency_ns, self.n);
            }
            self.n = 0;
        }
    }
}

/// Per-request generator state.
struct RequestGen {
    rng: Rng,
    keys: KeySource,
    sets_only: bool,
    key_buf: [u8; MAX_KEY_LEN],
    value: Vec<u8>,
    /// Gets as one copy plus the key's digits, when the codec allows it.
    get_template: Option<GetTemplate>,
}

struct Worker<'a> {
    cfg: &'a LoadConfig,
    poll: Poll,
    timer: OwnedFd,
    timer_armed_ns: u64,
    sockets: Vec<Socket>,
    conns: Vec<Conn>,
    /// Where every socket without a partial answer reads.
    rbuf: Vec<u8>,
    gen: RequestGen,
    plan_measure_from: u64,
    plan_stop_at: Option<u64>,
    quota_left: Option<u64>,
    route: crate::connect::Route,
    sending: bool,
    stats: Stats,
    /// What the progress lines show, handed over every 100 ms; `None` when
    /// no progress is printed (`--quiet`, capacity steps), which spares a
    /// second count and histogram update per answer.
    interval: Option<Stats>,
    sent: u64,
    last_answer_ns: u64,
    sockets_lost: u64,
}

/// Runs one worker to completion.
pub fn run_worker(cfg: &LoadConfig, plan: WorkerPlan) -> anyhow::Result<WorkerResult> {
    if let Some(cpu) = plan.cpu {
        crate::cpu::pin_current_thread(cpu)?;
    }
    crate::cpu::tighten_timer_slack();
    let poll = Poll::new()?;
    // SAFETY: timerfd_create has no memory preconditions; the result is checked below.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("timerfd_create");
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    let timer = unsafe { OwnedFd::from_raw_fd(fd) };
    poll.registry()
        .register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)?;

    let max_request = cfg.value_size.max + MAX_KEY_LEN + 512;
    let mut sockets = Vec::new();
    let mut conns = Vec::new();
    for (i, streams) in plan.conns.into_iter().enumerate() {
        let pacer = plan
            .rate
            .map(|r| Pacer::for_connection(plan.start_ns, r, plan.first_conn + i, plan.total_conns));
        conns.push(Conn {
            first_socket: sockets.len(),
            sockets: streams.len(),
            inflight: 0,
            pacer,
            alive: true,
        });
        for std_stream in streams {
            std_stream.set_nonblocking(true)?;
            let mut stream = TcpStream::from_std(std_stream);
            let token = Token(sockets.len());
            poll.registry()
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
            sockets.push(Socket {
                stream,
                conn: i,
                wbuf: Vec::with_capacity(max_request * cfg.pipeline),
                wpos: 0,
                partial: Vec::new(),
                inflight: InflightQueue::with_capacity(cfg.pipeline),
                alive: true,
            });
        }
    }
    let value = crate::workload::value_bytes(cfg.value_size.max);
    let mut w = Worker {
        cfg,
        poll,
        timer,
        timer_armed_ns: 0,
        sockets,
        conns,
        rbuf: vec![0; READ_BUF],
        gen: RequestGen {
            rng: Rng::new(plan.seed),
            keys: plan.keys,
            sets_only: plan.sets_only,
            key_buf: [0; MAX_KEY_LEN],
            value,
            get_template: GetTemplate::new(&cfg.codec, &cfg.keys),
        },
        plan_measure_from: plan.measure_from_ns,
        plan_stop_at: plan.stop_at_ns,
        quota_left: plan.quota,
        route: plan.route,
        sending: true,
        stats: Stats::default(),
        interval: cfg.progress.then(Stats::default),
        sent: 0,
        last_answer_ns: 0,
        sockets_lost: 0,
    };
    w.run(plan.start_ns, &plan.progress)
}

impl Worker<'_> {
    fn run(&mut self, start_ns: u64, progress: &Mutex<Stats>) -> anyhow::Result<WorkerResult> {
        let mut events = Events::with_capacity(1024);
        let mut next_publish = match self.interval {
            Some(_) => start_ns + PUBLISH_EVERY_NS,
            None => u64::MAX,
        };
        let mut drain_deadline = u64::MAX;
        let mut backlog = 0;
        while now_ns() < start_ns {
            std::thread::sleep(std::time::Duration::from_nanos(start_ns.saturating_sub(now_ns())));
        }
        loop {
            let now = now_ns();
            if self.sending && self.should_stop(now) {
                self.sending = false;
                // Requests due inside the window that never went out.
                let last_due = self.plan_stop_at.map_or(now, |t| t.saturating_sub(1)).min(now);
                backlog = self
                    .conns
                    .iter()
                    .filter_map(|c| c.pacer.as_ref())
                    .map(|p| p.backlog(last_due))
                    .sum();
                drain_deadline = now + self.cfg.drain.as_nanos() as u64;
            }
            if !self.sending && (self.total_inflight() == 0 || now >= drain_deadline) {
                break;
            }
            if now >= next_publish {
                self.publish(progress);
                next_publish = now + PUBLISH_EVERY_NS;
            }
            if self.sending {
                for c in 0..self.conns.len() {
                    self.fill(c, now);
                }
            }
            let wake = self.next_wake(next_publish, drain_deadline);
            if wake <= now + SPIN_BELOW_NS {
                // Due now or very soon: poll without sleeping. A timer this
                // short costs more than the wait (on a VM each one is a
                // trap to the hypervisor to program the APIC timer: 30% of
                // the client's CPU at 68,000 sends a second) and wakes late.
                self.poll.poll(&mut events, Some(std::time::Duration::ZERO))?;
            } else {
                self.arm_timer(wake)?;
                self.poll.poll(&mut events, None)?;
            }
            for ev in events.iter() {
                if ev.token() == TIMER {
                    self.drain_timer();
                    continue;
                }
                let si = ev.token().0;
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(si);
                }
                if ev.is_writable() && self.sockets[si].alive {
                    self.flush(si);
                }
            }
        }
        let lost_before_drain = self.sockets_lost;
        self.abandon_inflight(ErrLabel::new(b"timeout"));
        self.sockets_lost = lost_before_drain;
        self.publish(progress);
        Ok(WorkerResult {
            stats: std::mem::take(&mut self.stats),
            sent: self.sent,
            backlog,
            last_answer_ns: self.last_answer_ns,
            sockets_lost: self.sockets_lost,
        })
    }

    fn should_stop(&self, now: u64) -> bool {
        self.plan_stop_at.is_some_and(|t| now >= t)
            || self.quota_left == Some(0)
            || matches!(self.gen.keys, KeySource::Sequential { next, end } if next >= end)
            || !self.conns.iter().any(|c| c.alive)
    }

    fn total_inflight(&self) -> usize {
        self.conns.iter().map(|c| c.inflight).sum()
    }

    /// When the loop must next wake without I/O: the earliest open-loop send
    /// of a connection with pipeline room, the progress tick, the end of the
    /// window, the drain deadline.
    fn next_wake(&self, next_publish: u64, drain_deadline: u64) -> u64 {
        let mut wake = next_publish.min(drain_deadline);
        if self.sending {
            if let Some(stop) = self.plan_stop_at {
                wake = wake.min(stop);
            }
            for c in &self.conns {
                if let (Some(p), true) = (&c.pacer, c.alive && c.inflight < self.cfg.pipeline) {
                    wake = wake.min(p.next_due_ns());
                }
            }
        }
        wake
    }

    fn arm_timer(&mut self, at_ns: u64) -> anyhow::Result<()> {
        if at_ns == self.timer_armed_ns {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: the fd is our live timerfd; `spec` is a valid itimerspec and
        // the old-value pointer may be null.
        let rc = unsafe {
            libc::timerfd_settime(
                self.timer.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_settime");
        }
        self.timer_armed_ns = at_ns;
        Ok(())
    }

    fn drain_timer(&mut self) {
        let mut expirations = [0u8; 8];
        // SAFETY: reads at most 8 bytes into an 8-byte buffer from our timerfd.
        unsafe { libc::read(self.timer.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
        self.timer_armed_ns = 0;
    }

    /// Hands the progress counters gathered since the last call to the main thread.
    fn publish(&mut self, progress: &Mutex<Stats>) {
        if let Ok(mut shared) = progress.lock() {
            if let Some(interval) = &self.interval {
                shared.merge(interval);
            }
        }
        if let Some(interval) = &mut self.interval {
            interval.reset();
        }
    }

    /// Sends requests on connection `c` while its pipeline has room (and, in
    /// open loop, while requests are due), then writes them.
    fn fill(&mut self, c: usize, now: u64) {
        let conn = &mut self.conns[c];
        if !conn.alive {
            return;
        }
        let mut wrote = false;
        while conn.inflight < self.cfg.pipeline {
            let sent_ns = match &mut conn.pacer {
                None => now,
                Some(p) => match p.take_due(now) {
                    Some(t) => t,
                    None => break,
                },
            };
            // The loop notices the end of the window only at its top; a
            // refill after an answer must not send past it.
            if self.plan_stop_at.is_some_and(|stop| sent_ns >= stop) {
                break;
            }
            let measured = sent_ns >= self.plan_measure_from;
            if measured {
                match &mut self.quota_left {
                    Some(0) => break,
                    Some(q) => *q -= 1,
                    None => {}
                }
            }
            let gen = &mut self.gen;
            let index = loop {
                let index = match &mut gen.keys {
                    KeySource::Random => self.cfg.keys.pick(&mut gen.rng),
                    KeySource::Sequential { next, end } => {
                        if *next >= *end {
                            break None;
                        }
                        *next += 1;
                        *next - 1
                    }
                };
                // --node: only the keys whose slot that node is primary of.
                if self.route.node.is_none() {
                    break Some(index);
                }
                let len = self.cfg.keys.format(index, &mut gen.key_buf);
                if self.route.on_node(&gen.key_buf[..len]) {
                    break Some(index);
                }
            };
            let Some(index) = index else { break };
            let is_get = !gen.sets_only && self.cfg.ratio.is_get(&mut gen.rng);
            let template = gen.get_template.as_ref().filter(|_| is_get);
            // The key's name is needed to encode without a template and to
            // find its shard.
            let key_len = if template.is_none() || conn.sockets > 1 {
                self.cfg.keys.format(index, &mut gen.key_buf)
            } else {
                0
            };
            let key = &gen.key_buf[..key_len];
            let shard = if conn.sockets > 1 {
                self.route.socket(key, conn.sockets as u32)
            } else {
                0
            };
            let sock = &mut self.sockets[conn.first_socket + shard as usize];
            let kind = if let Some(t) = template {
                t.encode(&mut sock.wbuf, &self.cfg.keys, index);
                Kind::Get
            } else if is_get {
                self.cfg.codec.encode_get(&mut sock.wbuf, key);
                Kind::Get
            } else {
                let len = self.cfg.value_size.pick(&mut gen.rng);
                self.cfg
                    .codec
                    .encode_set(&mut sock.wbuf, key, &gen.value[..len], self.cfg.ttl);
                Kind::Set
            };
            sock.inflight.push(Pending {
                kind,
                sent_ns,
                measured,
            });
            conn.inflight += 1;
            self.sent += measured as u64;
            wrote = true;
        }
        if wrote {
            let (first, n) = (conn.first_socket, conn.sockets);
            for si in first..first + n {
                if self.sockets[si].wpos < self.sockets[si].wbuf.len() {
                    self.flush(si);
                }
            }
        }
    }

    /// Writes what socket `si` has buffered; a short write waits for the
    /// writable edge.
    fn flush(&mut self, si: usize) {
        let sock = &mut self.sockets[si];
        while sock.wpos < sock.wbuf.len() {
            match sock.stream.write(&sock.wbuf[sock.wpos..]) {
                Ok(n) => sock.wpos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.kill(si, ErrLabel::new(b"conn_closed"));
                    return;
                }
            }
        }
        sock.wbuf.clear();
        sock.wpos = 0;
    }

    /// Reads and matches every answer that arrived on socket `si`, then
    /// refills its connection.
    fn on_readable(&mut self, si: usize) {
        let mut shared = std::mem::take(&mut self.rbuf);
        self.read_answers(si, &mut shared);
        self.rbuf = shared;
        let c = self.sockets[si].conn;
        if self.sending {
            self.fill(c, now_ns());
        }
    }

    /// Reads socket `si` until it is drained, matching the answers of each
    /// read as it comes (a socket that had to be closed stops it).
    fn read_answers(&mut self, si: usize, shared: &mut [u8]) {
        loop {
            let sock = &mut self.sockets[si];
            if !sock.alive {
                return;
            }
            let mut partial = std::mem::take(&mut sock.partial);
            let kept = partial.len();
            if kept > 0 {
                // Room after the bytes kept, growing with the answer.
                let room = (kept + 1).next_power_of_two().clamp(READ_BUF, 16 * READ_BUF);
                partial.resize(kept + room, 0);
            }
            let buf: &mut [u8] = if kept > 0 { &mut partial } else { shared };
            let room = buf.len() - kept;
            let (filled, drained) = match sock.stream.read(&mut buf[kept..]) {
                Ok(0) => {
                    self.kill(si, ErrLabel::new(b"conn_closed"));
                    return;
                }
                // A short read drained the socket (epoll(7)): no need for a
                // read that only says EAGAIN.
                Ok(n) => (kept + n, n < room),
                Err(e) if e.kind() == ErrorKind::WouldBlock => (kept, true),
                Err(e) if e.kind() == ErrorKind::Interrupted => (kept, false),
                Err(_) => {
                    self.kill(si, ErrLabel::new(b"conn_closed"));
                    return;
                }
            };
            let used = if filled > kept {
                // All answers of one read share the time they were seen.
                match self.match_answers(si, &buf[..filled], now_ns()) {
                    Some(used) => used,
                    None => return,
                }
            } else {
                0
            };
            // What is left is the start of an answer: the socket keeps it.
            if kept > 0 {
                partial.truncate(filled);
                partial.drain(..used);
            } else {
                partial.extend_from_slice(&shared[used..filled]);
            }
            self.sockets[si].partial = partial;
            if drained {
                return;
            }
        }
    }

    /// Parses whole answers off the front of `buf` (read from socket `si`)
    /// and returns how many bytes they took; `None` when the socket had to
    /// be closed.
    fn match_answers(&mut self, si: usize, buf: &[u8], now: u64) -> Option<usize> {
        let sock = &mut self.sockets[si];
        // Answers to requests sent together arrive together with the same
        // latency: one histogram update per run of equal latencies.
        let mut run = LatencyRun {
            kind: Kind::Get,
            latency_ns: 0,
            measured: false,
            n: 0,
        };
        let mut used = 0;
        let ok = loop {
            let Some(front) = sock.inflight.front() else {
                if used < buf.len() {
                    eprintln!("loadgen: server sent bytes nobody asked for; closing the connection");
                    break false;
                }
                break true;
            };
            match self.cfg.codec.parse(&buf[used..], front.kind) {
                Ok(Parsed::Incomplete) => break true,
                Ok(Parsed::Done { len, outcome }) => {
                    used += len;
                    sock.inflight.pop_front();
                    self.conns[sock.conn].inflight -= 1;
                    let latency_ns = now.saturating_sub(front.sent_ns);
                    if let Some(interval) = &mut self.interval {
                        interval.count(front.kind, outcome);
                    }
                    if front.measured {
                        self.stats.count(front.kind, outcome);
                        self.last_answer_ns = now;
                    }
                    let same =
                        (run.kind, run.latency_ns, run.measured) == (front.kind, latency_ns, front.measured);
                    if run.n > 0 && same {
                        run.n += 1;
                    } else {
                        run.flush(self.interval.as_mut(), &mut self.stats);
                        run = LatencyRun {
                            kind: front.kind,
                            latency_ns,
                            measured: front.measured,
                            n: 1,
                        };
                    }
                }
                Err(e) => {
                    eprintln!("loadgen: {e}; closing the connection");
                    sock.inflight.pop_front();
                    self.conns[sock.conn].inflight -= 1;
                    let label = ErrLabel::new(b"protocol_error");
                    if let Some(interval) = &mut self.interval {
                        interval.errors.add(label, 1);
                    }
                    if front.measured {
                        self.stats.errors.add(label, 1);
                    }
                    break false;
                }
            }
        };
        run.flush(self.interval.as_mut(), &mut self.stats);
        if !ok {
            // Requests still in flight behind the bad answer are lost with it.
            self.kill(si, ErrLabel::new(b"conn_closed"));
            return None;
        }
        Some(used)
    }

    /// Closes socket `si`: its requests in flight count as errors `label`,
    /// and its connection sends nothing more.
    fn kill(&mut self, si: usize, label: ErrLabel) {
        let sock = &mut self.sockets[si];
        if !sock.alive {
            return;
        }
        sock.alive = false;
        self.sockets_lost += 1;
        let _ = self.poll.registry().deregister(&mut sock.stream);
        let _ = sock.stream.shutdown(std::net::Shutdown::Both);
        let conn = &mut self.conns[sock.conn];
        conn.alive = false;
        for (p, n) in sock.inflight.drain_runs() {
            conn.inflight -= n as usize;
            if let Some(interval) = &mut self.interval {
                interval.errors.add(label, n as u64);
            }
            if p.measured {
                self.stats.errors.add(label, n as u64);
            }
        }
    }

    /// Counts every request still unanswered as an error `label`.
    fn abandon_inflight(&mut self, label: ErrLabel) {
        for si in 0..self.sockets.len() {
            if self.sockets[si].alive && !self.sockets[si].inflight.is_empty() {
                self.kill(si, label);
            }
        }
    }
}
