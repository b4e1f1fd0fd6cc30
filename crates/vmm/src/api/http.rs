//! A minimal HTTP/1.1 server side: request parsing with size limits (no chunked bodies: a body
//! needs Content-Length), keep-alive, and JSON responses.

/// Most bytes of a request line plus headers.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most bytes of a request body.
pub const MAX_BODY: usize = 64 * 1024;

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method, as sent (`GET`, `PUT`, ...).
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// The body (Content-Length bytes).
    pub body: Vec<u8>,
    /// Whether the connection closes after the response.
    pub close: bool,
}

/// A response with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// JSON body.
    pub body: String,
    /// Methods for an `Allow` header (405).
    pub allow: Option<String>,
    /// Close the connection after sending.
    pub close: bool,
}

impl Response {
    /// A 200 response with `value` as its body.
    pub fn json(value: &serde_json::Value) -> Self {
        Response {
            status: 200,
            body: value.to_string(),
            allow: None,
            close: false,
        }
    }

    /// An error response `{ "error": message }`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Response {
            status,
            body: serde_json::json!({ "error": message.into() }).to_string(),
            allow: None,
            close: false,
        }
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.body.len()
        );
        if let Some(a) = &self.allow {
            head += &format!("Allow: {a}\r\n");
        }
        if self.close {
            head += "Connection: close\r\n";
        }
        head += "\r\n";
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The outcome of looking at buffered bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A request and how many bytes it used.
    Done(Request, usize),
    /// The request is malformed or too large: answer this, then close.
    Bad(Response),
}

fn bad(status: u16, msg: &str) -> Parsed {
    let mut r = Response::error(status, msg);
    r.close = true;
    Parsed::Bad(r)
}

/// Parses the first request in `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            bad(431, "request head over 8 KiB")
        } else {
            Parsed::Incomplete
        };
    };
    if end > MAX_HEAD {
        return bad(431, "request head over 8 KiB");
    }
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return bad(400, "request head is not UTF-8");
    };
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad(400, "malformed request line");
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return bad(400, "malformed method");
    }
    let mut close = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return bad(400, "only HTTP/1.0 and HTTP/1.1 are served"),
    };
    if !target.starts_with('/') {
        return bad(400, "the request target must be a path");
    }
    let path = target.split('?').next().unwrap_or(target);
    let mut length: Option<usize> = None;
    for h in lines {
        let Some((name, value)) = h.split_once(':') else {
            return bad(400, "malformed header line");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) if length.is_none_or(|l| l == n) => length = Some(n),
                _ => return bad(400, "bad Content-Length"),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return bad(411, "chunked bodies are not accepted: send Content-Length");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                close = true;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                close = false;
            }
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        return bad(413, "request body over 64 KiB");
    }
    let start = end + 4;
    if buf.len() < start + length {
        return Parsed::Incomplete;
    }
    Parsed::Done(
        Request {
            method: method.to_string(),
            path: path.to_string(),
            body: buf[start..start + length].to_vec(),
            close,
        },
        start + length,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_bodies_keep_alive_and_pipelining() {
        let two = b"PUT /a?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /b HTTP/1.1\r\nConnection: close\r\n\r\n";
        let Parsed::Done(r, n) = parse(two) else {
            panic!("first request")
        };
        assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", "/a"));
        assert_eq!(r.body, b"{}");
        assert!(!r.close);
        let Parsed::Done(r, m) = parse(&two[n..]) else {
            panic!("second request")
        };
        assert_eq!(r.path, "/b");
        assert!(r.close);
        assert_eq!(n + m, two.len());
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Parsed::Incomplete
        );
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Incomplete);
    }

    #[test]
    fn bad_and_oversized_requests_get_4xx_and_close() {
        let status = |b: &[u8]| match parse(b) {
            Parsed::Bad(r) => {
                assert!(r.close);
                r.status
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(status(b"GET /\r\n\r\n"), 400);
        assert_eq!(status(b"get / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/2\r\n\r\n"), 400);
        assert_eq!(status(b"GET x HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            413
        );
        assert_eq!(status(&vec![b'a'; MAX_HEAD + 1]), 431);
    }

    #[test]
    fn responses_carry_length_allow_and_close() {
        let mut r = Response::error(405, "no");
        r.allow = Some("GET".into());
        r.close = true;
        let text = String::from_utf8(r.encode()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Length: 14\r\n"), "{text}");
        assert!(text.contains("Allow: GET\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"error\":\"no\"}"), "{text}");
    }
}
