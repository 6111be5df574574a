//! What a reminder whose time came does: which tick it delivers (if any)
//! and when its next one is, by its [`Missed`] policy. Pure arithmetic on
//! Unix milliseconds, so that every node decides alike.

use super::Missed;

/// One delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fire {
    /// The tick's scheduled time.
    pub(crate) due: u64,
    /// The earlier ticks it stands for or replaced (see [`super::Tick::missed`]).
    pub(crate) missed: u64,
}

/// What to do now with a reminder due at or before now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The tick to deliver; `None`: none (skipped).
    pub(crate) fire: Option<Fire>,
    /// Its next tick once this one is acknowledged; `None`: the reminder
    /// is done (a one-shot) and is deleted.
    pub(crate) next: Option<u64>,
}

/// The plan for a reminder due at `due` with period `period` (0: once)
/// at `now` (`now >= due`).
///
/// With `k` ticks overdue (those at `due`, `due + period`, ... up to
/// `now`): one overdue tick is merely late and fires under every policy;
/// with more, [`Missed::Skip`] fires none and jumps to the first tick
/// after now, [`Missed::Once`] fires the latest once for all of them, and
/// [`Missed::Burst`] fires the latest `max` one after the other, dropping
/// the older ones.
pub(crate) fn plan(due: u64, period: u64, missed: Missed, now: u64) -> Plan {
    if period == 0 {
        return Plan {
            fire: Some(Fire { due, missed: 0 }),
            next: None,
        };
    }
    let k = (now.saturating_sub(due) / period).saturating_add(1);
    let at = |n: u64| due.saturating_add(n.saturating_mul(period));
    match missed {
        _ if k == 1 => Plan {
            fire: Some(Fire { due, missed: 0 }),
            next: Some(at(1)),
        },
        Missed::Skip => Plan {
            fire: None,
            next: Some(at(k)),
        },
        Missed::Once => Plan {
            fire: Some(Fire {
                due: at(k - 1),
                missed: k - 1,
            }),
            next: Some(at(k)),
        },
        Missed::Burst(max) => {
            let max = u64::from(max.max(1));
            let dropped = k.saturating_sub(max);
            Plan {
                fire: Some(Fire {
                    due: at(dropped),
                    missed: dropped,
                }),
                next: Some(at(dropped.saturating_add(1))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_shot_fires_once_however_late() {
        for now in [100, 5_000, u64::MAX] {
            let p = plan(100, 0, Missed::Skip, now);
            assert_eq!(
                p.fire,
                Some(Fire {
                    due: 100,
                    missed: 0
                })
            );
            assert_eq!(p.next, None);
        }
    }

    #[test]
    fn a_late_tick_fires_under_every_policy_and_the_next_stays_aligned() {
        for m in [Missed::Skip, Missed::Once, Missed::Burst(3)] {
            let p = plan(1_000, 100, m, 1_099);
            assert_eq!(
                p.fire,
                Some(Fire {
                    due: 1_000,
                    missed: 0
                }),
                "{m:?}"
            );
            assert_eq!(p.next, Some(1_100), "{m:?}");
        }
    }

    #[test]
    fn missed_ticks_follow_the_policy() {
        // Ticks at 1000, 1100, ..., 1500 passed (k = 6) at 1550.
        let skip = plan(1_000, 100, Missed::Skip, 1_550);
        assert_eq!(skip.fire, None);
        assert_eq!(skip.next, Some(1_600));

        let once = plan(1_000, 100, Missed::Once, 1_550);
        assert_eq!(
            once.fire,
            Some(Fire {
                due: 1_500,
                missed: 5
            })
        );
        assert_eq!(once.next, Some(1_600));

        let burst = plan(1_000, 100, Missed::Burst(2), 1_550);
        assert_eq!(
            burst.fire,
            Some(Fire {
                due: 1_400,
                missed: 4
            })
        );
        assert_eq!(burst.next, Some(1_500));
        // The next plan, at the same time, fires the last one, then aligns.
        let again = plan(1_500, 100, Missed::Burst(2), 1_550);
        assert_eq!(
            again.fire,
            Some(Fire {
                due: 1_500,
                missed: 0
            })
        );
        assert_eq!(again.next, Some(1_600));
        // A burst under its cap fires every missed tick in order.
        let all = plan(1_000, 100, Missed::Burst(10), 1_250);
        assert_eq!(
            all.fire,
            Some(Fire {
                due: 1_000,
                missed: 0
            })
        );
        assert_eq!(all.next, Some(1_100));
    }

    #[test]
    fn no_overflow_at_the_edges() {
        let p = plan(u64::MAX - 10, 100, Missed::Once, u64::MAX);
        assert_eq!(p.next, Some(u64::MAX));
        let p = plan(0, 1, Missed::Burst(0), u64::MAX);
        assert!(p.fire.is_some());
    }
}
