//! The routing decision for an encoded request (here, forward, or wait),
//! and carrying it out to the end: the local reply, the forward (routed
//! again by [`Reroute`] when the owner never saw it), or the strong-mode
//! wait.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::retry::{settle, Reroute};
use super::{Along, Origin, Request, Router, Target};
use crate::activation::{WireCall, WireReply};
use crate::actor::chain::Caller;
use crate::actor::ReplyTo;
use crate::node::NodeInner;
use crate::transport::Connection;
use crate::wire::TraceContext;
use crate::Error;

/// Strong mode: how long a request that landed on a node that does not
/// own its shard waits before it is routed again (each bounce between two
/// disagreeing views costs at least this, until they agree or the
/// request's deadline passes).
pub(crate) const STRONG_RECHECK: Duration = Duration::from_millis(50);

/// Where one routing decision sends a request.
pub(super) enum Decision {
    /// Served on this node.
    Here,
    /// Forwarded to the owner, on this connection.
    Forward(Connection),
    /// Strong mode: this node does not own the shard (so it may never
    /// hold its lease) and may not forward the request again: it waits for
    /// the views to agree, then goes to the owner it sees then.
    Await,
}

/// A request after its routing decision was carried out.
enum Started {
    /// Enqueued here; the reply comes on this receiver.
    Local(oneshot::Receiver<Result<Vec<u8>, Error>>),
    /// To send to the owner, with this many hops.
    Forward(Connection, Request, u8),
    /// Strong mode: to route again once the views agree.
    Await(Request),
}

impl Router<'_> {
    /// Decides where `req` goes: [`Router::locate`] once, then the forward
    /// rule. `forced` (after a strong-mode wait): to the owner, whatever
    /// the hops.
    pub(super) fn decide(
        &self,
        req: &Request,
        target: Target,
        forced: bool,
    ) -> Result<Decision, Error> {
        let owner = self.locate(target, &req.id)?;
        // Strong mode never serves a shard this node does not own: it
        // could not hold its lease (see `crate::lease`).
        let elsewhere = self.node.gate.is_some() && owner.is_some();
        let owner = if forced {
            owner
        } else {
            self.forward_to(owner, req.hops, req.origin)
        };
        Ok(match owner {
            Some(conn) => Decision::Forward(conn),
            None if elsewhere => Decision::Await,
            None => Decision::Here,
        })
    }

    /// Where a request this node does not own goes: to `owner` if it may
    /// still be forwarded (it came from this node, it was not forwarded
    /// yet, or this node is leaving and it was forwarded once), else
    /// nowhere (`None`): it is served here. A forwarded request whose owner
    /// this node disagrees on means the views differ during a membership
    /// change (eventual placement): serving it where it landed loses no
    /// call, at the cost of a brief duplicate activation.
    pub(super) fn forward_to(
        &self,
        owner: Option<Connection>,
        hops: u8,
        origin: Origin,
    ) -> Option<Connection> {
        let conn = owner?;
        if hops == 0 || origin != Origin::Peer || (hops < 2 && self.node.is_leaving()) {
            return Some(conn);
        }
        tracing::debug!(node = %self.node.id, owner = %conn.peer().node, hops, "serving a forwarded call here: the views differ");
        None
    }

    /// Routes an encoded call and resolves to its encoded reply: served
    /// here, or forwarded to the owner (see the module docs for the
    /// rules). The decision, and enqueueing here, happen before this
    /// returns, so requests made in order reach the mailbox in order.
    pub(crate) fn serve(
        &self,
        req: Request,
    ) -> impl Future<Output = Result<Bytes, Error>> + Send + 'static {
        let started = self.target(req.tag).and_then(|target| {
            let decision = self.decide(&req, target, false)?;
            Ok((self.start(req, target, decision, false)?, target))
        });
        let node = self.node.clone();
        async move {
            let (started, target) = started?;
            run(node, started, target).await
        }
    }

    /// Carries a decided request on until it has an answer (see
    /// [`Router::serve`]).
    pub(super) fn carry(
        &self,
        req: Request,
        target: Target,
        decision: Decision,
    ) -> impl Future<Output = Result<Bytes, Error>> + Send + 'static {
        let started = self.start(req, target, decision, false);
        let node = self.node.clone();
        async move { run(node, started?, target).await }
    }

    /// Carries out a decision: enqueues here (before returning), or
    /// readies the forward or the wait.
    fn start(
        &self,
        req: Request,
        target: Target,
        decision: Decision,
        forced: bool,
    ) -> Result<Started, Error> {
        Ok(match decision {
            Decision::Here => {
                // The activation answers Timeout at the deadline.
                let (reply, rx) = ReplyTo::call(req.deadline);
                let Request {
                    tag,
                    id,
                    body,
                    along,
                    ..
                } = req;
                self.serve_here(target, tag, &id, body, WireReply::Local(reply), along)?;
                Started::Local(rx)
            }
            Decision::Forward(conn) => {
                let hops = req.wire_hops(forced);
                Started::Forward(conn, req, hops)
            }
            Decision::Await => Started::Await(req),
        })
    }

    /// Hands an encoded call or cast (a cast's slot is `ReplyTo::cast`) to
    /// its local activation, in a `mesh.serve` span. On refusal the reply
    /// slot is answered with the error too.
    pub(super) fn serve_here(
        &self,
        target: Target,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        reply: WireReply,
        along: Along,
    ) -> Result<(), Error> {
        let route = match target.here {
            Some(route) => route,
            None => self.wire_route(tag)?,
        };
        let node = self.node;
        let (_, capability, actors) = &node.actors[route.actor];
        let cast = matches!(&reply, WireReply::Local(r) if r.is_cast());
        let span = crate::trace::serve_span(&node.id, capability, cast, along.trace.as_ref());
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

    /// Strong mode: routes again an encoded call queued for an activation
    /// this node will not hold (its shard moved, or the node is leaving):
    /// to the owner the ring names now, answering the original caller.
    pub(crate) fn reroute(&self, id: &str, call: WireCall) {
        use crate::actor::finish::ReplySlot;
        let WireCall {
            tag,
            body,
            reply,
            span: _,
            caller,
        } = call;
        let deadline = reply
            .deadline()
            .unwrap_or_else(|| tokio::time::Instant::now() + self.node.default_timeout);
        let served = self.serve(Request {
            tag,
            id: id.to_owned(),
            body,
            deadline,
            hops: 0,
            origin: Origin::Node,
            along: Along {
                trace: None,
                caller,
            },
        });
        tokio::spawn(async move {
            reply.send(served.await.map(|b| b.to_vec()));
        });
    }

    /// Runs an encoded cast from a peer here, or forwards it once to the
    /// owner (in a `mesh.forward` span, see `crate::trace`). Casts never
    /// wait: in strong mode too, one this node may not forward is served
    /// here.
    pub(super) fn cast_encoded(
        &self,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        hops: u8,
        trace: Option<TraceContext>,
    ) -> Result<(), Error> {
        let target = self.target(tag)?;
        let owner = self.locate(target, id)?;
        match self.forward_to(owner, hops, Origin::Peer) {
            None => self.serve_here(
                target,
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
                let (span, trace) = crate::trace::forward(&self.node.id, trace);
                let _enter = span.enter();
                conn.cast_traced(tag, id, body, hops.saturating_add(1), trace)
            }
        }
    }
}

/// Waits for a started request's answer, routing it again as the policy
/// and the strong-mode rule say.
async fn run(node: Arc<NodeInner>, started: Started, target: Target) -> Result<Bytes, Error> {
    let mut policy = Reroute::default();
    let mut started = started;
    loop {
        started = match started {
            Started::Local(rx) => return local_reply(rx).await,
            Started::Forward(conn, mut req, hops) => {
                let body = std::mem::take(&mut req.body);
                // The chain passes on unchanged: this node only forwards.
                let chain = req.along.caller.to_wire();
                let mut result = conn
                    .call_routed(
                        req.tag,
                        &req.id,
                        body,
                        req.left(),
                        hops,
                        req.along.trace.clone(),
                        chain,
                    )
                    .await;
                let owner = &conn.peer().node;
                if !policy.retry(&mut req, &mut result) {
                    return settle(result, owner);
                }
                // Its connection is gone: down by the membership's rule;
                // route once more.
                let router = node.router();
                router.evict(owner);
                let decision = router.decide(&req, target, false)?;
                router.start(req, target, decision, false)?
            }
            Started::Await(req) => {
                let left = req.left();
                if left.is_zero() {
                    return Err(Error::timeout());
                }
                let mut changes = node.membership_changes();
                let _ = tokio::time::timeout(left.min(STRONG_RECHECK), changes.changed()).await;
                let router = node.router();
                let decision = router.decide(&req, target, true)?;
                router.start(req, target, decision, true)?
            }
        }
    }
}

async fn local_reply(rx: oneshot::Receiver<Result<Vec<u8>, Error>>) -> Result<Bytes, Error> {
    rx.await
        .unwrap_or(Err(Error::ShuttingDown))
        .map(Bytes::from)
}
