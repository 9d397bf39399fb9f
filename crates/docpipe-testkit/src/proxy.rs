//! [`FaultyProxy`]: a loopback HTTP proxy in front of a test server that fails the requests a
//! [`FaultPlan`] picks (503 or a dropped connection), to show that transient storage faults are
//! retried.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use docpipe_store::StoreOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::http::{header_end, parse_head};
use crate::moto::{s3_env, s3_store_options};

/// What the proxy does to a request it chooses to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer `503 Service Unavailable` (a busy or failing store).
    ServiceUnavailable,
    /// Close the connection without answering (a reset or crashed front end).
    Disconnect,
}

/// Which requests fail: the first `first` ones, and every `every`-th one after that
/// (counting all requests from 1).
#[derive(Debug, Clone, Copy)]
pub struct FaultPlan {
    /// How the picked requests fail.
    pub fault: Fault,
    /// How many requests, from the first, fail.
    pub first: usize,
    /// Also fail every N-th request (numbered from 1); `None` or 0: only the first ones.
    pub every: Option<usize>,
}

impl FaultPlan {
    fn fails(&self, request_number: usize) -> bool {
        request_number <= self.first
            || self
                .every
                .is_some_and(|every| every > 0 && request_number.is_multiple_of(every))
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicUsize,
    faults: AtomicUsize,
}

/// A loopback HTTP proxy that forwards requests to `upstream` one connection per request,
/// except those its [`FaultPlan`] picks. Stops when dropped.
#[derive(Debug)]
pub struct FaultyProxy {
    address: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl FaultyProxy {
    /// Must be called inside a tokio runtime.
    pub async fn start(upstream: &str, plan: FaultPlan) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let upstream = upstream.to_owned();
        let task = tokio::spawn({
            let counters = Arc::clone(&counters);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    let counters = Arc::clone(&counters);
                    tokio::spawn(async move {
                        // A failed exchange is the client's problem to report, not ours.
                        let _ = serve(client, &upstream, plan, &counters).await;
                    });
                }
            }
        });
        Ok(Self {
            address,
            counters,
            task,
        })
    }

    /// `http://127.0.0.1:<port>`: the endpoint URL to give clients instead of the upstream's.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Requests received so far, failed ones included.
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    /// Requests the proxy failed so far.
    pub fn faults_injected(&self) -> usize {
        self.counters.faults.load(Ordering::SeqCst)
    }

    /// The AWS environment for reaching S3 through this proxy.
    pub fn env(&self) -> Vec<(String, String)> {
        s3_env(&self.endpoint())
    }

    /// Store options reaching S3 through this proxy, with short retries.
    pub fn store_options(&self) -> StoreOptions {
        s3_store_options(&self.endpoint())
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one request on `client`, then closes the connection (the forwarded request carries
/// `Connection: close`, so the client opens a fresh connection for the next one).
async fn serve(
    mut client: TcpStream,
    upstream: &str,
    plan: FaultPlan,
    counters: &Counters,
) -> std::io::Result<()> {
    let mut buffer = Vec::new();
    let end = loop {
        if let Some(end) = header_end(&buffer) {
            break end;
        }
        let mut chunk = [0u8; 8192];
        let read = client.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let Some(head) = parse_head(&buffer[..end]) else {
        return client
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
    };
    if head.chunked {
        return client
            .write_all(
                b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
    }
    let mut body = buffer.split_off(end);
    while body.len() < head.content_length {
        let mut chunk = vec![0u8; (head.content_length - body.len()).min(1 << 16)];
        let read = client.read(&mut chunk).await?;
        if read == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..read]);
    }

    let number = counters.requests.fetch_add(1, Ordering::SeqCst) + 1;
    if plan.fails(number) {
        counters.faults.fetch_add(1, Ordering::SeqCst);
        return match plan.fault {
            Fault::ServiceUnavailable => {
                let response =
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n";
                client.write_all(response.as_bytes()).await
            }
            Fault::Disconnect => client.shutdown().await,
        };
    }

    let mut server = TcpStream::connect(upstream).await?;
    let mut forwarded = head.request_line;
    forwarded.push_str("\r\n");
    for header in &head.headers {
        forwarded.push_str(header);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");
    server.write_all(forwarded.as_bytes()).await?;
    server.write_all(&body).await?;
    tokio::io::copy(&mut server, &mut client).await?;
    client.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_pick_the_first_and_every_nth_request() {
        let plan = FaultPlan {
            fault: Fault::ServiceUnavailable,
            first: 2,
            every: Some(5),
        };
        let failed: Vec<usize> = (1..=12).filter(|&n| plan.fails(n)).collect();
        assert_eq!(failed, [1, 2, 5, 10]);
    }
}
