//! Typed handles and serializable actor references.
//!
//! - [`ActorHandle`]: an actor type, an id and the node to call through.
//!   Cheap to clone, `Send + 'static`: its calls need no turbofish and can
//!   be spawned (`tokio::spawn(room.call(Say(..)).into_future())`).
//! - [`ActorRef`]: just the actor type and id, serializable, so a message
//!   can carry it; the receiver turns it into a handle with its node
//!   ([`ActorRef::on`]). On the wire it is `[type name, id]` (the actor's
//!   [`Actor::NAME`], never a Rust path); decoding a reference to another
//!   actor type fails.
//! - [`Flatten`]: a call whose reply is itself a `Result` folds the call's
//!   own error into the reply's, in one `?`.
//!
//! Cost: a handle's call boxes its future (one allocation, next to the
//! reply slot's), because it owns its node and id; `node.call` borrows
//! them and allocates nothing more.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Node;
use crate::{Actor, Error, Handler, Message};

/// A typed handle on actor `id` of type `A`, through a node: see
/// [`Node::actor`].
///
/// ```no_run
/// # use mesh::prelude::*;
/// # #[derive(Actor, Default)] #[actor(capability = "chat")] struct Room { lines: usize }
/// # #[derive(Message, Serialize, Deserialize)] #[message(reply = usize)] struct Say(String);
/// # #[mesh::handlers] impl Room { async fn say(&mut self, _: Say) -> usize { self.lines += 1; self.lines } }
/// # async fn doc(node: Node) -> Result<(), mesh::Error> {
/// use std::future::IntoFuture;
///
/// let lobby = node.actor::<Room>("lobby");
/// let n = lobby.call(Say("hi".into())).await?;
/// lobby.cast(Say("bye".into()))?;
/// // Owned: spawn it.
/// let later = tokio::spawn(lobby.call(Say("later".into())).into_future());
/// # Ok(()) }
/// ```
pub struct ActorHandle<A> {
    node: Node,
    id: Arc<str>,
    _actor: PhantomData<fn() -> A>,
}

impl<A> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        ActorHandle {
            node: self.node.clone(),
            id: self.id.clone(),
            _actor: PhantomData,
        }
    }
}

impl<A: Actor> std::fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ActorHandle({} {:?} via {})",
            A::NAME,
            self.id,
            self.node.id()
        )
    }
}

impl<A: Actor> ActorHandle<A> {
    /// The actor id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The node calls go through.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Calls the actor with `msg`: await it for the reply (`.timeout(d)`
    /// first to set the deadline). See [`crate::call`].
    pub fn call<M: Message>(&self, msg: M) -> HandleCall<A, M>
    where
        A: Handler<M>,
    {
        HandleCall {
            handle: self.clone(),
            msg,
            timeout: None,
        }
    }

    /// Casts `msg` to the actor (at most once, no reply). See
    /// [`crate::cast`].
    pub fn cast<M: Message>(&self, msg: M) -> Result<(), Error>
    where
        A: Handler<M>,
    {
        self.node.cast::<A, M>(&self.id, msg)
    }

    /// The serializable reference to this actor.
    pub fn to_ref(&self) -> ActorRef<A> {
        ActorRef {
            id: self.id.clone(),
            _actor: PhantomData,
        }
    }
}

/// A call made through an [`ActorHandle`]: owns its node, id and message,
/// so its future is `Send + 'static`.
#[must_use = "a call does nothing until awaited"]
pub struct HandleCall<A, M> {
    handle: ActorHandle<A>,
    msg: M,
    timeout: Option<Duration>,
}

impl<A: Actor, M> std::fmt::Debug for HandleCall<A, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleCall")
            .field("handle", &self.handle)
            .field("message", &std::any::type_name::<M>())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<A: Handler<M>, M: Message> HandleCall<A, M> {
    /// Sets the call's deadline (the node's default otherwise).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
}

impl<A: Handler<M>, M: Message> IntoFuture for HandleCall<A, M> {
    type Output = Result<M::Reply, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<M::Reply, Error>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let HandleCall {
                handle,
                msg,
                timeout,
            } = self;
            let call = handle.node.call::<A, M>(&handle.id, msg);
            match timeout {
                Some(d) => call.timeout(d).await,
                None => call.await,
            }
        })
    }
}

/// A serializable reference to actor `id` of type `A`: what a message
/// carries to name an actor. It holds no node, shard or version; turn it
/// into a handle with [`ActorRef::on`] (in a handler, `r.on(ctx.node())`).
///
/// On the wire: `[A::NAME, id]`. Decoding checks the name, so a reference
/// to another actor type fails to decode ("expected a reference to Room,
/// got User") instead of calling the wrong actor.
///
/// ```
/// # use mesh::prelude::*;
/// # use mesh::ActorRef;
/// # #[derive(Actor, Default)] #[actor(capability = "chat")] struct User;
/// #[derive(Message, Serialize, Deserialize)]
/// struct Join {
///     user: ActorRef<User>,
/// }
/// let join = Join { user: ActorRef::new("ada") };
/// let bytes = mesh::wire::encode(&join).unwrap();
/// let back: Join = mesh::wire::decode(&bytes).unwrap();
/// assert_eq!(back.user.id(), "ada");
/// ```
pub struct ActorRef<A> {
    id: Arc<str>,
    _actor: PhantomData<fn() -> A>,
}

impl<A: Actor> ActorRef<A> {
    /// A reference to actor `id` of type `A`.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        ActorRef {
            id: id.into(),
            _actor: PhantomData,
        }
    }

    /// The actor id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A handle calling the actor through `node`.
    pub fn on(&self, node: &Node) -> ActorHandle<A> {
        ActorHandle {
            node: node.clone(),
            id: self.id.clone(),
            _actor: PhantomData,
        }
    }
}

impl<A> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        ActorRef {
            id: self.id.clone(),
            _actor: PhantomData,
        }
    }
}

impl<A> PartialEq for ActorRef<A> {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl<A> Eq for ActorRef<A> {}

impl<A> std::hash::Hash for ActorRef<A> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl<A: Actor> std::fmt::Debug for ActorRef<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorRef({} {:?})", A::NAME, self.id)
    }
}

impl<A: Actor> Serialize for ActorRef<A> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (A::NAME, &*self.id).serialize(s)
    }
}

impl<'de, A: Actor> Deserialize<'de> for ActorRef<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (name, id) = <(String, String)>::deserialize(d)?;
        if name != A::NAME {
            return Err(serde::de::Error::custom(format!(
                "expected a reference to {}, got {name}",
                A::NAME
            )));
        }
        Ok(ActorRef::new(id))
    }
}

/// Folds a call's own error into its reply's error: for a call whose
/// reply is `Result<T, E>`, `call.await.flatten_err(f)` is `Result<T, E>`,
/// with `f` turning a [`Error`] into an `E`. In a handler calling another
/// actor, one `?` instead of `??` plus a `From<mesh::Error>` impl.
///
/// ```no_run
/// # use mesh::prelude::*;
/// # use mesh::Flatten;
/// # #[derive(Actor, Default)] #[actor(capability = "chat")] struct Room;
/// # #[derive(Message, Serialize, Deserialize)] #[message(reply = Result<u32, String>)] struct Count;
/// # #[mesh::handlers] impl Room { async fn count(&mut self, _: Count) -> Result<u32, String> { Ok(1) } }
/// # async fn doc(ctx: &Ctx) -> Result<u32, String> {
/// let n = ctx.node().actor::<Room>("lobby").call(Count).await.flatten_err(|e| e.to_string())?;
/// # Ok(n) }
/// ```
pub trait Flatten<T, E> {
    /// The reply's `Ok`, the reply's `Err`, or the call's error through `f`.
    fn flatten_err(self, f: impl FnOnce(Error) -> E) -> Result<T, E>;
}

impl<T, E> Flatten<T, E> for Result<Result<T, E>, Error> {
    fn flatten_err(self, f: impl FnOnce(Error) -> E) -> Result<T, E> {
        self.map_err(f).and_then(|r| r)
    }
}

impl Node {
    /// A typed handle on actor `id` of type `A` through this node: its
    /// calls need no turbofish, and it is `Clone + Send + 'static`. See
    /// [`ActorHandle`].
    pub fn actor<A: Actor>(&self, id: impl Into<Arc<str>>) -> ActorHandle<A> {
        ActorHandle {
            node: self.clone(),
            id: id.into(),
            _actor: PhantomData,
        }
    }
}
