//! Linux guests for the QEMU driver: the Debian kernel and busybox initramfs that
//! `scripts/guest-artifacts.sh` builds, and a guard that ends QEMU when a test fails.

use std::path::PathBuf;
use std::process::Command;

use super::{alive, root};

/// The kernel and initramfs paths, or why they cannot be had.
pub fn guest_artifacts() -> Result<(PathBuf, PathBuf), String> {
    let out = Command::new("bash")
        .arg(root().join("scripts/guest-artifacts.sh"))
        .output()
        .map_err(|e| format!("running scripts/guest-artifacts.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/guest-artifacts.sh failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(PathBuf::from)
            .ok_or_else(|| format!("scripts/guest-artifacts.sh printed no {key}"))
    };
    Ok((find("kernel=")?, find("initramfs=")?))
}

/// Whether a program answers `--version`.
pub fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Kills QEMU if the test fails before stopping it (it outlives the daemon by design).
pub struct KillOnDrop(pub Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.filter(|p| alive(*p)) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}
