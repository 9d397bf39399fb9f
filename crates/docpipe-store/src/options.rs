//! [`StoreOptions`]: client and retry settings for remote stores. They are explicit rather than
//! object_store's defaults so that a run's tolerance of a flaky store is documented
//! (docs/storage.md) and tests can shorten it ([`StoreOptions::quick`]).

use std::time::Duration;

use object_store::{BackoffConfig, RetryConfig};

/// Client and retry settings applied to every remote store (S3, GCS, Azure).
///
/// Defaults, chosen for long batch runs against cloud storage:
/// - up to 5 retries per request, backing off exponentially from 200 ms (×2 each time, with
///   jitter) to at most 15 s, and giving up on a request 3 minutes after its first attempt;
/// - 5 s to establish a connection, 120 s for a whole request (a 10 MiB multipart part on a
///   slow link fits comfortably).
///
/// Retried: HTTP 5xx, 429 and 408 responses, connections that fail or close before a response,
/// and timeouts of idempotent requests (GET, HEAD, LIST, part uploads). Not retried: 4xx errors
/// such as missing objects, denied access or a create-only conflict.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How often and for how long a failed request is retried, with what backoff.
    pub retry: RetryConfig,
    /// Limit on establishing one connection.
    pub connect_timeout: Duration,
    /// Limit on one whole request, body included; a request that runs past it fails (and is retried
    /// if idempotent).
    pub request_timeout: Duration,
    /// Extra builder settings applied after the environment, e.g. `("aws_endpoint", ...)`.
    /// For tests and embedding programs; pipeline files never reach this.
    pub config: Vec<(String, String)>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            retry: RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(15),
                    base: 2.0,
                },
                max_retries: 5,
                retry_timeout: Duration::from_secs(180),
            },
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            config: Vec::new(),
        }
    }
}

impl StoreOptions {
    /// Adds a builder setting, using the same key names as the environment variables
    /// (`aws_endpoint_url`, `aws_access_key_id`, `aws_allow_http`, ...), case-insensitive.
    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config
            .push((key.into().to_ascii_lowercase(), value.into()));
        self
    }

    /// Short retries and timeouts, so that tests of failure paths finish in seconds.
    pub fn quick() -> Self {
        Self {
            retry: RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(10),
                    max_backoff: Duration::from_millis(100),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(10),
            },
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            config: Vec::new(),
        }
    }
}
