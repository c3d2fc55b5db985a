//! `pluginctl methods NAME`: a plugin's method catalog (`plugins.get`'s `methods`).
//!
//! The table has one row per method: its deadline (`-`: the plugin's `timeout_ms`), whether it
//! is idempotent, a one-line summary of its `params` schema and its description. `--json`
//! prints the `methods` object as plugind answered it, schemas whole.

use crate::output::{self, Cell};
use crate::{bad_answer, print_json, Failure};
use plugind_client::Client;
use plugind_protocol::control as c;
use plugind_protocol::manifest::MethodSpec;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Longest params summary shown in the table; the rest is elided (`--json` has it all).
const SUMMARY_CHARS: usize = 60;

/// Prints plugin `name`'s catalog. An unknown plugin fails like `status` does (exit 1).
pub async fn run(client: &Client, name: &str, json_out: bool) -> Result<(), Failure> {
    let status = client.call(c::PLUGINS_GET, &json!({ "name": name })).await?;
    if status["state"] == "invalid" {
        // Its catalog is unknown, not empty: its manifest does not load.
        return Err(Failure::new(
            1,
            format!("{name} is invalid: its manifest does not load (`pluginctl status {name}` says why)"),
        ));
    }
    let methods = status.get("methods").cloned().unwrap_or_else(|| json!({}));
    if json_out {
        return print_json(&methods);
    }
    let methods: BTreeMap<String, MethodSpec> = serde_json::from_value(methods).map_err(bad_answer)?;
    if methods.is_empty() {
        anstream::println!("{name} declares no methods");
        return Ok(());
    }
    let rows = methods
        .iter()
        .map(|(method, m)| {
            let cells: Vec<String> = vec![
                method.clone(),
                m.timeout_ms.map_or_else(|| "-".to_owned(), |t| format!("{t}ms")),
                match m.idempotent {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "no".to_owned(),
                    None => "-".to_owned(),
                },
                m.params.as_ref().map_or_else(|| "-".to_owned(), summary),
                m.description.clone().unwrap_or_else(|| "-".to_owned()),
            ];
            cells.into_iter().map(Cell::from).collect()
        })
        .collect();
    output::table(&["METHOD", "TIMEOUT", "IDEMPOTENT", "PARAMS", "DESCRIPTION"], rows);
    Ok(())
}

/// A params schema in one line: an object's properties with their types, `*` after a required
/// one (`{name*: string, times: integer}`); else its type; `any` for `true`, `nothing` for
/// `false`.
pub fn summary(schema: &Value) -> String {
    let text = match schema {
        Value::Bool(true) => "any".to_owned(),
        Value::Bool(false) => "nothing".to_owned(),
        Value::Object(o) => {
            let required: Vec<&str> =
                o.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
            match o.get("properties").and_then(Value::as_object) {
                Some(props) => {
                    let fields: Vec<String> = props
                        .iter()
                        .map(|(k, v)| {
                            let star = if required.contains(&k.as_str()) { "*" } else { "" };
                            format!("{k}{star}: {}", type_of(v))
                        })
                        .collect();
                    format!("{{{}}}", fields.join(", "))
                }
                None if !required.is_empty() => format!("{{{}*}}", required.join("*, ")),
                None => type_of(schema),
            }
        }
        other => other.to_string(),
    };
    if text.chars().count() > SUMMARY_CHARS {
        let cut: String = text.chars().take(SUMMARY_CHARS - 1).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// A subschema's `type` (`string`, `integer|null`), or `any` when it sets none.
fn type_of(schema: &Value) -> String {
    match schema.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("|"),
        _ if schema.get("enum").is_some() => "enum".to_owned(),
        _ => "any".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::summary;
    use serde_json::json;

    #[test]
    fn summaries_name_properties_types_and_required_ones() {
        let s = json!({"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"}, "times": {"type": ["integer", "null"]}}});
        assert_eq!(summary(&s), "{name*: string, times: integer|null}");
        assert_eq!(summary(&json!({"type": "object", "required": ["a", "b"]})), "{a*, b*}");
        assert_eq!(summary(&json!({"type": "array"})), "array");
        assert_eq!(summary(&json!(true)), "any");
        let long = json!({"properties": (0..20).map(|i| (format!("field{i}"), json!({"type": "string"}))).collect::<serde_json::Map<_, _>>()});
        assert!(summary(&long).ends_with('…') && summary(&long).chars().count() == 60);
    }
}
