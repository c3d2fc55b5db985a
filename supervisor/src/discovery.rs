//! Finding plugins: every immediate subdirectory of a plugin dir that holds a `plugin.json`.

use plugind_protocol::manifest::{self, Manifest};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One plugin directory found on disk.
#[derive(Debug)]
pub struct Found {
    /// The directory.
    pub dir: PathBuf,
    /// The name to list it under.
    pub name: String,
    /// The manifest, or why it does not load (naming file and field).
    pub manifest: Result<Manifest, String>,
    /// Version to show even when invalid.
    pub version: String,
}

/// Scans `dirs`; errors reading a directory itself are returned as strings beside the finds.
pub fn scan(dirs: &[PathBuf], plugind_version: &semver::Version) -> (Vec<Found>, Vec<String>) {
    let mut found: Vec<Found> = Vec::new();
    let mut errors = Vec::new();
    for root in dirs {
        // Absolute, so a plugin's paths stay right once its cwd is its own directory.
        let root = &std::path::absolute(root).unwrap_or_else(|_| root.clone());
        let entries = match std::fs::read_dir(root) {
            Ok(e) => e,
            Err(e) => {
                errors.push(format!("{}: cannot read plugin directory: {e}", root.display()));
                continue;
            }
        };
        let mut dirs: Vec<PathBuf> =
            entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.join("plugin.json").is_file()).collect();
        dirs.sort();
        for dir in dirs {
            found.push(load(&dir, plugind_version));
        }
    }
    // Names are unique: a second plugin with a taken name is invalid.
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for f in &mut found {
        if let Some(first) = seen.get(&f.name) {
            if f.manifest.is_ok() {
                f.manifest = Err(format!(
                    "{}: field /name: expected a unique plugin name, found {:?} (already used by {})",
                    f.dir.join("plugin.json").display(),
                    f.name,
                    first.display()
                ));
            }
            f.name = format!("{}@{}", f.name, f.dir.display());
        } else {
            seen.insert(f.name.clone(), f.dir.clone());
        }
    }
    (found, errors)
}

/// Loads one plugin directory.
pub fn load(dir: &Path, plugind_version: &semver::Version) -> Found {
    let file = dir.join("plugin.json");
    let dir_name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let text = match std::fs::read(&file) {
        Ok(t) => t,
        Err(e) => {
            return Found {
                dir: dir.to_path_buf(),
                name: dir_name,
                manifest: Err(format!("{}: cannot read: {e}", file.display())),
                version: String::new(),
            }
        }
    };
    let (salvaged_name, salvaged_version) = manifest::salvage_identity(&text);
    let name = salvaged_name.filter(|n| manifest::is_valid_name(n)).unwrap_or(dir_name);
    let version = salvaged_version.unwrap_or_default();
    let manifest =
        Manifest::parse(&text).map_err(|e| format!("{}: {e}", file.display())).and_then(|m| match &m.engines_plugind {
            Some(req) if !req.matches(plugind_version) => Err(format!(
                "{}: /engines/plugind: expected a range matching plugind {plugind_version}, found {:?}",
                file.display(),
                req.to_string()
            )),
            _ => Ok(m),
        });
    if let Ok(m) = &manifest {
        for w in &m.warnings {
            tracing::warn!(plugin = %m.name, file = %file.display(), "{w}");
        }
    }
    Found { dir: dir.to_path_buf(), name, manifest, version }
}
