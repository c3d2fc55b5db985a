//! Embeds the Rust SDK for `pluginctl new --lang rust`, which copies it into the new plugin's
//! `vendor/` directory: the sources of `sdk/protocol` and `sdk/rust` as they are, and for each a
//! `Cargo.toml` that stands alone (what it inherits from this workspace written out, the other
//! vendored crate found at `../NAME`, tests, dev-dependencies and lints left out).
//! The plugin then builds anywhere, offline but for crates.io, with no path of this machine in it.
//!
//! Output: `$OUT_DIR/sdk_files.rs`, a `SDK_FILES: &[(&str, &str)]` of (path in the plugin,
//! contents), the contents included with `include_str!` so cargo rebuilds when they change.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// (directory in this repository, package name): the crates a Rust plugin needs.
const CRATES: [(&str, &str); 2] = [("sdk/protocol", "plugind-protocol"), ("sdk/rust", "plugind-sdk")];

/// Manifest tables a dependency of the plugin does not need.
const DROPPED: [&str; 8] =
    ["dev-dependencies", "build-dependencies", "test", "bench", "example", "lints", "badges", "target"];

fn main() {
    let here = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("UNWRAP: cargo sets it"));
    let root = here.parent().expect("UNWRAP: pluginctl/ has a parent").to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("UNWRAP: cargo sets it"));
    let workspace = read_toml(&root.join("Cargo.toml"));
    println!("cargo:rerun-if-changed={}", root.join("Cargo.toml").display());
    let vendored: Vec<&str> = CRATES.iter().map(|(_, name)| *name).collect();

    let mut files = Vec::new();
    for (dir, name) in CRATES {
        let dir = root.join(dir);
        println!("cargo:rerun-if-changed={}", dir.join("Cargo.toml").display());
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        assert!(
            !dir.join("build.rs").exists(),
            "{} has a build script: teach pluginctl/build.rs to vendor it",
            dir.display()
        );
        let manifest = standalone(&workspace, &read_toml(&dir.join("Cargo.toml")), &vendored);
        let generated = out.join(format!("{name}.Cargo.toml"));
        std::fs::write(&generated, manifest).expect("UNWRAP: OUT_DIR is writable");
        files.push((format!("vendor/{name}/Cargo.toml"), generated));
        let mut sources = Vec::new();
        walk(&dir.join("src"), &mut sources);
        sources.sort();
        for path in sources {
            let rel = path.strip_prefix(&dir).expect("UNWRAP: walked below dir");
            files.push((format!("vendor/{name}/{}", rel.display()), path));
        }
    }
    let mut code = String::from("/// (path in the new plugin, contents) of the vendored Rust SDK.\n");
    code.push_str("pub const SDK_FILES: &[(&str, &str)] = &[\n");
    for (rel, path) in &files {
        let path = path.to_str().expect("UNWRAP: UTF-8 paths in the checkout");
        writeln!(code, "    ({rel:?}, include_str!({path:?})),").expect("UNWRAP: writing to a String");
    }
    code.push_str("];\n");
    std::fs::write(out.join("sdk_files.rs"), code).expect("UNWRAP: OUT_DIR is writable");
}

fn read_toml(path: &Path) -> Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file below `dir`.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("UNWRAP: a readable directory entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// `manifest` with what it inherits from `workspace` written out and the vendored crates as
/// sibling paths.
fn standalone(workspace: &Table, manifest: &Table, vendored: &[&str]) -> String {
    let ws = workspace["workspace"].as_table().expect("UNWRAP: a virtual manifest");
    let ws_package = ws.get("package").and_then(Value::as_table).cloned().unwrap_or_default();
    let ws_deps = ws.get("dependencies").and_then(Value::as_table).cloned().unwrap_or_default();
    let mut out = manifest.clone();
    for key in DROPPED {
        out.remove(key);
    }
    if let Some(Value::Table(package)) = out.get_mut("package") {
        for (key, value) in package.iter_mut() {
            if inherits(value) {
                *value = ws_package.get(key).cloned().unwrap_or_else(|| panic!("workspace.package.{key} is missing"));
            }
        }
        package.insert("publish".into(), Value::Boolean(false));
    }
    if let Some(Value::Table(deps)) = out.get_mut("dependencies") {
        for (name, spec) in deps.iter_mut() {
            let mut resolved = match &*spec {
                Value::Table(local) if inherits(spec) => {
                    let mut t = match ws_deps.get(name.as_str()) {
                        Some(Value::String(version)) => Table::from_iter([("version".into(), version.clone().into())]),
                        Some(Value::Table(t)) => t.clone(),
                        _ => panic!("workspace.dependencies.{name} is missing"),
                    };
                    for (k, v) in local.iter().filter(|(k, _)| k.as_str() != "workspace") {
                        match (k.as_str(), t.get_mut(k.as_str())) {
                            ("features", Some(Value::Array(features))) => {
                                features.extend(v.as_array().cloned().unwrap_or_default())
                            }
                            _ => {
                                t.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    t
                }
                Value::Table(t) => t.clone(),
                Value::String(version) => Table::from_iter([("version".into(), version.clone().into())]),
                other => panic!("dependency {name}: unexpected {other}"),
            };
            if resolved.contains_key("path") {
                assert!(vendored.contains(&name.as_str()), "{name} is a path dependency that is not vendored");
                resolved.insert("path".into(), Value::String(format!("../{name}")));
            }
            *spec = Value::Table(resolved);
        }
    }
    format!(
        "# Copied by `pluginctl new` from plugind's own sources (its version is `version` below).\n\
         # Upgrade by replacing this directory with the one a newer `pluginctl new` writes.\n{}",
        toml::to_string(&out).expect("UNWRAP: a TOML table serializes")
    )
}

fn inherits(value: &Value) -> bool {
    value.as_table().and_then(|t| t.get("workspace")).and_then(Value::as_bool) == Some(true)
}
