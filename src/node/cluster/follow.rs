//! Following an authoritative discovery: each full view it reports goes
//! to the owner task, which makes it the gate and the places to dial.
//! Ends when the discovery drops its sender or the cluster is gone.

use std::sync::Weak;

use tokio::sync::watch;

use super::{Cluster, Event};
use crate::discovery::Peers;

pub(super) async fn run(weak: Weak<Cluster>, mut rx: watch::Receiver<Peers>) {
    loop {
        let peers = rx.borrow_and_update().clone();
        match weak.upgrade() {
            Some(cluster) => cluster.send(Event::Discovered(peers)),
            None => return,
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
