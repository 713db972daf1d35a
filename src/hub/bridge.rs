//! The bridge's event loop (Tokio, one thread): drain the shards' event
//! queues and publish, publish health, apply configuration and control
//! messages.

mod health;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event, Message};
use futures_lite::StreamExt;

use tracing::{info, warn};

mod incoming;

use super::envelope::{new_correlation_id, Envelope, EVENT_VERSION};
use super::item_message::ItemMessages;
use super::HubConfig;
use crate::control::ControlPlane;
use crate::metrics::BridgeCounters;
use crate::shard::events::{EventQueue, ItemEvent, ItemEventRef, ItemOp};
use crate::shard::policy::Policy;

use crate::time::unix_now_us;

/// How often the queues are drained.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(2);

/// Drains in a row with nothing to do after which the bridge sleeps until
/// a shard rings ([`crate::shard::events::EventBell`]): 200 ms idle.
const IDLE_AFTER: u32 = 100;

/// While asleep, the bridge still looks this often (shutdown, and a ring
/// lost to a race between its last look and a shard's hand-over).
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// Subjects.
pub use super::item_message::SUBJECT_ITEM_UPDATED;
pub const SUBJECT_HEALTH: &str = "cache.health.status";
pub const SUBJECT_CONFIG: &str = "config.cache.update";
pub const SUBJECT_CONTROL: &str = "control.cache.action";

pub use super::item_message::ITEM_EVENT_TTL_S;

/// A publish that cannot enter the client's buffer within this time is
/// given up and counted (the bridge must keep draining).
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(200);

/// How long a command to every shard may take before the reply says so.
const SHARD_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Most events taken from one queue per drain, so that one busy shard
/// cannot starve the others or the subscriptions.
const MAX_DRAIN_PER_QUEUE: usize = 4096;

struct Pending {
    event: ItemEvent,
    merged: u64,
}

struct Bridge {
    client: Client,
    config: HubConfig,
    control: Arc<ControlPlane>,
    queues: Vec<EventQueue>,
    /// A copy of the control plane's policy, refreshed when its version
    /// moves (reloads and config events change it).
    policy: Policy,
    /// Events held back to coalesce writes of one key, by key, and the
    /// keys in the order their windows end.
    pending: HashMap<Vec<u8>, Pending>,
    due_order: VecDeque<(Instant, Vec<u8>)>,
    /// Writes the bodies of item events (and generates correlation ids).
    messages: ItemMessages,
    last_health: Option<(Instant, u64, u64, u64)>,
}

/// Runs the bridge until `stopping` is true.
pub async fn run(
    config: HubConfig,
    policy: Policy,
    control: Arc<ControlPlane>,
    queues: Vec<EventQueue>,
    stopping: Arc<dyn Fn() -> bool + Send + Sync>,
) {
    let Some(url) = config.nats_url.clone() else {
        return;
    };
    control.bridge.enabled.store(true, Ordering::Relaxed);
    let counters = control.clone();
    let options = ConnectOptions::new()
        .name(format!("dnd-cache {}", config.node_id))
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        // Room for a whole drain of a busy shard, so that publishing does
        // not wait for the connection task between messages.
        .client_capacity(16 * 1024)
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis(50u64 << attempt.min(6)).min(Duration::from_secs(2))
        })
        .event_callback(move |event| {
            let control = counters.clone();
            async move { on_connection_event(&control.bridge, event) }
        });
    let options = crate::config::nats_url::with_credentials(options, &url);
    let client = match options.connect(crate::config::nats_url::servers(&url)).await {
        Ok(client) => client,
        Err(e) => {
            let url = crate::config::nats_url::redacted(&url);
            warn!(error = %e, url, "Message Hub bridge not started: bad NATS address");
            return;
        }
    };
    let mut config_sub = subscribe(&client, SUBJECT_CONFIG).await;
    let mut control_sub = subscribe(&client, SUBJECT_CONTROL).await;
    let mut bridge = Bridge {
        client,
        control,
        queues,
        policy,
        pending: HashMap::new(),
        due_order: VecDeque::new(),
        messages: ItemMessages::new(&config.source, &config.environment, &new_correlation_id()[..16]),
        last_health: None,
        config,
    };
    info!(
        url = crate::config::nats_url::redacted(&url),
        "Message Hub bridge started"
    );
    let mut drain = tokio::time::interval(DRAIN_INTERVAL);
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(IDLE_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let bell = bridge
        .queues
        .first()
        .map(|q| q.bell().clone())
        .unwrap_or_default();
    // Drains in a row that found nothing to do.
    let mut quiet = 0u32;
    let period = bridge.config.health_interval;
    let mut health = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = drain.tick(), if quiet < IDLE_AFTER => {
                if stopping() {
                    bridge.finish().await;
                    return;
                }
                bridge.drain(false).await;
                quiet = if bridge.settled() { quiet + 1 } else { 0 };
                if quiet >= IDLE_AFTER {
                    bell.set_idle(true);
                    // A batch handed over just before is taken now.
                    if !bridge.settled() {
                        bell.set_idle(false);
                        quiet = 0;
                    }
                }
            }
            _ = check.tick() => {
                if stopping() {
                    bridge.finish().await;
                    return;
                }
                if quiet >= IDLE_AFTER && !bridge.settled() {
                    bell.set_idle(false);
                    quiet = 0;
                }
            }
            _ = bell.rung() => {
                bell.set_idle(false);
                quiet = 0;
            }
            _ = health.tick() => bridge.publish_health().await,
            Some(msg) = next(&mut config_sub) => bridge.on_config(msg).await,
            Some(msg) = next(&mut control_sub) => bridge.on_control(msg).await,
        }
    }
}

fn on_connection_event(counters: &BridgeCounters, event: Event) {
    match event {
        Event::Connected => {
            counters.connected.store(true, Ordering::Relaxed);
            BridgeCounters::add(&counters.connects, 1);
            info!("Message Hub connected");
        }
        Event::Disconnected => {
            counters.connected.store(false, Ordering::Relaxed);
            warn!("Message Hub disconnected; reconnecting with backoff");
        }
        other => warn!(event = %other, "Message Hub"),
    }
}

async fn subscribe(client: &Client, subject: &'static str) -> Option<async_nats::Subscriber> {
    match client.subscribe(subject).await {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(subject, error = %e, "cannot subscribe");
            None
        }
    }
}

/// The next message of a subscription; never resolves without one.
async fn next(sub: &mut Option<async_nats::Subscriber>) -> Option<Message> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Waits for a publish to enter the client's buffer: at once when there is
/// room (no timer), else for at most [`PUBLISH_TIMEOUT`]. False when it
/// failed or timed out.
async fn settle<E>(publish: impl std::future::Future<Output = Result<(), E>>) -> bool {
    let mut publish = std::pin::pin!(publish);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(publish.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(result) => result.is_ok(),
        std::task::Poll::Pending => {
            matches!(tokio::time::timeout(PUBLISH_TIMEOUT, publish).await, Ok(Ok(())))
        }
    }
}

impl Bridge {
    fn connected(&self) -> bool {
        self.control.bridge.connected.load(Ordering::Relaxed)
    }

    fn counters(&self) -> &BridgeCounters {
        &self.control.bridge
    }

    fn next_correlation_id(&mut self) -> String {
        self.messages.next_correlation_id()
    }

    /// Moves events from the shards' queues to NATS. While disconnected the
    /// queues are left alone: they fill and the shards count what they drop.
    /// Nothing to publish now or later: connected, every queue empty and
    /// no event held back.
    fn settled(&self) -> bool {
        self.connected() && self.pending.is_empty() && self.queues.iter().all(|q| q.is_empty())
    }

    async fn drain(&mut self, everything: bool) {
        if !self.connected() {
            return;
        }
        self.refresh_policy();
        let window = Duration::from_millis(u64::from(self.policy.coalesce_ms));
        let now = Instant::now();
        for q in 0..self.queues.len() {
            let queue = self.queues[q].clone();
            let mut taken = 0;
            while taken < MAX_DRAIN_PER_QUEUE {
                let Some(batch) = queue.pop() else {
                    break;
                };
                taken += batch.len();
                for event in batch.iter() {
                    if window.is_zero() && self.pending.is_empty() {
                        self.publish_item(&event, 0).await;
                    } else if event.op == ItemOp::Flush {
                        self.publish_pending(true).await;
                        self.publish_item(&event, 0).await;
                    } else {
                        self.hold(&event, now + window);
                    }
                }
                queue.recycle(batch);
            }
        }
        self.publish_pending(everything || window.is_zero()).await;
    }

    /// Keeps the latest event of a key until its window ends.
    fn hold(&mut self, event: &ItemEventRef<'_>, due: Instant) {
        match self.pending.get_mut(event.key) {
            Some(p) => {
                p.event = (*event).to_owned();
                p.merged += 1;
                BridgeCounters::add(&self.counters().coalesced, 1);
            }
            None => {
                self.due_order.push_back((due, event.key.to_vec()));
                let pending = Pending {
                    event: (*event).to_owned(),
                    merged: 0,
                };
                self.pending.insert(event.key.to_vec(), pending);
            }
        }
    }

    async fn publish_pending(&mut self, all: bool) {
        if self.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        // Windows end in the order they started (a window change at
        // runtime only delays keys queued behind a longer window).
        while let Some((due, _)) = self.due_order.front() {
            if !all && *due > now {
                break;
            }
            let (_, key) = self.due_order.pop_front().expect("front exists");
            if let Some(p) = self.pending.remove(&key) {
                self.publish_item(&p.event.view(), p.merged).await;
            }
        }
    }

    async fn publish_item(&mut self, event: &ItemEventRef<'_>, coalesced: u64) {
        let message = self.messages.write(event, coalesced);
        let sent = if self.config.item_headers {
            let envelope = Envelope {
                correlation_id: message.correlation_id.to_string(),
                source: self.config.source.clone(),
                environment: self.config.environment.clone(),
                event: SUBJECT_ITEM_UPDATED,
                version: EVENT_VERSION,
                timestamp: message.timestamp.to_string(),
                ttl_s: ITEM_EVENT_TTL_S,
            };
            let publish =
                self.client
                    .publish_with_headers(SUBJECT_ITEM_UPDATED, envelope.headers(), message.body);
            settle(publish).await
        } else {
            settle(self.client.publish(SUBJECT_ITEM_UPDATED, message.body)).await
        };
        let counters = self.counters();
        if sent {
            BridgeCounters::add(&counters.published_item_events, 1);
        } else {
            BridgeCounters::add(&counters.publish_failures, 1);
        }
    }

    async fn publish(&self, subject: &'static str, envelope: &Envelope, payload: Vec<u8>) -> bool {
        let publish = self
            .client
            .publish_with_headers(subject, envelope.headers(), payload.into());
        let sent = settle(publish).await;
        if !sent {
            BridgeCounters::add(&self.counters().publish_failures, 1);
        }
        sent
    }

    /// On stop: publish what is queued and held, then flush the client.
    async fn finish(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && self.connected() && self.queues.iter().any(|q| !q.is_empty()) {
            self.drain(true).await;
        }
        self.drain(true).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.flush()).await;
    }

    fn envelope(&mut self, event: &'static str, correlation_id: Option<String>, ttl_s: u32) -> Envelope {
        Envelope {
            correlation_id: correlation_id.unwrap_or_else(|| self.next_correlation_id()),
            source: self.config.source.clone(),
            environment: self.config.environment.clone(),
            event,
            version: EVENT_VERSION,
            timestamp: super::envelope::rfc3339_ms(unix_now_us() / 1000),
            ttl_s,
        }
    }

    /// Takes the control plane's policy when it changed.
    fn refresh_policy(&mut self) {
        if self.control.policy_version() != self.policy.version {
            self.policy = self.control.current_policy();
        }
    }
}
