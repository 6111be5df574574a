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
//! A peer's chain is checked before anything is done with the call: one of
//! [`MAX_DEPTH`] links or more (a call made there would be deeper than
//! the limit) is refused at once with [`Error::ChainTooDeep`], by the owner
//! and by a node that would forward it alike, and its decoder keeps no
//! more than [`MAX_DEPTH`] links whatever the frame holds (see
//! `wire::CallFrame::chain`). A chain is a linked list of [`Hop`]s, dropped
//! iteratively: however long, dropping it never recurses.
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
pub(crate) const MAX_DEPTH: usize = crate::wire::MAX_CHAIN;

/// One link: an actor handling a call, and who called it.
///
/// Dropped iteratively (see its `Drop`): the default drop of a linked list
/// recurses once per link.
#[derive(Debug)]
pub(crate) struct Hop {
    /// Borrowed for a local actor type, owned for a hop named by a peer.
    actor: Cow<'static, str>,
    id: Arc<str>,
    parent: Option<Arc<Hop>>,
    depth: usize,
}

impl Drop for Hop {
    /// Unlinks the parents this hop owns alone one at a time, so a long
    /// chain does not recurse once per link (and overflow the stack). It
    /// stops at a parent another chain still holds.
    fn drop(&mut self) {
        let mut next = self.parent.take();
        while let Some(hop) = next {
            next = Arc::into_inner(hop).and_then(|mut h| h.parent.take());
        }
    }
}

/// What an activation's task knows: which actor it runs, and the chain of
/// the call its handler is serving now (set per message).
#[derive(Debug)]
pub(crate) struct Current {
    actor: &'static str,
    id: Arc<str>,
    parent: std::cell::RefCell<Option<Arc<Hop>>>,
    /// The activation's output gate, if it loaded a durable state (casts
    /// made while it is dirty wait for the turn's write: `super::output`).
    gate: Option<Arc<super::output::OutputGate>>,
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
    gate: Option<Arc<super::output::OutputGate>>,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<Current, F> {
    CURRENT.scope(
        Current {
            actor,
            id,
            parent: std::cell::RefCell::new(None),
            gate,
        },
        fut,
    )
}

/// The output gate of the activation whose handler runs here, if it has
/// one (see `super::output`).
pub(crate) fn output_gate() -> Option<Arc<super::output::OutputGate>> {
    CURRENT.try_with(|c| c.gate.clone()).ok().flatten()
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

    /// The chain a peer sent with a call to `actor` `id`, or
    /// [`Error::ChainTooDeep`] if it has [`MAX_DEPTH`] links or more: a
    /// call made within it would be deeper than the limit (as
    /// [`extend`] refuses it here), and a longer chain is no legitimate
    /// peer's. Refused before any link is built.
    pub(crate) fn from_wire(
        links: Option<WireChain>,
        actor: &str,
        id: &str,
    ) -> Result<Self, Error> {
        let links = links.unwrap_or_default();
        if links.len() >= MAX_DEPTH {
            return Err(Error::ChainTooDeep {
                limit: MAX_DEPTH,
                chain: render_wire(&links, actor, id),
            });
        }
        let mut parent: Option<Arc<Hop>> = None;
        for (depth, (actor, id)) in links.into_iter().enumerate() {
            parent = Some(Arc::new(Hop {
                actor: Cow::Owned(actor),
                id: id.into(),
                parent,
                depth: depth + 1,
            }));
        }
        Ok(Caller(parent))
    }
}

/// How much of a name a peer sent goes into an error message.
const NAME_SHOWN: usize = 64;

/// [`render`] for a chain a peer sent (which may be long, with long
/// names): each name cut to [`NAME_SHOWN`] bytes.
fn render_wire(links: &[(String, String)], actor: &str, id: &str) -> String {
    fn cut(s: &str) -> &str {
        let mut end = s.len().min(NAME_SHOWN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        &s[..end]
    }
    links
        .iter()
        .map(|(a, i)| (a.as_str(), i.as_str()))
        .chain([(actor, id)])
        .map(|(a, i)| format!("{} {:?}", cut(a), cut(i)))
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_crosses_the_wire_in_order() {
        assert_eq!(Caller::default().to_wire(), None);
        assert!(Caller::from_wire(None, "T", "t").unwrap().0.is_none());
        let links = vec![
            ("Alpha".to_owned(), "a".to_owned()),
            ("Beta".to_owned(), "b".to_owned()),
        ];
        let caller = Caller::from_wire(Some(links.clone()), "T", "t").unwrap();
        assert_eq!(caller.0.as_ref().map(|h| h.depth), Some(2));
        assert_eq!(caller.to_wire(), Some(links));
    }

    #[test]
    fn a_peer_chain_at_the_depth_limit_is_refused() {
        let link = |i: usize| (format!("A{i}"), "x".repeat(i * 10));
        // The deepest a peer of this build sends: a handler there may
        // still be called (it fails to call further).
        let most: WireChain = (0..MAX_DEPTH - 1).map(link).collect();
        let caller = Caller::from_wire(Some(most), "T", "t").unwrap();
        assert_eq!(caller.0.as_ref().map(|h| h.depth), Some(MAX_DEPTH - 1));
        let over: WireChain = (0..MAX_DEPTH).map(link).collect();
        match Caller::from_wire(Some(over), "T", "t") {
            Err(Error::ChainTooDeep { limit, chain }) => {
                assert_eq!(limit, MAX_DEPTH);
                assert!(
                    chain.starts_with(r#"A0 "" -> A1 "xxxxxxxxxx" -> "#),
                    "{chain}"
                );
                assert!(chain.ends_with(r#" -> T "t""#), "{chain}");
                // Long names are cut in the message.
                let long = format!("{:?}", "x".repeat(NAME_SHOWN));
                assert!(chain.contains(&format!("A31 {long}")), "{chain}");
            }
            other => panic!("expected ChainTooDeep, got {other:?}"),
        }
    }

    #[test]
    fn names_are_cut_on_a_char_boundary() {
        let id = "\u{e9}".repeat(NAME_SHOWN);
        let s = render_wire(&[], "T", &id);
        assert_eq!(s, format!("T {:?}", "\u{e9}".repeat(NAME_SHOWN / 2)));
    }

    /// A chain of `len` links, built here (`extend` stops at the limit).
    fn long_chain(len: usize) -> Option<Arc<Hop>> {
        let id: Arc<str> = "x".into();
        let mut parent = None;
        for depth in 1..=len {
            parent = Some(Arc::new(Hop {
                actor: Cow::Borrowed("A"),
                id: id.clone(),
                parent,
                depth,
            }));
        }
        parent
    }

    #[test]
    fn dropping_a_very_long_chain_does_not_recurse() {
        // On a small stack, so a recursive drop overflows whatever the
        // test threads' stack size is.
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                let chain = long_chain(1_000_000);
                drop(Caller(chain));
                // A chain another one shares: the shared part stays whole.
                let head = long_chain(1_000);
                let mut mid = head.clone();
                for _ in 0..500 {
                    mid = mid.and_then(|h| h.parent.clone());
                }
                drop(head);
                let mid = Caller(mid);
                assert_eq!(mid.0.as_ref().map(|h| h.depth), Some(500));
                assert_eq!(mid.to_wire().map(|w| w.len()), Some(500));
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
