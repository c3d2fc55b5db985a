//! `pluginctl new`: writes a plugin from the templates in `plugin-template/`, embedded in the
//! binary so it works offline and without a daemon.

use plugind_protocol::manifest::is_valid_name;
use std::path::{Path, PathBuf};

/// A template language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Rust, on `sdk/rust`.
    Rust,
    /// Python, with `plugind_sdk.py` copied in.
    Python,
    /// Node, with `plugind-sdk.mjs` copied in.
    Node,
}

impl std::str::FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rust" => Ok(Lang::Rust),
            "python" | "py" => Ok(Lang::Python),
            "node" | "js" | "javascript" => Ok(Lang::Node),
            other => Err(format!("unknown language {other:?}: expected rust, python or node")),
        }
    }
}

macro_rules! files {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../", $path)))),*]
    };
}

/// (path in the repository, contents) of each template's files.
const RUST: &[(&str, &str)] = files!(
    "plugin-template/rust/Cargo.toml",
    "plugin-template/rust/README.md",
    "plugin-template/rust/plugin.json",
    "plugin-template/rust/src/main.rs",
);
const PYTHON: &[(&str, &str)] = files!(
    "plugin-template/python/README.md",
    "plugin-template/python/main.py",
    "plugin-template/python/plugin.json",
    "plugin-template/python/test_plugin.py",
    "sdk/python/plugind_sdk.py",
);
const NODE: &[(&str, &str)] = files!(
    "plugin-template/node/README.md",
    "plugin-template/node/main.mjs",
    "plugin-template/node/plugin.json",
    "plugin-template/node/plugin.test.mjs",
    "sdk/node/plugind-sdk.mjs",
    "sdk/node/plugind-sdk.d.ts",
    "sdk/node/plugind-sdk.d.mts",
);

/// Where the Rust template finds the SDK crate: this repository's `sdk/rust`, as built.
const SDK_RUST_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/rust");

/// Why a plugin could not be scaffolded.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name breaks the manifest's pattern.
    #[error("invalid plugin name {0:?}: expected ^[a-z0-9][a-z0-9._-]{{0,63}}$")]
    BadName(String),
    /// Cargo package names cannot hold dots.
    #[error("invalid name {0:?} for a Rust plugin: cargo package names cannot contain '.'")]
    RustDot(String),
    /// The target exists and is not empty.
    #[error("{0} already exists and is not empty")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes a new plugin `name` in `lang` into `dir`; returns the files written.
pub fn scaffold(name: &str, lang: Lang, dir: &Path) -> Result<Vec<PathBuf>, ScaffoldError> {
    if !is_valid_name(name) {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    if lang == Lang::Rust && name.contains('.') {
        return Err(ScaffoldError::RustDot(name.to_owned()));
    }
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(ScaffoldError::Exists(dir.to_path_buf()));
    }
    let sdk_path = std::fs::canonicalize(SDK_RUST_PATH).unwrap_or_else(|_| PathBuf::from(SDK_RUST_PATH));
    let files = match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Node => NODE,
    };
    let mut written = Vec::new();
    for (repo_path, text) in files {
        // Template files keep their path below the language dir; SDK files land at the top.
        let rel = match repo_path.split_once(&format!("plugin-template/{}/", lang_dir(lang))) {
            Some((_, rel)) => rel.to_owned(),
            None => Path::new(repo_path).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        let target = dir.join(rel);
        let text = text.replace("{{name}}", name).replace("{{sdk_path}}", &sdk_path.to_string_lossy());
        let io = |source| ScaffoldError::Io { path: target.clone(), source };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&target, text).map_err(io)?;
        written.push(target);
    }
    Ok(written)
}

fn lang_dir(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "rust",
        Lang::Python => "python",
        Lang::Node => "node",
    }
}

/// What to run next, for the CLI to print.
pub fn next_steps(name: &str, lang: Lang, dir: &Path) -> String {
    let d = dir.display();
    let build = match lang {
        Lang::Rust => format!("cd {d} && cargo build --release && cargo test\npluginctl check {d}"),
        Lang::Python => format!("cd {d} && python3 -m unittest\npluginctl check {d}"),
        Lang::Node => format!("cd {d} && node --test\npluginctl check {d}"),
    };
    format!("{build}\nthen put {name}/ in a --plugins directory of plugind (or run `pluginctl reload`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_template_is_complete_and_substituted() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("my-plugin");
        let files = scaffold("my-plugin", Lang::Python, &dir).expect("scaffold");
        assert!(files.iter().any(|f| f.ends_with("plugind_sdk.py")));
        let manifest = std::fs::read_to_string(dir.join("plugin.json")).expect("manifest");
        assert!(manifest.contains("\"my-plugin\"") && !manifest.contains("{{"));
        assert!(matches!(scaffold("my-plugin", Lang::Python, &dir), Err(ScaffoldError::Exists(_))));
    }

    #[test]
    fn names_are_checked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(matches!(scaffold("Bad Name", Lang::Node, &tmp.path().join("x")), Err(ScaffoldError::BadName(_))));
        assert!(matches!(scaffold("a.b", Lang::Rust, &tmp.path().join("y")), Err(ScaffoldError::RustDot(_))));
    }

    #[test]
    fn rust_template_points_at_the_sdk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        scaffold("hello-rs", Lang::Rust, &tmp.path().join("h")).expect("scaffold");
        let cargo = std::fs::read_to_string(tmp.path().join("h/Cargo.toml")).expect("Cargo.toml");
        assert!(cargo.contains("sdk/rust") && cargo.contains("hello-rs") && !cargo.contains("{{"), "{cargo}");
        assert!(tmp.path().join("h/src/main.rs").exists());
    }
}
