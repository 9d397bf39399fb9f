//! [`HubServer`]: a small Hugging Face hub on a loopback port, answering the routes hub clients
//! use (`huggingface_hub`, the `hf-hub` crate), so that model resolution is tested offline:
//!
//! - `GET /api/models/{org}/{name}[/revision/{rev}]`: model info with `sha` and `siblings`;
//! - `GET|HEAD /{org}/{name}/resolve/{rev}/{file}`: small files directly (`ETag` = git blob
//!   id), `*.safetensors` as LFS files: a 302 to `/lfs/{sha256}` carrying `X-Linked-Etag`
//!   (= the sha256) and `X-Linked-Size`; both with `X-Repo-Commit` and range requests;
//! - errors as the hub gives them: 404 with `X-Error-Code` `RepoNotFound`, `RevisionNotFound`
//!   or `EntryNotFound`, and 401 `GatedRepo` for a gated repository without the token.
//!
//! Every request is logged ([`HubServer::requests`]), so tests can assert that a second run
//! downloads nothing, and faults can be planted: a download cut off part-way
//! ([`HubServer::cut_next_download`]) or a file served with a flipped byte
//! ([`HubServer::corrupt`]).
//!
//! Like [`FaultyProxy`](crate::FaultyProxy), it speaks just enough HTTP/1.1 itself, one request
//! per connection: a cut-off download must reach the client byte for byte before the connection
//! closes, which a full HTTP server does not promise when a response body fails.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{header_end, parse_head};

/// A model repository the server holds: commits of files, and branches or tags naming them.
#[derive(Debug, Clone, Default)]
pub struct HubRepo {
    id: String,
    commits: BTreeMap<String, BTreeMap<String, Bytes>>,
    refs: BTreeMap<String, String>,
    gated: bool,
}

impl HubRepo {
    /// An empty repository `org/name`; add commits with [`HubRepo::commit`].
    pub fn new(id: &str) -> Self {
        HubRepo {
            id: id.to_owned(),
            ..HubRepo::default()
        }
    }

    /// Adds commit `sha` (40 hex digits) holding the files of `folder` (not its subfolders),
    /// and points `branch` at it.
    pub fn commit(mut self, sha: &str, branch: &str, folder: &Path) -> std::io::Result<Self> {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(folder)? {
            let path = entry?.path();
            if path.is_file() {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                files.insert(name.into_owned(), Bytes::from(std::fs::read(&path)?));
            }
        }
        self.commits.insert(sha.to_owned(), files);
        self.refs.insert(branch.to_owned(), sha.to_owned());
        Ok(self)
    }

    /// Adds a file to commit `sha` (e.g. a `pytorch_model.bin` that clients must not fetch).
    pub fn with_file(mut self, sha: &str, name: &str, bytes: impl Into<Bytes>) -> Self {
        self.commits
            .entry(sha.to_owned())
            .or_default()
            .insert(name.to_owned(), bytes.into());
        self
    }

    /// Makes the repository gated: its files need the server's token.
    pub fn gated(mut self) -> Self {
        self.gated = true;
        self
    }
}

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRequest {
    /// `GET` or `HEAD`.
    pub method: String,
    /// The path, percent-decoded.
    pub path: String,
    /// The `Range` header, when there was one.
    pub range: Option<String>,
    /// The response status.
    pub status: u16,
    /// Body bytes sent (fewer than announced for a cut download).
    pub bytes: u64,
}

impl HubRequest {
    /// True for a request that sent file content beyond the one byte clients ask for to read a
    /// file's size (`Range: bytes=0-0`).
    pub fn is_download(&self) -> bool {
        self.bytes > 1 && !self.path.starts_with("/api/")
    }
}

#[derive(Debug, Default)]
struct Faults {
    /// File name → bytes after which its next download is cut off.
    cut: HashMap<String, usize>,
    /// File names served with a flipped byte.
    corrupt: HashSet<String>,
}

#[derive(Debug)]
struct State {
    address: SocketAddr,
    repos: HashMap<String, HubRepo>,
    token: Option<String>,
    log: Mutex<Vec<HubRequest>>,
    faults: Mutex<Faults>,
}

/// A hub on a free loopback port, stopped when dropped.
#[derive(Debug)]
pub struct HubServer {
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl HubServer {
    /// Serves `repos`; gated ones accept `Authorization: Bearer <token>` when `token` is given.
    pub fn start(repos: Vec<HubRepo>, token: Option<&str>) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let state = Arc::new(State {
            address: listener.local_addr()?,
            repos: repos.into_iter().map(|r| (r.id.clone(), r)).collect(),
            token: token.map(str::to_owned),
            log: Mutex::default(),
            faults: Mutex::default(),
        });
        let shared = Arc::clone(&state);
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // A client that hangs up mid-response is what some tests do on purpose.
                tokio::spawn(serve(stream, Arc::clone(&shared)));
            }
        });
        Ok(HubServer {
            state,
            runtime: Some(runtime),
        })
    }

    /// `http://127.0.0.1:<port>`, for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.state.address)
    }

    /// The variables a hub client needs to use this server and the cache under `hf_home`, with
    /// every other hub variable blanked so that the test machine's own cannot leak in.
    pub fn env(&self, hf_home: &Path) -> Vec<(String, String)> {
        [
            ("HF_ENDPOINT", self.endpoint()),
            ("HF_HOME", hf_home.display().to_string()),
            ("HF_HUB_CACHE", String::new()),
            ("HUGGINGFACE_HUB_CACHE", String::new()),
            ("HF_TOKEN", String::new()),
            ("HF_TOKEN_PATH", String::new()),
            ("HF_HUB_OFFLINE", String::new()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<HubRequest> {
        self.state
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Cuts the next download of `file` (in any repository) off after `bytes` bytes: the
    /// connection closes with the response incomplete.
    pub fn cut_next_download(&self, file: &str, bytes: usize) {
        self.state.faults().cut.insert(file.to_owned(), bytes);
    }

    /// Serves `file` (in any repository) with one byte flipped, its headers unchanged.
    pub fn corrupt(&self, file: &str) {
        self.state.faults().corrupt.insert(file.to_owned());
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What a route answers before the body is cut or corrupted.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    /// The file served, for the faults.
    file: Option<String>,
}

impl Answer {
    fn error(status: u16, code: &str) -> Answer {
        Answer {
            status,
            headers: vec![("x-error-code", code.to_owned())],
            body: Bytes::from(format!("{{\"error\": \"{code}\"}}")),
            file: None,
        }
    }
}

impl State {
    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The response to one request, and the log entry for it.
    fn answer(&self, method: &str, target: &str, header: impl Fn(&str) -> Option<String>) -> Reply {
        let path = percent_decode(target.split('?').next().unwrap_or_default());
        let range = header("range");
        let authorized = self.token.as_ref().is_some_and(|token| {
            header("authorization").as_deref() == Some(format!("Bearer {token}").as_str())
        });
        let get_or_head = matches!(method, "GET" | "HEAD");
        let answer = match route(&path) {
            Route::Info { repo, revision } if method == "GET" => self.info(repo, revision),
            Route::Resolve {
                repo,
                revision,
                file,
            } if get_or_head => self.resolve(repo, revision, file, authorized),
            Route::Lfs { sha256 } if get_or_head => self.lfs(sha256),
            _ => Answer::error(404, "NotFound"),
        };
        let reply = self.reply(answer, range.as_deref(), method == "HEAD");
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(HubRequest {
                method: method.to_owned(),
                path,
                range,
                status: reply.status,
                bytes: reply.body.len() as u64,
            });
        reply
    }

    fn repo_at(&self, repo: &str, revision: &str) -> Result<(&HubRepo, String), Answer> {
        let found = self
            .repos
            .get(repo)
            .ok_or_else(|| Answer::error(404, "RepoNotFound"))?;
        let sha = found
            .refs
            .get(revision)
            .cloned()
            .or_else(|| {
                found
                    .commits
                    .contains_key(revision)
                    .then(|| revision.to_owned())
            })
            .ok_or_else(|| Answer::error(404, "RevisionNotFound"))?;
        Ok((found, sha))
    }

    fn info(&self, repo: &str, revision: &str) -> Answer {
        let (found, sha) = match self.repo_at(repo, revision) {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        let siblings: Vec<_> = found.commits[&sha]
            .keys()
            .map(|name| serde_json::json!({ "rfilename": name }))
            .collect();
        let body = serde_json::json!({
            "id": found.id,
            "modelId": found.id,
            "sha": sha,
            "private": false,
            "gated": if found.gated { serde_json::json!("auto") } else { serde_json::json!(false) },
            "siblings": siblings,
        });
        Answer {
            status: 200,
            headers: vec![("content-type", "application/json".into())],
            body: Bytes::from(body.to_string()),
            file: None,
        }
    }

    fn resolve(&self, repo: &str, revision: &str, file: &str, authorized: bool) -> Answer {
        let (found, sha) = match self.repo_at(repo, revision) {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        if found.gated && !authorized {
            return Answer::error(401, "GatedRepo");
        }
        let commit = ("x-repo-commit", sha.clone());
        let Some(bytes) = found.commits[&sha].get(file) else {
            let mut answer = Answer::error(404, "EntryNotFound");
            answer.headers.push(commit);
            return answer;
        };
        if file.ends_with(".safetensors") {
            let sha256 = hex(&Sha256::digest(bytes));
            return Answer {
                status: 302,
                headers: vec![
                    commit,
                    ("location", format!("http://{}/lfs/{sha256}", self.address)),
                    ("x-linked-etag", format!("\"{sha256}\"")),
                    ("x-linked-size", bytes.len().to_string()),
                    ("etag", format!("\"{sha256}\"")),
                ],
                body: Bytes::new(),
                file: None,
            };
        }
        let mut blob = Sha1::new();
        blob.update(format!("blob {}\0", bytes.len()));
        blob.update(bytes);
        Answer {
            status: 200,
            headers: vec![commit, ("etag", format!("\"{}\"", hex(&blob.finalize())))],
            body: bytes.clone(),
            file: Some(file.to_owned()),
        }
    }

    /// The LFS storage a 302 points at, by the content's sha256.
    fn lfs(&self, sha256: &str) -> Answer {
        let found = self
            .repos
            .values()
            .flat_map(|repo| repo.commits.values())
            .flat_map(|files| files.iter())
            .find(|(_, bytes)| hex(&Sha256::digest(bytes)) == sha256);
        match found {
            Some((name, bytes)) => Answer {
                status: 200,
                headers: vec![("etag", format!("\"{sha256}\""))],
                body: bytes.clone(),
                file: Some(name.clone()),
            },
            None => Answer::error(404, "EntryNotFound"),
        }
    }

    /// The response, with the range applied (416 for one past the end, as the hub answers) and the
    /// planted faults.
    fn reply(&self, answer: Answer, range: Option<&str>, head: bool) -> Reply {
        let Answer {
            mut status,
            mut headers,
            mut body,
            file,
        } = answer;
        if let Some(file) = file.as_ref().filter(|_| status == 200) {
            headers.push(("accept-ranges", "bytes".into()));
            if self.faults().corrupt.contains(file) && !body.is_empty() {
                let mut bytes = body.to_vec();
                let middle = bytes.len() / 2;
                bytes[middle] ^= 0xff;
                body = Bytes::from(bytes);
            }
            match range.map(|r| parse_range(r, body.len())) {
                Some(Some((start, end))) => {
                    headers.push((
                        "content-range",
                        format!("bytes {start}-{}/{}", end - 1, body.len()),
                    ));
                    body = body.slice(start..end);
                    status = 206;
                }
                Some(None) => {
                    headers.push(("content-range", format!("bytes */{}", body.len())));
                    body = Bytes::new();
                    status = 416;
                }
                None => {}
            }
        }
        headers.push(("content-length", body.len().to_string()));
        headers.push(("connection", "close".into()));
        let mut head_bytes = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (name, value) in &headers {
            head_bytes.push_str(&format!("{name}: {value}\r\n"));
        }
        head_bytes.push_str("\r\n");
        let cut = file
            .filter(|_| !head && body.len() > 1)
            .and_then(|file| self.faults().cut.remove(&file));
        let body = if head {
            Bytes::new()
        } else if let Some(after) = cut.filter(|&after| after < body.len()) {
            body.slice(..after)
        } else {
            body
        };
        Reply {
            status,
            head: Bytes::from(head_bytes),
            body,
        }
    }
}

/// What is written back: the head, then the body (shorter than its `content-length` when the
/// download is cut off), then the connection is closed.
struct Reply {
    status: u16,
    head: Bytes,
    body: Bytes,
}

/// Answers the one request of a connection (every response says `connection: close`).
async fn serve(mut stream: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let end = loop {
        if let Some(end) = header_end(&buffer) {
            break end;
        }
        let mut chunk = [0u8; 8192];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let Some(head) = parse_head(&buffer[..end]) else {
        return Ok(());
    };
    let mut request_line = head.request_line.split_whitespace();
    let method = request_line.next().unwrap_or_default();
    let target = request_line.next().unwrap_or_default();
    let header = |name: &str| {
        head.headers.iter().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let reply = state.answer(method, target, header);
    stream.write_all(&reply.head).await?;
    stream.write_all(&reply.body).await?;
    stream.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        416 => "Range Not Satisfiable",
        _ => "Not Found",
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Info {
        repo: &'a str,
        revision: &'a str,
    },
    Resolve {
        repo: &'a str,
        revision: &'a str,
        file: &'a str,
    },
    Lfs {
        sha256: &'a str,
    },
    Other,
}

/// The route of a decoded path. Repository ids are `org/name`; a revision is one path segment
/// (clients encode a `/` in it as `%2F`, decoded here, so `refs/pr/1` is not supported).
fn route(path: &str) -> Route<'_> {
    let path = path.trim_start_matches('/');
    if let Some(rest) = path.strip_prefix("api/models/") {
        return match split_repo(rest) {
            Some((repo, "")) => Route::Info {
                repo,
                revision: "main",
            },
            Some((repo, tail)) => match tail.strip_prefix("revision/") {
                Some(revision) if !revision.is_empty() => Route::Info { repo, revision },
                _ => Route::Other,
            },
            None => Route::Other,
        };
    }
    if let Some(sha256) = path.strip_prefix("lfs/") {
        return Route::Lfs { sha256 };
    }
    let resolve = split_repo(path).and_then(|(repo, tail)| {
        let (revision, file) = tail.strip_prefix("resolve/")?.split_once('/')?;
        Some(Route::Resolve {
            repo,
            revision,
            file,
        })
    });
    resolve.unwrap_or(Route::Other)
}

/// `org/name` at the start of `path`, and what follows it (after a `/`; empty at the end).
fn split_repo(path: &str) -> Option<(&str, &str)> {
    let org = path.find('/')?;
    let end = path[org + 1..]
        .find('/')
        .map_or(path.len(), |i| org + 1 + i);
    Some((&path[..end], path.get(end + 1..).unwrap_or("")))
}

fn parse_range(range: &str, length: usize) -> Option<(usize, usize)> {
    let (start, end) = range.strip_prefix("bytes=")?.split_once('-')?;
    let start: usize = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => length,
        end => end.parse::<usize>().ok()?.saturating_add(1).min(length),
    };
    (start < end).then_some((start, end))
}

fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_pair = bytes
            .get(i + 1..i + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[i], hex_pair) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_of_the_hub_api() {
        assert_eq!(
            route("/api/models/org/name"),
            Route::Info {
                repo: "org/name",
                revision: "main"
            }
        );
        assert_eq!(
            route("/api/models/org/name/revision/v1.0"),
            Route::Info {
                repo: "org/name",
                revision: "v1.0"
            }
        );
        assert_eq!(
            route("/org/name/resolve/main/model.safetensors"),
            Route::Resolve {
                repo: "org/name",
                revision: "main",
                file: "model.safetensors"
            }
        );
        assert_eq!(route("/lfs/abc"), Route::Lfs { sha256: "abc" });
        assert_eq!(route("/org/name/blob/main/x"), Route::Other);
        assert_eq!(percent_decode("/a%2Fb%20c"), "/a/b c");
    }

    #[test]
    fn ranges_are_clamped_to_the_body() {
        assert_eq!(parse_range("bytes=0-0", 10), Some((0, 1)));
        assert_eq!(parse_range("bytes=4-", 10), Some((4, 10)));
        assert_eq!(parse_range("bytes=4-99", 10), Some((4, 10)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
    }
}
