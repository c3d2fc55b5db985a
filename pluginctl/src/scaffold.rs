//! `pluginctl new`: writes a plugin from the templates in `plugin-template/`, embedded in the
//! binary so it works offline and without a daemon.
//!
//! The new plugin carries its SDK: Python and Node get the SDK module next to their code, Rust
//! gets the `plugind-sdk` and `plugind-protocol` crates in `vendor/` (see `build.rs`). So it
//! builds outside this repository and names no path of the machine `pluginctl` was built on.

use plugind_protocol::manifest::is_valid_name;
use std::path::{Path, PathBuf};

/// A template language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Rust, with `sdk/rust` and `sdk/protocol` copied into `vendor/`.
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

/// (path in the repository, contents) of each template's files; `{{name}}` is replaced in them.
const RUST: &[(&str, &str)] = files!(
    "plugin-template/rust/Cargo.toml",
    "plugin-template/rust/README.md",
    "plugin-template/rust/plugin.json",
    "plugin-template/rust/src/main.rs",
    "plugin-template/rust/.gitignore",
);
const PYTHON: &[(&str, &str)] = files!(
    "plugin-template/python/README.md",
    "plugin-template/python/main.py",
    "plugin-template/python/plugin.json",
    "plugin-template/python/test_plugin.py",
);
const NODE: &[(&str, &str)] = files!(
    "plugin-template/node/README.md",
    "plugin-template/node/main.mjs",
    "plugin-template/node/plugin.json",
    "plugin-template/node/plugin.test.mjs",
);

/// (path in the new plugin, contents) of each language's SDK, copied as is.
const PYTHON_SDK: &[(&str, &str)] = &[("plugind_sdk.py", include_str!("../../sdk/python/plugind_sdk.py"))];
const NODE_SDK: &[(&str, &str)] = &[
    ("plugind-sdk.mjs", include_str!("../../sdk/node/plugind-sdk.mjs")),
    ("plugind-sdk.d.ts", include_str!("../../sdk/node/plugind-sdk.d.ts")),
    ("plugind-sdk.d.mts", include_str!("../../sdk/node/plugind-sdk.d.mts")),
];
mod rust_sdk {
    include!(concat!(env!("OUT_DIR"), "/sdk_files.rs"));
}

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
    #[error("{0} already exists and is not empty: choose another --dir, or empty it first")]
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
    let (template, sdk) = match lang {
        Lang::Rust => (RUST, rust_sdk::SDK_FILES),
        Lang::Python => (PYTHON, PYTHON_SDK),
        Lang::Node => (NODE, NODE_SDK),
    };
    let prefix = format!("plugin-template/{}/", lang_dir(lang));
    let template = template.iter().map(|(path, text)| {
        let rel = path.strip_prefix(&prefix).expect("UNWRAP: template files live in their language's dir");
        let (package, bin) = cargo_names(name);
        (rel, text.replace("{{name}}", name).replace("{{package}}", &package).replace("{{bin}}", &bin))
    });
    let sdk = sdk.iter().map(|(rel, text)| (*rel, (*text).to_owned()));
    let mut written = Vec::new();
    for (rel, text) in template.chain(sdk) {
        let target = dir.join(rel);
        let io = |source| ScaffoldError::Io { path: target.clone(), source };
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&target, text).map_err(io)?;
        written.push(target);
    }
    Ok(written)
}

/// The Cargo package and binary names of Rust plugin `name`: `name` itself where Cargo takes it.
/// A package name cannot start with a digit, and a binary cannot be named like a directory of
/// Cargo's own target dir: those get `plugin-` in front (audit 21: `pluginctl new 1digit` made a
/// crate Cargo refused). The manifest's `main` names the binary.
fn cargo_names(name: &str) -> (String, String) {
    let prefixed = || format!("plugin-{name}");
    let package = if name.starts_with(|c: char| c.is_ascii_digit()) { prefixed() } else { name.to_owned() };
    let bin = if ["build", "deps", "examples", "incremental"].contains(&name) { prefixed() } else { name.to_owned() };
    (package, bin)
}

fn lang_dir(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "rust",
        Lang::Python => "python",
        Lang::Node => "node",
    }
}

/// What to do next, for the CLI to print: shell lines, indented by two spaces, to type in order
/// from where `pluginctl new` ran (the `plugind` line in a terminal of its own).
pub fn next_steps(name: &str, lang: Lang, dir: &Path) -> String {
    let test = match lang {
        Lang::Rust => "cargo build --release && cargo test",
        Lang::Python => "python3 -m unittest",
        Lang::Node => "node --test",
    };
    let holder = std::path::absolute(dir)
        .ok()
        .and_then(|d| d.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(".."));
    let (dir, holder) = (shell_word(&dir.to_string_lossy()), shell_word(&holder.to_string_lossy()));
    format!(
        "next, test it and check it as plugind will run it:\n  cd {dir}\n  {test}\n  pluginctl check .\n\
         then run it under plugind, in a terminal of its own (or `pluginctl reload`, if a plugind scans {holder} already):\n  \
         plugind --plugins {holder}\n\
         and call it:\n  pluginctl call {name} hello '{{\"name\": \"Ada\"}}'"
    )
}

/// `word` as one shell word: as is when that is safe, else in single quotes.
fn shell_word(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_./-+:@%,=".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
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
    fn rust_template_vendors_the_sdk_and_names_no_path_of_this_machine() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let files = scaffold("hello-rs", Lang::Rust, &tmp.path().join("h")).expect("scaffold");
        let cargo = std::fs::read_to_string(tmp.path().join("h/Cargo.toml")).expect("Cargo.toml");
        assert!(cargo.contains(r#"path = "vendor/plugind-sdk""#) && cargo.contains("hello-rs"), "{cargo}");
        let sdk = std::fs::read_to_string(tmp.path().join("h/vendor/plugind-sdk/Cargo.toml")).expect("sdk manifest");
        assert!(sdk.contains(r#"path = "../plugind-protocol""#) && !sdk.contains("workspace"), "{sdk}");
        assert!(tmp.path().join("h/vendor/plugind-protocol/src/lib.rs").exists());
        assert!(tmp.path().join("h/vendor/plugind-sdk/src/lib.rs").exists());
        let checkout = env!("CARGO_MANIFEST_DIR").trim_end_matches("/pluginctl");
        for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "toml" || e == "json")) {
            let text = std::fs::read_to_string(f).expect("written");
            assert!(!text.contains(checkout) && !text.contains("{{"), "{}: {text}", f.display());
        }
    }

    #[test]
    fn next_steps_quote_what_the_shell_would_split() {
        assert_eq!(shell_word("plugins/my-plugin"), "plugins/my-plugin");
        assert_eq!(shell_word("my dir/it's"), r"'my dir/it'\''s'");
        let steps = next_steps("p", Lang::Python, Path::new("a b/p"));
        assert!(steps.contains("  cd 'a b/p'\n  python3 -m unittest\n  pluginctl check .\n"), "{steps}");
    }
}
