//! The cross-shard transport: operations forwarded to their owner shard
//! over glommio's channel mesh (the owner decision itself is
//! [`super::route`]).
//!
//! A connection gathers everything one read produced for one owner into a
//! single [`Batch`] (the raw request frames, copied once), sends it, and
//! awaits the owner's answer frames. Forwarding one operation at a time would
//! pay a cross-core wake-up per request; a batch pays one per read.
//!
//! Two meshes are used, one for requests and one for replies, so that a
//! shard blocked sending a reply can never wait on a peer that is itself
//! blocked sending a request to it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use tracing::warn;

use crate::ops::OpKind;
use crate::protocol::binary::{decode_operation, ResponseEncoder};
use crate::shard::stats::Tally;
use crate::shard::Shard;
use crate::Status;

/// Frames of operations sent to an owner shard, and its answers.
pub struct Batch {
    origin: usize,
    slot: u32,
    generation: u32,
    now_us: u64,
    /// Answer bytes after which the owner stops running frames (it always
    /// runs one): what is left goes back in `frames`, for a later round,
    /// once the connection has written what came before (docs/memory.md).
    budget: usize,
    /// Request frames (length-prefixed), executed in order; on the way back,
    /// those the owner did not run.
    pub frames: Vec<u8>,
    /// Response frames, one per request frame, in order.
    pub replies: Vec<u8>,
    /// The owner wrote or read an encrypted value for this batch: its
    /// frames and replies held plaintext, and are wiped before reuse
    /// (docs/security.md, "Plaintext in memory").
    pub secret: bool,
}

/// Capacity of each mesh channel, in batches.
const MESH_CHANNEL_BATCHES: usize = 1024;

/// How long a connection waits for an owner shard before answering
/// CACHE_005 for the forwarded operations.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// How a shard that sends a batch wakes its peer when the peer waits in
/// its own ring rather than in glommio, which would not see the batch
/// (docs/perf/syscalls.md). One per shard.
pub struct MeshWake {
    /// The shard waits in its ring.
    waiting: AtomicBool,
    /// Batches sent to the shard, by every peer.
    sent: AtomicU64,
    /// An eventfd the shard's ring reads; `None` if none could be made
    /// (then the shard never waits in its ring).
    poke: Option<OwnedFd>,
}

impl MeshWake {
    fn new() -> MeshWake {
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        MeshWake {
            waiting: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            // SAFETY: a new descriptor, owned here alone.
            poke: (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }),
        }
    }

    /// After a batch was sent to this shard. The counter and the flag are
    /// written and read in opposite orders (SeqCst): either the shard sees
    /// the count before it waits, or the sender sees it waiting.
    fn sent_one(&self) {
        self.sent.fetch_add(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) {
            if let Some(fd) = &self.poke {
                let one = 1u64.to_ne_bytes();
                // SAFETY: writes 8 bytes from a live buffer; a full counter
                // (EAGAIN) already means "poked".
                unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
            }
        }
    }
}

/// The meshes to build before starting the shards (one clone per shard).
#[derive(Clone)]
pub struct MeshPlan {
    requests: MeshBuilder<Batch, Full>,
    replies: MeshBuilder<Batch, Full>,
    wakes: Arc<Vec<MeshWake>>,
    /// shard id → mesh peer id, filled as shards join.
    peer_of_shard: Arc<Vec<AtomicUsize>>,
    joined: Arc<std::sync::Barrier>,
}

// SAFETY: MeshBuilder is Send (glommio declares it so); the rest is Arc of
// Sync types. Each shard thread takes its own clone.
unsafe impl Send for MeshPlan {}

impl MeshPlan {
    pub fn new(shards: usize) -> Self {
        MeshPlan {
            requests: MeshBuilder::full(shards, MESH_CHANNEL_BATCHES),
            replies: MeshBuilder::full(shards, MESH_CHANNEL_BATCHES),
            peer_of_shard: Arc::new((0..shards).map(|_| AtomicUsize::new(usize::MAX)).collect()),
            wakes: Arc::new((0..shards).map(|_| MeshWake::new()).collect()),
            joined: Arc::new(std::sync::Barrier::new(shards)),
        }
    }
}

/// One waiting forward.
#[derive(Default)]
struct Slot {
    generation: u32,
    in_use: bool,
    reply: Option<Batch>,
    waker: Option<Waker>,
}

/// Forwards waiting for replies; ids are recycled so a steady state
/// allocates nothing.
#[derive(Default)]
struct ReplySlots {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

impl ReplySlots {
    fn acquire(&mut self) -> (u32, u32) {
        let idx = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            (self.slots.len() - 1) as u32
        });
        let slot = &mut self.slots[idx as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.in_use = true;
        (idx, slot.generation)
    }

    fn release(&mut self, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        slot.in_use = false;
        slot.reply = None;
        slot.waker = None;
        self.free.push(idx);
    }

    /// Delivers a reply; returns it back if nobody waits for it any more.
    fn complete(&mut self, batch: Batch) -> Option<Batch> {
        match self.slots.get_mut(batch.slot as usize) {
            Some(slot) if slot.in_use && slot.generation == batch.generation => {
                if let Some(w) = slot.waker.take() {
                    w.wake();
                }
                slot.reply = Some(batch);
                None
            }
            _ => Some(batch),
        }
    }
}

/// Routes forwarded work of one shard.
pub struct Router {
    shard: Rc<Shard>,
    requests: Option<Senders<Batch>>,
    replies: Option<Senders<Batch>>,
    peer_of_shard: Vec<usize>,
    wakes: Arc<Vec<MeshWake>>,
    /// Batches this shard's receivers took (compared with its
    /// [`MeshWake::sent`]).
    seen: Cell<u64>,
    slots: RefCell<ReplySlots>,
    pool: RefCell<Vec<Vec<u8>>>,
}

/// Why a forward failed; the forwarded operations answer CACHE_005 or
/// CACHE_011.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    Timeout,
    Unavailable,
}

impl ForwardError {
    pub fn status(self) -> Status {
        match self {
            ForwardError::Timeout => Status::Timeout,
            ForwardError::Unavailable => Status::Unavailable,
        }
    }
}

impl Router {
    /// The eventfd peers write when they send this shard a batch while it
    /// waits in its ring (a duplicate, for the ring to read).
    pub fn poke(&self) -> Option<OwnedFd> {
        self.wakes[self.shard.id()].poke.as_ref()?.try_clone().ok()
    }

    /// Joins the meshes (all shards must call this concurrently) and starts
    /// the tasks that serve forwarded batches and deliver replies.
    pub async fn join(shard: Rc<Shard>, plan: MeshPlan) -> Rc<Router> {
        let count = shard.count();
        if count == 1 {
            return Rc::new(Router {
                shard,
                requests: None,
                replies: None,
                peer_of_shard: vec![0],
                wakes: plan.wakes,
                seen: Cell::new(0),
                slots: RefCell::default(),
                pool: RefCell::default(),
            });
        }
        let (req_tx, req_rx) = plan.requests.join().await.expect("join request mesh");
        let (rep_tx, rep_rx) = plan.replies.join().await.expect("join reply mesh");
        plan.peer_of_shard[shard.id()].store(req_tx.peer_id(), Ordering::SeqCst);
        // Startup only: every shard has joined both meshes, so waiting here
        // for the others to publish their peer ids cannot deadlock.
        plan.joined.wait();
        let peer_of_shard = plan
            .peer_of_shard
            .iter()
            .map(|p| p.load(Ordering::SeqCst))
            .collect();
        let router = Rc::new(Router {
            shard,
            requests: Some(req_tx),
            replies: Some(rep_tx),
            peer_of_shard,
            wakes: plan.wakes,
            seen: Cell::new(0),
            slots: RefCell::default(),
            pool: RefCell::default(),
        });
        router.spawn_receivers(req_rx, rep_rx);
        router
    }

    fn spawn_receivers(self: &Rc<Self>, mut requests: Receivers<Batch>, mut replies: Receivers<Batch>) {
        for (_, rx) in requests.streams() {
            let router = self.clone();
            glommio::spawn_local(async move {
                while let Some(mut batch) = rx.recv().await {
                    router.seen.set(router.seen.get() + 1);
                    router.serve_batch(&mut batch).await;
                    let origin_shard = batch.origin;
                    let origin = router.peer_of_shard[origin_shard];
                    if let Some(tx) = &router.replies {
                        if tx.send_to(origin, batch).await.is_err() {
                            break;
                        }
                        router.wakes[origin_shard].sent_one();
                    }
                }
            })
            .detach();
        }
        for (_, rx) in replies.streams() {
            let router = self.clone();
            glommio::spawn_local(async move {
                while let Some(batch) = rx.recv().await {
                    router.seen.set(router.seen.get() + 1);
                    if let Some(orphan) = router.slots.borrow_mut().complete(batch) {
                        router.recycle(orphan);
                    }
                }
            })
            .detach();
        }
    }

    /// Executes a batch forwarded to this shard.
    /// A strong write's answer waits for its replica, as on the origin
    /// (see `super::strong`).
    async fn serve_batch(&self, batch: &mut Batch) {
        let mut pos = 0;
        let frames = &batch.frames;
        let mut ops = 0u64;
        while batch.replies.len() < batch.budget {
            let Some(body) = crate::frame::next_frame(frames, &mut pos) else {
                break;
            };
            ops += 1;
            let answer_at = batch.replies.len();
            // The origin decoded and validated these frames already.
            match decode_operation(body) {
                Ok(op) => match OpKind::parse(op.operation) {
                    Some(kind) => self
                        .shard
                        .execute_local(&op, kind, batch.now_us, &mut batch.replies),
                    None => ResponseEncoder::error(
                        &mut batch.replies,
                        Status::UnknownOperation,
                        "unknown operation",
                        b"",
                    ),
                },
                Err(_) => {
                    ResponseEncoder::error(&mut batch.replies, Status::Malformed, "malformed request", b"")
                }
            }
            // Taken now, before any wait, so that no other cycle of this
            // shard takes it for its own.
            batch.secret |= self.shard.take_secret();
            if self.shard.strong_pending() {
                if let Some(seq) = self.shard.end_cycle() {
                    if !self.shard.replicated(seq).await {
                        super::strong::fail_answer(&mut batch.replies, answer_at);
                    }
                }
            }
        }
        batch.frames.drain(..pos);
        self.shard.tally(Tally::Requests(ops));
        super::strong::end_cycle(&self.shard);
    }

    /// A cleared buffer for request frames.
    pub fn take_buffer(&self) -> Vec<u8> {
        self.pool.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns buffers to the pool; very large ones are dropped so one huge
    /// batch does not pin memory forever.
    pub fn give_buffer(&self, buf: Vec<u8>) {
        self.give_buffer_wiped(buf, false);
    }

    /// [`Router::give_buffer`], zeroing the whole buffer first (its spare
    /// capacity too) when `wipe`: it held the plaintext of an encrypted value.
    pub fn give_buffer_wiped(&self, mut buf: Vec<u8>, wipe: bool) {
        const KEEP_CAPACITY: usize = 1 << 20;
        const KEEP_BUFFERS: usize = 256;
        if wipe {
            zeroize::Zeroize::zeroize(&mut buf);
        }
        let mut pool = self.pool.borrow_mut();
        if buf.capacity() <= KEEP_CAPACITY && pool.len() < KEEP_BUFFERS {
            buf.clear();
            pool.push(buf);
        }
    }

    fn recycle(&self, batch: Batch) {
        self.give_buffer_wiped(batch.frames, batch.secret);
        self.give_buffer_wiped(batch.replies, batch.secret);
    }

    /// Sends `frames` (request frames) to `owner`, which runs them until
    /// its answers reach `budget` bytes. Await the answer with
    /// [`PendingForward::wait`]; start every forward of a read before
    /// waiting on any, so their round trips overlap.
    pub async fn start_forward(
        &self,
        owner: usize,
        frames: Vec<u8>,
        now_us: u64,
        budget: usize,
    ) -> Result<PendingForward<'_>, ForwardError> {
        let Some(tx) = &self.requests else {
            // Whether these frames carry an encrypted value is known to
            // their owner only: wipe them (a rare path).
            self.give_buffer_wiped(frames, true);
            return Err(ForwardError::Unavailable);
        };
        let deadline = std::time::Instant::now() + FORWARD_TIMEOUT;
        let (slot, generation) = self.slots.borrow_mut().acquire();
        let guard = SlotGuard { router: self, slot };
        let batch = Batch {
            origin: self.shard.id(),
            slot,
            generation,
            now_us,
            budget: budget.max(1),
            frames,
            replies: self.take_buffer(),
            secret: false,
        };
        self.shard.tally(Tally::ForwardedBatch);
        if tx.send_to(self.peer_of_shard[owner], batch).await.is_err() {
            // The owner's channel is closed (the server is stopping).
            return Err(ForwardError::Unavailable);
        }
        self.wakes[owner].sent_one();
        Ok(PendingForward { guard, deadline })
    }
}

/// A shard waits in its ring only when every batch sent to it was taken
/// by its receivers (else glommio must turn to deliver it).
impl crate::server::uring::WaitGate for Router {
    fn enter(&self) -> bool {
        let wake = &self.wakes[self.shard.id()];
        wake.waiting.store(true, Ordering::SeqCst);
        if wake.sent.load(Ordering::SeqCst) != self.seen.get() {
            wake.waiting.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    fn leave(&self) {
        self.wakes[self.shard.id()].waiting.store(false, Ordering::SeqCst);
    }
}

/// What an owner shard sent back for a forward.
pub struct Answered {
    /// Response frames, in request order.
    pub replies: Vec<u8>,
    /// Request frames it left for a later round (empty when it ran all).
    pub left: Vec<u8>,
    /// Both held the plaintext of an encrypted value.
    pub secret: bool,
}

/// A forwarded batch whose answer has not been awaited yet.
pub struct PendingForward<'a> {
    guard: SlotGuard<'a>,
    deadline: std::time::Instant,
}

impl PendingForward<'_> {
    /// The owner's answer; its buffers go back with
    /// [`Router::give_buffer_wiped`].
    pub async fn wait(self) -> Result<Answered, ForwardError> {
        let router = self.guard.router;
        let reply = WaitReply {
            router,
            slot: self.guard.slot,
        };
        let timeout = async {
            glommio::timer::sleep(self.deadline.saturating_duration_since(std::time::Instant::now())).await;
            None
        };
        let result = futures_lite::future::or(async { Some(reply.await) }, timeout).await;
        drop(self.guard);
        match result {
            Some(batch) => Ok(Answered {
                replies: batch.replies,
                left: batch.frames,
                secret: batch.secret,
            }),
            None => {
                warn!("forward to an owner shard timed out");
                Err(ForwardError::Timeout)
            }
        }
    }
}

/// Releases a reply slot however the forward ends (answered, timed out, or
/// the connection's future dropped).
struct SlotGuard<'a> {
    router: &'a Router,
    slot: u32,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let reply = {
            let mut slots = self.router.slots.borrow_mut();
            let reply = slots.slots[self.slot as usize].reply.take();
            slots.release(self.slot);
            reply
        };
        if let Some(batch) = reply {
            self.router.recycle(batch);
        }
    }
}

struct WaitReply<'a> {
    router: &'a Router,
    slot: u32,
}

impl Future for WaitReply<'_> {
    type Output = Batch;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Batch> {
        let mut slots = self.router.slots.borrow_mut();
        let slot = &mut slots.slots[self.slot as usize];
        match slot.reply.take() {
            Some(batch) => Poll::Ready(batch),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
