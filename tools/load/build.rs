//! Records the toolchain and commit the tool was built from, for the
//! environment block every report carries (`MESH_LOAD_RUSTC`,
//! `MESH_LOAD_GIT`, read with `option_env!`).

use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    if let Some(v) = run(&rustc, &["-V"]) {
        println!("cargo:rustc-env=MESH_LOAD_RUSTC={v}");
    }
    if let Some(sha) = run("git", &["rev-parse", "HEAD"]) {
        let dirty = run("git", &["status", "--porcelain", "--untracked-files=no"]).is_some();
        let suffix = if dirty { "-dirty" } else { "" };
        println!("cargo:rustc-env=MESH_LOAD_GIT={sha}{suffix}");
    }
    // Rebuild when HEAD moves (works in worktrees too: --git-path).
    for p in ["HEAD", "index"] {
        if let Some(path) = run("git", &["rev-parse", "--git-path", p]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
