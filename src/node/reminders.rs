//! The node's side of durable reminders ([`crate::reminder`]): what its
//! keeper reads of it ([`crate::reminder::Host`]: the store, the shards it
//! owns, the router to deliver ticks through), and the front doors,
//! [`Ctx::reminders`] and [`Node::reminders`].
//!
//! Ownership, as the keeper sees it: in eventual mode the shards the
//! routing table gives this node (none before the node has seen its
//! `min_members`, nor once it is shutting down or leaving); in strong mode
//! the shards whose lease it holds, not draining, under a valid deadline,
//! with their tokens.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::router::{Origin, Request};
use super::NodeInner;
use crate::reminder::{Bound, Kind, ReminderError, Reminders, Tick};
use crate::state::{StateKey, StateStore};
use crate::util::BoxFuture;
use crate::{Ctx, Error, Handler, Node};

/// Starts the node's keeper (if it has one) and wakes it on each change
/// of the membership.
pub(super) fn start(inner: &Arc<NodeInner>) {
    let Some(keeper) = &inner.reminders else {
        return;
    };
    let host: Weak<dyn crate::reminder::Host> = {
        let weak: Weak<NodeInner> = Arc::downgrade(inner);
        weak
    };
    keeper.start(host);
    let mut changes = inner.members.changes();
    let keeper = keeper.clone();
    tokio::spawn(async move {
        // Ends with the membership (the node dropped).
        while changes.changed().await.is_ok() {
            keeper.nudge();
        }
    });
}

impl crate::reminder::Host for NodeInner {
    fn store(&self) -> Option<Arc<dyn StateStore>> {
        crate::util::lock(&self.state).clone()
    }

    fn owned(&self, kind: &Kind) -> Vec<(u16, u64)> {
        (0..crate::ring::SHARDS as u16)
            .filter_map(|s| self.owns(kind, s).map(|t| (s, t)))
            .collect()
    }

    fn owns(&self, kind: &Kind, s: u16) -> Option<u64> {
        if self.shared.is_shutting_down()
            || !self.members.is_formed()
            || self.cluster.as_ref().is_some_and(|c| c.is_leaving())
        {
            return None;
        }
        if let Some(gate) = &self.gate {
            if !gate.valid() {
                return None;
            }
            let cap = gate.caps().iter().find(|c| c.key == kind.actor_key)?;
            let state = cap.state(s);
            return (state != 0 && state & crate::lease::gate::DRAINING == 0).then_some(state);
        }
        let table = self.members.routing_table();
        let shards = table.actor(kind.actor_key, kind.capability_key)?;
        shards.is_local(s).then_some(0)
    }

    fn deliver(
        self: Arc<Self>,
        kind: &Kind,
        id: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, Error>> {
        let served = self.router().serve(Request {
            tag: kind.tag,
            id: id.to_owned(),
            body,
            deadline: tokio::time::Instant::now() + timeout,
            hops: 0,
            origin: Origin::Node,
            along: Default::default(),
        });
        Box::pin(async move { served.await.map(|b| b.to_vec()) })
    }
}

impl Ctx {
    /// This actor's durable reminders ([`crate::reminder`]): register,
    /// replace, cancel and list them. Registered from here, a reminder is
    /// fenced with this activation's token in strong mode, and this node's
    /// keeper sees it at once. Fails (when used) if the node has no state
    /// store or the actor type has no [`Tick`] handler.
    pub fn reminders(&self) -> Reminders {
        let inner = self.node().inner();
        let bound = match self.state_binding() {
            Err(_) => Err(ReminderError::NoStore),
            Ok((store, key, token)) => {
                let (capability, actor) = key.kind.split_once('/').unwrap_or_default();
                let tag = crate::wire::tag(capability, actor, <Tick as crate::Message>::NAME);
                if inner.wire.contains_key(&tag) {
                    Ok(Bound {
                        store,
                        key,
                        token,
                        keeper: inner.reminders.clone(),
                    })
                } else {
                    Err(ReminderError::NoTickHandler {
                        actor: self.actor_name().to_owned(),
                    })
                }
            }
        };
        Reminders { inner: bound }
    }
}

impl Node {
    /// The durable reminders of actor `id` of type `A`, from outside the
    /// actor ([`crate::reminder`]): written to the node's state store at
    /// once; the owner of `id`'s shard sees a change at its next load
    /// (at once if it is this node). Not fenced: in strong mode a write
    /// races only on the reminder's version.
    pub fn reminders<A: Handler<Tick>>(&self, id: &str) -> Reminders {
        let inner = self.inner();
        let bound = match crate::util::lock(&inner.state).clone() {
            None => Err(ReminderError::NoStore),
            Some(store) => Ok(Bound {
                store,
                key: StateKey::new(format!("{}/{}", A::CAPABILITY, A::NAME), id),
                token: None,
                keeper: inner.reminders.clone(),
            }),
        };
        Reminders { inner: bound }
    }
}
