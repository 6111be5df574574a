//! Carrying an encoded request to its answer, from its first
//! [`Decision`]: the local reply, the forward (routed again by
//! [`Reroute`] when the owner never saw it, with a new decision each
//! time), or the strong-mode wait (then a new decision, to the owner).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::retry::{settle, Reroute};
use super::{Along, Decision, Origin, Request, Router, Target};
use crate::activation::{WireCall, WireReply};
use crate::actor::ReplyTo;
use crate::node::NodeInner;
use crate::transport::Connection;
use crate::Error;

/// Strong mode: how long a request that landed on a node that does not
/// own its shard waits before it is routed again (each bounce between two
/// disagreeing views costs at least this, until they agree or the
/// request's deadline passes).
pub(crate) const STRONG_RECHECK: Duration = Duration::from_millis(50);

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
                        req.deadline,
                        hops,
                        req.along.trace.as_ref(),
                        chain.as_deref(),
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
                let mut changes = node.members.changes();
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
