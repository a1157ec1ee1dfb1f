//! Object storage for run inputs and task outputs.
//!
//! A value whose JSON is larger than the threshold (64 KiB unless configured) is written to the
//! default backend and the store keeps an [`ObjectRef`] in its place; smaller ones stay inline.
//! Whoever builds a task's context calls [`Storage::hydrate`], so a task sees the same context
//! either way. Every object of a run lives under `runs/{run id}/`, which is how deleting a run
//! finds them. Backends are `object_store` clients (local directory, S3, S3-compatible, GCS);
//! the ones that can pre-sign URLs let workers read and write their objects directly.

mod config;
mod json_check;

pub use config::{DEFAULT_GRANT_TTL, DEFAULT_THRESHOLD, LOCAL_ID};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::signer::{Method, Signer};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use orbit_core::object::{ObjectRef, looks_like_reference};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The configuration is wrong; the message names the variable and field.
    #[error("storage configuration: {0}")]
    Config(String),
    #[error("no object storage backend `{0}` is configured")]
    UnknownBackend(String),
    #[error("`{0}` is not a valid object key")]
    BadKey(String),
    #[error("object `{0}` not found")]
    NotFound(String),
    /// The backend failed; retrying may help.
    #[error("object storage `{backend}`: {message}")]
    Backend { backend: String, message: String },
    #[error("object `{0}` does not hold valid JSON: {1}")]
    Corrupt(String, String),
}

/// One configured backend.
pub struct Backend {
    pub id: String,
    /// `local`, `aws-s3`, `minio` or `gcs`.
    pub provider: String,
    /// A directory or a bucket URL, for messages; never credentials.
    pub location: String,
    store: Arc<dyn ObjectStore>,
    signer: Option<Arc<dyn Signer>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("id", &self.id)
            .field("provider", &self.provider)
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// The configured backends, the default one new objects go to, and the threshold.
#[derive(Debug)]
pub struct Storage {
    backends: Vec<Backend>,
    default: usize,
    threshold: usize,
    grant_ttl: Duration,
}

/// Where a run's input is kept when it is large.
/// The largest object a worker may upload through the orchestrator (pre-signed uploads go to
/// the bucket and are limited there).
pub const MAX_UPLOAD_BYTES: u64 = 512 * 1024 * 1024;

/// Why a streamed upload stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the object is larger than the {0} bytes allowed")]
    TooLarge(u64),
    #[error("an object must hold JSON: {0}")]
    NotJson(String),
    #[error("the upload broke off: {0}")]
    Body(String),
}

pub fn input_key(run: Uuid) -> String {
    format!("runs/{run}/input.json")
}

/// Where an attempt's output is kept when it is large. One key per attempt: an attempt that
/// lost its lease can never overwrite the output of the one that replaced it.
pub fn output_key(run: Uuid, task: &str, attempt: u32) -> String {
    format!("runs/{run}/{task}/attempt-{attempt}.json")
}

/// Where the input handed to a worker is kept when a task renders a large one of its own.
pub fn handler_input_key(run: Uuid, task: &str, attempt: u32) -> String {
    format!("runs/{run}/{task}/attempt-{attempt}.input.json")
}

/// What a run's attempts read: its input as the store keeps it, and every object of the run
/// they fetched (the input's, upstream outputs'), each fetched once and shared however many
/// attempts ask. Objects never change under their key, so sharing them is safe.
#[derive(Debug)]
pub struct RunValues {
    input: Value,
    fetched: std::sync::Mutex<HashMap<String, Arc<OnceCell<Arc<Value>>>>>,
}

/// A value as an attempt sees it: inline, or the shared content of an object.
#[derive(Debug)]
pub enum Shared<'a> {
    Inline(&'a Value),
    Fetched(Arc<Value>),
}

impl std::ops::Deref for Shared<'_> {
    type Target = Value;

    fn deref(&self) -> &Value {
        match self {
            Shared::Inline(v) => v,
            Shared::Fetched(v) => v,
        }
    }
}

impl RunValues {
    pub fn new(input: Value) -> RunValues {
        RunValues {
            input,
            fetched: std::sync::Mutex::default(),
        }
    }

    /// The input as stored: inline, or a reference.
    pub fn into_input(self) -> Value {
        self.input
    }

    /// The run's input, its content fetched if it is a reference.
    pub async fn input(&self, storage: &Storage) -> Result<Shared<'_>, StorageError> {
        self.content(storage, &self.input).await
    }

    /// `value` itself, or the content of the object it refers to.
    pub async fn content<'a>(
        &self,
        storage: &Storage,
        value: &'a Value,
    ) -> Result<Shared<'a>, StorageError> {
        let Some(r) = ObjectRef::of(value) else {
            return Ok(Shared::Inline(value));
        };
        let cell = self
            .fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(r.id())
            .or_default()
            .clone();
        let content = cell
            .get_or_try_init(|| async { storage.hydrate(value.clone()).await.map(Arc::new) })
            .await?;
        Ok(Shared::Fetched(content.clone()))
    }
}

impl Storage {
    /// One local backend under `root`: what `orbit` uses when nothing is configured.
    pub fn local(root: &std::path::Path) -> Result<Storage, StorageError> {
        Storage::from_env(&|_| None, root)
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// How long a worker's access to an object lasts.
    pub fn grant_ttl(&self) -> Duration {
        self.grant_ttl
    }

    /// The id of the backend new objects go to.
    pub fn default_backend(&self) -> &str {
        &self.backends[self.default].id
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    fn backend(&self, id: &str) -> Result<&Backend, StorageError> {
        self.backends
            .iter()
            .find(|b| b.id == id)
            .ok_or_else(|| StorageError::UnknownBackend(orbit_core::echo::echo(id)))
    }

    /// Keeps `value` inline when it is small, else writes it under `key` in the default
    /// backend and returns the reference. A value shaped like a reference is always written,
    /// so nothing inline is ever misread as one.
    pub async fn offload(&self, value: Value, key: &str) -> Result<Value, StorageError> {
        let shaped = looks_like_reference(&value);
        if !shaped && !self.may_exceed(&value) {
            return Ok(value);
        }
        let json = serde_json::to_vec(&value)
            .map_err(|e| StorageError::Corrupt(key.to_owned(), e.to_string()))?;
        if !shaped && json.len() <= self.threshold {
            return Ok(value);
        }
        let backend = self.default_backend().to_owned();
        let size = json.len() as u64;
        self.put(&backend, key, Bytes::from(json)).await?;
        Ok(ObjectRef {
            backend,
            key: key.to_owned(),
            size,
        }
        .to_value())
    }

    /// A cheap lower bound on a value's JSON size: scalars and short strings cannot reach the
    /// threshold, so the hot path serializes nothing for them.
    fn may_exceed(&self, value: &Value) -> bool {
        match value {
            Value::Null | Value::Bool(_) | Value::Number(_) => self.threshold < 24,
            // Escaping at most sextuples a string (`\u0000`).
            Value::String(s) => s.len() * 6 + 2 > self.threshold,
            Value::Array(a) => !a.is_empty() || self.threshold < 2,
            Value::Object(m) => !m.is_empty() || self.threshold < 2,
        }
    }

    /// The value a reference stands for; any other value as it is.
    pub async fn hydrate(&self, value: Value) -> Result<Value, StorageError> {
        let Some(r) = ObjectRef::of(&value) else {
            return Ok(value);
        };
        let bytes = self.get(&r.backend, &r.key).await?;
        serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt(r.id(), e.to_string()))
    }

    pub async fn get(&self, backend: &str, key: &str) -> Result<Bytes, StorageError> {
        let b = self.backend(backend)?;
        let path = object_path(key)?;
        let got = b.store.get(&path).await.map_err(|e| fail(b, key, e))?;
        got.bytes().await.map_err(|e| fail(b, key, e))
    }

    pub async fn put(&self, backend: &str, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let b = self.backend(backend)?;
        let path = object_path(key)?;
        b.store
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|e| fail(b, key, e))?;
        Ok(())
    }

    /// Writes the JSON arriving as `chunks` under `key`, at most `max` bytes, without holding it
    /// in memory: parts go to the backend as they fill, while a parser checks that the whole is
    /// one JSON value. Anything else (too large, not JSON, a broken stream) stores nothing.
    /// Returns the size written.
    pub async fn put_stream<S, E>(
        &self,
        backend: &str,
        key: &str,
        chunks: S,
        max: u64,
    ) -> Result<u64, UploadError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let b = self.backend(backend)?;
        let path = object_path(key)?;
        let upload = b
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| fail(b, key, e))?;
        let mut writer = object_store::WriteMultipart::new(upload);
        let (feed, parsed) = json_check::spawn();
        let mut size = 0u64;
        let mut chunks = chunks;
        let streamed: Result<(), UploadError> = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > max {
                    return Err(UploadError::TooLarge(max));
                }
                writer
                    .wait_for_capacity(2)
                    .await
                    .map_err(|e| fail(b, key, e))?;
                writer.write(&chunk);
                // The parser stopped early: the body is not JSON, and nothing more helps.
                if feed.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok(())
        }
        .await;
        drop(feed);
        let checked = parsed.await;
        match streamed.and(checked) {
            Ok(()) => {
                writer.finish().await.map_err(|e| fail(b, key, e))?;
                Ok(size)
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    /// The size of a stored object.
    pub async fn size(&self, backend: &str, key: &str) -> Result<u64, StorageError> {
        let b = self.backend(backend)?;
        let path = object_path(key)?;
        let meta = b.store.head(&path).await.map_err(|e| fail(b, key, e))?;
        Ok(meta.size)
    }

    /// Copies a referenced object to `key` in the same backend: a task that reuses another
    /// run's output gets its own copy, so deleting that run takes nothing from this one.
    pub async fn copy(&self, from: &ObjectRef, key: &str) -> Result<ObjectRef, StorageError> {
        let b = self.backend(&from.backend)?;
        b.store
            .copy(&object_path(&from.key)?, &object_path(key)?)
            .await
            .map_err(|e| fail(b, &from.key, e))?;
        Ok(ObjectRef {
            backend: from.backend.clone(),
            key: key.to_owned(),
            size: from.size,
        })
    }

    /// Deletes every object of `run` in every backend; returns how many.
    pub async fn delete_run(&self, run: Uuid) -> Result<usize, StorageError> {
        let prefix = ObjectPath::from(format!("runs/{run}"));
        let mut deleted = 0;
        for b in &self.backends {
            let paths: Vec<ObjectPath> = b
                .store
                .list(Some(&prefix))
                .map_ok(|meta| meta.location)
                .try_collect()
                .await
                .map_err(|e| fail(b, prefix.as_ref(), e))?;
            for path in paths {
                match b.store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(e) => return Err(fail(b, path.as_ref(), e)),
                }
            }
        }
        Ok(deleted)
    }

    /// A pre-signed URL for `method` on one object, valid for `ttl`; `None` when the backend
    /// cannot sign URLs (the local one): the orchestrator then serves the object itself.
    pub async fn presign(
        &self,
        backend: &str,
        key: &str,
        method: Method,
        ttl: Duration,
    ) -> Result<Option<String>, StorageError> {
        let b = self.backend(backend)?;
        let Some(signer) = &b.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(method, &object_path(key)?, ttl)
            .await
            .map_err(|e| fail(b, key, e))?;
        Ok(Some(url.to_string()))
    }
}

/// A key as `object_store` wants it; `..`, empty segments and the like are refused.
/// Keys Orbit writes are a few hundred bytes; anything much longer is not one of them, and a
/// backend would refuse it with its own (internal) message.
const MAX_KEY_BYTES: usize = 1024;
const MAX_SEGMENT_BYTES: usize = 255;

fn object_path(key: &str) -> Result<ObjectPath, StorageError> {
    let bad = || StorageError::BadKey(orbit_core::echo::echo(key));
    if key.len() > MAX_KEY_BYTES || key.split('/').any(|s| s.len() > MAX_SEGMENT_BYTES) {
        return Err(bad());
    }
    ObjectPath::parse(key).map_err(|_| bad())
}

fn fail(b: &Backend, key: &str, e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound(format!("{}/{key}", b.id)),
        other => StorageError::Backend {
            backend: b.id.clone(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn local() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().expect("tempdir");
        let threshold = |k: &str| (k == "ORBIT_STORAGE_THRESHOLD").then(|| "100".to_owned());
        let s = Storage::from_env(&threshold, &dir.path().join("objects")).expect("local storage");
        (dir, s)
    }

    #[tokio::test]
    async fn small_values_stay_inline_and_large_ones_round_trip() {
        let (dir, s) = local();
        let run = Uuid::now_v7();
        for small in [
            json!(null),
            json!(12),
            json!("short"),
            json!({"a": [1, 2]}),
            json!([]),
        ] {
            assert_eq!(
                s.offload(small.clone(), &input_key(run))
                    .await
                    .expect("offload"),
                small
            );
        }
        let big = json!({"rows": (0..100).collect::<Vec<_>>()});
        let stored = s
            .offload(big.clone(), &input_key(run))
            .await
            .expect("offload");
        let r = ObjectRef::of(&stored).expect("a reference");
        assert_eq!(r.backend, "local");
        assert_eq!(r.size, serde_json::to_vec(&big).expect("json").len() as u64);
        assert!(dir.path().join("objects").join(&r.key).is_file());
        assert_eq!(s.hydrate(stored).await.expect("hydrate"), big);

        // A long string is large too, however it is escaped.
        let long = Value::String("\"".repeat(60));
        assert!(ObjectRef::of(&s.offload(long, "runs/x/y.json").await.expect("offload")).is_some());
    }

    #[tokio::test]
    async fn a_value_shaped_like_a_reference_is_stored_not_misread() {
        let (_dir, s) = local();
        let odd = json!({"$orbit_object": {"backend": "elsewhere", "key": "secret"}});
        let stored = s
            .offload(odd.clone(), "runs/r/t/attempt-1.json")
            .await
            .expect("offload");
        let r = ObjectRef::of(&stored).expect("a reference");
        assert_eq!(r.key, "runs/r/t/attempt-1.json");
        assert_eq!(s.hydrate(stored).await.expect("hydrate"), odd);
    }

    #[tokio::test]
    async fn deleting_a_run_removes_its_objects_only() {
        let (_dir, s) = local();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let big = json!("x".repeat(200));
        let ra = s
            .offload(big.clone(), &output_key(a, "t", 1))
            .await
            .expect("offload");
        s.offload(big.clone(), &input_key(a))
            .await
            .expect("offload");
        let rb = s
            .offload(big.clone(), &output_key(b, "t", 1))
            .await
            .expect("offload");
        let copied = s
            .copy(&ObjectRef::of(&ra).expect("ref"), &output_key(b, "u", 1))
            .await
            .expect("copy");
        assert_eq!(s.delete_run(a).await.expect("delete"), 2);
        assert!(matches!(
            s.hydrate(ra).await,
            Err(StorageError::NotFound(_))
        ));
        assert_eq!(s.hydrate(rb).await.expect("b's own"), big);
        assert_eq!(s.hydrate(copied.to_value()).await.expect("b's copy"), big);
        assert_eq!(s.delete_run(a).await.expect("again"), 0);
    }

    #[tokio::test]
    async fn a_run_fetches_each_object_once_for_all_its_attempts() {
        let (_dir, s) = local();
        let run = Uuid::now_v7();
        let big = json!({"rows": "r".repeat(500)});
        let values = RunValues::new(
            s.offload(big.clone(), &input_key(run))
                .await
                .expect("offload"),
        );
        let output = s
            .offload(big.clone(), &output_key(run, "t", 1))
            .await
            .expect("offload");
        assert_eq!(*values.input(&s).await.expect("first read"), big);
        assert_eq!(*values.content(&s, &output).await.expect("first read"), big);
        // Gone from storage, still there for the run's next attempt: no second read.
        s.delete_run(run).await.expect("delete");
        assert_eq!(*values.input(&s).await.expect("second read"), big);
        assert_eq!(
            *values.content(&s, &output).await.expect("second read"),
            big
        );
        let inline = json!({"n": 1});
        assert!(matches!(values.content(&s, &inline).await, Ok(Shared::Inline(v)) if *v == inline));
        let other = RunValues::new(values.into_input());
        assert!(
            matches!(other.input(&s).await, Err(StorageError::NotFound(_))),
            "a new run reads again"
        );
    }

    #[tokio::test]
    async fn bad_keys_and_unknown_backends_are_refused() {
        let (_dir, s) = local();
        assert!(matches!(
            s.get("local", "../etc/passwd").await,
            Err(StorageError::BadKey(_))
        ));
        assert!(matches!(
            s.get("nope", "k").await,
            Err(StorageError::UnknownBackend(_))
        ));
        assert!(matches!(
            s.get("local", "runs/none.json").await,
            Err(StorageError::NotFound(_))
        ));
        assert_eq!(
            s.presign("local", "k", Method::GET, Duration::from_secs(5))
                .await
                .expect("presign"),
            None,
            "the local backend has no signer"
        );
    }
}
