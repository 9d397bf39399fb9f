use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use docpipe_store::StoreOptions;

use crate::http::simple_request;

/// Credentials moto accepts (it does not check them); never real ones.
const ACCESS_KEY: &str = "testing";
const SECRET_KEY: &str = "testing";
const REGION: &str = "us-east-1";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Shown with its message by `Debug` too, so that `.expect()` in a test prints what to do.
#[derive(thiserror::Error)]
pub enum TestkitError {
    #[error(
        "moto_server not found at {path}: run `make setup` (or scripts/setup-moto.sh), or point \
         DOCPIPE_MOTO_SERVER at a moto_server executable"
    )]
    MotoMissing { path: String },
    #[error("moto_server did not start: {message}")]
    MotoStart { message: String },
    #[error("cannot create bucket {bucket}: {message}")]
    Bucket { bucket: String, message: String },
}

impl std::fmt::Debug for TestkitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// A moto S3 server on a free loopback port, killed when dropped. Start one per test: buckets
/// then never leak between tests.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    address: String,
    log: tempfile::NamedTempFile,
}

impl MotoServer {
    /// Starts moto and creates `bucket`. Fails (never skips) when moto is not installed, so a
    /// test run without `make setup` says what is missing instead of passing vacuously.
    pub fn start(bucket: &str) -> Result<Self, TestkitError> {
        Self::start_with(&moto_server_path(), bucket)
    }

    /// Like [`MotoServer::start`] with an explicit `moto_server` executable.
    pub fn start_with(program: &Path, bucket: &str) -> Result<Self, TestkitError> {
        if !program.is_file() {
            return Err(TestkitError::MotoMissing {
                path: program.display().to_string(),
            });
        }
        let start_error = |message: String| TestkitError::MotoStart { message };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map_err(|e| start_error(format!("no free port: {e}")))?
            .port();
        // moto logs every request; a file never fills up the way a pipe would.
        let log = tempfile::NamedTempFile::new().map_err(|e| start_error(e.to_string()))?;
        let stderr = log.reopen().map_err(|e| start_error(e.to_string()))?;
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| start_error(format!("{}: {e}", program.display())))?;
        let mut server = Self {
            child,
            address: format!("127.0.0.1:{port}"),
            log,
        };
        server.wait_ready()?;
        server.create_bucket(bucket)?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<(), TestkitError> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(TestkitError::MotoStart {
                    message: format!("exited with {status}: {}", self.log_tail()),
                });
            }
            if simple_request(&self.address, "GET", "/").is_ok_and(|status| status == 200) {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(TestkitError::MotoStart {
                    message: format!(
                        "not answering on {} after {START_TIMEOUT:?}: {}",
                        self.address,
                        self.log_tail()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log.path()).unwrap_or_default();
        let start = log.len().saturating_sub(2000);
        log.get(start..).unwrap_or_default().to_owned()
    }

    pub fn create_bucket(&self, bucket: &str) -> Result<(), TestkitError> {
        match simple_request(&self.address, "PUT", &format!("/{bucket}")) {
            Ok(200) => Ok(()),
            Ok(status) => Err(TestkitError::Bucket {
                bucket: bucket.to_owned(),
                message: format!("HTTP {status}"),
            }),
            Err(e) => Err(TestkitError::Bucket {
                bucket: bucket.to_owned(),
                message: e.to_string(),
            }),
        }
    }

    /// `127.0.0.1:<port>`, e.g. as the upstream of a [`FaultyProxy`](crate::FaultyProxy).
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The environment a child process (e.g. the `docpipe` binary) needs to reach this server.
    pub fn env(&self) -> Vec<(String, String)> {
        s3_env(&self.endpoint())
    }

    /// Store options reaching this server, with the short retries of
    /// [`StoreOptions::quick`].
    pub fn store_options(&self) -> StoreOptions {
        s3_store_options(&self.endpoint())
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // The server may already be gone; either way there is nothing left to clean up.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The standard AWS variables for an S3-compatible endpoint with moto's dummy credentials.
pub(crate) fn s3_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", REGION),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect()
}

pub(crate) fn s3_store_options(endpoint: &str) -> StoreOptions {
    s3_env(endpoint)
        .into_iter()
        .fold(StoreOptions::quick(), |options, (key, value)| {
            options.with_config(key, value)
        })
}

fn moto_server_path() -> PathBuf {
    match std::env::var_os("DOCPIPE_MOTO_SERVER") {
        Some(path) => PathBuf::from(path),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/moto-venv/bin/moto_server")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_server_says_how_to_install_it() {
        let err = MotoServer::start_with(Path::new("/nonexistent/moto_server"), "b").unwrap_err();
        assert!(matches!(err, TestkitError::MotoMissing { .. }));
        let shown = format!("{err:?}");
        assert!(shown.contains("make setup"), "{shown}");
        assert!(shown.contains("/nonexistent/moto_server"), "{shown}");
    }

    #[test]
    fn starts_and_creates_buckets() {
        let server = MotoServer::start("first").expect("moto S3 server");
        server.create_bucket("second").unwrap();
        let status = |bucket: &str| simple_request(server.address(), "HEAD", bucket).unwrap();
        assert_eq!(status("/second"), 200);
        assert_eq!(status("/missing"), 404);
        assert!(server
            .env()
            .iter()
            .any(|(k, v)| k == "AWS_ENDPOINT_URL" && *v == server.endpoint()));
    }
}
