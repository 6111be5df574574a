//! The clocks the lease deadline is measured on.
//!
//! A lease holds for a span of *real* time after the send of a renew: the
//! store's servers count real time, whatever happened to this host. Two
//! clocks are read, and the lease holds only while neither says the span
//! has passed:
//!
//! - **`CLOCK_BOOTTIME`** (Linux): monotonic, and unlike
//!   `CLOCK_MONOTONIC` (Rust's and tokio's `Instant`) it keeps counting
//!   while the host is suspended. After a suspend the deadline has passed
//!   as it should. It does not count a virtual machine *paused* by its
//!   hypervisor (the guest does not know it stopped), hence:
//! - **the wall clock** (`CLOCK_REALTIME`): once the guest's clock is set
//!   right after such a pause (NTP, the hypervisor's guest agent), the
//!   time since the last renew shows the lease expired even though the
//!   boot clock does not.
//!
//! A wall clock stepped forward only makes the lease end early (a renew
//! restarts it); one stepped back is bounded by the boot clock. Tokio's
//! clock only schedules the renews: it never decides whether the lease
//! holds.
//!
//! The [`Clock`] is a trait so that the tests can move either clock apart
//! from the others ([`TestClock`]).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One reading of both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Time since boot, suspend included (`CLOCK_BOOTTIME`).
    pub(crate) boot: Duration,
    /// Wall-clock time since the Unix epoch (zero before it).
    pub(crate) wall: Duration,
}

impl Stamp {
    /// Both readings moved `d` later.
    pub(crate) fn plus(self, d: Duration) -> Stamp {
        Stamp {
            boot: self.boot.saturating_add(d),
            wall: self.wall.saturating_add(d),
        }
    }
}

/// Where the lease reads the time.
pub(crate) trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Both clocks, now.
    fn now(&self) -> Stamp;
}

/// The host's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Stamp {
        Stamp {
            boot: boottime(),
            wall: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }
}

/// `CLOCK_BOOTTIME`, through `rustix` (vDSO, no system call).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn boottime() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Elsewhere, the monotonic clock (which may not count a suspend: the
/// wall-clock check is then the only guard against one).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn boottime() -> Duration {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed()
}

/// A clock whose two readings a test moves by hand, apart from each
/// other and from tokio's.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct TestClock {
    now: std::sync::Mutex<Stamp>,
}

#[cfg(test)]
impl TestClock {
    /// Starts at boot 1000 s, wall 1.7e9 s.
    pub(crate) fn new() -> std::sync::Arc<TestClock> {
        std::sync::Arc::new(TestClock {
            now: std::sync::Mutex::new(Stamp {
                boot: Duration::from_secs(1_000),
                wall: Duration::from_secs(1_700_000_000),
            }),
        })
    }

    /// Both clocks move on by `d` (time passes, the process runs).
    pub(crate) fn advance(&self, d: Duration) {
        let mut now = self.now.lock().unwrap();
        *now = now.plus(d);
    }

    /// Only the boot clock moves: the host was suspended for `d`
    /// (`CLOCK_MONOTONIC`, and so tokio's clock, did not move).
    pub(crate) fn suspend(&self, d: Duration) {
        self.now.lock().unwrap().boot += d;
    }

    /// Only the wall clock moves (a VM paused for `d`, its clock set
    /// right on resume; or a step of NTP).
    pub(crate) fn step_wall(&self, d: Duration) {
        self.now.lock().unwrap().wall += d;
    }

    /// Only the wall clock moves, back by `d` (a step of NTP).
    pub(crate) fn step_wall_back(&self, d: Duration) {
        let mut now = self.now.lock().unwrap();
        now.wall = now.wall.saturating_sub(d);
    }
}

#[cfg(test)]
impl Clock for TestClock {
    fn now(&self) -> Stamp {
        *self.now.lock().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_clock_is_read_and_moves_forward() {
        let a = SystemClock.now();
        let b = SystemClock.now();
        assert!(a.boot > Duration::ZERO);
        assert!(b.boot >= a.boot);
        assert!(a.wall > Duration::from_secs(1_600_000_000));
        // CLOCK_BOOTTIME counts at least what CLOCK_MONOTONIC counts.
        let t0 = std::time::Instant::now();
        let s0 = SystemClock.now();
        std::thread::sleep(Duration::from_millis(20));
        let mono = t0.elapsed();
        let boot = SystemClock.now().boot - s0.boot;
        assert!(
            boot + Duration::from_millis(1) >= mono,
            "{boot:?} < {mono:?}"
        );
    }
}
