//! The cluster's JetStream KV bucket, through JetStream's own API subjects
//! (`$JS.API.STREAM.*`, `$KV.<bucket>.<key>`): the layout every NATS KV
//! client uses (stream `KV_<bucket>`, one message per key kept), so `nats
//! kv get <bucket> map` shows the map. We speak the API directly rather
//! than through async-nats' `kv` module, whose typed replies do not parse
//! against nats-server 2.9 (Debian's): the requests are a few lines of
//! JSON either way.
//!
//! Compare-and-set: a write carries `Nats-Expected-Last-Subject-Sequence`,
//! the revision it was planned from (0: the key must not exist);
//! JetStream refuses it if another write came first.

use std::time::Duration;

use async_nats::{Client, HeaderMap};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

/// Time a JetStream API request may take.
const API_TIMEOUT: Duration = Duration::from_secs(2);

/// One key of one KV bucket.
#[derive(Clone)]
pub struct Bucket {
    client: Client,
    stream: String,
    subject: String,
    ready: bool,
    /// Copies JetStream keeps (set when the bucket is created).
    replicas: u8,
}

/// Why a bucket request failed.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error("NATS request failed: {0}")]
    Request(String),
    #[error("JetStream error {code}: {description}")]
    JetStream { code: u64, description: String },
    #[error("unexpected JetStream answer: {0}")]
    Answer(String),
}

impl Bucket {
    /// Key `key` of bucket `bucket` (created on first use, with
    /// `replicas` copies on the NATS cluster's servers).
    pub fn new(client: Client, bucket: &str, key: &str, replicas: u8) -> Bucket {
        Bucket {
            client,
            stream: format!("KV_{bucket}"),
            subject: format!("$KV.{bucket}.{key}"),
            ready: false,
            replicas,
        }
    }

    /// The subject every write of the key is published on (a plain
    /// subscription to it sees each new value as it is stored).
    pub fn subject(&self) -> &str {
        &self.subject
    }

    async fn api(&self, subject: String, body: Value) -> Result<Value, BucketError> {
        let request = self.client.request(subject, Bytes::from(body.to_string()));
        let reply = tokio::time::timeout(API_TIMEOUT, request)
            .await
            .map_err(|_| BucketError::Request("timed out".into()))?
            .map_err(|e| BucketError::Request(e.to_string()))?;
        answer(&reply.payload)
    }

    /// Creates the bucket's stream unless it exists: file storage (the map
    /// outlives a nats-server restart), one message kept per key.
    pub async fn ensure(&mut self) -> Result<(), BucketError> {
        if self.ready {
            return Ok(());
        }
        let info = self
            .api(format!("$JS.API.STREAM.INFO.{}", self.stream), json!({}))
            .await;
        match info {
            Ok(_) => {}
            Err(BucketError::JetStream { code: 404, .. }) => {
                let bucket_subjects = self.subject.rsplit_once('.').map_or("", |(b, _)| b).to_string() + ".>";
                let config = json!({
                    "name": self.stream,
                    "subjects": [bucket_subjects],
                    "retention": "limits",
                    "max_msgs_per_subject": 1,
                    "discard": "new",
                    "storage": "file",
                    "num_replicas": self.replicas,
                    "allow_rollup_hdrs": true,
                    "deny_delete": true,
                    "allow_direct": true,
                });
                match self
                    .api(format!("$JS.API.STREAM.CREATE.{}", self.stream), config)
                    .await
                {
                    Ok(_) => {}
                    // Created by another node meanwhile.
                    Err(BucketError::JetStream { code: 400, .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
        self.probe().await?;
        self.ready = true;
        Ok(())
    }

    /// Whether the stream takes messages yet, asked without writing: a
    /// publish that expects an impossible last revision. The stream's own
    /// answer (an error) proves it runs; "no responders" means it is not
    /// yet set up.
    ///
    /// nats-server 2.9.10 (Debian's) registers a stream before it opens
    /// its store, and a `STREAM.MSG.GET` in that window dereferences the
    /// missing store and kills the server (`jsMsgGetRequest`,
    /// jetstream_api.go:3028). Nodes started together race exactly there:
    /// one creates the stream, another's INFO or CREATE finds it
    /// half-made and answers success. The stream subscribes to its
    /// subjects only once its store is open, so its answer here is the
    /// safe sign that reads may follow.
    async fn probe(&self) -> Result<(), BucketError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", PROBE_REVISION);
        let request = self
            .client
            .request_with_headers(self.subject.clone(), headers, Bytes::new());
        let reply = tokio::time::timeout(API_TIMEOUT, request)
            .await
            .map_err(|_| BucketError::Request("timed out".into()))?
            .map_err(|e| BucketError::Request(format!("the map stream is not up yet: {e}")))?;
        probe_answer(&reply.payload)
    }

    /// The key's value and revision; `None` when it was never written.
    pub async fn read(&mut self) -> Result<Option<(Bytes, u64)>, BucketError> {
        self.ensure().await?;
        let subject = format!("$JS.API.STREAM.MSG.GET.{}", self.stream);
        match self.api(subject, json!({ "last_by_subj": self.subject })).await {
            Ok(v) => {
                let message = &v["message"];
                let seq = message["seq"]
                    .as_u64()
                    .ok_or_else(|| BucketError::Answer(v.to_string()))?;
                let data = message["data"].as_str().unwrap_or_default();
                let value = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|e| BucketError::Answer(e.to_string()))?;
                Ok(Some((Bytes::from(value), seq)))
            }
            Err(BucketError::JetStream { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the key if its revision is still `expected` (0: absent);
    /// returns the new revision.
    pub async fn write(&mut self, value: Bytes, expected: u64) -> Result<u64, BucketError> {
        self.ensure().await?;
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        let request = self
            .client
            .request_with_headers(self.subject.clone(), headers, value);
        let reply = tokio::time::timeout(API_TIMEOUT, request)
            .await
            .map_err(|_| BucketError::Request("timed out".into()))?
            .map_err(|e| BucketError::Request(e.to_string()))?;
        let ack = answer(&reply.payload)?;
        ack["seq"]
            .as_u64()
            .ok_or_else(|| BucketError::Answer(ack.to_string()))
    }

    /// Forgets that the stream exists (after a reconnection: the server
    /// may have lost it).
    pub fn reset(&mut self) {
        self.ready = false;
    }

    /// Whether the bucket's stream is known to exist.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The stream was found by a clone of this handle.
    pub fn set_ready(&mut self) {
        self.ready = true;
    }
}

/// The revision a probe expects: no key ever reaches it, so the stream
/// refuses the probe and stores nothing.
const PROBE_REVISION: &str = "18446744073709551615";

/// A probe's answer: the stream's refusal means it is up. Anything stored
/// would be a bug of ours, said loudly.
fn probe_answer(payload: &[u8]) -> Result<(), BucketError> {
    match answer(payload) {
        Err(BucketError::JetStream { .. }) => Ok(()),
        Ok(v) => Err(BucketError::Answer(format!("a probe was stored: {v}"))),
        Err(e) => Err(e),
    }
}

/// A JetStream API answer: its JSON, or its error.
fn answer(payload: &[u8]) -> Result<Value, BucketError> {
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| BucketError::Answer(format!("{e}: {}", String::from_utf8_lossy(payload))))?;
    if let Some(error) = v.get("error") {
        return Err(BucketError::JetStream {
            code: error["code"].as_u64().unwrap_or(0),
            description: error["description"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_errors() {
        assert_eq!(answer(br#"{"stream":"KV_c","seq":7}"#).unwrap()["seq"], 7);
        match answer(
            br#"{"type":"x","error":{"code":404,"err_code":10037,"description":"no message found"}}"#,
        ) {
            Err(BucketError::JetStream {
                code: 404,
                description,
            }) => assert_eq!(description, "no message found"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(answer(b"nope"), Err(BucketError::Answer(_))));
    }

    #[test]
    fn a_probe_is_up_only_when_the_stream_refuses_it() {
        let refused = br#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 0"}}"#;
        assert!(probe_answer(refused).is_ok());
        assert!(matches!(
            probe_answer(br#"{"stream":"KV_c","seq":1}"#),
            Err(BucketError::Answer(_))
        ));
        assert!(matches!(probe_answer(b""), Err(BucketError::Answer(_))));
    }
}
