//! The S3 object store: `s3://bucket/prefix` on AWS or any S3-compatible server.
//!
//! Configured the way AWS tools are: credentials from `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`), the region from `AWS_REGION` (or
//! `AWS_DEFAULT_REGION`, else us-east-1), the endpoint from the caller's option, else
//! `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, else AWS. With an endpoint, addressing is
//! path-style (what local servers expect). Shared config files (`~/.aws`) and instance roles are
//! not read: this build leaves out aws-config and its credential chain.
//!
//! Each call has a timeout ([`OPERATION_TIMEOUT`]); the SDK retries transient failures a few
//! times, and the archiver retries failed steps with its own back-off, so a store that is down
//! shows as a growing backup lag.

use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use bytes::Bytes;

use crate::store::{Listed, ObjectError};

/// Longest one S3 call may take (including the SDK's own retries).
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// Key prefix inside the bucket: empty or ending in `/`.
    prefix: String,
    spec: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl S3Store {
    pub fn open(spec: &str, endpoint: Option<&str>) -> Result<S3Store, ObjectError> {
        let bad = |why: &str| ObjectError::BadSpec {
            spec: spec.to_owned(),
            why: why.to_owned(),
        };
        let rest = spec
            .strip_prefix("s3://")
            .ok_or_else(|| bad("not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket name (s3://bucket/prefix)"));
        }
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let (Some(key_id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(bad(
                "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ));
        };
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = endpoint
            .map(str::to_owned)
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"));
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_timeout(OPERATION_TIMEOUT)
            .build();
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .credentials_provider(Credentials::new(
                key_id,
                secret,
                env("AWS_SESSION_TOKEN"),
                None,
                "environment",
            ))
            .http_client(http)
            .timeout_config(timeouts);
        if let Some(endpoint) = endpoint {
            config = config.endpoint_url(endpoint).force_path_style(true);
        }
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            bucket: bucket.to_owned(),
            prefix,
            spec: spec.to_owned(),
        })
    }

    pub fn describe(&self) -> String {
        self.spec.clone()
    }

    fn failed<E, R>(&self, action: &'static str, key: &str, error: &SdkError<E, R>) -> ObjectError
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
        R: std::fmt::Debug + 'static,
    {
        ObjectError::Failed {
            store: self.spec.clone(),
            action,
            key: key.to_owned(),
            message: describe(error),
        }
    }

    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(format!("{}{key}", self.prefix))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.failed("put", key, &e))?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(format!("{}{key}", self.prefix))
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    ObjectError::NotFound {
                        store: self.spec.clone(),
                        key: key.to_owned(),
                    }
                } else {
                    self.failed("get", key, &e)
                }
            })?;
        let body = output
            .body
            .collect()
            .await
            .map_err(|e| ObjectError::Failed {
                store: self.spec.clone(),
                action: "read",
                key: key.to_owned(),
                message: e.to_string(),
            })?;
        Ok(body.into_bytes())
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, ObjectError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(format!("{}{prefix}", self.prefix))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.failed("list", prefix, &e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                out.push(Listed {
                    key: key.to_owned(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated().unwrap_or(false) => token = Some(next.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    pub async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(format!("{}{key}", self.prefix))
            .send()
            .await
            .map_err(|e| self.failed("delete", key, &e))?;
        Ok(())
    }
}

/// A person's account of a failed call: the service's code and message (AccessDenied,
/// NoSuchBucket...), or why the endpoint could not be reached, without the SDK's debug dump.
fn describe<E, R>(error: &SdkError<E, R>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug + 'static,
{
    let chain = |mut source: Option<&(dyn std::error::Error + 'static)>| {
        let mut parts = Vec::new();
        while let Some(error) = source {
            let text = error.to_string();
            if !parts.contains(&text) {
                parts.push(text);
            }
            source = error.source();
        }
        parts.join(": ")
    };
    match error {
        SdkError::ServiceError(service) => {
            let e = service.err();
            match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                _ => chain(Some(e)),
            }
        }
        SdkError::DispatchFailure(_) => format!(
            "cannot reach the endpoint: {}",
            chain(std::error::Error::source(error))
        ),
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        _ => chain(Some(error)),
    }
}
