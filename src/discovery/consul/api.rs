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
    /// An answer that does not parse.
    Decode(String),
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
        }
    }
}

/// An HTTP client bound to one agent, token and datacenter.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    /// `http(s)://host:port`, without a trailing slash.
    base: String,
    token: Option<String>,
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
            token,
            datacenter,
            timeout,
        })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.base))
            .timeout(self.timeout);
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
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
        let body = resp.text().await.unwrap_or_default();
        Err(ApiError::Status { code, body })
    }

    /// A write: PUT with an optional JSON body, 200 and an empty body back.
    pub(crate) async fn put(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(), ApiError> {
        let mut req = self.request(reqwest::Method::PUT, path).query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        Self::send(req).await.map(drop)
    }

    /// A write whose answer is JSON (`/v1/session/create`, `/v1/txn`):
    /// PUT with a JSON body, the decoded answer back.
    pub(crate) async fn put_read<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ApiError> {
        let mut req = self.request(reqwest::Method::PUT, path).json(body);
        if let Some(dc) = &self.datacenter {
            req = req.query(&[("dc", dc)]);
        }
        let resp = Self::send(req).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ApiError::Transport(error_chain(&e)))?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))
    }

    /// A read: GET, the decoded JSON and the `X-Consul-Index` header.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        timeout: Option<Duration>,
    ) -> Result<(T, Option<u64>), ApiError> {
        let mut req = self.request(reqwest::Method::GET, path).query(query);
        if let Some(dc) = &self.datacenter {
            req = req.query(&[("dc", dc)]);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = Self::send(req).await?;
        let index = index_of(&resp);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ApiError::Transport(error_chain(&e)))?;
        let value = serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))?;
        Ok((value, index))
    }
}

/// reqwest's error with its causes ("error sending request: connection
/// refused"), which its Display alone leaves out.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("service:mesh-a_1.x"), "service:mesh-a_1.x");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
