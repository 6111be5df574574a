//! The environment a run happened in, recorded in every output file.
//!
//! Contract: [`Env::capture`] never fails; what it cannot learn it records
//! as `"unknown"`. The CPU model and core count come from `/proc/cpuinfo`
//! and the scheduler, the OS from `/etc/os-release` and the kernel release,
//! the rustc version and git commit from the build (`build.rs`), the
//! command line from the process's arguments, and the time as RFC 3339 UTC
//! with a `Z`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Where and how a run was made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Env {
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Cores this process may use.
    pub cores: usize,
    /// Logical processors listed in /proc/cpuinfo.
    pub cpus_listed: usize,
    /// `PRETTY_NAME` from /etc/os-release, and the kernel release.
    pub os: String,
    /// The host name.
    pub hostname: String,
    /// `rustc -V` of the compiler that built this tool.
    pub rustc: String,
    /// The git commit the tool was built from (`-dirty` when changed).
    pub git_commit: String,
    /// This tool's version.
    pub tool_version: String,
    /// The command line, shell-quoted.
    pub command_line: String,
    /// Whether the binary was built with optimisations.
    pub release_build: bool,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

impl Env {
    /// The environment of this process, now.
    pub fn capture() -> Self {
        let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name") || l.starts_with("Model"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let cpus_listed = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let pretty = read("/etc/os-release")
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .map(|v| v.trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| std::env::consts::OS.to_owned());
        let kernel = read("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let os = format!("{pretty} ({} {kernel})", std::env::consts::ARCH)
            .trim()
            .to_owned();
        Env {
            cpu_model,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpus_listed,
            os,
            hostname: read("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|| "unknown".into()),
            rustc: option_env!("MESH_LOAD_RUSTC")
                .unwrap_or("unknown")
                .to_owned(),
            git_commit: option_env!("MESH_LOAD_GIT").unwrap_or("unknown").to_owned(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            command_line: std::env::args()
                .map(|a| quote(&a))
                .collect::<Vec<_>>()
                .join(" "),
            release_build: !cfg!(debug_assertions),
        }
    }
}

/// `t` as RFC 3339 UTC with a `Z` and milliseconds: `2026-11-22T10:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_347_296_789);
        assert_eq!(rfc3339(t), "2026-11-22T11:34:56.789Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("--slo"), "--slo");
        assert_eq!(quote("p99<5ms"), "'p99<5ms'");
    }
}
