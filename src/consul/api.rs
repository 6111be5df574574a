//! The few Consul HTTP API calls the adapter makes, over reqwest, written
//! to the documented API (`shared/reference/consul-api.md`): writes answer
//! 200 with an empty body, errors answer text/plain with a status code.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A failed Consul request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiError {
    /// The agent answered with an error status; `body` is its text.
    Status { code: u16, body: String },
    /// No answer: connection refused or reset, timeout.
    Transport(String),
    /// An answer that does not parse, or is larger than the cap
    /// ([`MAX_BODY`]).
    Decode(String),
    /// A request refused before it was sent (a path with a `.` or `..`
    /// segment, which URL parsing would turn into another path).
    Invalid(String),
}

impl ApiError {
    /// The agent no longer holds our registration or check: 404 on an
    /// unknown check, or the older agents' (and string-matching clients')
    /// 500 "does not have associated TTL".
    pub(crate) fn forgot_us(&self) -> bool {
        match self {
            ApiError::Status { code: 404, .. } => true,
            ApiError::Status { code: 500, body } => body.contains("does not have associated TTL"),
            _ => false,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Status { code, body } => {
                write!(f, "Unexpected response code: {code} ({})", body.trim())
            }
            ApiError::Transport(e) => write!(f, "consul unreachable: {e}"),
            ApiError::Decode(e) => write!(f, "cannot read consul's answer: {e}"),
            ApiError::Invalid(e) => write!(f, "not sent to consul: {e}"),
        }
    }
}

/// The largest answer body read from the agent (64 MiB): a health answer
/// of thousands of nodes fits; whatever answers at the agent's address
/// cannot stream an unbounded body into memory.
pub(crate) const MAX_BODY: usize = 64 << 20;

/// The largest error body kept (the rest is cut off, not an error).
const MAX_ERROR_BODY: usize = 64 << 10;

/// An ACL token: sent as `X-Consul-Token`, never printed (`Debug` shows
/// `<redacted>`).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Token(String);

impl Token {
    /// `None` for an empty token.
    pub(crate) fn new(t: impl Into<String>) -> Option<Token> {
        let t = t.into();
        (!t.is_empty()).then_some(Token(t))
    }

    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// An HTTP client bound to one agent, token and datacenter.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    /// `http(s)://host:port`, without a trailing slash.
    base: String,
    token: Option<Token>,
    /// The TLS settings the client was built with.
    #[cfg(feature = "sidecar")]
    tls: super::AgentTls,
    datacenter: Option<String>,
    /// Timeout of a request that does not block.
    timeout: Duration,
}

/// Reads the `X-Consul-Index` header; absent or unreadable gives `None`.
fn index_of(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl Api {
    pub(crate) fn new(
        base: String,
        token: Option<String>,
        datacenter: Option<String>,
        timeout: Duration,
        tls: &super::AgentTls,
    ) -> Result<Api, String> {
        let http = super::agent_client(&base, tls, Some(timeout))?;
        Ok(Api {
            http,
            base,
            token: token.and_then(Token::new),
            #[cfg(feature = "sidecar")]
            tls: tls.clone(),
            datacenter,
            timeout,
        })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The same client with another ACL token (observe mode's login).
    pub(crate) fn with_token(&self, token: Option<String>) -> Api {
        Api {
            token: token.and_then(Token::new),
            ..self.clone()
        }
    }

    /// A POST with an optional JSON body whose answer is JSON
    /// (`/v1/acl/login`, `/v1/acl/logout`).
    pub(crate) async fn post_read<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ApiError> {
        check_path(path)?;
        let mut req = self.request(reqwest::Method::POST, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(dc) = &self.datacenter {
            req = req.query(&[("dc", dc)]);
        }
        let resp = Self::send(req).await?;
        let bytes = Self::body(resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// The ACL token requests carry.
    #[cfg(any(feature = "sidecar", test))]
    pub(crate) fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    /// The TLS settings of the client.
    #[cfg(feature = "sidecar")]
    pub(crate) fn tls(&self) -> &super::AgentTls {
        &self.tls
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.base))
            .timeout(self.timeout);
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t.secret());
        }
        req
    }

    async fn send(req: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let resp = req
            .send()
            .await
            .map_err(|e| ApiError::Transport(error_chain(&e)))?;
        let code = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(ApiError::Status {
            code,
            body: error_body(resp).await,
        })
    }

    /// The answer's body, at most [`MAX_BODY`] bytes.
    async fn body(resp: reqwest::Response) -> Result<Vec<u8>, ApiError> {
        read_capped(resp, MAX_BODY).await.map_err(|e| match e {
            Capped::Transport(e) => ApiError::Transport(e),
            Capped::TooLarge(e) => ApiError::Decode(e),
        })
    }

    /// A write: PUT with an optional JSON body, 200 and an empty body back.
    pub(crate) async fn put(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(), ApiError> {
        check_path(path)?;
        let mut req = self.request(reqwest::Method::PUT, path).query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        Self::send(req).await.map(drop)
    }

    /// A write whose answer is JSON (`/v1/session/create`, `/v1/txn`):
    /// PUT with a JSON body, the decoded answer back.
    #[cfg(feature = "strong")]
    pub(crate) async fn put_read<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ApiError> {
        check_path(path)?;
        let mut req = self.request(reqwest::Method::PUT, path).json(body);
        if let Some(dc) = &self.datacenter {
            req = req.query(&[("dc", dc)]);
        }
        let resp = Self::send(req).await?;
        let bytes = Self::body(resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// A read: GET, the decoded JSON and the `X-Consul-Index` header.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        timeout: Option<Duration>,
    ) -> Result<(T, Option<u64>), ApiError> {
        check_path(path)?;
        let mut req = self.request(reqwest::Method::GET, path).query(query);
        if let Some(dc) = &self.datacenter {
            req = req.query(&[("dc", dc)]);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = Self::send(req).await?;
        let index = index_of(&resp);
        let bytes = Self::body(resp).await?;
        let value = serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))?;
        Ok((value, index))
    }
}

impl Api {
    /// A GET for diagnosis: the status, the `Date` header and the body
    /// (at most [`MAX_BODY`]), whatever the status.
    pub(crate) async fn probe(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(u16, Option<String>, Vec<u8>), ApiError> {
        check_path(path)?;
        let mut req = self.request(reqwest::Method::GET, path).query(query);
        if let Some(dc) = &self.datacenter {
            req = req.query(&[("dc", dc)]);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ApiError::Transport(error_chain(&e)))?;
        let code = resp.status().as_u16();
        let date = resp
            .headers()
            .get("Date")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Self::body(resp).await?;
        Ok((code, date, body))
    }
}

/// Refuses a path with a `.` or `..` segment: URL parsing removes dot
/// segments (`%2e` too), so `kv/a/../b` would read `kv/b` while a write
/// of the same key through `/v1/txn` names it literally.
fn check_path(path: &str) -> Result<(), ApiError> {
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err(ApiError::Invalid(format!(
            "{path:?} has a \".\" or \"..\" segment (Consul keys and IDs with those cannot be addressed in a URL)"
        )));
    }
    Ok(())
}

/// Why a body was not read whole.
#[derive(Debug)]
pub(crate) enum Capped {
    /// The connection failed while reading.
    Transport(String),
    /// Larger than the cap.
    TooLarge(String),
}

impl std::fmt::Display for Capped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Capped::Transport(e) | Capped::TooLarge(e) => f.write_str(e),
        }
    }
}

/// Reads `resp`'s body, refusing more than `limit` bytes (by its
/// `Content-Length` before reading, or as it streams in).
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, Capped> {
    let too_large = || Capped::TooLarge(format!("the answer is larger than {limit} bytes"));
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Capped::Transport(error_chain(&e)))?
    {
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// An error answer's text, cut at [`MAX_ERROR_BODY`] bytes.
pub(crate) async fn error_body(mut resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_ERROR_BODY - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() == MAX_ERROR_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// reqwest's error with its causes ("error sending request: connection
/// refused"), which its Display alone leaves out.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Percent-encodes one path segment (an id or a name).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgotten_registrations_are_recognised() {
        let e = |code, body: &str| ApiError::Status {
            code,
            body: body.into(),
        };
        assert!(e(404, "Unknown check ID \"service:a\".").forgot_us());
        assert!(e(500, "CheckID \"service:a\" does not have associated TTL").forgot_us());
        assert!(!e(500, "rpc error").forgot_us());
        assert!(!e(403, "ACL not found").forgot_us());
        assert!(!ApiError::Transport("refused".into()).forgot_us());
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// An HTTP server on 127.0.0.1:0 answering every request with `reply`
    /// (raw bytes) and closing; counts the connections it accepted.
    async fn raw_server(reply: String) -> (String, Arc<AtomicUsize>) {
        super::super::fake_http::serve(Arc::new(move |_: &str| Some(reply.clone()))).await
    }

    fn api(base: &str) -> Api {
        Api::new(
            base.to_owned(),
            Some("s3cr3t-token".into()),
            None,
            Duration::from_secs(5),
            &super::super::AgentTls::new(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_with_the_token() {
        let (elsewhere, hits) = raw_server(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                .into(),
        )
        .await;
        let (agent, _) = raw_server(format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {elsewhere}/v1/agent/self\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ))
        .await;
        let got = api(&agent)
            .get::<Value>("agent/self", &[], None)
            .await
            .unwrap_err();
        assert!(matches!(got, ApiError::Status { code: 307, .. }), "{got:?}");
        // Had the client followed, the other host would have been asked
        // (with the token) before the call returned.
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_refused() {
        // Announced too large: refused before reading.
        let (agent, _) = raw_server(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n[",
            MAX_BODY + 1
        ))
        .await;
        let got = api(&agent)
            .get::<Value>("agent/self", &[], None)
            .await
            .unwrap_err();
        assert!(
            matches!(&got, ApiError::Decode(e) if e.contains(&format!("larger than {MAX_BODY} bytes"))),
            "{got:?}"
        );
        // Streamed without a length: cut as it passes the cap.
        let chunk = "x".repeat(500);
        let (agent, _) = raw_server(format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1f4\r\n{chunk}\r\n1f4\r\n{chunk}\r\n1f4\r\n{chunk}\r\n0\r\n\r\n"
        ))
        .await;
        // reqwest has no crypto provider of its own here: mesh's client.
        let plain = super::super::agent_tls::client(&agent, &Default::default(), None).unwrap();
        let resp = plain.get(format!("{agent}/x")).send().await.unwrap();
        let got = read_capped(resp, 1000).await.unwrap_err();
        assert!(
            matches!(&got, Capped::TooLarge(e) if e.contains("larger than 1000 bytes")),
            "{got:?}"
        );
        let resp = plain.get(format!("{agent}/x")).send().await.unwrap();
        assert_eq!(read_capped(resp, 1500).await.unwrap().len(), 1500);
    }

    #[tokio::test]
    async fn dot_segments_are_refused_before_sending() {
        // Nothing listens there: the refusal comes before any request.
        let a = api("http://127.0.0.1:1");
        for path in [
            "kv/wallets/x/../victim",
            "kv/./a",
            "kv/a/..",
            "agent/service/.",
        ] {
            let got = a.get::<Value>(path, &[], None).await.unwrap_err();
            assert!(
                matches!(&got, ApiError::Invalid(e) if e.contains("\"..\" segment")),
                "{path}: {got:?}"
            );
            let got = a.put(path, &[], None).await.unwrap_err();
            assert!(matches!(got, ApiError::Invalid(_)), "{path}: {got:?}");
        }
        // Dots inside a segment are fine (the transport error proves it
        // was sent).
        let got = a.get::<Value>("kv/a.b/..c", &[], None).await.unwrap_err();
        assert!(matches!(got, ApiError::Transport(_)), "{got:?}");
    }

    #[test]
    fn the_token_is_redacted_in_debug() {
        let a = api("http://127.0.0.1:1");
        let printed = format!("{a:?}");
        assert!(!printed.contains("s3cr3t-token"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
        assert_eq!(a.token().map(Token::secret), Some("s3cr3t-token"));
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("service:mesh-a_1.x"), "service:mesh-a_1.x");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
