//! A raw HTTP server on 127.0.0.1:0 for the Consul clients' unit tests
//! (`#[cfg(test)]` only): it reads each request's head and answers with
//! the bytes a closure returns for the request target, or never answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server answers to a request line's target (`/v1/...?...`):
/// raw response bytes, then it closes; `None` never answers (the
/// connection stays open, as a path that silently drops it).
pub(crate) type Answer = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Starts the server: its `http://` base and the count of connections it
/// accepted.
pub(crate) async fn serve(answer: Answer) -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&got).into_owned();
                let target = text.split(' ').nth(1).unwrap_or("").to_owned();
                match answer(&target) {
                    Some(reply) => {
                        let _ = s.write_all(reply.as_bytes()).await;
                        let _ = s.shutdown().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            });
        }
    });
    (format!("http://{addr}"), hits)
}
