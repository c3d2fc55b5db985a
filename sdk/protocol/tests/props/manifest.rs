//! Properties of [`Manifest::parse`], shared by the proptests (`sdk/protocol/tests/prop.rs`) and
//! the cargo-fuzz target `manifest_parse` (`fuzz/`).
//!
//! - Never panics; the result is deterministic.
//! - An error lists at least one problem, each with a JSON pointer (`""` or `/…`) that names a
//!   field of the document or a missing one under an existing parent.
//! - A manifest that loads satisfies what the rest of plugind relies on (valid name, limits and
//!   counts at least 1, relative `main`, non-empty `command`), and keeps loading, to the same
//!   manifest, with an unknown field added (manifests/README.md: unknown fields are kept and ignored).

#![allow(dead_code)] // each includer uses part of it

use plugind_protocol::manifest::Manifest;
use serde_json::Value;

fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// Undoes `~1` and `~0` in one JSON pointer token.
fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Whether `pointer` names a value of `doc`, or a missing member of an object of `doc`.
fn names_a_field(doc: &Value, pointer: &str) -> bool {
    if pointer.is_empty() || doc.pointer(pointer).is_some() {
        return true;
    }
    let Some((parent, last)) = pointer.rsplit_once('/') else { return false };
    match doc.pointer(parent) {
        Some(Value::Object(o)) => !o.contains_key(&unescape(last)),
        _ => false,
    }
}

/// The manifest properties for one input.
pub fn check_text(text: &[u8]) {
    let first = Manifest::parse(text);
    assert_eq!(first, Manifest::parse(text), "deterministic");
    let doc: Option<Value> = serde_json::from_slice(text).ok();
    match first {
        Err(e) => {
            assert!(!e.errors.is_empty(), "an error names at least one problem");
            assert!(!e.to_string().is_empty());
            for fe in &e.errors {
                assert!(fe.pointer.is_empty() || fe.pointer.starts_with('/'), "pointer {:?}", fe.pointer);
                if let Some(doc) = &doc {
                    assert!(names_a_field(doc, &fe.pointer), "pointer {:?} names nothing in {doc}", fe.pointer);
                }
            }
        }
        Ok(m) => {
            let doc = doc.expect("a manifest that loads is JSON");
            check_loaded(&m);
            assert_eq!(Manifest::from_value(&doc).as_ref(), Ok(&m), "parse and from_value agree");
            // An unknown field is kept and changes nothing else.
            let mut with_extra = doc.clone();
            let key = (0..).map(|i| format!("x-unknown-{i}")).find(|k| doc.get(k).is_none()).expect("a free key");
            with_extra[&key] = serde_json::json!({"any": ["thing", 1]});
            let m2 = Manifest::from_value(&with_extra).expect("an unknown field never breaks a manifest");
            assert_eq!(m2.extra.get(&key), with_extra.get(&key));
            let mut m2 = m2;
            m2.extra.remove(&key);
            assert_eq!(m2, m);
        }
    }
}

/// What plugind relies on in a manifest that loaded.
pub fn check_loaded(m: &Manifest) {
    assert!(valid_name(&m.name), "name {:?}", m.name);
    assert!(m.timeout_ms >= 1 && m.max_timeout_ms >= 1);
    assert!(m.instances >= 1);
    assert!(m.limits.max_inflight >= 1, "max_inflight 0 would admit no call");
    assert!(m.limits.memory_mb >= 1 && m.limits.open_files >= 8);
    assert!(m.restart.window_s >= 1);
    assert!(m.main.is_some() || m.command.is_some(), "something to run");
    if let Some(main) = &m.main {
        assert!(!main.is_empty() && !main.starts_with('/'), "main {main:?}");
    }
    if let Some(cmd) = &m.command {
        assert!(!cmd.is_empty(), "command is non-empty");
    }
}
