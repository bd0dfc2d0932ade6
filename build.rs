//! Embeds the commit being built as `HOOKRELAY_COMMIT`, for `hookrelay --version`
//! and `hookrelay_build_info`: an image or binary can always say what source it is.
//! Taken from the environment when set (a Docker build has no `.git`; the release
//! workflow passes the tag's commit), else from git, else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=HOOKRELAY_COMMIT");
    let commit = std::env::var("HOOKRELAY_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves: HEAD itself, the branch it names, packed refs.
            // Only paths that exist: cargo reruns a script on every build while a
            // path it watches is missing.
            if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
                let common = git(&["rev-parse", "--git-common-dir"]).unwrap_or_else(|| dir.clone());
                let mut watch = vec![format!("{dir}/HEAD"), format!("{common}/packed-refs")];
                if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    watch.push(format!("{common}/{r}"));
                }
                for path in watch.iter().filter(|p| std::path::Path::new(p).exists()) {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_string());
    // Printable and short, whatever the environment held.
    let commit: String = commit
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(40)
        .collect();
    println!("cargo:rustc-env=HOOKRELAY_COMMIT={commit}");
}
