//! Reading the storage configuration from the environment: the seed's `STORAGE_BACKENDS` JSON
//! array (with `DEFAULT_STORAGE_BACKEND_ID`), or its single-backend variables
//! (`STORAGE_PROVIDER`, `S3_ENDPOINT`, `S3_BUCKET`, `S3_ACCESS_KEY`, `S3_SECRET_KEY`), or
//! nothing: the local directory `.orbit/objects`.
//!
//! Every error names the variable and field at fault and never quotes a value that could be a
//! credential.

use super::{Backend, Storage, StorageError};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::signer::Signer;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Outputs and inputs larger than this many bytes of JSON go to object storage.
pub const DEFAULT_THRESHOLD: usize = 64 * 1024;
/// How long a worker's pre-signed URL or storage token stays valid.
pub const DEFAULT_GRANT_TTL: Duration = Duration::from_secs(600);
/// The local backend's id when nothing is configured.
pub const LOCAL_ID: &str = "local";

const PROVIDERS: &str = "`local`, `aws-s3`, `minio` or `gcs`";

/// One backend as configured, before it is built.
#[derive(Default)]
struct Spec {
    /// Where the spec came from, for messages: `STORAGE_BACKENDS[1]` or `STORAGE_PROVIDER`.
    origin: String,
    id: String,
    provider: String,
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    path: Option<String>,
    credentials: Map<String, Value>,
    is_default: bool,
}

impl Spec {
    /// How the user wrote `field` of this backend: `STORAGE_BACKENDS[1].bucket`, or the
    /// single-backend variable that set it (`S3_BUCKET`).
    fn field(&self, field: &str) -> String {
        if self.origin != "STORAGE_PROVIDER" {
            return format!("{}.{field}", self.origin);
        }
        match field {
            "bucket" => "S3_BUCKET",
            "endpoint" => "S3_ENDPOINT",
            "region" => "S3_REGION",
            "path" => "STORAGE_PATH",
            "provider" => "STORAGE_PROVIDER",
            "credentials.accessKeyId" => "S3_ACCESS_KEY",
            "credentials.secretAccessKey" => "S3_SECRET_KEY",
            other => return format!("STORAGE_PROVIDER ({other})"),
        }
        .to_owned()
    }
}

fn bad(message: impl Into<String>) -> StorageError {
    StorageError::Config(message.into())
}

impl Storage {
    /// Builds the storage the environment describes; `env` reads a variable. With nothing
    /// configured, one `local` backend under `local_root` (created if missing).
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        local_root: &Path,
    ) -> Result<Storage, StorageError> {
        let threshold = match env("ORBIT_STORAGE_THRESHOLD") {
            None => DEFAULT_THRESHOLD,
            Some(v) => parse_size(&v).ok_or_else(|| {
                bad(format!(
                    "ORBIT_STORAGE_THRESHOLD `{v}` is not a size in bytes (e.g. 65536, 64KiB, 1MiB)"
                ))
            })?,
        };
        let grant_ttl = match env("ORBIT_STORAGE_GRANT_TTL") {
            None => DEFAULT_GRANT_TTL,
            Some(v) => orbit_core::duration::parse(&v)
                .ok()
                .filter(|d| !d.is_zero() && *d <= Duration::from_secs(7 * 24 * 3600))
                .ok_or_else(|| {
                    bad(format!(
                        "ORBIT_STORAGE_GRANT_TTL `{v}` is not a duration between 1s and 7 days (e.g. 10m)"
                    ))
                })?,
        };
        let specs = specs(env, local_root)?;
        let default = specs
            .iter()
            .position(|s| s.is_default)
            .ok_or_else(|| bad("no default storage backend"))?;
        let backends = specs
            .into_iter()
            .map(build)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Storage {
            backends,
            default,
            threshold,
            grant_ttl,
        })
    }
}

/// The configured backends, exactly one marked default.
fn specs(
    env: &dyn Fn(&str) -> Option<String>,
    local_root: &Path,
) -> Result<Vec<Spec>, StorageError> {
    let chosen = env("DEFAULT_STORAGE_BACKEND_ID").filter(|s| !s.trim().is_empty());
    let mut specs = if let Some(json) = env("STORAGE_BACKENDS").filter(|s| !s.trim().is_empty()) {
        let list: Vec<Value> = serde_json::from_str(&json).map_err(|e| {
            // serde_json's syntax errors give a position, never the text around it.
            bad(format!(
                "STORAGE_BACKENDS is not a JSON array of backends: {e}"
            ))
        })?;
        if list.is_empty() {
            return Err(bad(
                "STORAGE_BACKENDS is an empty array; give at least one backend",
            ));
        }
        list.into_iter()
            .enumerate()
            .map(|(i, v)| spec_of(&format!("STORAGE_BACKENDS[{i}]"), v))
            .collect::<Result<Vec<_>, _>>()?
    } else if let Some(provider) = env("STORAGE_PROVIDER").filter(|s| !s.trim().is_empty()) {
        let mut credentials = Map::new();
        for (var, field) in [
            ("S3_ACCESS_KEY", "accessKeyId"),
            ("S3_SECRET_KEY", "secretAccessKey"),
        ] {
            if let Some(v) = env(var) {
                credentials.insert(field.into(), Value::String(v));
            }
        }
        vec![Spec {
            origin: "STORAGE_PROVIDER".into(),
            id: "default".into(),
            provider: provider.trim().to_owned(),
            endpoint: env("S3_ENDPOINT"),
            bucket: env("S3_BUCKET"),
            region: env("S3_REGION"),
            path: env("STORAGE_PATH"),
            credentials,
            is_default: true,
        }]
    } else {
        vec![Spec {
            origin: "the default local storage".into(),
            id: LOCAL_ID.into(),
            provider: "local".into(),
            path: Some(local_root.display().to_string()),
            is_default: true,
            ..Spec::default()
        }]
    };
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.id == s.id) {
            return Err(bad(format!(
                "{}.id: `{}` is used by another backend; ids must be unique",
                s.origin, s.id
            )));
        }
    }
    if let Some(id) = chosen {
        let Some(i) = specs.iter().position(|s| s.id == id) else {
            let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
            return Err(bad(format!(
                "DEFAULT_STORAGE_BACKEND_ID `{id}` is not the id of a configured backend (ids: {})",
                ids.join(", ")
            )));
        };
        for (j, s) in specs.iter_mut().enumerate() {
            s.is_default = i == j;
        }
    }
    match specs.iter().filter(|s| s.is_default).count() {
        0 if specs.len() == 1 => specs[0].is_default = true,
        0 => {
            return Err(bad(
                "STORAGE_BACKENDS: no backend has \"isDefault\": true and DEFAULT_STORAGE_BACKEND_ID is not set",
            ));
        }
        1 => {}
        _ => {
            return Err(bad(
                "STORAGE_BACKENDS: more than one backend has \"isDefault\": true; mark one, or set DEFAULT_STORAGE_BACKEND_ID",
            ));
        }
    }
    Ok(specs)
}

fn spec_of(origin: &str, v: Value) -> Result<Spec, StorageError> {
    let Value::Object(mut m) = v else {
        return Err(bad(format!("{origin} is not a JSON object")));
    };
    let mut text = |field: &str| -> Result<Option<String>, StorageError> {
        match m.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(format!("{origin}.{field} must be a string"))),
        }
    };
    let id = text("id")?.ok_or_else(|| bad(format!("{origin}.id is missing")))?;
    let provider = text("provider")?
        .ok_or_else(|| bad(format!("{origin}.provider is missing; use {PROVIDERS}")))?;
    let (endpoint, bucket, region, path) = (
        text("endpoint")?,
        text("bucket")?,
        text("region")?,
        text("path")?,
    );
    let credentials = match m.remove("credentials") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(c)) => c,
        Some(_) => return Err(bad(format!("{origin}.credentials must be an object"))),
    };
    let is_default = match m.remove("isDefault") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(bad(format!("{origin}.isDefault must be true or false"))),
    };
    if let Some(field) = m.keys().next() {
        return Err(bad(format!(
            "{origin}.{field} is not a backend field (id, provider, endpoint, bucket, region, path, credentials, isDefault)"
        )));
    }
    let id_ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !id_ok {
        return Err(bad(format!(
            "{origin}.id `{id}` may hold only letters, digits, `-`, `_` and `.`"
        )));
    }
    Ok(Spec {
        origin: origin.to_owned(),
        id,
        provider,
        endpoint,
        bucket,
        region,
        path,
        credentials,
        is_default,
    })
}

/// A credential field as a string; an error names the field, never its value.
fn credential(spec: &Spec, field: &str) -> Result<Option<String>, StorageError> {
    match spec.credentials.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!(
            "{} must be a string",
            spec.field(&format!("credentials.{field}"))
        ))),
    }
}

fn required(spec: &Spec, value: &Option<String>, field: &str) -> Result<String, StorageError> {
    value.clone().ok_or_else(|| {
        bad(format!(
            "{} is required for provider `{}`",
            spec.field(field),
            spec.provider
        ))
    })
}

/// A backend's store, its URL signer (when it can pre-sign) and where it keeps objects.
type Built = (Arc<dyn ObjectStore>, Option<Arc<dyn Signer>>, String);

fn build(spec: Spec) -> Result<Backend, StorageError> {
    let fail = |e: object_store::Error| {
        // object_store's builder errors name settings, not secrets.
        bad(format!("{} (backend `{}`): {e}", spec.origin, spec.id))
    };
    let (store, signer, location) = match spec.provider.as_str() {
        "local" => local(&spec, &fail)?,
        "aws-s3" | "minio" => s3(&spec, &fail)?,
        "gcs" => gcs(&spec, &fail)?,
        other => {
            return Err(bad(format!(
                "{} `{other}` is not one of {PROVIDERS}",
                spec.field("provider")
            )));
        }
    };
    Ok(Backend {
        id: spec.id,
        provider: spec.provider,
        location,
        store,
        signer,
    })
}

/// A directory on this machine.
fn local(
    spec: &Spec,
    fail: &dyn Fn(object_store::Error) -> StorageError,
) -> Result<Built, StorageError> {
    let dir = PathBuf::from(spec.path.clone().unwrap_or_else(|| ".orbit/objects".into()));
    std::fs::create_dir_all(&dir).map_err(|e| {
        bad(format!(
            "{}: cannot create `{}`: {e}",
            spec.field("path"),
            dir.display()
        ))
    })?;
    let fs = LocalFileSystem::new_with_prefix(&dir)
        .map_err(fail)?
        .with_automatic_cleanup(true);
    Ok((Arc::new(fs), None, dir.display().to_string()))
}

/// AWS S3, or MinIO (and any S3-compatible server) at its endpoint.
fn s3(
    spec: &Spec,
    fail: &dyn Fn(object_store::Error) -> StorageError,
) -> Result<Built, StorageError> {
    let bucket = required(spec, &spec.bucket, "bucket")?;
    let minio = spec.provider == "minio";
    let mut b = if minio {
        AmazonS3Builder::new()
    } else {
        // Plain AWS may take its credentials and region from the usual AWS_* variables.
        AmazonS3Builder::from_env()
    };
    b = b.with_bucket_name(&bucket);
    let region = spec.region.clone().unwrap_or_else(|| "us-east-1".into());
    b = b.with_region(region);
    let endpoint = if minio {
        Some(required(spec, &spec.endpoint, "endpoint")?)
    } else {
        spec.endpoint
            .clone()
            .filter(|e| e.trim_end_matches('/') != "https://s3.amazonaws.com")
    };
    if let Some(e) = &endpoint {
        let is_url = object_store::signer::Url::parse(e)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
        if !is_url {
            return Err(bad(format!(
                "{} `{e}` is not a URL such as http://127.0.0.1:9000",
                spec.field("endpoint")
            )));
        }
        b = b
            .with_endpoint(e)
            .with_allow_http(e.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    // MinIO's own names (the PipeWeave seed's example) as well as AWS's.
    let key = credential(spec, "accessKeyId")?.or(credential(spec, "accessKey")?);
    let secret = credential(spec, "secretAccessKey")?.or(credential(spec, "secretKey")?);
    match (key, secret) {
        (Some(k), Some(s)) => {
            b = b.with_access_key_id(k).with_secret_access_key(s);
        }
        (None, None) if !minio => {}
        (None, _) => {
            return Err(bad(format!(
                "{} is required for provider `{}`",
                spec.field("credentials.accessKeyId"),
                spec.provider
            )));
        }
        (_, None) => {
            return Err(bad(format!(
                "{} is required for provider `{}`",
                spec.field("credentials.secretAccessKey"),
                spec.provider
            )));
        }
    }
    if let Some(t) = credential(spec, "sessionToken")? {
        b = b.with_token(t);
    }
    let s3 = Arc::new(b.build().map_err(fail)?);
    let location = format!(
        "s3://{bucket}{}",
        endpoint.map(|e| format!(" at {e}")).unwrap_or_default()
    );
    Ok((s3.clone(), Some(s3), location))
}

/// Google Cloud Storage.
fn gcs(
    spec: &Spec,
    fail: &dyn Fn(object_store::Error) -> StorageError,
) -> Result<Built, StorageError> {
    let bucket = required(spec, &spec.bucket, "bucket")?;
    let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(&bucket);
    if let Some(e) = spec
        .endpoint
        .as_deref()
        .filter(|e| e.trim_end_matches('/') != "https://storage.googleapis.com")
    {
        b = b.with_base_url(e);
    }
    let without_key = b.clone();
    let email = credential(spec, "clientEmail")?;
    let private_key = credential(spec, "privateKey")?;
    match (email, private_key) {
        (Some(email), Some(key)) => {
            // The seed's form gives no key id; Google finds the key without one.
            let mut account = serde_json::json!({
                "type": "service_account",
                "client_email": email,
                "private_key": key,
                "private_key_id": credential(spec, "privateKeyId")?.unwrap_or_default(),
            });
            if let Some(p) = credential(spec, "projectId")? {
                account["project_id"] = Value::String(p);
            }
            b = b.with_service_account_key(account.to_string());
        }
        (None, None) => {}
        (None, _) => {
            return Err(bad(format!(
                "{}.credentials.clientEmail is required with credentials.privateKey",
                spec.origin
            )));
        }
        (_, None) => {
            return Err(bad(format!(
                "{}.credentials.privateKey is required with credentials.clientEmail",
                spec.origin
            )));
        }
    }
    // A key that does not parse (the seed's example holds a placeholder) does not
    // stop the server: the backend is there, and fails on use, as said at start.
    let built = match b.build() {
        Ok(gcs) => gcs,
        Err(e) => {
            tracing::warn!(
                backend = %spec.id,
                error = %e,
                "{}: the service-account key cannot be used; requests to this backend will fail until it is fixed",
                spec.origin
            );
            without_key.build().map_err(fail)?
        }
    };
    let gcs = Arc::new(built);
    Ok((gcs.clone(), Some(gcs), format!("gs://{bucket}")))
}

/// `65536`, `64KiB`, `64kb`, `1MiB`, `1m`: a number of bytes.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: usize = n.parse().ok()?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn storage(vars: &[(&str, &str)]) -> Result<Storage, StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Storage::from_env(&|k| vars.get(k).cloned(), &dir.path().join("objects"))
    }

    fn error(vars: &[(&str, &str)]) -> String {
        match storage(vars) {
            Ok(s) => panic!("expected an error, got {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn nothing_configured_is_one_local_backend() {
        let s = storage(&[]).expect("storage");
        assert_eq!(s.default_backend(), "local");
        assert_eq!(s.threshold(), DEFAULT_THRESHOLD);
        assert_eq!(s.backends().len(), 1);
        assert_eq!(s.backends()[0].provider, "local");
    }

    #[test]
    fn several_backends_with_a_default() {
        let s = storage(&[
            (
                "STORAGE_BACKENDS",
                r#"[{"id": "disk", "provider": "local", "path": "/tmp/orbit-config-test-objects"},
                    {"id": "primary-s3", "provider": "aws-s3", "bucket": "b", "region": "eu-west-1",
                     "credentials": {"accessKeyId": "AKIAXXXX", "secretAccessKey": "hunter2"}, "isDefault": true},
                    {"id": "gcs-backup", "provider": "gcs", "endpoint": "https://storage.googleapis.com", "bucket": "g"},
                    {"id": "local-minio", "provider": "minio", "endpoint": "http://localhost:9000", "bucket": "m",
                     "credentials": {"accessKeyId": "minioadmin", "secretAccessKey": "minioadmin"}}]"#,
            ),
            ("ORBIT_STORAGE_THRESHOLD", "1MiB"),
        ])
        .expect("storage");
        assert_eq!(s.default_backend(), "primary-s3");
        assert_eq!(s.threshold(), 1024 * 1024);
        let ids: Vec<&str> = s.backends().iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["disk", "primary-s3", "gcs-backup", "local-minio"]);
        // Described without credentials.
        let described = format!("{s:?}");
        assert!(
            !described.contains("hunter2") && !described.contains("AKIAXXXX"),
            "{described}"
        );
        assert!(described.contains("s3://b"), "{described}");

        let s = storage(&[
            (
                "STORAGE_BACKENDS",
                r#"[{"id": "a", "provider": "local", "path": "/tmp/orbit-config-test-a"},
                    {"id": "b", "provider": "local", "path": "/tmp/orbit-config-test-b", "isDefault": true}]"#,
            ),
            ("DEFAULT_STORAGE_BACKEND_ID", "a"),
        ])
        .expect("storage");
        assert_eq!(s.default_backend(), "a", "the variable wins over isDefault");
    }

    #[test]
    fn the_single_backend_variables() {
        let s = storage(&[
            ("STORAGE_PROVIDER", "minio"),
            ("S3_ENDPOINT", "http://127.0.0.1:9000"),
            ("S3_BUCKET", "orbit"),
            ("S3_ACCESS_KEY", "minioadmin"),
            ("S3_SECRET_KEY", "supersecret"),
        ])
        .expect("storage");
        assert_eq!(s.default_backend(), "default");
        assert!(!format!("{s:?}").contains("supersecret"));
    }

    #[test]
    fn a_bad_configuration_names_the_field_and_hides_secrets() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("STORAGE_BACKENDS", "[{")],
                "STORAGE_BACKENDS is not a JSON array",
            ),
            (&[("STORAGE_BACKENDS", "[]")], "empty array"),
            (
                &[("STORAGE_BACKENDS", r#"[{"provider": "local"}]"#)],
                "STORAGE_BACKENDS[0].id is missing",
            ),
            (
                &[("STORAGE_BACKENDS", r#"[{"id": "x"}]"#)],
                "STORAGE_BACKENDS[0].provider is missing",
            ),
            (
                &[("STORAGE_BACKENDS", r#"[{"id": "x", "provider": "ftp"}]"#)],
                "STORAGE_BACKENDS[0].provider `ftp` is not one of",
            ),
            (
                &[("STORAGE_BACKENDS", r#"[{"id": "x", "provider": "aws-s3"}]"#)],
                "STORAGE_BACKENDS[0].bucket is required",
            ),
            (
                &[(
                    "STORAGE_BACKENDS",
                    r#"[{"id": "x", "provider": "minio", "bucket": "b"}]"#,
                )],
                "STORAGE_BACKENDS[0].endpoint is required",
            ),
            (
                &[(
                    "STORAGE_BACKENDS",
                    r#"[{"id": "x", "provider": "minio", "bucket": "b", "endpoint": "http://h:9000", "credentials": {"secretAccessKey": "hunter2"}}]"#,
                )],
                "STORAGE_BACKENDS[0].credentials.accessKeyId is required",
            ),
            (
                &[(
                    "STORAGE_BACKENDS",
                    r#"[{"id": "x", "provider": "minio", "bucket": "b", "endpoint": "http://h:9000", "credentials": {"accessKeyId": 12345, "secretAccessKey": "hunter2"}}]"#,
                )],
                "STORAGE_BACKENDS[0].credentials.accessKeyId must be a string",
            ),
            (
                &[(
                    "STORAGE_BACKENDS",
                    r#"[{"id": "x", "provider": "minio", "bucket": "b", "endpoint": "not a url"}]"#,
                )],
                "STORAGE_BACKENDS[0].endpoint `not a url` is not a URL",
            ),
            (
                &[(
                    "STORAGE_BACKENDS",
                    r#"[{"id": "x", "provider": "local", "bukket": "b"}]"#,
                )],
                "STORAGE_BACKENDS[0].bukket is not a backend field",
            ),
            (
                &[(
                    "STORAGE_BACKENDS",
                    r#"[{"id": "x", "provider": "local", "path": "/tmp/orbit-cfg-x"}, {"id": "x", "provider": "local", "path": "/tmp/orbit-cfg-x"}]"#,
                )],
                "STORAGE_BACKENDS[1].id: `x` is used by another backend",
            ),
            (
                &[(
                    "STORAGE_BACKENDS",
                    r#"[{"id": "a", "provider": "local", "path": "/tmp/orbit-cfg-a"}, {"id": "b", "provider": "local", "path": "/tmp/orbit-cfg-b"}]"#,
                )],
                "no backend has \"isDefault\": true",
            ),
            (
                &[
                    (
                        "STORAGE_BACKENDS",
                        r#"[{"id": "a", "provider": "local", "path": "/tmp/orbit-cfg-a"}]"#,
                    ),
                    ("DEFAULT_STORAGE_BACKEND_ID", "b"),
                ],
                "DEFAULT_STORAGE_BACKEND_ID `b` is not the id of a configured backend (ids: a)",
            ),
            (
                &[("STORAGE_PROVIDER", "aws-s3")],
                "S3_BUCKET is required for provider `aws-s3`",
            ),
            (
                &[
                    ("STORAGE_PROVIDER", "minio"),
                    ("S3_BUCKET", "b"),
                    ("S3_ENDPOINT", "localhost:9000"),
                ],
                "S3_ENDPOINT `localhost:9000` is not a URL",
            ),
            (
                &[
                    ("STORAGE_PROVIDER", "minio"),
                    ("S3_BUCKET", "b"),
                    ("S3_ENDPOINT", "http://h:9000"),
                    ("S3_SECRET_KEY", "hunter2"),
                ],
                "S3_ACCESS_KEY is required for provider `minio`",
            ),
            (
                &[("STORAGE_PROVIDER", "ftp")],
                "STORAGE_PROVIDER `ftp` is not one of",
            ),
            (
                &[("ORBIT_STORAGE_THRESHOLD", "lots")],
                "ORBIT_STORAGE_THRESHOLD `lots` is not a size",
            ),
            (
                &[("ORBIT_STORAGE_GRANT_TTL", "0s")],
                "ORBIT_STORAGE_GRANT_TTL `0s`",
            ),
        ];
        for (vars, expected) in cases {
            let e = error(vars);
            assert!(
                e.contains(expected),
                "{vars:?}: `{e}` should contain `{expected}`"
            );
            assert!(
                !e.contains("hunter2") && !e.contains("12345"),
                "a secret leaked: {e}"
            );
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("2 mb"), Some(2 * 1024 * 1024));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }
}
