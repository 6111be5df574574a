//! Running an encoded call here, or forwarding it once to the owner.
//!
//! A node that receives a call for a shard it no longer owns (the
//! membership moved under the caller) forwards it to the owner, once: a
//! forwarded request (`hops > 0`) is never forwarded again but served where
//! it lands (the views differ for a moment; a brief duplicate activation
//! is the eventual mode's documented cost, a lost call is not). If the owner
//! dies under the forward, the call is routed once more (to this node or
//! the owner's heir). Routing and enqueueing happen before the first
//! await, so requests that arrive in order on one connection reach the
//! mailbox in order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::activation::{WireCall, WireReply};
use crate::actor::chain::Caller;
use crate::actor::ReplyTo;
use crate::node::{NodeInner, WireRoute};
use crate::transport::Routed;
use crate::wire::TraceContext;
use crate::Error;

/// An encoded call on its way.
enum Started {
    Local(tokio::sync::oneshot::Receiver<Result<Vec<u8>, Error>>),
    /// Forwarded to the owner (named, for a re-route). A forward the owner
    /// never saw gives the body back ([`Routed::Unsent`]), so nothing is
    /// copied for that rare retry.
    Forwarded(
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, Routed>> + Send>>,
        String,
    ),
    /// Strong mode: the call may not be forwarded again, but this node
    /// does not own its shard either, so it may never hold the lease to
    /// serve it. It waits for the views to agree (a membership change, or
    /// [`STRONG_RECHECK`]), then goes to the owner it sees then.
    Await(Vec<u8>, Along),
}

/// Strong mode: how long a call that landed on a node that does not own
/// its shard waits before it is routed again (each bounce between two
/// disagreeing views costs at least this, until they agree or the call's
/// deadline passes).
const STRONG_RECHECK: Duration = Duration::from_millis(50);

/// What travels with a call besides its message: the caller's trace
/// context and call chain.
#[derive(Debug, Clone, Default)]
pub(crate) struct Along {
    pub(crate) trace: Option<TraceContext>,
    pub(crate) caller: Caller,
}

/// How many times a call the owner never saw is routed again (each time
/// the owner was found dead and evicted).
const REROUTES: usize = 2;

impl NodeInner {
    /// Runs an encoded call here, or forwards it once to the owner.
    ///
    /// Routing and enqueueing happen before the first await, so requests
    /// that arrive in order on one connection reach the mailbox in order.
    ///
    /// Re-routing: a forward whose connection closed before the call was
    /// written (the owner never saw it) is routed again, to this node or
    /// the owner's heir. A forward that may have reached the owner is never
    /// repeated: it fails with `NodeDown` (the handler may have run).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn serve_wire(
        self: &Arc<Self>,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        timeout: Duration,
        hops: u8,
        from_peer: bool,
        along: Along,
    ) -> impl std::future::Future<Output = Result<Bytes, Error>> + Send + 'static {
        // What a re-route needs, taken only for a forward (rare), not for
        // every call served here.
        let retry_along = along.clone();
        let started = self.start_wire(tag, id, body, timeout, hops, from_peer, along, false);
        let retry = matches!(started, Ok(Started::Forwarded(..) | Started::Await(..)))
            .then(|| (self.clone(), id.to_owned(), retry_along));
        let deadline = tokio::time::Instant::now() + timeout;
        async move {
            let mut started = started?;
            let mut reroutes = 0;
            loop {
                match started {
                    Started::Local(rx) => return local_reply(rx).await,
                    Started::Forwarded(fut, owner) => match fut.await {
                        Ok(b) => return Ok(b),
                        Err(Routed::Failed(e)) => return Err(e),
                        Err(Routed::Unsent(body)) => {
                            let Some((me, id, along)) = retry.as_ref() else {
                                return Err(Error::node_down(owner));
                            };
                            if reroutes == REROUTES {
                                return Err(Error::node_down(owner));
                            }
                            reroutes += 1;
                            // Its connection is gone: down by the
                            // membership's rule; route once more.
                            me.evict(&owner);
                            let left =
                                deadline.saturating_duration_since(tokio::time::Instant::now());
                            started = me.start_wire(
                                tag,
                                id,
                                body,
                                left,
                                hops,
                                from_peer,
                                along.clone(),
                                false,
                            )?;
                        }
                    },
                    Started::Await(body, along) => {
                        let Some((me, id, _)) = retry.as_ref() else {
                            return Err(Error::timeout());
                        };
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        if left.is_zero() {
                            return Err(Error::timeout());
                        }
                        let mut changes = me.membership_changes();
                        let _ =
                            tokio::time::timeout(left.min(STRONG_RECHECK), changes.changed()).await;
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        started = me.start_wire(
                            tag,
                            id,
                            body,
                            left,
                            hops.saturating_add(1),
                            from_peer,
                            along,
                            true,
                        )?;
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_wire(
        &self,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        timeout: Duration,
        hops: u8,
        from_peer: bool,
        along: Along,
        force: bool,
    ) -> Result<Started, Error> {
        let (route, owner) = self.locate(tag, id)?;
        // Strong mode never serves a shard this node does not own: it
        // could not hold its lease (see `crate::lease`).
        let elsewhere = self.gate.is_some() && owner.is_some();
        let owner = if force {
            owner
        } else {
            self.forward_to(owner, hops, from_peer)
        };
        match owner {
            None if elsewhere => Ok(Started::Await(body, along)),
            None => {
                // The activation answers Timeout at the deadline.
                let (reply, rx) = ReplyTo::call(tokio::time::Instant::now() + timeout);
                self.serve_here(route, tag, id, body, WireReply::Local(reply), along)?;
                Ok(Started::Local(rx))
            }
            // Not ours (any more): forward once to the owner.
            Some(conn) => {
                let id = id.to_owned();
                let owner = conn.peer().node.clone();
                // The chain passes on unchanged: this node only forwards.
                let chain = along.caller.to_wire();
                Ok(Started::Forwarded(
                    Box::pin(async move {
                        conn.call_routed(
                            tag,
                            &id,
                            body,
                            timeout,
                            hops.saturating_add(1),
                            along.trace,
                            chain,
                        )
                        .await
                    }),
                    owner,
                ))
            }
        }
    }

    /// Hands an encoded call or cast (a cast's slot is `ReplyTo::cast`) to
    /// its local activation, in a `mesh.serve` span.
    fn serve_here(
        &self,
        route: WireRoute,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        reply: WireReply,
        along: Along,
    ) -> Result<(), Error> {
        let (_, capability, actors) = &self.actors[route.actor];
        let cast = matches!(&reply, WireReply::Local(r) if r.is_cast());
        let span = crate::trace::serve_span(&self.id, capability, cast, along.trace.as_ref());
        actors.send_wire(
            id,
            WireCall {
                tag,
                body,
                reply,
                span,
                caller: along.caller,
            },
        )
    }

    /// Where a call this node does not own goes: to `owner` if it may still
    /// be forwarded (it came from this node's callers, it was not
    /// forwarded yet, or this node is leaving and it was forwarded once),
    /// else nowhere (`None`): it is served here. A forwarded call whose
    /// owner this node disagrees on means the views differ during a
    /// membership change (eventual placement): serving it where it landed
    /// loses no call, at the cost of a brief duplicate activation.
    fn forward_to(
        &self,
        owner: Option<crate::transport::Connection>,
        hops: u8,
        from_peer: bool,
    ) -> Option<crate::transport::Connection> {
        let conn = owner?;
        if hops == 0 || !from_peer || (hops < 2 && self.is_leaving()) {
            return Some(conn);
        }
        tracing::debug!(node = %self.id, owner = %conn.peer().node, hops, "serving a forwarded call here: the views differ");
        None
    }

    /// Runs an encoded cast here, or forwards it once to the owner (in a
    /// `mesh.forward` span, see `crate::trace`).
    pub(crate) fn cast_wire(
        &self,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        hops: u8,
        trace: Option<TraceContext>,
    ) -> Result<(), Error> {
        let (route, owner) = self.locate(tag, id)?;
        match self.forward_to(owner, hops, true) {
            None => self.serve_here(
                route,
                tag,
                id,
                body,
                WireReply::Local(ReplyTo::cast()),
                Along {
                    trace,
                    caller: Caller::default(),
                },
            ),
            Some(conn) => {
                let (span, trace) = crate::trace::forward(&self.id, trace);
                let _enter = span.enter();
                conn.cast_traced(tag, id, body, hops.saturating_add(1), trace)
            }
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
