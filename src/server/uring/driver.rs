//! The shard's ring: submits what connections queued, hands completions back.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use io_uring::{squeue, IoUring};

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
    /// Prefetches the index of each local key in `input`; pushes its hash.
    fn index(&self, input: &[u8], hashes: &mut Vec<u64>);
    /// Prefetches the records the index holds for `hash`.
    fn records(&self, hash: u64);
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
    warm_hashes: RefCell<Vec<u64>>,
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
        loop {
            if self.turn() {
                // Reap until quiet: the connections woken so far run once
                // the driver waits below. This is bounded: each connection
                // has one receive in flight and re-arms it only when it runs.
                continue;
            }
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
            if data == UNTRACKED {
                continue;
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
                for &hash in hashes.iter() {
                    warm.records(hash);
                }
                hashes.clear();
            }
        }
        warm_ios.clear();
        progressed
    }
}
