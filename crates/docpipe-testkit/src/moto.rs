//! [`MotoServer`]: moto's S3 server as a child process on a free loopback port, with the
//! `AWS_*` variables and store options that point at it. Either one per test, stopped when
//! dropped, or one per test process ([`MotoServer::shared`]) for suites that need a fresh
//! bucket in every test. Tests fail, never skip, when moto is not installed (`make setup`).

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use docpipe_store::StoreOptions;

use crate::http::simple_request;

/// Credentials moto accepts (it does not check them); never real ones.
const ACCESS_KEY: &str = "testing";
const SECRET_KEY: &str = "testing";
const REGION: &str = "us-east-1";
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `$0 "$@"` (moto) and stops it when its own stdin reaches end of file: the test process
/// holds the other end of that pipe and never closes it, so the kernel closes it when the
/// process exits, however it exits (a failed test, a timeout's SIGKILL). Waiting on the server
/// makes the shell exit with it, so a server that fails to start is seen at once. The
/// watcher reads a copy of stdin (fd 3) because a background job's own stdin is /dev/null.
const STOP_WITH_STDIN: &str = r#"exec 3<&0
"$0" "$@" </dev/null &
server=$!
{ cat >/dev/null <&3; kill "$server" 2>/dev/null; } &
wait "$server""#;

/// Shown with its message by `Debug` too, so that `.expect()` in a test prints what to do.
/// `Clone` so that every user of the [shared server](MotoServer::shared) sees why it did not
/// start.
#[derive(Clone, thiserror::Error)]
pub enum TestkitError {
    /// The `moto_server` executable does not exist: moto is not installed.
    #[error(
        "moto_server not found at {path}: run `make setup` (or scripts/setup-moto.sh), or point \
         DOCPIPE_MOTO_SERVER at a moto_server executable"
    )]
    MotoMissing {
        /// Where it was looked for: `$DOCPIPE_MOTO_SERVER`, else the checkout's
        /// `.cache/moto-venv/bin/moto_server`.
        path: String,
    },
    /// moto could not be spawned, exited, or did not answer within 60 s.
    #[error("moto_server did not start: {message}")]
    MotoStart {
        /// What happened, with the end of moto's log.
        message: String,
    },
    /// moto refused or failed the bucket creation request.
    #[error("cannot create bucket {bucket}: {message}")]
    Bucket {
        /// The bucket asked for.
        bucket: String,
        /// The HTTP status or the connection error.
        message: String,
    },
    /// A [`TestStore`](crate::TestStore) of the local backend could not create its folder.
    #[error("cannot create a temporary folder: {message}")]
    Folder {
        /// The I/O error.
        message: String,
    },
}

impl std::fmt::Debug for TestkitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// How long a server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifetime {
    /// Until the [`MotoServer`] is dropped.
    Owner,
    /// Until the test process exits (see [`STOP_WITH_STDIN`]).
    Process,
}

/// A moto S3 server on a free loopback port.
#[derive(Debug)]
pub struct MotoServer {
    /// moto itself, or for a process-long server the shell that stops it.
    child: Child,
    address: String,
    /// moto's request log: an unnamed temporary file, so nothing is left behind even by a
    /// server that outlives every destructor.
    log: File,
}

impl MotoServer {
    /// Starts moto, killed when dropped, and creates `bucket`: one server per test, so buckets
    /// never leak between tests. Fails (never skips) when moto is not installed, so a test run
    /// without `make setup` says what is missing instead of passing vacuously.
    pub fn start(bucket: &str) -> Result<Self, TestkitError> {
        Self::start_with(&moto_server_path(), bucket)
    }

    /// Like [`MotoServer::start`] with an explicit `moto_server` executable.
    pub fn start_with(program: &Path, bucket: &str) -> Result<Self, TestkitError> {
        let server = Self::spawn(program, Lifetime::Owner)?;
        server.create_bucket(bucket)?;
        Ok(server)
    }

    /// The test process's own server, started by the first call and stopped when the process
    /// exits. Starting moto takes about a second, most of a storage test's time; a suite that
    /// runs every behaviour against S3 shares this one and gives each test a bucket of its own
    /// ([`MotoServer::create_bucket`]) instead.
    pub fn shared() -> Result<&'static MotoServer, TestkitError> {
        static SHARED: OnceLock<Result<MotoServer, TestkitError>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::spawn(&moto_server_path(), Lifetime::Process))
            .as_ref()
            .map_err(TestkitError::clone)
    }

    fn spawn(program: &Path, lifetime: Lifetime) -> Result<Self, TestkitError> {
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
        let log = tempfile::tempfile().map_err(|e| start_error(e.to_string()))?;
        let stderr = log.try_clone().map_err(|e| start_error(e.to_string()))?;
        let (mut command, stdin) = match lifetime {
            Lifetime::Owner => (Command::new(program), Stdio::null()),
            Lifetime::Process => {
                let mut shell = Command::new("sh");
                shell.args(["-c", STOP_WITH_STDIN]).arg(program);
                (shell, Stdio::piped())
            }
        };
        let child = command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(stdin)
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

    /// The last 2000 bytes of the log, read without moving the offset moto writes at.
    fn log_tail(&self) -> String {
        let length = self.log.metadata().map_or(0, |meta| meta.len());
        let start = length.saturating_sub(2000);
        let mut tail = vec![0; usize::try_from(length - start).unwrap_or_default()];
        let read = self.log.read_at(&mut tail, start).unwrap_or_default();
        String::from_utf8_lossy(&tail[..read]).into_owned()
    }

    /// Creates `bucket` on this server, e.g. one per test on the [shared](MotoServer::shared)
    /// server.
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

    /// `http://127.0.0.1:<port>`: the S3 endpoint URL (`AWS_ENDPOINT_URL`).
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

/// Store options for an S3 endpoint nothing listens on (a loopback port just released), with
/// the dummy credentials and the short retries of [`StoreOptions::quick`]: connections are
/// refused, retried a bounded number of times, then reported.
pub fn unreachable_s3_options() -> std::io::Result<StoreOptions> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    Ok(s3_store_options(&format!("http://127.0.0.1:{port}")))
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

    #[test]
    fn the_shared_server_is_started_once() {
        let first = MotoServer::shared().expect("moto S3 server");
        let second = MotoServer::shared().unwrap();
        assert!(std::ptr::eq(first, second));
        first.create_bucket("shared").unwrap();
        assert_eq!(
            simple_request(second.address(), "HEAD", "/shared").unwrap(),
            200
        );
    }

    /// What stops the shared server when the test process exits: its stdin reaching its end.
    #[test]
    fn a_process_long_server_stops_when_its_stdin_closes() {
        let mut server =
            MotoServer::spawn(&moto_server_path(), Lifetime::Process).expect("moto S3 server");
        drop(server.child.stdin.take());
        let closed = Instant::now();
        let within = |what: &str| {
            assert!(closed.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(50));
        };
        while simple_request(server.address(), "GET", "/").is_ok() {
            within("moto still answers");
        }
        while server.child.try_wait().unwrap().is_none() {
            within("the shell did not exit with moto");
        }
    }
}
