//! `manifests/plugin.schema.json` (what editors check) and [`Manifest::parse`] (what plugind
//! loads) accept and reject the same manifests.
//!
//! - every `manifests/examples/*.json` and every `examples/*/plugin.json` of the repository passes
//!   both (the example plugins are found at test time);
//! - every `manifests/invalid/*.json` fails both, and the parser reports exactly the JSON pointers
//!   listed for that file in `manifests/invalid/expected.json`;
//! - a table of edge cases (semver, ranges, names, bounds, nulls) gets the same verdict from both,
//!   except for the few documented cases a JSON Schema cannot express.

use plugind_protocol::manifest::Manifest;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("sdk/protocol sits two levels below the workspace root")
        .to_path_buf()
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo_root()).unwrap_or(path).display().to_string()
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `dir/*.json`, sorted.
fn json_files(dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// `examples/*/plugin.json` at the repository root (the example plugins), sorted.
fn example_plugin_manifests() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(repo_root().join("examples")) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory entry").path().join("plugin.json"))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The compiled schema. Compiling also checks it against the draft 2020-12 metaschema.
struct Schema {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Schema {
    fn load() -> Schema {
        let path = repo_root().join("manifests/plugin.schema.json");
        let mut schemas = boon::Schemas::new();
        let index = boon::Compiler::new()
            .compile(path.to_str().expect("a UTF-8 path"), &mut schemas)
            .unwrap_or_else(|e| panic!("{}: {e:#}", rel(&path)));
        Schema { schemas, index }
    }

    fn check(&self, doc: &Value) -> Result<(), String> {
        self.schemas.validate(doc, self.index).map_err(|e| format!("{e:#}"))
    }
}

#[test]
fn schema_is_draft_2020_12_and_describes_every_field() {
    let schema = read_json(&repo_root().join("manifests/plugin.schema.json"));
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert!(schema["$id"].is_string(), "the schema needs an $id");
    Schema::load();

    // full.json is the example that uses every field: keep it, and the schema, complete.
    let full = read_json(&repo_root().join("manifests/examples/full.json"));
    for (section, props, doc) in [
        ("", &schema["properties"], &full),
        ("/limits", &schema["properties"]["limits"]["properties"], &full["limits"]),
        ("/restart", &schema["properties"]["restart"]["properties"], &full["restart"]),
        ("/dependencies", &schema["properties"]["dependencies"]["properties"], &full["dependencies"]),
        ("/engines", &schema["properties"]["engines"]["properties"], &full["engines"]),
    ] {
        let props = props.as_object().expect("properties is an object");
        for (key, sub) in props {
            assert!(doc.get(key).is_some(), "manifests/examples/full.json lacks {section}/{key}");
            let described = sub.get("description").or_else(|| sub.get("$ref")).is_some();
            assert!(described, "schema field {section}/{key} has no description");
        }
    }
    let unknown: Vec<&String> =
        full.as_object().expect("object").keys().filter(|k| schema["properties"].get(k.as_str()).is_none()).collect();
    assert_eq!(unknown, ["author"], "full.json's only unknown field is \"author\" (kept and ignored)");
}

#[test]
fn seed_manifest_is_kept_verbatim() {
    let seed = read_json(&repo_root().join("manifests/examples/llama-extension.json"));
    assert_eq!(
        seed,
        json!({ "$schema": "./plugin-schema.json", "name": "llama-extension", "version": "1.0.0", "main": "./dist/index.js",
          "dependencies": { "required": ["llm-service@^2.0.0"], "optional": ["filesystem-access"] },
          "permissions": ["networking", "storage"], "capabilities": ["llm", "ui-extension"] })
    );
}

#[test]
fn example_manifests_pass_schema_and_parser() {
    let schema = Schema::load();
    let ours = json_files(&repo_root().join("manifests/examples"));
    assert!(ours.len() >= 5, "manifests/examples/ should hold a handful of manifests, found {}", ours.len());
    let mut failures = Vec::new();
    for path in ours.iter().chain(&example_plugin_manifests()) {
        let text = read(path);
        let doc: Value = match serde_json::from_slice(&text) {
            Ok(doc) => doc,
            Err(e) => {
                failures.push(format!("{}: not JSON: {e}", rel(path)));
                continue;
            }
        };
        if let Err(e) = schema.check(&doc) {
            failures.push(format!("{}: rejected by plugin.schema.json: {e}", rel(path)));
        }
        match Manifest::parse(&text) {
            Ok(m) if !m.warnings.is_empty() => {
                failures.push(format!("{}: loads with warnings: {}", rel(path), m.warnings.join("; ")))
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("{}: rejected by Manifest::parse: {e}", rel(path))),
        }
    }
    assert!(failures.is_empty(), "valid manifests that do not load:\n{}", failures.join("\n"));
}

#[test]
fn invalid_manifests_fail_schema_and_parser_at_the_expected_pointers() {
    let schema = Schema::load();
    let dir = repo_root().join("manifests/invalid");
    let expected: BTreeMap<String, Vec<String>> = serde_json::from_value(read_json(&dir.join("expected.json")))
        .expect("expected.json maps a file name to a list of JSON pointers");
    let files: Vec<PathBuf> =
        json_files(&dir).into_iter().filter(|p| p.file_name().is_some_and(|n| n != "expected.json")).collect();
    let names: BTreeSet<String> =
        files.iter().map(|p| p.file_name().expect("a file name").to_string_lossy().into_owned()).collect();
    let listed: BTreeSet<String> = expected.keys().cloned().collect();
    assert_eq!(names, listed, "every manifests/invalid/*.json needs an entry in expected.json, and back");

    let mut failures = Vec::new();
    for path in &files {
        let name = path.file_name().expect("a file name").to_string_lossy().into_owned();
        let text = read(path);
        // A file that is not JSON at all has nothing for the schema to accept.
        if let Ok(doc) = serde_json::from_slice::<Value>(&text) {
            if schema.check(&doc).is_ok() {
                failures.push(format!("{name}: accepted by plugin.schema.json"));
            }
        }
        match Manifest::parse(&text) {
            Ok(_) => failures.push(format!("{name}: accepted by Manifest::parse")),
            Err(e) => {
                // Compared as sets: the order of keys within `env` and `hooks` follows serde_json's map.
                let mut got: Vec<&str> = e.errors.iter().map(|f| f.pointer.as_str()).collect();
                let mut want: Vec<&str> = expected[&name].iter().map(String::as_str).collect();
                got.sort_unstable();
                want.sort_unstable();
                if got != want {
                    failures.push(format!("{name}: pointers {got:?}, expected {want:?} ({e})"));
                }
                if let Some(f) = e.errors.iter().find(|f| f.expected.is_empty() || f.found.is_empty()) {
                    failures.push(format!("{name}: error at {:?} does not say what was expected and found", f.pointer));
                }
            }
        }
    }
    assert!(failures.is_empty(), "invalid manifests:\n{}", failures.join("\n"));
}

/// `{"name": "probe", "version": "1.0.0", "main": "index.js"}` with `patch`'s top-level keys set.
fn probe(patch: &Value) -> Value {
    let mut doc: Map<String, Value> =
        [("name", json!("probe")), ("version", json!("1.0.0")), ("main", json!("index.js"))]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
    for (k, v) in patch.as_object().expect("a probe patch is an object") {
        doc.insert(k.clone(), v.clone());
    }
    Value::Object(doc)
}

fn comparators(n: usize) -> String {
    (0..n).map(|i| format!(">={i}")).collect::<Vec<_>>().join(", ")
}

#[test]
fn schema_and_parser_agree_on_edge_cases() {
    let schema = Schema::load();
    let range = |r: &str| json!({ "dependencies": { "required": [format!("svc@{r}")] }, "engines": { "plugind": r } });
    let dep = |d: &str| json!({ "dependencies": { "optional": [d] } });
    let probes: Vec<(Value, bool)> = vec![
        // names
        (json!({ "name": "a" }), true),
        (json!({ "name": "9lives" }), true),
        (json!({ "name": "a.b_c-d" }), true),
        (json!({ "name": "a".repeat(64) }), true),
        (json!({ "name": "a".repeat(65) }), false),
        (json!({ "name": "" }), false),
        (json!({ "name": "-x" }), false),
        (json!({ "name": ".x" }), false),
        (json!({ "name": "Echo" }), false),
        (json!({ "name": "ech o" }), false),
        (json!({ "name": null }), false),
        // versions
        (json!({ "version": "0.0.0" }), true),
        (json!({ "version": "1.2.3-alpha.1" }), true),
        (json!({ "version": "1.2.3-0.a-b.x7" }), true),
        (json!({ "version": "1.2.3+001.sha-abc" }), true),
        (json!({ "version": "1.2.3-rc.1+build.5" }), true),
        (json!({ "version": "1.2.3-01" }), false),
        (json!({ "version": "1.2.3-" }), false),
        (json!({ "version": "1.2.3-a..b" }), false),
        (json!({ "version": "1.2.3+" }), false),
        (json!({ "version": "01.2.3" }), false),
        (json!({ "version": "1.2" }), false),
        (json!({ "version": "v1.2.3" }), false),
        (json!({ "version": " 1.2.3" }), false),
        (json!({ "version": "1.2.3 " }), false),
        (json!({ "version": "1.2.3.4" }), false),
        // ranges, in dependencies and in engines.plugind
        (range("^1"), true),
        (range("~1.2"), true),
        (range("=1.2.3"), true),
        (range(">1"), true),
        (range("<= 2.0.0"), true),
        (range(">=1.2.3, <2"), true),
        (range(">=1.2.3 ,<2"), true),
        (range("1.*"), true),
        (range("1.2.x"), true),
        (range("1.X.*"), true),
        (range(">=1.*"), true),
        (range("*"), true),
        (range("x"), true),
        (range("1.2.3-beta.1"), true),
        (range("^1.2.3-beta.1+b7"), true),
        (range(&comparators(32)), true),
        (range(&comparators(33)), false),
        (range(""), false),
        (range("*, ^1"), false),
        (range("^*"), false),
        (range("1.*.3"), false),
        (range("1.2-beta"), false),
        (range("1.2.*-beta"), false),
        (range(">>2"), false),
        (range(">=1.0.0 <2.0.0"), false),
        (range("1.x || 2.x"), false),
        (range("1.0.0 - 2.0.0"), false),
        (range("^01"), false),
        (range("^1,"), false),
        (range("latest"), false),
        // dependency strings: `name` or `name@range`, trimmed around both parts
        (dep("svc"), true),
        (dep("Svc_Name.v2"), true),
        (dep(" svc @ ^1 "), true),
        (dep("svc@\t^1"), true),
        (dep("svc@^1,\t<2"), false),
        (dep("two words"), false),
        (dep(""), false),
        (dep("  "), false),
        (dep("@^1"), false),
        (dep("svc@"), false),
        (dep("svc@^1@2"), false),
        (json!({ "engines": { "plugind": " ^0.1 " } }), true),
        (json!({ "engines": { "plugind": "\t^0.1" } }), false),
        (json!({ "engines": { "node": ">=18 <23" } }), true),
        (json!({ "engines": { "plugind": 1 } }), false),
        // main / command
        (json!({ "main": "./x.js" }), true),
        (json!({ "main": "../lib/x.js" }), false),
        (json!({ "main": "lib/../x.js" }), false),
        (json!({ "main": "lib/..x.js" }), true),
        (json!({ "main": "bin/plugin" }), true),
        (json!({ "main": "/x.js" }), false),
        (json!({ "main": "" }), false),
        (json!({ "main": null }), false),
        (json!({ "main": null, "command": ["perl", "x.pl"] }), true),
        (json!({ "main": null, "command": [""] }), false),
        (json!({ "main": null, "command": ["x", ""] }), true),
        (json!({ "main": null, "command": null }), false),
        (json!({ "command": [] }), false),
        // null is the same as absent for optional fields
        (
            json!({ "description": null, "command": null, "args": null, "env": null, "dependencies": null,
                    "provides": null, "permissions": null, "capabilities": null, "hooks": null,
                    "timeout_ms": null, "max_timeout_ms": null, "limits": null, "restart": null,
                    "watch": null, "config": null, "engines": null, "instances": null }),
            true,
        ),
        (json!({ "dependencies": { "required": null, "optional": null } }), true),
        (
            json!({ "limits": { "memory_mb": null, "cpu_seconds": null, "open_files": null, "processes": null,
                                "max_inflight": null, "max_queue": null } }),
            true,
        ),
        (json!({ "restart": { "policy": null, "max_restarts": null, "window_s": null, "cooldown_s": null } }), true),
        (json!({ "args": [null] }), false),
        (json!({ "provides": [null] }), false),
        // env values
        (json!({ "env": { "A": "x", "B": 8080, "C": 1.5, "D": true, "": "empty key" } }), true),
        (json!({ "env": { "A": null } }), false),
        (json!({ "env": ["A=1"] }), false),
        // provides
        (json!({ "provides": [{ "name": "Any Name@", "version": "1.0.0", "extra": 1 }] }), true),
        (json!({ "provides": [{ "name": "", "version": "1.0.0" }] }), false),
        (json!({ "provides": [{ "name": "x", "version": "1.0" }] }), false),
        (json!({ "provides": [{ "name": "x" }] }), false),
        // permissions: unknown names only warn, duplicates are fine
        (json!({ "permissions": ["networking", "networking", "telepathy"] }), true),
        (json!({ "permissions": "networking" }), false),
        // hooks
        (json!({ "hooks": { "onRequest": -5, "custom.hook": 0, "x": i64::MAX, "y": i64::MIN } }), true),
        (json!({ "hooks": { "onRequest": 1.5 } }), false),
        (json!({ "hooks": { "onRequest": null } }), false),
        (json!({ "hooks": { "onRequest": 1e19 } }), false),
        (
            json!({ "hooks": { "onRequest": { "priority": 5, "timeout_ms": 200, "failure": "closed", "mode": "shadow" } } }),
            true,
        ),
        (json!({ "hooks": { "onRequest": {} } }), true),
        (json!({ "hooks": { "onRequest": { "failure": "maybe" } } }), false),
        (json!({ "hooks": { "onRequest": { "mode": "log" } } }), false),
        (json!({ "hooks": { "onRequest": { "timeout_ms": 0 } } }), false),
        (json!({ "hooks": { "onRequest": { "priority": "high" } } }), false),
        (json!({ "hooks": { "onRequest": "10" } }), false),
        (json!({ "hooks": { "": 1 } }), false),
        // integer bounds
        (json!({ "timeout_ms": 1, "max_timeout_ms": 1 }), true),
        (json!({ "timeout_ms": 0 }), false),
        (json!({ "max_timeout_ms": 0 }), false),
        (json!({ "timeout_ms": -1 }), false),
        (json!({ "timeout_ms": "5000" }), false),
        (json!({ "instances": 1 }), true),
        (json!({ "instances": 0 }), false),
        (json!({ "instances": 64 }), true),
        (json!({ "instances": 65 }), false),
        (json!({ "instances": 2_000_000_000u64 }), false),
        (
            json!({ "limits": { "memory_mb": 1, "cpu_seconds": 1, "open_files": 8, "processes": 1,
                             "max_inflight": 1, "max_queue": 0, "unknown": "ignored" } }),
            true,
        ),
        (json!({ "limits": { "memory_mb": 0 } }), false),
        (json!({ "limits": { "cpu_seconds": 0 } }), false),
        (json!({ "limits": { "open_files": 7 } }), false),
        (json!({ "limits": { "processes": 0 } }), false),
        (json!({ "limits": { "max_inflight": 0 } }), false),
        (json!({ "limits": { "max_queue": -1 } }), false),
        (json!({ "limits": { "memory_mb": u64::MAX } }), true),
        (json!({ "restart": { "policy": "never", "max_restarts": 0, "window_s": 1, "cooldown_s": 1 } }), true),
        (json!({ "restart": { "policy": "always" } }), true),
        (json!({ "restart": { "policy": "on-failure" } }), true),
        (json!({ "restart": { "policy": "On-Failure" } }), false),
        (json!({ "restart": { "policy": 1 } }), false),
        (json!({ "restart": { "window_s": 0 } }), false),
        (json!({ "restart": { "cooldown_s": 0 } }), false),
        (json!({ "restart": { "max_restarts": -1 } }), false),
        // free-form and unknown fields
        // `init` always receives an object (`{}` when none is given).
        (json!({ "config": { "nested": [1, "two", { "three": null }] } }), true),
        (json!({ "config": [1, "two", { "three": null }] }), false),
        (json!({ "config": "text" }), false),
        (json!({ "author": { "name": "me" }, "x-anything": [1] }), true),
        (json!({ "$schema": "https://example.org/plugin.schema.json" }), true),
        (json!({ "watch": ["**/*.py", "plugin.json"] }), true),
        (json!({ "watch": "**/*.py" }), false),
        (json!({ "watch": ["./src/*.py", "a..b/*", "..x"] }), true),
        (json!({ "watch": ["/etc/*"] }), false),
        (json!({ "watch": ["../other/*"] }), false),
        (json!({ "watch": ["src/../../x"] }), false),
        (json!({ "watch": [".."] }), false),
        (json!({ "watch": [""] }), false),
        (json!({ "capabilities": [1] }), false),
    ];

    let mut failures = Vec::new();
    for (patch, valid) in &probes {
        let doc = probe(patch);
        match schema.check(&doc) {
            Ok(()) if !valid => failures.push(format!("schema accepts {doc}")),
            Err(e) if *valid => failures.push(format!("schema rejects {doc}: {e}")),
            _ => {}
        }
        match Manifest::from_value(&doc) {
            Ok(_) if !valid => failures.push(format!("parser accepts {doc}")),
            Err(e) if *valid => failures.push(format!("parser rejects {doc}: {e}")),
            _ => {}
        }
    }
    assert!(failures.is_empty(), "schema and parser disagree with the table:\n{}", failures.join("\n"));
}

/// What a JSON Schema cannot say the way the parser does. Documented in manifests/README.md; if one
/// of these starts to agree, move it to the table above.
#[test]
fn known_divergences_stay_documented() {
    let schema = Schema::load();
    // (patch, accepted by the schema, accepted by the parser)
    let cases = [
        // JSON Schema's "integer" is a mathematical integer, so 1000.0 is one; serde_json's as_u64 says no.
        (json!({ "timeout_ms": 1000.0 }), true, false),
        (json!({ "hooks": { "onRequest": 1.0 } }), true, false),
        // A regex cannot bound a number to u64: semver rejects the overflow, the pattern does not.
        (json!({ "version": "18446744073709551616.0.0" }), true, false),
        // A method's timeout_ms is bounded by the plugin's max_timeout_ms, another field.
        (json!({ "methods": { "m": { "timeout_ms": 60001 } } }), true, false),
        // So is the plugin's own timeout_ms, when both are given.
        (json!({ "timeout_ms": 2000, "max_timeout_ms": 1000 }), true, false),
        // The parser never looks at "$schema"; the contract and the schema say it is a string.
        (json!({ "$schema": 5 }), false, true),
    ];
    let mut failures = Vec::new();
    for (patch, schema_ok, parser_ok) in &cases {
        let doc = probe(patch);
        if schema.check(&doc).is_ok() != *schema_ok || Manifest::from_value(&doc).is_ok() != *parser_ok {
            failures.push(format!("{doc}: expected schema {schema_ok}, parser {parser_ok}"));
        }
    }
    assert!(failures.is_empty(), "documented divergences changed:\n{}", failures.join("\n"));
}

/// `manifests/shipped/NAME.json` is a copy of `examples/NAME/plugin.json`, kept in step, so the
/// manifests of what we ship sit beside the schema.
#[test]
fn shipped_example_manifests_are_kept_in_step() {
    let root = repo_root();
    let plugins = example_plugin_manifests();
    let copies = json_files(&root.join("manifests/shipped"));
    assert_eq!(copies.len(), plugins.len(), "one copy per example plugin in manifests/shipped/");
    for plugin in plugins {
        let name =
            plugin.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let copy = root.join("manifests/shipped").join(format!("{name}.json"));
        assert_eq!(read(&copy), read(&plugin), "{} differs from {}: copy it over", rel(&copy), rel(&plugin));
    }
}
