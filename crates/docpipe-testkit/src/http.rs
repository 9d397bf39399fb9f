//! Just enough HTTP/1.1 to create buckets and to proxy single requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Sends a body-less request and returns the response status.
pub(crate) fn simple_request(addr: &str, method: &str, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    status_of(&response).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not an HTTP response: {:?}",
                String::from_utf8_lossy(&response[..response.len().min(200)])
            ),
        )
    })
}

fn status_of(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The end of the header block (index just past `\r\n\r\n`), when complete.
pub(crate) fn header_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// A parsed request head: the header lines without `Connection`, and the body length.
pub(crate) struct RequestHead {
    pub request_line: String,
    pub headers: Vec<String>,
    pub content_length: usize,
    pub chunked: bool,
}

pub(crate) fn parse_head(head: &[u8]) -> Option<RequestHead> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n").filter(|line| !line.is_empty());
    let request_line = lines.next()?.to_owned();
    let mut headers = Vec::new();
    let mut content_length = 0;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "connection" => continue,
            "content-length" => content_length = value.trim().parse().ok()?,
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
        headers.push(line.to_owned());
    }
    Some(RequestHead {
        request_line,
        headers,
        content_length,
        chunked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_head() {
        let raw = b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello";
        let end = header_end(raw).unwrap();
        assert_eq!(&raw[end..], b"hello");
        let head = parse_head(&raw[..end]).unwrap();
        assert_eq!(head.request_line, "PUT /b/k HTTP/1.1");
        assert_eq!(head.content_length, 5);
        assert!(!head.chunked);
        assert_eq!(head.headers, ["Host: x", "Content-Length: 5"]);
        assert_eq!(
            status_of(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
    }
}
