//! Where plugind's control socket is, and the `--listen` bearer token file.

use std::path::{Path, PathBuf};

/// The control socket when none is given: `$PLUGIND_SOCKET`, else `$RUNTIME_DIRECTORY/plugind.sock`
/// (systemd; the first of several), else `$XDG_RUNTIME_DIR/plugind.sock`, else
/// `/tmp/plugind-$UID.sock`. plugind binds the same path by the same rules.
pub fn default_socket() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = var("PLUGIND_SOCKET") {
        return PathBuf::from(p);
    }
    if let Some(d) = var("RUNTIME_DIRECTORY") {
        // systemd may pass several, colon-separated; the first is ours.
        let first = d.to_string_lossy().split(':').next().unwrap_or_default().to_owned();
        return PathBuf::from(first).join("plugind.sock");
    }
    if let Some(d) = var("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("plugind.sock");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    PathBuf::from(format!("/tmp/plugind-{uid}.sock"))
}

/// The bearer token in `path`: its first line, trimmed. An empty file is an error.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_owned();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token)
}
