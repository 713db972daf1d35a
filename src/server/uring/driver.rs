//! The shard's ring: submits what connections queued, hands completions back.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

use super::stream::ConnIo;

/// Submission queue entries; the completion queue gets twice as many. Every
/// connection has at most one receive and one write poll in flight; more
/// than this many at once queue in `backlog` (and the kernel buffers
/// completions beyond the completion queue: `IORING_FEAT_NODROP`).
const RING_ENTRIES: u32 = 1024;

/// What an operation's completion is for: the low bits of its user data. The
/// other bits are the address of the connection's [`ConnIo`], whose strong
/// reference the operation holds until it completes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum OpTag {
    Recv = 1,
    PollOut = 2,
}

const TAG_MASK: u64 = 0b111;
/// User data of operations whose completion needs nothing (cancellations).
pub(super) const UNTRACKED: u64 = 0;
/// User data of the read of the mesh poke ([`RingWait::poke`]).
const POKE: u64 = 3;
/// User data of the poll of the control doorbell ([`RingWait::doorbell`]).
const DOORBELL: u64 = 4;

/// Waiting in the ring (issue #18, docs/perf/syscalls.md). While requests
/// keep coming, the driver waits for the next one in one `io_uring_enter`
/// on its own ring (which also submits the receives the connections
/// re-armed), instead of letting glommio's executor turn: each turn
/// re-arms glommio's preemption timers, about 2.5 `io_uring_enter` calls
/// per lone request. What only glommio would see ends such a wait early:
/// the shard's control doorbell (commands of the hub, the cluster agent,
/// scrapes) and a poke from a shard that sent a forwarded batch; glommio's
/// timers, accepts and its own I/O wait at most `max`: the driver lets
/// glommio turn at least that often, busy or not.
pub struct RingWait {
    /// Longest wait in the ring.
    pub max: Duration,
    /// The control doorbell (an eventfd glommio reads): its readiness ends
    /// a wait.
    pub doorbell: Option<OwnedFd>,
    /// Written by peers that sent this shard a batch while it waited here;
    /// the ring reads it.
    pub poke: Option<OwnedFd>,
    /// Whether a wait may start, and its end.
    pub gate: Option<Rc<dyn WaitGate>>,
}

/// Decides, just before the driver waits in its ring, whether it may.
pub trait WaitGate {
    /// Announces the wait; `false`, announcing nothing, when something is
    /// already pending that only a turn of glommio delivers.
    fn enter(&self) -> bool;
    /// The wait is over.
    fn leave(&self);
}

/// What the driver keeps of its [`RingWait`].
struct Waiting {
    max: io_uring::types::Timespec,
    max_duration: Duration,
    doorbell: Option<OwnedFd>,
    poke: Option<OwnedFd>,
    /// The 8 bytes the poke's read fills: leaked, so that they outlive the
    /// ring whatever the order of teardown.
    poke_buf: &'static mut [u8; 8],
    gate: Option<Rc<dyn WaitGate>>,
    doorbell_armed: Cell<bool>,
    poke_armed: Cell<bool>,
}

pub(super) fn user_data(io: Rc<ConnIo>, tag: OpTag) -> u64 {
    let ptr = Rc::into_raw(io) as u64;
    debug_assert_eq!(ptr & TAG_MASK, 0, "ConnIo is 8-byte aligned");
    ptr | tag as u64
}

/// Warms lookups across connections: when one turn of the driver reaps
/// receives for several connections, it hands each one's bytes to
/// [`Warm::index`] (which starts loading the index entries of their keys
/// and notes their hashes), then each hash to [`Warm::records`] (which
/// starts loading the records), before any connection task runs. The cache
/// misses of those requests then overlap instead of coming one per task.
pub trait Warm {
    /// Prefetches the index of each local key in `input`; pushes its hash
    /// and a number for [`Warm::records`] (the bytes of a record to load).
    fn index(&self, input: &[u8], hashes: &mut Vec<(u64, u32)>);
    /// Prefetches the records the index holds for `hash`.
    fn records(&self, hash: u64, span: u32);
}

/// Hashes warmed per turn at most.
const WARM_MAX: usize = 64;

/// One per shard, shared by its connections. Single-threaded: every method
/// runs on the shard's executor thread, and no `RefCell` borrow is held
/// across an await.
pub struct Driver {
    ring: RefCell<IoUring>,
    /// Entries that found the submission queue full; submitted first.
    backlog: RefCell<VecDeque<squeue::Entry>>,
    /// The driver task, while it waits for work.
    sleeper: Cell<Option<Waker>>,
    /// Something happened while the driver slept (a new entry, or the
    /// eventfd fired).
    nudged: Cell<bool>,
    /// Signalled by the kernel on each completion while the driver sleeps
    /// (notifications are disabled while it runs).
    eventfd: OwnedFd,
    warm: RefCell<Option<Rc<dyn Warm>>>,
    /// Connections whose receives completed this turn, to warm.
    warm_ios: RefCell<Vec<Rc<ConnIo>>>,
    warm_hashes: RefCell<Vec<(u64, u32)>>,
    /// Set with [`Driver::wait_in_ring`]; `None`: every wait goes through
    /// glommio.
    waiting: RefCell<Option<Waiting>>,
    /// The doorbell or a poke fired: the next wait goes through glommio.
    poked: Cell<bool>,
}

impl Driver {
    /// Sets up the ring; completions never interrupt the thread where the
    /// kernel supports it (5.19+), else plain.
    pub fn new() -> io::Result<Rc<Driver>> {
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(RING_ENTRIES * 2)
            .build(RING_ENTRIES)
            .or_else(|_| {
                IoUring::builder()
                    .setup_cqsize(RING_ENTRIES * 2)
                    .build(RING_ENTRIES)
            })?;
        // A blocking eventfd: io_uring then waits on it with a poll instead
        // of failing the read with EAGAIN.
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned here alone.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let mut ring = ring;
        ring.completion().disable_eventfd();
        Ok(Rc::new(Driver {
            ring: RefCell::new(ring),
            backlog: RefCell::new(VecDeque::new()),
            sleeper: Cell::new(None),
            nudged: Cell::new(false),
            eventfd,
            warm: RefCell::new(None),
            warm_ios: RefCell::new(Vec::with_capacity(WARM_MAX)),
            warm_hashes: RefCell::new(Vec::with_capacity(WARM_MAX)),
            waiting: RefCell::new(None),
            poked: Cell::new(false),
        }))
    }

    /// Starts the driver's tasks on the current glommio executor.
    pub fn spawn(self: &Rc<Self>) -> io::Result<()> {
        // The eventfd is read through glommio, so a sleeping driver parks the
        // shard in glommio's own wait like every other task.
        let dup = self.eventfd.try_clone()?;
        // SAFETY: `dup` is a new descriptor owned by the file from here on.
        let file = unsafe { glommio::io::BufferedFile::from_raw_fd(dup.into_raw_fd()) };
        let me = self.clone();
        glommio::spawn_local(async move {
            loop {
                if file.read_at(0, 8).await.is_err() {
                    // Cannot happen for an eventfd; avoid spinning if it does.
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                me.nudge();
            }
        })
        .detach();
        glommio::spawn_local(self.clone().run()).detach();
        Ok(())
    }

    /// Sets what warms the lookups of connections marked with
    /// [`super::UringStream::warm_lookups`].
    pub fn set_warm(&self, warm: Rc<dyn Warm>) {
        *self.warm.borrow_mut() = Some(warm);
    }

    /// Lets the driver wait in its ring while requests keep coming (see
    /// [`RingWait`]). Call before [`Driver::spawn`].
    pub fn wait_in_ring(&self, wait: RingWait) {
        if wait.max.is_zero() {
            return;
        }
        let max = io_uring::types::Timespec::new()
            .sec(wait.max.as_secs())
            .nsec(wait.max.subsec_nanos());
        *self.waiting.borrow_mut() = Some(Waiting {
            max,
            max_duration: wait.max,
            doorbell: wait.doorbell,
            poke: wait.poke,
            poke_buf: Box::leak(Box::new([0u8; 8])),
            gate: wait.gate,
            doorbell_armed: Cell::new(false),
            poke_armed: Cell::new(false),
        });
    }

    /// Queues an entry for the next submission.
    ///
    /// # Safety
    /// Whatever memory the entry points at stays valid and untouched until
    /// its completion has been reaped.
    pub(super) unsafe fn push(&self, entry: squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        let mut backlog = self.backlog.borrow_mut();
        // SAFETY: the caller's promise, passed on.
        if !backlog.is_empty() || unsafe { ring.submission().push(&entry) }.is_err() {
            backlog.push_back(entry);
        }
        drop((ring, backlog));
        self.nudge();
    }

    fn nudge(&self) {
        self.nudged.set(true);
        if let Some(waker) = self.sleeper.take() {
            waker.wake();
        }
    }

    async fn run(self: Rc<Self>) {
        let in_ring = self.waiting.borrow().is_some();
        let max_in_ring = self
            .waiting
            .borrow()
            .as_ref()
            .map_or(Duration::ZERO, |w| w.max_duration);
        // When the driver last let glommio turn: it does at least every
        // `max_in_ring`, so that timers, accepts and glommio's own I/O are
        // served while requests keep the shard in its ring.
        let mut turned = std::time::Instant::now();
        loop {
            if self.turn() {
                if in_ring {
                    // The connections woken run now (they answer and re-arm
                    // their receives), then the driver waits in the ring.
                    futures_lite::future::yield_now().await;
                }
                // Else reap until quiet: the connections woken so far run
                // once the driver waits below. This is bounded: each
                // connection has one receive in flight and re-arms it only
                // when it runs.
                continue;
            }
            if in_ring
                && !self.poked.take()
                && !glommio::executor().need_preempt()
                && turned.elapsed() < max_in_ring
                && self.wait_ring()
            {
                continue;
            }
            turned = std::time::Instant::now();
            // Nothing moved: sleep until a completion or a new entry (the
            // woken connections run now and queue their next receives).
            self.ring.borrow_mut().completion().enable_eventfd();
            if self.turn() {
                self.ring.borrow_mut().completion().disable_eventfd();
                continue;
            }
            self.nudged.set(false);
            poll_fn(|cx| {
                if self.nudged.get() {
                    Poll::Ready(())
                } else {
                    self.sleeper.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await;
            self.ring.borrow_mut().completion().disable_eventfd();
        }
    }

    /// Submits what is queued and waits in the ring for a completion, at
    /// most [`RingWait::max`]: whether one came. The doorbell's poll and
    /// the poke's read are armed first, so that either ends the wait.
    fn wait_ring(&self) -> bool {
        let waiting = self.waiting.borrow();
        let Some(w) = waiting.as_ref() else { return false };
        let mut ring = self.ring.borrow_mut();
        if let Some(fd) = w.doorbell.as_ref().filter(|_| !w.doorbell_armed.get()) {
            let poll = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), libc::POLLIN as u32)
                .build()
                .user_data(DOORBELL);
            // SAFETY: a poll points at no memory; the descriptor lives as
            // long as the driver.
            if unsafe { ring.submission().push(&poll) }.is_ok() {
                w.doorbell_armed.set(true);
            }
        }
        if let Some(fd) = w.poke.as_ref().filter(|_| !w.poke_armed.get()) {
            let read = opcode::Read::new(types::Fd(fd.as_raw_fd()), w.poke_buf.as_ptr().cast_mut(), 8)
                .build()
                .user_data(POKE);
            // SAFETY: the buffer is leaked (never freed) and only the
            // kernel writes it while the read is in flight.
            if unsafe { ring.submission().push(&read) }.is_ok() {
                w.poke_armed.set(true);
            }
        }
        if let Some(gate) = &w.gate {
            if !gate.enter() {
                return false;
            }
        }
        let args = types::SubmitArgs::new().timespec(&w.max);
        // ETIME (nothing came) and EINTR need nothing; the completions
        // that did come are reaped by the next turn.
        let _ = ring.submitter().submit_with_args(1, &args);
        if let Some(gate) = &w.gate {
            gate.leave();
        }
        let mut cq = ring.completion();
        cq.sync();
        !cq.is_empty()
    }

    /// Submits what is queued and hands out what completed. Returns whether
    /// anything was submitted or completed.
    fn turn(&self) -> bool {
        let mut ring = self.ring.borrow_mut();
        let (submitter, mut sq, mut cq) = ring.split();
        {
            let mut backlog = self.backlog.borrow_mut();
            while let Some(entry) = backlog.front() {
                // SAFETY: every entry came through `push`, whose callers
                // promised its memory stays valid.
                if unsafe { sq.push(entry) }.is_err() {
                    break;
                }
                backlog.pop_front();
            }
        }
        sq.sync();
        let mut progressed = false;
        if !sq.is_empty() || sq.taskrun() || sq.cq_overflow() {
            // EBUSY/EAGAIN (completions backed up) clear once we reap below.
            match submitter.submit() {
                Ok(n) => progressed |= n > 0,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => progressed = true,
                Err(_) => {}
            }
        }
        cq.sync();
        let warm = self.warm.borrow();
        let mut warm_ios = self.warm_ios.borrow_mut();
        for cqe in &mut cq {
            let data = cqe.user_data();
            match data {
                UNTRACKED => continue,
                POKE | DOORBELL => {
                    if let Some(w) = self.waiting.borrow().as_ref() {
                        let armed = if data == POKE {
                            &w.poke_armed
                        } else {
                            &w.doorbell_armed
                        };
                        armed.set(false);
                    }
                    self.poked.set(true);
                    progressed = true;
                    continue;
                }
                _ => {}
            }
            progressed = true;
            let tag = match data & TAG_MASK {
                1 => OpTag::Recv,
                _ => OpTag::PollOut,
            };
            // SAFETY: `data` was made by `user_data`, which leaked one strong
            // reference for this operation; it is taken back exactly once.
            let io = unsafe { Rc::from_raw((data & !TAG_MASK) as *const ConnIo) };
            io.complete(tag, cqe.result());
            if tag == OpTag::Recv && io.warms() && warm.is_some() && warm_ios.len() < WARM_MAX {
                warm_ios.push(io);
            }
        }
        drop((sq, cq));
        if let Some(warm) = warm.as_ref() {
            // One connection's lone request gains nothing from a prefetch
            // it would wait for at once.
            if warm_ios.len() >= 2 {
                let mut hashes = self.warm_hashes.borrow_mut();
                for io in warm_ios.iter() {
                    if hashes.len() < WARM_MAX {
                        warm.index(io.received(), &mut hashes);
                    }
                }
                for &(hash, span) in hashes.iter() {
                    warm.records(hash, span);
                }
                hashes.clear();
            }
        }
        warm_ios.clear();
        progressed
    }
}
