//! The one reroute policy, for calls and forwards alike.
//!
//! Its shape is tower's `retry::Policy::retry(&mut self, req: &mut Req,
//! result: &mut Result<Res, E>)`, with what mesh's transport adds: a
//! request the owner never saw comes back whole (`Routed::Unsent(body)`),
//! so nothing is cloned up front to retry it. The policy is sans-IO: the
//! router evicts the dead owner and makes the new routing decision.

use bytes::Bytes;

use super::Request;
use crate::transport::Routed;
use crate::Error;

/// How many times a request the owner never saw is routed again (each
/// time the owner was found dead and evicted).
pub(crate) const REROUTES: usize = 2;

/// Routes again, at most [`REROUTES`] times, a request its owner never
/// saw; never one that may have reached it (its handler may have run).
#[derive(Debug)]
pub(crate) struct Reroute {
    left: usize,
}

impl Default for Reroute {
    fn default() -> Self {
        Reroute { left: REROUTES }
    }
}

impl Reroute {
    /// Whether `req` is routed again after `result`. If so, the body the
    /// transport gave back is put back into `req` (and `result` holds an
    /// empty one); if not, [`settle`] turns `result` into the answer.
    pub(crate) fn retry(&mut self, req: &mut Request, result: &mut Result<Bytes, Routed>) -> bool {
        match result {
            Err(Routed::Unsent(body)) if self.left > 0 => {
                self.left -= 1;
                req.body = std::mem::take(body);
                true
            }
            _ => false,
        }
    }
}

/// The answer a forward to `owner` ends with: its reply, its error, or,
/// never sent and not routed again, `NodeDown` naming the owner.
pub(crate) fn settle(result: Result<Bytes, Routed>, owner: &str) -> Result<Bytes, Error> {
    match result {
        Ok(b) => Ok(b),
        Err(Routed::Failed(e)) => Err(e),
        Err(Routed::Unsent(_)) => Err(Error::node_down(owner)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::router::{Along, Origin};

    fn request() -> Request {
        Request {
            tag: 7,
            id: "a".into(),
            body: Vec::new(),
            deadline: tokio::time::Instant::now(),
            hops: 0,
            origin: Origin::Caller,
            along: Along::default(),
        }
    }

    #[test]
    fn an_unsent_request_is_given_back_and_routed_again_at_most_reroutes_times() {
        let mut policy = Reroute::default();
        let mut req = request();
        for n in 0..REROUTES {
            let mut result = Err(Routed::Unsent(vec![n as u8]));
            assert!(policy.retry(&mut req, &mut result), "reroute {n}");
            assert_eq!(req.body, vec![n as u8], "the body comes back");
        }
        let mut result = Err(Routed::Unsent(vec![9]));
        assert!(!policy.retry(&mut req, &mut result));
        match settle(result, "n2") {
            Err(Error::NodeDown { node, .. }) => assert_eq!(node, "n2"),
            other => panic!("expected NodeDown, got {other:?}"),
        }
    }

    #[test]
    fn a_request_that_may_have_reached_the_owner_is_never_repeated() {
        let mut policy = Reroute::default();
        let mut req = request();
        let mut failed = Err(Routed::Failed(Error::timeout()));
        assert!(!policy.retry(&mut req, &mut failed));
        assert!(matches!(settle(failed, "n2"), Err(Error::Timeout { .. })));
        let mut ok = Ok(Bytes::from_static(b"r"));
        assert!(!policy.retry(&mut req, &mut ok));
        assert_eq!(settle(ok, "n2").unwrap(), Bytes::from_static(b"r"));
    }
}
