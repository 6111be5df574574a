//! Following an authoritative discovery: each full view it reports goes
//! to the owner, which makes it the gate and the places to dial; the last
//! view goes again when a restarted owner asks (`Cluster::rediscover`).
//! Ends when the discovery drops its sender or the cluster is gone.

use std::sync::{Arc, Weak};

use tokio::sync::{watch, Notify};

use super::{Cluster, Event};
use crate::discovery::Peers;

pub(super) async fn run(
    weak: Weak<Cluster>,
    mut rx: watch::Receiver<Peers>,
    rediscover: Arc<Notify>,
) {
    loop {
        let peers = rx.borrow_and_update().clone();
        match weak.upgrade() {
            Some(cluster) => cluster.send(Event::Discovered(peers)),
            None => return,
        }
        // `notify_one` keeps a permit: a request made meanwhile is not
        // missed.
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = rediscover.notified() => {}
        }
    }
}
