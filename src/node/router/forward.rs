//! Carrying an encoded request to its answer, from its first
//! [`Decision`]: the local reply, the forward (routed again by
//! [`Reroute`] when the owner never saw it, with a new decision each
//! time), or the strong-mode wait (then a new decision, to the owner).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::retry::{settle, Reroute};
use super::{Along, Decision, Origin, Request, Router, Target};
use crate::activation::{WireCall, WireReply};
use crate::actor::ReplyTo;
use crate::node::NodeInner;
use crate::transport::{Connection, Routed, Waiting};
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
    rerouted(node, started, target, Reroute::default()).await
}

/// [`run`], with what is left of the reroute policy.
async fn rerouted(
    node: Arc<NodeInner>,
    started: Started,
    target: Target,
    mut policy: Reroute,
) -> Result<Bytes, Error> {
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
                if !policy.retry(&mut req, &mut result) {
                    return settle(result, &conn.peer().node);
                }
                after_unsent(&node, &conn, req, target)?
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

/// A request `conn`'s owner never saw: its connection is gone (down by
/// the membership's rule), so the owner is evicted and the request routed
/// once more.
fn after_unsent(
    node: &Arc<NodeInner>,
    conn: &Connection,
    req: Request,
    target: Target,
) -> Result<Started, Error> {
    let router = node.router();
    router.evict(&conn.peer().node);
    let decision = router.decide(&req, target, false)?;
    router.start(req, target, decision, false)
}

/// A typed call sent to its owner on another node: the wait for its
/// answer. While the first send is answered (every remote call's path)
/// nothing is boxed, no future is nested and no shared count is touched
/// but the connection's: the call's request and the connection's
/// [`Waiting`]. A call the owner never saw is routed again ([`Reroute`])
/// in a boxed future of its own (rare), through the node the caller
/// names then ([`RemoteCall::poll_reply`]).
///
/// Dropped before its answer, the call is abandoned: the owner is told
/// (`Cancel`) and skips it if it has not started it.
pub(crate) struct RemoteCall(Remote);

enum Remote {
    Waiting {
        req: Request,
        target: Target,
        waiting: Waiting,
    },
    Again(Pin<Box<dyn Future<Output = Result<Bytes, Error>> + Send>>),
    Ready(Option<Result<Bytes, Error>>),
}

impl std::fmt::Debug for RemoteCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.0 {
            Remote::Waiting { .. } => "waiting",
            Remote::Again(_) => "rerouted",
            Remote::Ready(_) => "ready",
        };
        f.debug_tuple("RemoteCall").field(&state).finish()
    }
}

impl Router<'_> {
    /// Sends a typed call's request to its owner on `conn` now (before this
    /// returns, so calls made in order are sent in order) and gives back
    /// the wait for its answer. `timeout` is what is left of the call's
    /// time (`req.deadline` is when it ends): the owner drops the work
    /// once it has passed.
    pub(super) fn call_remote(
        &self,
        conn: Connection,
        req: Request,
        target: Target,
        timeout: Duration,
    ) -> RemoteCall {
        let chain = req.along.caller.to_wire();
        let sent = conn.clone().start_call(
            req.tag,
            &req.id,
            &req.body,
            (req.deadline, timeout),
            req.wire_hops(false),
            req.along.trace.as_ref(),
            chain.as_deref(),
        );
        match sent {
            Ok(waiting) => RemoteCall(Remote::Waiting {
                req,
                target,
                waiting,
            }),
            Err(routed) => RemoteCall(again(self.node.clone(), conn, req, target, routed)),
        }
    }
}

/// What follows a first send that failed (`routed`): routed again if the
/// owner never saw it and the policy allows, else the failure.
fn again(
    node: Arc<NodeInner>,
    conn: Connection,
    mut req: Request,
    target: Target,
    routed: Routed<()>,
) -> Remote {
    let mut policy = Reroute::default();
    let mut result = Err(match routed {
        Routed::Unsent(()) => Routed::Unsent(std::mem::take(&mut req.body)),
        Routed::Failed(e) => Routed::Failed(e),
    });
    if !policy.retry(&mut req, &mut result) {
        return Remote::Ready(Some(settle(result, &conn.peer().node)));
    }
    Remote::Again(Box::pin(async move {
        let started = after_unsent(&node, &conn, req, target)?;
        rerouted(node, started, target, policy).await
    }))
}

impl RemoteCall {
    /// Polls for the encoded reply. `node` is asked for the node to route
    /// through only if the call comes back unsent (its owner never saw
    /// it).
    pub(crate) fn poll_reply(
        &mut self,
        cx: &mut Context<'_>,
        node: impl FnOnce() -> Result<Arc<NodeInner>, Error>,
    ) -> Poll<Result<Bytes, Error>> {
        let mut node = Some(node);
        loop {
            match &mut self.0 {
                Remote::Waiting { waiting, .. } => {
                    let result = ready!(Pin::new(&mut *waiting).poll(cx));
                    let routed = match result {
                        Ok(reply) => {
                            self.0 = Remote::Ready(None);
                            return Poll::Ready(Ok(reply));
                        }
                        Err(routed) => routed,
                    };
                    let done = std::mem::replace(&mut self.0, Remote::Ready(None));
                    let Remote::Waiting {
                        req,
                        target,
                        waiting,
                    } = done
                    else {
                        unreachable!("matched as waiting above");
                    };
                    let conn = waiting.connection();
                    self.0 = match node.take().map(|f| f()) {
                        Some(Ok(node)) => again(node, conn, req, target, routed),
                        Some(Err(e)) => Remote::Ready(Some(Err(e))),
                        None => unreachable!("a call comes back unsent once"),
                    };
                }
                Remote::Again(fut) => {
                    let result = ready!(fut.as_mut().poll(cx));
                    self.0 = Remote::Ready(None);
                    return Poll::Ready(result);
                }
                Remote::Ready(result) => {
                    return Poll::Ready(result.take().expect("RemoteCall polled after completion"));
                }
            }
        }
    }
}

async fn local_reply(rx: oneshot::Receiver<Result<Vec<u8>, Error>>) -> Result<Bytes, Error> {
    rx.await
        .unwrap_or(Err(Error::ShuttingDown))
        .map(Bytes::from)
}
