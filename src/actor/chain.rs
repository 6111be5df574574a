//! Call chains: which actors are waiting on which, so a call that would
//! wait on an actor already waiting for it fails at once.
//!
//! While an activation runs a handler, the handler's task knows the chain
//! that led to it (a task-local, set around each handler). A call made from
//! there (`mesh::call`, `node.call`, `ctx.node().call`) extends the chain;
//! if the actor it calls is already in the chain, that actor is busy
//! handling a call that waits for this one (turn-based: it handles one
//! message at a time), so the call would deadlock until its deadline: it
//! fails with [`Error::CallCycle`] instead, naming the chain. A chain
//! longer than [`MAX_DEPTH`] fails with [`Error::ChainTooDeep`].
//!
//! Across nodes: a call to another node carries its chain in the `Call`
//! frame (the `chain` element, sent to peers whose handshake said
//! `call_chain`; see `PROTOCOL.md`), and the handler it reaches there
//! extends it as if the caller were local, so A (node 1) -> B (node 2) ->
//! A fails on node 2 as soon as B calls A. A peer that does not take
//! chains (an older build) is sent none: there the chain starts anew, and
//! a cycle through it waits for its deadline. A forwarding node passes the
//! chain on unchanged.
//!
//! Casts do not wait and carry no chain.
//!
//! # Reentrancy (opt-in)
//!
//! By default an activation is turn-based: it handles one message at a
//! time, start to finish, so a handler sees the state only it changed,
//! even across its `.await`s. A call back into the chain would wait for
//! that turn to end, which never happens: hence [`Error::CallCycle`].
//!
//! `#[mesh::handlers(reentrant)]` relaxes this for the actor's own chain
//! (as Orleans' call-chain reentrancy does): a call whose chain passes
//! through an activation of the actor is served at once, interleaved with
//! the handler that waits in that chain, instead of failing. A -> B -> A
//! then works: A's second handler runs while the first awaits B. What is
//! relaxed, exactly:
//!
//! - A handler may observe, after any `.await` of its own, state changed
//!   by a reentrant call of its chain. Handlers of a reentrant actor
//!   therefore take `&self` (the actor must be `Sync`); the state they
//!   change lives in a `Mutex` (not held across an `.await`) or atomics.
//! - Only calls of the chain interleave. Calls of other chains, casts and
//!   timer ticks still wait for the turn to end, and the turn ends once the
//!   first handler and every call interleaved with it have returned.
//! - A reentrant call is taken out of the mailbox ahead of messages that
//!   arrived before it.
//!
//! The depth limit still applies (a reentrant actor calling itself without
//! end stops at [`MAX_DEPTH`]), and a non-reentrant actor in the same chain
//! still fails a call back into it.
//!
//! Cost: outside a handler, one task-local lookup per call; inside one,
//! one allocation per call (the chain link), plus, for a call to another
//! node, the chain's names copied into the frame.

use std::borrow::Cow;
use std::sync::Arc;

use crate::Error;

/// The deepest chain allowed.
pub(crate) const MAX_DEPTH: usize = 32;

/// One link: an actor handling a call, and who called it.
#[derive(Debug)]
pub(crate) struct Hop {
    /// Borrowed for a local actor type, owned for a hop named by a peer.
    actor: Cow<'static, str>,
    id: Arc<str>,
    parent: Option<Arc<Hop>>,
    depth: usize,
}

/// What an activation's task knows: which actor it runs, and the chain of
/// the call its handler is serving now (set per message).
#[derive(Debug)]
pub(crate) struct Current {
    actor: &'static str,
    id: Arc<str>,
    parent: std::cell::RefCell<Option<Arc<Hop>>>,
}

tokio::task_local! {
    static CURRENT: Current;
}

/// Runs `fut` (an activation serving its messages) as actor `actor` `id`.
/// Set once per activation, not per message: the per-message cost is
/// [`serving`] (a cell write).
pub(crate) fn scope<F: std::future::Future>(
    actor: &'static str,
    id: Arc<str>,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<Current, F> {
    CURRENT.scope(
        Current {
            actor,
            id,
            parent: std::cell::RefCell::new(None),
        },
        fut,
    )
}

/// The handler about to run serves a call made within `caller`'s chain
/// (none for a call from outside any handler, or from another node).
pub(crate) fn serving(caller: Caller) {
    let _ = CURRENT.try_with(|c| *c.parent.borrow_mut() = caller.0);
}

/// The chain a call to `actor` `id` made here extends, or the error if it
/// would close a cycle (unless `reentrant`) or grow too deep. `None`
/// outside a handler.
pub(crate) fn extend(
    actor: &'static str,
    reentrant: bool,
    id: &str,
) -> Result<Option<Arc<Hop>>, Error> {
    let Ok(hop) = CURRENT.try_with(|c| {
        let parent = c.parent.borrow().clone();
        Arc::new(Hop {
            actor: Cow::Borrowed(c.actor),
            id: c.id.clone(),
            depth: parent.as_ref().map_or(1, |p| p.depth + 1),
            parent,
        })
    }) else {
        return Ok(None);
    };
    if !reentrant && passes(Some(&hop), actor, id) {
        return Err(Error::CallCycle {
            chain: render(&hop, actor, id),
        });
    }
    if hop.depth >= MAX_DEPTH {
        return Err(Error::ChainTooDeep {
            limit: MAX_DEPTH,
            chain: render(&hop, actor, id),
        });
    }
    Ok(Some(hop))
}

/// Whether the chain ending at `hop` passes through `actor` `id`.
fn passes(hop: Option<&Arc<Hop>>, actor: &str, id: &str) -> bool {
    let mut at = hop;
    while let Some(h) = at {
        if h.actor == actor && &*h.id == id {
            return true;
        }
        at = h.parent.as_ref();
    }
    false
}

/// `First "a" -> ... -> Last "z" -> actor "id"`.
fn render(hop: &Arc<Hop>, actor: &str, id: &str) -> String {
    let mut links = vec![format!("{actor} {id:?}")];
    let mut at = Some(hop);
    while let Some(h) = at {
        links.push(format!("{} {:?}", h.actor, &*h.id));
        at = h.parent.as_ref();
    }
    links.reverse();
    links.join(" -> ")
}

/// Who made a call: the chain its handler extends. Opaque; carried by the
/// call's reply slot.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct Caller(pub(crate) Option<Arc<Hop>>);

/// A chain as the `Call` frame carries it: `(actor type, id)` from the
/// first caller to the last.
pub(crate) type WireChain = Vec<(String, String)>;

impl Caller {
    /// Whether this chain passes through `actor` `id` (a call a reentrant
    /// activation serves interleaved).
    pub(crate) fn passes_through(&self, actor: &str, id: &str) -> bool {
        passes(self.0.as_ref(), actor, id)
    }

    /// The chain for a `Call` frame (`None` outside any chain).
    pub(crate) fn to_wire(&self) -> Option<WireChain> {
        let mut links = Vec::new();
        let mut at = self.0.as_ref();
        while let Some(h) = at {
            links.push((h.actor.to_string(), h.id.to_string()));
            at = h.parent.as_ref();
        }
        if links.is_empty() {
            return None;
        }
        links.reverse();
        Some(links)
    }

    /// The chain a peer sent. Its length is bounded by the frame size; a
    /// chain past [`MAX_DEPTH`] fails the next call made within it.
    pub(crate) fn from_wire(links: Option<WireChain>) -> Self {
        let mut parent: Option<Arc<Hop>> = None;
        for (depth, (actor, id)) in links.into_iter().flatten().enumerate() {
            parent = Some(Arc::new(Hop {
                actor: Cow::Owned(actor),
                id: id.into(),
                parent,
                depth: depth + 1,
            }));
        }
        Caller(parent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_crosses_the_wire_in_order() {
        assert_eq!(Caller::default().to_wire(), None);
        assert!(Caller::from_wire(None).0.is_none());
        let links = vec![
            ("Alpha".to_owned(), "a".to_owned()),
            ("Beta".to_owned(), "b".to_owned()),
        ];
        let caller = Caller::from_wire(Some(links.clone()));
        assert_eq!(caller.0.as_ref().map(|h| h.depth), Some(2));
        assert_eq!(caller.to_wire(), Some(links));
    }
}
