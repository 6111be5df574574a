//! Activation histories, and a checker for duplicate activations.
//!
//! Placement is eventual (see the crate docs): during a topology change the
//! same id may be active on two nodes for a while. This module is how that
//! window is measured. A node given a [`History`]
//! ([`NodeBuilder::history`](crate::NodeBuilder::history)) records when each
//! activation starts serving and when it has ended (after its
//! `on_deactivate` hook); [`overlaps`] finds the ids whose activations on
//! two nodes overlapped in time, and for how long.
//!
//! Events carry wall-clock times (`SystemTime`), so histories of several
//! processes on one machine can be merged; across machines the overlap
//! found is only as good as their clock agreement. [`FileHistory`] appends
//! events as text lines ([`ActivationEvent::to_line`]) that
//! [`ActivationEvent::parse_line`] reads back.
//!
//! Cost: one call of the recorder per activation start and end, none per
//! message; without a recorder, one branch.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which end of an activation's life an event marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The actor was activated: it serves messages from now on.
    Activated,
    /// The activation has ended (its `on_deactivate` hook, if any, ran).
    Deactivated,
}

/// One end of one activation's life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActivationEvent {
    /// Start or end.
    pub phase: Phase,
    /// When (wall clock).
    pub at: SystemTime,
    /// The node that hosts it.
    pub node: String,
    /// The node's run ([`crate::wire::Identity::incarnation`]).
    pub incarnation: u64,
    /// The actor type's name.
    pub actor: String,
    /// The actor id.
    pub id: String,
}

impl ActivationEvent {
    /// An event.
    pub fn new(
        phase: Phase,
        at: SystemTime,
        node: impl Into<String>,
        incarnation: u64,
        actor: impl Into<String>,
        id: impl Into<String>,
    ) -> Self {
        ActivationEvent {
            phase,
            at,
            node: node.into(),
            incarnation,
            actor: actor.into(),
            id: id.into(),
        }
    }

    /// One text line (no newline): `phase nanos node incarnation actor id`,
    /// the id last so it may hold spaces. Node and actor names hold none.
    pub fn to_line(&self) -> String {
        let nanos = self
            .at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let phase = match self.phase {
            Phase::Activated => "activated",
            Phase::Deactivated => "deactivated",
        };
        format!(
            "{phase} {nanos} {} {} {} {}",
            self.node, self.incarnation, self.actor, self.id
        )
    }

    /// Reads a line written by [`ActivationEvent::to_line`]; `None` if it
    /// is not one.
    pub fn parse_line(line: &str) -> Option<Self> {
        let mut parts = line.splitn(6, ' ');
        let phase = match parts.next()? {
            "activated" => Phase::Activated,
            "deactivated" => Phase::Deactivated,
            _ => return None,
        };
        let nanos: u128 = parts.next()?.parse().ok()?;
        let at = UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).ok()?);
        let node = parts.next()?.to_owned();
        let incarnation = parts.next()?.parse().ok()?;
        let actor = parts.next()?.to_owned();
        let id = parts.next()?.to_owned();
        Some(ActivationEvent::new(
            phase,
            at,
            node,
            incarnation,
            actor,
            id,
        ))
    }
}

/// Receives a node's activation events. Called on the activation's task:
/// keep it quick (append to a buffer or a file).
pub trait History: Send + Sync + 'static {
    /// Records one event.
    fn record(&self, event: ActivationEvent);
}

/// Keeps events in memory.
#[derive(Debug, Default, Clone)]
pub struct MemoryHistory(Arc<Mutex<Vec<ActivationEvent>>>);

impl MemoryHistory {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The events so far.
    pub fn events(&self) -> Vec<ActivationEvent> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl History for MemoryHistory {
    fn record(&self, event: ActivationEvent) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }
}

/// Appends events to a file, one line each, flushed as written (a killed
/// process loses nothing it recorded).
#[derive(Debug)]
pub struct FileHistory(Mutex<std::fs::File>);

impl FileHistory {
    /// Appends to `path`, creating it.
    pub fn append(path: impl AsRef<std::path::Path>) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(FileHistory(Mutex::new(f)))
    }
}

impl History for FileHistory {
    fn record(&self, event: ActivationEvent) {
        let mut f = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = writeln!(f, "{}", event.to_line()) {
            tracing::warn!("cannot record an activation event: {e}");
        }
    }
}

/// Two activations of one id, on two nodes (or two runs of one), that were
/// alive at the same time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// The actor type's name.
    pub actor: String,
    /// The actor id.
    pub id: String,
    /// The two hosts, as `node/incarnation`.
    pub hosts: (String, String),
    /// When the second activation started (the overlap began).
    pub at: SystemTime,
    /// How long both were alive; `None` if both still are at the end of
    /// the history.
    pub length: Option<Duration>,
}

/// The overlapping activations in `events` (in any order, several nodes
/// merged). An activation with no end in the history counts as alive until
/// the end; an end with no start counts from the start of the history.
pub fn overlaps(events: &[ActivationEvent]) -> Vec<Overlap> {
    type Key = (String, String);
    // Per (actor, id): intervals (host, start, end).
    let mut sorted: Vec<&ActivationEvent> = events.iter().collect();
    sorted.sort_by_key(|e| (e.at, matches!(e.phase, Phase::Activated)));
    let mut open: HashMap<(Key, String), SystemTime> = HashMap::new();
    let mut intervals: HashMap<Key, Vec<(String, SystemTime, Option<SystemTime>)>> = HashMap::new();
    for e in sorted {
        let key = (e.actor.clone(), e.id.clone());
        let host = format!("{}/{}", e.node, e.incarnation);
        match e.phase {
            Phase::Activated => {
                open.insert((key, host), e.at);
            }
            Phase::Deactivated => {
                let start = open
                    .remove(&(key.clone(), host.clone()))
                    .unwrap_or(UNIX_EPOCH);
                intervals
                    .entry(key)
                    .or_default()
                    .push((host, start, Some(e.at)));
            }
        }
    }
    for ((key, host), start) in open {
        intervals.entry(key).or_default().push((host, start, None));
    }
    let mut found = Vec::new();
    for ((actor, id), mut ivs) in intervals {
        ivs.sort_by_key(|(_, s, _)| *s);
        for (i, (ha, sa, ea)) in ivs.iter().enumerate() {
            for (hb, sb, eb) in &ivs[i + 1..] {
                if ha == hb {
                    continue;
                }
                // b starts at or after a: they overlap if b starts before a ends.
                if ea.is_some_and(|ea| *sb >= ea) {
                    continue;
                }
                let end = match (ea, eb) {
                    (Some(a), Some(b)) => Some((*a).min(*b)),
                    (Some(a), None) => Some(*a),
                    (None, Some(b)) => Some(*b),
                    (None, None) => None,
                };
                let _ = sa;
                found.push(Overlap {
                    actor: actor.clone(),
                    id: id.clone(),
                    hosts: (ha.clone(), hb.clone()),
                    at: *sb,
                    length: end.map(|e| e.duration_since(*sb).unwrap_or_default()),
                });
            }
        }
    }
    found.sort_by(|a, b| (&a.actor, &a.id).cmp(&(&b.actor, &b.id)));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(phase: Phase, ms: u64, node: &str, id: &str) -> ActivationEvent {
        ActivationEvent::new(
            phase,
            UNIX_EPOCH + Duration::from_millis(ms),
            node,
            1,
            "P",
            id,
        )
    }

    #[test]
    fn lines_round_trip() {
        let e = ev(Phase::Activated, 1234, "n-1", "player 7");
        assert_eq!(ActivationEvent::parse_line(&e.to_line()), Some(e));
        assert_eq!(ActivationEvent::parse_line("garbage"), None);
        assert_eq!(ActivationEvent::parse_line("activated x n 1 P id"), None);
    }

    #[test]
    fn handovers_in_order_are_not_overlaps() {
        let h = [
            ev(Phase::Activated, 0, "a", "x"),
            ev(Phase::Deactivated, 10, "a", "x"),
            ev(Phase::Activated, 10, "b", "x"),
            ev(Phase::Activated, 5, "a", "y"),
            ev(Phase::Deactivated, 6, "a", "y"),
            ev(Phase::Activated, 7, "a", "y"),
        ];
        assert_eq!(overlaps(&h), []);
    }

    #[test]
    fn overlaps_are_found_with_their_length() {
        let h = [
            ev(Phase::Activated, 0, "a", "x"),
            ev(Phase::Activated, 4, "b", "x"),
            ev(Phase::Deactivated, 10, "a", "x"),
            ev(Phase::Activated, 20, "c", "z"),
            ev(Phase::Activated, 30, "d", "z"),
        ];
        let o = overlaps(&h);
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].id, "x");
        assert_eq!(o[0].length, Some(Duration::from_millis(6)));
        assert_eq!(o[1].id, "z");
        assert_eq!(o[1].length, None, "both still alive");
    }
}
