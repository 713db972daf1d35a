//! The bridge's incoming messages (ICD 3.2): `config.cache.update` and
//! `control.cache.action`, their envelope checked (ICD 1.3), and the replies
//! to them, with the envelope and the ICD 8.2 error body.

use std::time::{Duration, Instant};

use async_nats::Message;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Bridge, PUBLISH_TIMEOUT, SHARD_REPLY_TIMEOUT, SUBJECT_CONFIG, SUBJECT_CONTROL};
use crate::hub::envelope::Incoming;
use crate::metrics::BridgeCounters;
use crate::shard::events::{ItemEvent, ItemOp};
use crate::shard::ShardCommand;
use crate::time::unix_now_us;
use crate::Status;

/// The `event` of replies to requests on [`SUBJECT_CONFIG`] and
/// [`SUBJECT_CONTROL`].
pub const EVENT_CONFIG_REPLY: &str = "config.cache.update.reply";
pub const EVENT_CONTROL_REPLY: &str = "control.cache.action.reply";

/// Seconds after its timestamp when a reply is stale.
pub const REPLY_TTL_S: u32 = 60;

/// Why an incoming message was refused or failed: its ICD code, a reason
/// for people, and the key it named (ICD 8.2 `details.key`).
struct Failure {
    status: Status,
    message: String,
    key: Option<String>,
}

impl Failure {
    fn new(status: Status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
            key: None,
        }
    }

    fn malformed(message: impl Into<String>) -> Failure {
        Failure::new(Status::Malformed, message)
    }
}

impl Bridge {
    /// Reads an incoming message: its envelope (checked as ICD 1.3 asks:
    /// all five fields, a supported major version, not past its TTL) and
    /// its `data` object. The envelope comes back even when the message is
    /// refused, so that the reply can carry its correlation id.
    fn parse(&self, msg: &Message, expected: &str) -> (Incoming, Result<Value, Failure>) {
        let body: Value = match serde_json::from_slice(&msg.payload) {
            Ok(body) => body,
            Err(e) => {
                return (
                    Incoming::default(),
                    Err(Failure::malformed(format!("payload is not JSON: {e}"))),
                )
            }
        };
        let incoming = Incoming::read(&body, msg.headers.as_ref());
        let checked = (|| {
            if let Some(event) = &incoming.event {
                if event != expected {
                    return Err(Failure::malformed(format!("event {event:?} sent on {expected}")));
                }
            }
            incoming
                .check(unix_now_us() / 1000)
                .map_err(|(refusal, message)| {
                    Failure::malformed(format!("refused ({}): {message}", refusal.reason()))
                })?;
            body.get("data")
                .filter(|d| d.is_object())
                .cloned()
                .ok_or_else(|| Failure::malformed("data must be an object"))
        })();
        (incoming, checked)
    }

    /// Counts and logs a message that was refused or failed.
    fn refuse(&self, subject: &str, failure: &Failure) {
        BridgeCounters::add(&self.counters().invalid_messages, 1);
        warn!(subject, code = failure.status.code(), reason = %failure.message, "Message Hub message refused");
    }

    /// Answers a request (a message with a reply subject) with the ICD 1.3
    /// envelope, as JSON fields and headers, and either `data` or the ICD
    /// 8.2 error object.
    async fn reply(
        &mut self,
        msg: &Message,
        event: &'static str,
        incoming: &Incoming,
        operation: &str,
        result: Result<Value, Failure>,
    ) {
        let Some(subject) = msg.reply.clone() else {
            return;
        };
        let envelope = self.envelope(event, incoming.correlation_id.clone(), REPLY_TTL_S);
        let body = match result {
            Ok(data) => envelope.reply("ok", "data", data),
            Err(failure) => {
                let key = failure.key.as_deref().map(str::as_bytes);
                let body = crate::protocol::rest::response::error_body(
                    failure.status,
                    &failure.message,
                    key,
                    operation,
                    unix_now_us() / 1000,
                );
                let mut error: Value = serde_json::from_slice(&body).expect("error bodies are JSON");
                envelope.reply("error", "error", error["error"].take())
            }
        };
        let publish = self
            .client
            .publish_with_headers(subject, envelope.headers(), body.into());
        let _ = tokio::time::timeout(PUBLISH_TIMEOUT, publish).await;
    }

    pub(super) async fn on_config(&mut self, msg: Message) {
        BridgeCounters::add(&self.counters().received_config, 1);
        let (incoming, parsed) = self.parse(&msg, SUBJECT_CONFIG);
        let operation = parsed
            .as_ref()
            .ok()
            .and_then(|data| data.get("policy"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let result = match parsed {
            Ok(data) => self
                .control
                .update_policy(|next| next.apply(&data))
                .map_err(Failure::malformed),
            Err(e) => Err(e),
        };
        let result = match result {
            Ok((summary, waits)) => {
                info!(summary, correlation_id = ?incoming.correlation_id, source = ?incoming.source, "policy changed");
                let applied = wait_applied(waits).await;
                self.refresh_policy();
                Ok(json!({"applied": summary, "shards": applied, "policy": self.policy}))
            }
            Err(failure) => {
                self.refuse(SUBJECT_CONFIG, &failure);
                Err(failure)
            }
        };
        self.reply(&msg, EVENT_CONFIG_REPLY, &incoming, &operation, result)
            .await;
    }

    async fn send_to_shard(&self, shard: usize, mut command: ShardCommand) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match self.control.send(shard, command) {
                Ok(()) => return true,
                Err(back) if Instant::now() < deadline => {
                    command = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(_) => return false,
            }
        }
    }

    /// Runs a command on every shard and adds up their answers; `None`
    /// when a shard did not answer in time.
    async fn on_every_shard(&self, make: impl Fn(oneshot::Sender<u64>) -> ShardCommand) -> Option<u64> {
        let mut waits = Vec::new();
        for shard in 0..self.control.shard_count() {
            let (tx, rx) = oneshot::channel();
            if !self.send_to_shard(shard, make(tx)).await {
                return None;
            }
            waits.push(rx);
        }
        let mut total = 0;
        for rx in waits {
            total += tokio::time::timeout(SHARD_REPLY_TIMEOUT, rx).await.ok()?.ok()?;
        }
        Some(total)
    }

    pub(super) async fn on_control(&mut self, msg: Message) {
        BridgeCounters::add(&self.counters().received_control, 1);
        let (incoming, parsed) = self.parse(&msg, SUBJECT_CONTROL);
        let data = match parsed {
            Ok(data) => data,
            Err(failure) => {
                self.refuse(SUBJECT_CONTROL, &failure);
                return self
                    .reply(&msg, EVENT_CONTROL_REPLY, &incoming, "", Err(failure))
                    .await;
            }
        };
        let action = data.get("action").and_then(Value::as_str).unwrap_or("");
        let target = data.get("target").and_then(Value::as_str).unwrap_or("");
        let result = match action {
            "flush" => self
                .on_every_shard(ShardCommand::Flush)
                .await
                .map(|n| (json!({"flushed": n}), Some((ItemOp::Flush, "*"))))
                .ok_or_else(|| Failure::new(Status::Timeout, "a shard did not answer")),
            "invalidate" => self.invalidate(&data, target).await,
            "reload" => match self.control.reloader.get() {
                Some(reloader) => {
                    let report = reloader.reload().await;
                    self.refresh_policy();
                    Ok((serde_json::to_value(&report).unwrap_or_default(), None))
                }
                None => Err(Failure::new(
                    Status::Unavailable,
                    "this server has no configuration to reload",
                )),
            },
            "" => Err(Failure::malformed(
                "data.action must be flush, invalidate or reload",
            )),
            other => Err(Failure::new(
                Status::UnknownOperation,
                format!("unknown action {other:?}: flush, invalidate or reload"),
            )),
        };
        self.refresh_policy();
        let result = match result {
            Ok((answer, event)) => {
                info!(action, target, correlation_id = ?incoming.correlation_id, "control action done");
                if let Some((op, key)) = event {
                    let enabled = match op {
                        ItemOp::Flush => self.policy.default_events,
                        _ => self.policy.events_for(key.as_bytes()),
                    };
                    if enabled {
                        let source = incoming.source.as_deref().unwrap_or("");
                        let corr = incoming.correlation_id.as_deref().unwrap_or("");
                        let event = ItemEvent::new(
                            op,
                            unix_now_us() / 1000,
                            key.as_bytes(),
                            source.as_bytes(),
                            corr.as_bytes(),
                        );
                        self.publish_item(&event.view(), 0).await;
                    }
                }
                let mut body = json!({"action": action});
                if let (Value::Object(b), Value::Object(a)) = (&mut body, answer) {
                    b.extend(a);
                }
                Ok(body)
            }
            Err(failure) => {
                self.refuse(SUBJECT_CONTROL, &failure);
                Err(failure)
            }
        };
        let action = action.to_string();
        self.reply(&msg, EVENT_CONTROL_REPLY, &incoming, &action, result)
            .await;
    }

    async fn invalidate<'t>(
        &self,
        data: &Value,
        target: &'t str,
    ) -> Result<(Value, Option<(ItemOp, &'t str)>), Failure> {
        let pattern = data
            .get("parameters")
            .and_then(|p| p.get("pattern"))
            .and_then(Value::as_bool)
            .unwrap_or_else(|| target.contains(['*', '?', '[']));
        let valid = if pattern {
            crate::pattern::is_valid_pattern(target.as_bytes())
        } else {
            crate::key::is_valid_key(target.as_bytes())
        };
        if !valid {
            return Err(Failure {
                key: Some(target.to_string()),
                ..Failure::new(
                    Status::InvalidKey,
                    format!("target {target:?} is not a valid key or pattern"),
                )
            });
        }
        let removed = self
            .on_every_shard(|done| ShardCommand::Invalidate {
                target: target.as_bytes().into(),
                pattern,
                done,
            })
            .await
            .ok_or_else(|| Failure::new(Status::Timeout, "a shard did not answer"))?;
        Ok((
            json!({"removed": removed, "pattern": pattern}),
            Some((ItemOp::Invalidate, target)),
        ))
    }
}

/// Waits for the shards to apply a policy; how many did in time.
async fn wait_applied(waits: Vec<tokio::sync::oneshot::Receiver<()>>) -> usize {
    let mut applied = 0;
    for rx in waits {
        if let Ok(Ok(())) = tokio::time::timeout(SHARD_REPLY_TIMEOUT, rx).await {
            applied += 1;
        }
    }
    applied
}
