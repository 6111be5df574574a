//! Running an encoded call here, or forwarding it once to the owner.
//!
//! A node that receives a call for a shard it no longer owns (the
//! membership moved under the caller) forwards it to the owner, once: a
//! forwarded request (`hops > 0`) is never forwarded again. If the owner
//! dies under the forward, the call is routed once more (to this node or
//! the owner's heir). Routing and enqueueing happen before the first
//! await, so requests that arrive in order on one connection reach the
//! mailbox in order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::activation::{WireCall, WireReply};
use crate::actor::ReplyTo;
use crate::node::NodeInner;
use crate::Error;

/// An encoded call on its way.
enum Started {
    Local(tokio::sync::oneshot::Receiver<Result<Vec<u8>, Error>>),
    /// Forwarded, with the body kept for one retry if the owner dies.
    Forwarded(
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, Error>> + Send>>,
        Vec<u8>,
    ),
}

impl NodeInner {
    /// Runs an encoded call here, or forwards it once to the owner.
    ///
    /// Routing and enqueueing happen before the first await, so requests
    /// that arrive in order on one connection reach the mailbox in order.
    pub(crate) fn serve_wire(
        self: &Arc<Self>,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        timeout: Duration,
        hops: u8,
        from_peer: bool,
    ) -> impl std::future::Future<Output = Result<Bytes, Error>> + Send + 'static {
        let started = self.start_wire(tag, id, body, timeout, hops, from_peer);
        // What a re-route needs, taken only for a forward (rare), not for
        // every call served here.
        let retry =
            matches!(started, Ok(Started::Forwarded(..))).then(|| (self.clone(), id.to_owned()));
        async move {
            match started? {
                Started::Local(rx) => local_reply(rx).await,
                Started::Forwarded(fut, body) => match fut.await {
                    // The owner died under the forward: it is out of the
                    // membership now; route once more (to us, or its heir).
                    Err(Error::NodeDown { node }) => {
                        let Some((me, id)) = retry else {
                            return Err(Error::NodeDown { node });
                        };
                        me.evict(&node);
                        match me.start_wire(tag, &id, body, timeout, hops + 1, true)? {
                            Started::Local(rx) => local_reply(rx).await,
                            Started::Forwarded(..) => Err(Error::NodeDown { node }),
                        }
                    }
                    other => other,
                },
            }
        }
    }

    fn start_wire(
        &self,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        timeout: Duration,
        hops: u8,
        from_peer: bool,
    ) -> Result<Started, Error> {
        let (route, owner) = self.locate(tag, id)?;
        match owner {
            None => {
                // The activation answers Timeout at the deadline.
                let (reply, rx) = ReplyTo::call(tokio::time::Instant::now() + timeout);
                let reply = WireReply::Local(reply);
                self.actors[route.actor]
                    .2
                    .send_wire(id, WireCall { tag, body, reply })?;
                Ok(Started::Local(rx))
            }
            // Not ours (any more): forward once to the owner.
            // A leaving node forwards what still reaches it, once more.
            Some(conn) if hops == 0 || !from_peer || (hops < 2 && self.is_leaving()) => {
                let id = id.to_owned();
                let kept = body.clone();
                Ok(Started::Forwarded(
                    Box::pin(async move { conn.call(tag, &id, body, timeout, hops + 1).await }),
                    kept,
                ))
            }
            Some(conn) => Err(Error::NodeDown {
                node: conn.peer().node.clone(),
            }),
        }
    }

    /// Runs an encoded cast here, or forwards it once to the owner.
    pub(crate) fn cast_wire(
        &self,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        hops: u8,
    ) -> Result<(), Error> {
        let (route, owner) = self.locate(tag, id)?;
        match owner {
            None => {
                let reply = WireReply::Local(ReplyTo::cast());
                self.actors[route.actor]
                    .2
                    .send_wire(id, WireCall { tag, body, reply })
            }
            Some(conn) if hops == 0 || (hops < 2 && self.is_leaving()) => {
                conn.cast(tag, id, body, hops + 1)
            }
            Some(conn) => Err(Error::NodeDown {
                node: conn.peer().node.clone(),
            }),
        }
    }
}

async fn local_reply(
    rx: tokio::sync::oneshot::Receiver<Result<Vec<u8>, Error>>,
) -> Result<Bytes, Error> {
    rx.await
        .unwrap_or(Err(Error::ShuttingDown))
        .map(Bytes::from)
}
