//! Activation histories, and a checker for duplicate activations.
//!
//! Placement is eventual by default (see the crate docs): during a topology
//! change the same id may be active on two nodes for a while; strong mode
//! ([`crate::lease`]) promises it never is. This module is how either is
//! measured. A node given a [`History`]
//! ([`NodeBuilder::history`](crate::NodeBuilder::history)) records when each
//! activation starts, each message it is about to handle, and when it has
//! ended (after its `on_deactivate` hook, or lost with its lease), with
//! the activation's fencing token in strong mode. [`overlaps`] finds the
//! ids whose activations on two nodes were alive at the same time, and for
//! how long; [`violations`] the ids whose activations *acted* out of turn
//! (a message handled after the next activation started), which is what
//! the strong mode must never show.
//!
//! Events carry wall-clock times (`SystemTime`), so histories of several
//! processes on one machine can be merged; across machines the overlap
//! found is only as good as their clock agreement. [`FileHistory`] appends
//! events as text lines ([`ActivationEvent::to_line`]) that
//! [`ActivationEvent::parse_line`] reads back.
//!
//! Cost: one call of the recorder per activation start and end and per
//! message; without a recorder, one branch per message.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What an event marks in an activation's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// An activation starts: its `activate` runs (it may read state) and
    /// it serves messages from then on. A failed `activate` is followed by
    /// `Deactivated`.
    Activated,
    /// A message is about to be handled (recorded per message, only on a
    /// node with a history).
    Served,
    /// The activation has ended (its `on_deactivate` hook, if any, ran).
    Deactivated,
    /// The activation ended without its hook, its last act the last
    /// message it served: strong mode's lease was lost, or its durable
    /// state could not be written (`mesh::state`: the store refused or
    /// failed the write).
    Lost,
}

impl Phase {
    fn word(self) -> &'static str {
        match self {
            Phase::Activated => "activated",
            Phase::Served => "served",
            Phase::Deactivated => "deactivated",
            Phase::Lost => "lost",
        }
    }
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
    /// The node's run (its incarnation, random at each start).
    pub incarnation: u64,
    /// The actor type's name.
    pub actor: String,
    /// The actor id.
    pub id: String,
    /// Strong mode: the fencing token the activation holds (0 in eventual
    /// mode).
    pub token: u64,
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
            token: 0,
        }
    }

    /// The same event, with the activation's fencing token.
    pub fn with_token(mut self, token: u64) -> Self {
        self.token = token;
        self
    }

    /// One text line (no newline): `phase nanos node incarnation token
    /// actor id`, the id last so it may hold spaces.
    ///
    /// Names are escaped, so that no id (which callers, and peers, choose)
    /// can break the line or forge another: a backslash is written `\\`,
    /// a line feed `\n`, a carriage return `\r`, any other control
    /// character `\u{hex}`, and a space in the node or actor name `\s`.
    /// [`ActivationEvent::parse_line`] undoes it.
    pub fn to_line(&self) -> String {
        let nanos = self
            .at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!(
            "{} {nanos} {} {} {} {} {}",
            self.phase.word(),
            escape(&self.node, true),
            self.incarnation,
            self.token,
            escape(&self.actor, true),
            escape(&self.id, false)
        )
    }

    /// Reads a line written by [`ActivationEvent::to_line`]; `None` if it
    /// is not one.
    pub fn parse_line(line: &str) -> Option<Self> {
        let mut parts = line.splitn(7, ' ');
        let phase = match parts.next()? {
            "activated" => Phase::Activated,
            "served" => Phase::Served,
            "deactivated" => Phase::Deactivated,
            "lost" => Phase::Lost,
            _ => return None,
        };
        let nanos: u128 = parts.next()?.parse().ok()?;
        let at = UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).ok()?);
        let node = unescape(parts.next()?)?;
        let incarnation = parts.next()?.parse().ok()?;
        let token = parts.next()?.parse().ok()?;
        let actor = unescape(parts.next()?)?;
        let id = unescape(parts.next()?)?;
        Some(ActivationEvent::new(phase, at, node, incarnation, actor, id).with_token(token))
    }
}

/// `s` with backslashes, control characters and (with `spaces`) spaces
/// escaped: see [`ActivationEvent::to_line`].
fn escape(s: &str, spaces: bool) -> std::borrow::Cow<'_, str> {
    let plain = |c: char| c != '\\' && !c.is_control() && !(spaces && c == ' ');
    if s.chars().all(plain) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            ' ' if spaces => out.push_str("\\s"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Undoes [`escape`]; `None` for a malformed escape.
fn unescape(s: &str) -> Option<String> {
    if !s.contains('\\') {
        return Some(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            's' => out.push(' '),
            'u' => {
                if chars.next()? != '{' {
                    return None;
                }
                let mut hex = String::new();
                loop {
                    match chars.next()? {
                        '}' => break,
                        c => hex.push(c),
                    }
                }
                out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Receives a node's activation events. Called on the activation's task:
/// keep it quick (append to a buffer or a file).
pub trait History: Send + Sync + 'static {
    /// Records one event.
    fn record(&self, event: ActivationEvent);
}

/// Keeps events in memory: the first [`MemoryHistory::DEFAULT_LIMIT`]
/// (or the limit given), then counts the others as dropped. The first
/// ones are kept rather than the last, so the history stays a consistent
/// prefix (no activation's end without its start).
#[derive(Debug, Clone)]
pub struct MemoryHistory(Arc<Mutex<Kept>>);

#[derive(Debug)]
struct Kept {
    events: Vec<ActivationEvent>,
    limit: usize,
    dropped: u64,
}

impl Default for MemoryHistory {
    fn default() -> Self {
        Self::with_limit(Self::DEFAULT_LIMIT)
    }
}

impl MemoryHistory {
    /// How many events [`MemoryHistory::new`] keeps: 2^20 (about 200 MiB
    /// with short names).
    pub const DEFAULT_LIMIT: usize = 1 << 20;

    /// An empty history keeping up to [`MemoryHistory::DEFAULT_LIMIT`]
    /// events.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty history keeping up to `limit` events.
    pub fn with_limit(limit: usize) -> Self {
        MemoryHistory(Arc::new(Mutex::new(Kept {
            events: Vec::new(),
            limit,
            dropped: 0,
        })))
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The events so far (the first ones, up to the limit).
    pub fn events(&self) -> Vec<ActivationEvent> {
        self.kept().events.clone()
    }

    /// How many events came past the limit and were not kept.
    pub fn dropped(&self) -> u64 {
        self.kept().dropped
    }
}

impl History for MemoryHistory {
    fn record(&self, event: ActivationEvent) {
        let mut kept = self.kept();
        if kept.events.len() < kept.limit {
            kept.events.push(event);
            return;
        }
        kept.dropped += 1;
        if kept.dropped == 1 {
            tracing::warn!(
                limit = kept.limit,
                "memory history full: later activation events are not kept"
            );
        }
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
            Phase::Served => {}
            Phase::Activated => {
                open.insert((key, host), e.at);
            }
            Phase::Deactivated | Phase::Lost => {
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

/// A handoff that broke single activation: the later activation of an
/// id started while the earlier one (on another node or run) was still
/// serving, or held a smaller token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Violation {
    /// The actor type's name.
    pub actor: String,
    /// The actor id.
    pub id: String,
    /// The earlier and the later activation's hosts, as
    /// `node/incarnation`.
    pub hosts: (String, String),
    /// When the later activation started.
    pub at: SystemTime,
    /// What was wrong: the earlier one's last activity came this much
    /// after the later one's start (`None` for a token out of order).
    pub by: Option<Duration>,
    /// The tokens of the two activations (0 in eventual mode).
    pub tokens: (u64, u64),
}

/// One activation's span of activity, for [`violations`].
#[derive(Debug, Clone)]
struct Span {
    host: String,
    start: SystemTime,
    token: u64,
    /// The last moment it did anything: its last dispatch, or the end of
    /// its hook when it ended gracefully.
    last: SystemTime,
}

/// The single-activation checker of the chaos suites: per id, the
/// activations in start order (on every node and run) must each have done
/// their last thing (last message dispatched, or `on_deactivate` finished)
/// before the next one started, and their fencing tokens must grow (when
/// recorded). An activation lost with its lease counts until its last
/// dispatch: it did nothing after, which is what the strong mode promises
/// of a node that resumes after a pause. An activation with no end in the
/// history (a killed process) counts until its last dispatch too.
///
/// Needs the per-message `served` events a node records when given a
/// history. Stricter than [`overlaps`], which counts an idle activation
/// waiting for its passivation as alive.
pub fn violations(events: &[ActivationEvent]) -> Vec<Violation> {
    type Key = (String, String);
    let mut sorted: Vec<&ActivationEvent> = events.iter().collect();
    // At one instant: starts after ends and dispatches (a handover at one
    // instant is in order).
    sorted.sort_by_key(|e| (e.at, matches!(e.phase, Phase::Activated)));
    let mut open: HashMap<(Key, String), Span> = HashMap::new();
    let mut spans: HashMap<Key, Vec<Span>> = HashMap::new();
    for e in sorted {
        let key = (e.actor.clone(), e.id.clone());
        let host = format!("{}/{}", e.node, e.incarnation);
        let k = (key, host.clone());
        match e.phase {
            Phase::Activated => {
                if let Some(prev) = open.remove(&k) {
                    spans.entry(k.0.clone()).or_default().push(prev);
                }
                open.insert(
                    k,
                    Span {
                        host,
                        start: e.at,
                        token: e.token,
                        last: e.at,
                    },
                );
            }
            Phase::Served => {
                if let Some(span) = open.get_mut(&k) {
                    span.last = span.last.max(e.at);
                }
            }
            Phase::Deactivated | Phase::Lost => {
                if let Some(mut span) = open.remove(&k) {
                    if e.phase == Phase::Deactivated {
                        span.last = span.last.max(e.at);
                    }
                    spans.entry(k.0).or_default().push(span);
                }
            }
        }
    }
    for ((key, _), span) in open {
        spans.entry(key).or_default().push(span);
    }
    let mut found = Vec::new();
    for ((actor, id), mut list) in spans {
        list.sort_by_key(|s| s.start);
        for pair in list.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.host == b.host && a.last <= b.start {
                continue;
            }
            let late = a.last.duration_since(b.start).ok().filter(|d| !d.is_zero());
            let reordered = a.token != 0 && b.token != 0 && b.token < a.token;
            if late.is_some() || reordered {
                found.push(Violation {
                    actor: actor.clone(),
                    id: id.clone(),
                    hosts: (a.host.clone(), b.host.clone()),
                    at: b.start,
                    by: late,
                    tokens: (a.token, b.token),
                });
            }
        }
    }
    found.sort_by(|a, b| (&a.actor, &a.id, a.at).cmp(&(&b.actor, &b.id, b.at)));
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
        assert_eq!(ActivationEvent::parse_line("activated x n 1 0 P id"), None);
        let t = ev(Phase::Lost, 5, "n", "a b").with_token(99);
        assert_eq!(ActivationEvent::parse_line(&t.to_line()), Some(t));
    }

    #[test]
    fn ids_cannot_break_or_forge_lines() {
        // An id with a line feed and a forged event after it.
        let forged = "x\nlost 5 n 1 0 P victim";
        let e = ev(Phase::Activated, 1, "n", forged);
        let line = e.to_line();
        assert_eq!(line.lines().count(), 1, "{line}");
        let back: Vec<_> = line
            .lines()
            .filter_map(ActivationEvent::parse_line)
            .collect();
        assert_eq!(back, [e]);
        // Every awkward character, in every name, round-trips.
        let awkward = "a b\\n\\\r\t\u{0}\u{7f}\u{85}é\\u{41}";
        let mut e = ActivationEvent::new(Phase::Served, UNIX_EPOCH, awkward, 3, awkward, awkward);
        e.token = 9;
        let line = e.to_line();
        assert!(!line.contains(['\n', '\r']), "{line:?}");
        assert_eq!(
            line.split(' ').count(),
            7 + 1,
            "the id keeps its space: {line:?}"
        );
        assert_eq!(ActivationEvent::parse_line(&line), Some(e));
        // Plain names are written as before.
        assert_eq!(
            ev(Phase::Lost, 0, "n-1", "player 7").to_line(),
            "lost 0 n-1 1 0 P player 7"
        );
        // Malformed escapes are no line.
        for bad in [
            "activated 0 n 1 0 P a\\",
            "activated 0 n 1 0 P a\\q",
            "activated 0 n 1 0 P \\u{zz}",
            "activated 0 n 1 0 P \\u{41",
        ] {
            assert_eq!(ActivationEvent::parse_line(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_memory_history_keeps_the_first_events_up_to_its_limit() {
        let h = MemoryHistory::with_limit(3);
        for ms in 0..10 {
            h.record(ev(Phase::Served, ms, "n", "x"));
        }
        let kept: Vec<_> = h.events().iter().map(|e| e.at).collect();
        assert_eq!(
            kept,
            (0..3)
                .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
                .collect::<Vec<_>>()
        );
        assert_eq!(h.dropped(), 7);
        assert_eq!(
            MemoryHistory::new().0.lock().unwrap().limit,
            MemoryHistory::DEFAULT_LIMIT
        );
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
    fn violations_order_activity_not_lifetimes() {
        let tok = |e: ActivationEvent, t| e.with_token(t);
        // Strong-mode handoff: a served at 1, lost at 50 after a pause
        // (nothing served after 1), b activated at 20 with a larger token.
        let ok = [
            tok(ev(Phase::Activated, 0, "a", "x"), 10),
            tok(ev(Phase::Served, 1, "a", "x"), 10),
            tok(ev(Phase::Activated, 20, "b", "x"), 12),
            tok(ev(Phase::Served, 21, "b", "x"), 12),
            tok(ev(Phase::Lost, 50, "a", "x"), 10),
        ];
        assert_eq!(violations(&ok), []);
        assert_eq!(
            overlaps(&ok).len(),
            1,
            "lifetimes overlap, activity does not"
        );
        // a served after b started: flagged, by 5 ms.
        let mut bad = ok.to_vec();
        bad.push(tok(ev(Phase::Served, 25, "a", "x"), 10));
        let v = violations(&bad);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].by, Some(Duration::from_millis(5)));
        assert_eq!(v[0].hosts, ("a/1".to_owned(), "b/1".to_owned()));
        // A graceful end counts to the end of its hook.
        let hook = [
            ev(Phase::Activated, 0, "a", "y"),
            ev(Phase::Activated, 5, "b", "y"),
            ev(Phase::Deactivated, 9, "a", "y"),
        ];
        assert_eq!(violations(&hook)[0].by, Some(Duration::from_millis(4)));
        // Tokens out of order.
        let order = [
            tok(ev(Phase::Activated, 0, "a", "z"), 30),
            tok(ev(Phase::Lost, 1, "a", "z"), 30),
            tok(ev(Phase::Activated, 2, "b", "z"), 20),
        ];
        assert_eq!(violations(&order)[0].tokens, (30, 20));
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
