//! The context a handler sees.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::Node;

/// What a handler (or a lifecycle hook) knows about its activation.
///
/// A handler takes it as an optional last parameter: `ctx: &Ctx`.
#[derive(Debug)]
pub struct Ctx {
    id: Arc<str>,
    actor: &'static str,
    node: Node,
    deactivate: AtomicBool,
}

impl Ctx {
    pub(crate) fn new(id: Arc<str>, actor: &'static str, node: Node) -> Self {
        Ctx {
            id,
            actor,
            node,
            deactivate: AtomicBool::new(false),
        }
    }

    /// The actor's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The actor type's name.
    pub fn actor_name(&self) -> &'static str {
        self.actor
    }

    /// The node running this activation, to call other actors.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Asks for this activation to be deactivated once the current message
    /// is handled: its `on_deactivate` hook runs, and the next message
    /// activates a fresh one.
    pub fn deactivate(&self) {
        self.deactivate.store(true, Ordering::Relaxed);
    }

    pub(crate) fn take_deactivate(&self) -> bool {
        self.deactivate.swap(false, Ordering::Relaxed)
    }
}
