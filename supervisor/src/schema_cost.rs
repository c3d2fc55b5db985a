//! What checking a value against a plugin's JSON Schema can cost, found before the schema is
//! used.
//!
//! A plugin's method schemas are checked inside plugind, on every call, against params the
//! caller (possibly the same plugin) chooses. JSON Schema lets a small schema cost exponential
//! time: 40 `$defs` whose `anyOf` names the next one twice apply 2^40 subschemas to one value,
//! and a recursive schema whose two branches both recurse doubles its work at every level of
//! the value. A validator has no budget to stop it, so such a schema wedged plugind for good.
//!
//! [`analyze`] bounds the work at one place of the value: how many subschemas can be applied
//! there, counting every path through `allOf`/`anyOf`/`oneOf`/`not`/`if`/`then`/`else`/
//! `dependentSchemas`/`$ref`. It follows the schema down into the value level by level
//! (`properties`, `items`…), keeping for each subschema the most times it can be applied at one
//! place of that level (the most over every key and index: an upper bound on any one path),
//! for as deep as a value can be (serde_json parses 128 levels). A schema whose bound passes
//! [`MAX_APPLIED`] is refused, as is a `$ref` cycle that never descends into the value (it
//! would never end). The bound times the number of places in a call's params bounds the work of
//! checking them ([`Cost::too_costly`]).
//!
//! `$ref`s are resolved within the document: `#`, `#/json/pointer`, `#anchor` (`$anchor` or
//! `$dynamicAnchor`), or a reference equal to an embedded `$id`. Anything else is refused: a
//! reference the analysis cannot follow could hide any cost (and plugind fetches no remote
//! schema anyway).

use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// Most subschemas that one place of a value may be checked against. Nested unions multiply
/// (a `oneOf` of 40 blocks whose `content` is a `oneOf` of 30 is 1200 at a content's place),
/// which is ordinary and cheap; 2^40 is not.
pub const MAX_APPLIED: u64 = 100_000;

/// Most subschema applications one call's params may need (a second or so of checking, at
/// worst).
pub const MAX_CALL_WORK: u64 = 200_000_000;

/// Most subschema applications one call's params may need for plugind to say where they fail
/// ([`Cost::too_costly_to_explain`]): about 45 MB of error reports at worst.
pub const MAX_ERROR_WORK: u64 = 100_000;

/// Levels of a value serde_json parses.
const MAX_DEPTH: usize = 128;

/// Most different sets of subschemas the analysis follows down a value before it gives up.
const MAX_STATES: usize = 10_000;

/// Why a schema is refused: its pointer and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostError {
    /// Where, inside the schema (`""` for the whole).
    pub pointer: String,
    /// What.
    pub message: String,
}

/// The work a schema can take per place of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Most subschemas applied at one place.
    pub per_place: u64,
}

impl Cost {
    /// Whether checking `params` (JSON text) could take more than [`MAX_CALL_WORK`]: the bound
    /// per place times the places in it (counted only when the length alone does not settle it).
    pub fn too_costly(&self, params: &str) -> Option<u64> {
        self.more_than(params, MAX_CALL_WORK)
    }

    /// Whether saying *where* `params` fails the schema could cost more than
    /// [`MAX_ERROR_WORK`]. The validator's report of a failed `anyOf`/`oneOf` holds the errors of
    /// every branch, nested unions within: about 450 bytes per subschema applied, so a schema
    /// of 91,000 nested branches made each failing item of an array cost 40 MB, and 100 items
    /// took plugind to the OOM killer (audit 16). Checking stays within [`MAX_CALL_WORK`]; a
    /// report past this bound says only that the params do not match.
    pub fn too_costly_to_explain(&self, params: &str) -> bool {
        self.more_than(params, MAX_ERROR_WORK).is_some()
    }

    /// The work of checking `params` when it is over `limit`.
    fn more_than(&self, params: &str, limit: u64) -> Option<u64> {
        if self.per_place.saturating_mul(params.len() as u64) <= limit {
            return None;
        }
        // Every value but the first follows a `,` `:` `[` or `{` (inside strings too: an
        // overcount, on the safe side).
        let places = 1 + params.bytes().filter(|b| matches!(b, b',' | b':' | b'[' | b'{')).count() as u64;
        let work = self.per_place.saturating_mul(places);
        (work > limit).then_some(work)
    }
}

/// Which places of the value below a subschema applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    /// The value of property `k`.
    Prop(String),
    /// Any property's value (`patternProperties`, `additionalProperties`, `unevaluatedProperties`).
    AnyProp,
    /// Item `i`.
    Item(usize),
    /// Any item (`items`, `contains`, `unevaluatedItems`, `additionalItems`).
    AnyItem,
    /// Something that is not a property or item value (`propertyNames`, `contentSchema`).
    Other,
}

#[derive(Default)]
struct Graph {
    /// Each subschema's pointer.
    pointers: Vec<String>,
    /// Subschemas applied at the same place.
    inplace: Vec<Vec<usize>>,
    /// Subschemas applied one level down.
    down: Vec<Vec<(Place, usize)>>,
    /// Pointer → node.
    by_pointer: HashMap<String, usize>,
    /// `$anchor`/`$dynamicAnchor` and `$id` → node.
    names: HashMap<String, usize>,
    /// `$ref`s to resolve once every node is known: (from, reference, pointer of the `$ref`).
    refs: Vec<(usize, String, String)>,
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

impl Graph {
    fn node(&mut self, pointer: &str) -> usize {
        let id = self.pointers.len();
        self.pointers.push(pointer.to_owned());
        self.inplace.push(Vec::new());
        self.down.push(Vec::new());
        self.by_pointer.insert(pointer.to_owned(), id);
        id
    }

    /// Adds the subschema `s` at `pointer` and everything under it; its node.
    fn add(&mut self, s: &Value, pointer: &str) -> usize {
        let id = self.node(pointer);
        let Value::Object(o) = s else { return id };
        for key in ["$anchor", "$dynamicAnchor"] {
            if let Some(Value::String(a)) = o.get(key) {
                self.names.insert(format!("#{a}"), id);
            }
        }
        if let Some(Value::String(i)) = o.get("$id") {
            self.names.insert(i.clone(), id);
            self.names.insert(format!("{i}#"), id);
        }
        for (key, v) in o {
            let at = format!("{pointer}/{}", escape(key));
            match key.as_str() {
                "allOf" | "anyOf" | "oneOf" => {
                    for (i, sub) in v.as_array().into_iter().flatten().enumerate() {
                        let c = self.add(sub, &format!("{at}/{i}"));
                        self.inplace[id].push(c);
                    }
                }
                "not" | "if" | "then" | "else" => {
                    let c = self.add(v, &at);
                    self.inplace[id].push(c);
                }
                "dependentSchemas" | "dependencies" => {
                    for (k, sub) in v.as_object().into_iter().flatten() {
                        if sub.is_object() || sub.is_boolean() {
                            let c = self.add(sub, &format!("{at}/{}", escape(k)));
                            self.inplace[id].push(c);
                        }
                    }
                }
                "properties" => {
                    for (k, sub) in v.as_object().into_iter().flatten() {
                        let c = self.add(sub, &format!("{at}/{}", escape(k)));
                        self.down[id].push((Place::Prop(k.clone()), c));
                    }
                }
                "patternProperties" => {
                    for (k, sub) in v.as_object().into_iter().flatten() {
                        let c = self.add(sub, &format!("{at}/{}", escape(k)));
                        self.down[id].push((Place::AnyProp, c));
                    }
                }
                "additionalProperties" | "unevaluatedProperties" => {
                    let c = self.add(v, &at);
                    self.down[id].push((Place::AnyProp, c));
                }
                "prefixItems" => {
                    for (i, sub) in v.as_array().into_iter().flatten().enumerate() {
                        let c = self.add(sub, &format!("{at}/{i}"));
                        self.down[id].push((Place::Item(i), c));
                    }
                }
                "items" => match v {
                    Value::Array(subs) => {
                        for (i, sub) in subs.iter().enumerate() {
                            let c = self.add(sub, &format!("{at}/{i}"));
                            self.down[id].push((Place::Item(i), c));
                        }
                    }
                    _ => {
                        let c = self.add(v, &at);
                        self.down[id].push((Place::AnyItem, c));
                    }
                },
                "additionalItems" | "contains" | "unevaluatedItems" => {
                    let c = self.add(v, &at);
                    self.down[id].push((Place::AnyItem, c));
                }
                "propertyNames" | "contentSchema" => {
                    let c = self.add(v, &at);
                    self.down[id].push((Place::Other, c));
                }
                "$defs" | "definitions" => {
                    for (k, sub) in v.as_object().into_iter().flatten() {
                        self.add(sub, &format!("{at}/{}", escape(k)));
                    }
                }
                "$ref" | "$dynamicRef" | "$recursiveRef" => {
                    if let Value::String(r) = v {
                        self.refs.push((id, r.clone(), at));
                    }
                }
                _ => {}
            }
        }
        id
    }

    /// The node `reference` names, if the analysis can follow it.
    fn resolve(&self, reference: &str) -> Option<usize> {
        if let Some(&n) = self.names.get(reference) {
            return Some(n);
        }
        let (base, fragment) = reference.split_once('#').unwrap_or((reference, ""));
        let root = if base.is_empty() { 0 } else { *self.names.get(base)? };
        if fragment.is_empty() {
            return Some(root);
        }
        if !fragment.starts_with('/') {
            return self.names.get(&format!("#{fragment}")).copied();
        }
        let fragment = percent_decode(fragment)?;
        self.by_pointer.get(&format!("{}{fragment}", self.pointers[root])).copied()
    }
}

/// `%XX` escapes of a URI fragment decoded.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The bound on the work per place of a value checked against `schema`, or why it is refused.
pub fn analyze(schema: &Value) -> Result<Cost, CostError> {
    let mut g = Graph::default();
    g.add(schema, "");
    for (from, reference, at) in std::mem::take(&mut g.refs) {
        let Some(to) = g.resolve(&reference) else {
            return Err(CostError {
                pointer: at,
                message: format!(
                    "a $ref to a place in this schema (`#/…`, `#anchor` or an embedded `$id`), found {reference:?}"
                ),
            });
        };
        g.inplace[from].push(to);
    }
    let order = inplace_order(&g)?;
    // Breadth first over what can apply at one place: each distinct set (with counts) once, at
    // the shallowest level it appears (its places below can only be fewer further down).
    let start: BTreeMap<usize, u64> = BTreeMap::from([(0, 1)]);
    let mut seen = std::collections::HashSet::from([start.clone()]);
    let mut queue = std::collections::VecDeque::from([(start, 0usize)]);
    let mut per_place = 0u64;
    while let Some((level, depth)) = queue.pop_front() {
        if seen.len() > MAX_STATES {
            return Err(CostError {
                pointer: String::new(),
                message: format!(
                    "a schema whose cost can be bounded: over {MAX_STATES} different sets of subschemas apply at the places of a value"
                ),
            });
        }
        // Every subschema applied at this place, with how many times (paths) it can be.
        let mut applied: HashMap<usize, u64> = level.iter().map(|(&n, &k)| (n, k)).collect();
        for &n in &order {
            let Some(&k) = applied.get(&n) else { continue };
            for &c in &g.inplace[n] {
                let e = applied.entry(c).or_insert(0);
                *e = e.saturating_add(k);
            }
        }
        let work = applied.values().fold(0u64, |a, &k| a.saturating_add(k));
        per_place = per_place.max(work);
        if work > MAX_APPLIED {
            let at = if depth == 0 { "the value itself".to_owned() } else { format!("{depth} levels down the value") };
            return Err(CostError {
                pointer: String::new(),
                message: format!(
                    "a schema that is cheap to check: one place of a value ({at}) can be checked against more than \
                     {MAX_APPLIED} subschemas (an allOf/anyOf/oneOf/$ref that branches again and again, or a \
                     recursion into the value that two branches make)"
                ),
            });
        }
        if depth == MAX_DEPTH {
            continue;
        }
        // One level down: what applies at each place (a named property or item gets what any
        // property or item gets too; any other key or index, only that).
        let mut by_place: BTreeMap<&Place, BTreeMap<usize, u64>> = BTreeMap::new();
        for (&n, &k) in &applied {
            for (place, c) in &g.down[n] {
                let e = by_place.entry(place).or_default().entry(*c).or_insert(0);
                *e = e.saturating_add(k);
            }
        }
        let any_prop = by_place.get(&Place::AnyProp).cloned().unwrap_or_default();
        let any_item = by_place.get(&Place::AnyItem).cloned().unwrap_or_default();
        for (place, mut next) in by_place {
            let with = match place {
                Place::Prop(_) => &any_prop,
                Place::Item(_) => &any_item,
                _ => &BTreeMap::new(),
            };
            for (&c, &k) in with {
                let e = next.entry(c).or_insert(0);
                *e = e.saturating_add(k);
            }
            if seen.insert(next.clone()) {
                queue.push_back((next, depth + 1));
            }
        }
    }
    Ok(Cost { per_place })
}

/// The nodes in an order where each comes before those it applies in place; an error naming a
/// cycle of in-place applications (a `$ref` loop that never descends into the value).
fn inplace_order(g: &Graph) -> Result<Vec<usize>, CostError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let n = g.pointers.len();
    let mut mark = vec![Mark::New; n];
    let mut post = Vec::with_capacity(n);
    for start in 0..n {
        if mark[start] != Mark::New {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        mark[start] = Mark::Open;
        while let Some((node, i)) = stack.pop() {
            if let Some(&c) = g.inplace[node].get(i) {
                stack.push((node, i + 1));
                match mark[c] {
                    Mark::New => {
                        mark[c] = Mark::Open;
                        stack.push((c, 0));
                    }
                    Mark::Open => {
                        return Err(CostError {
                            pointer: g.pointers[c].clone(),
                            message: "a schema whose $refs descend into the value: this one applies itself at the \
                                      same place without end"
                                .to_owned(),
                        })
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                post.push(node);
            }
        }
    }
    post.reverse();
    Ok(post)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `$defs` a0…a`n` where each `kind` names the next one twice.
    fn doubling(kind: &str, n: usize) -> Value {
        let mut defs = serde_json::Map::new();
        for i in 0..n {
            let next = json!({"$ref": format!("#/$defs/a{}", i + 1)});
            defs.insert(format!("a{i}"), json!({ kind: [next.clone(), next] }));
        }
        defs.insert(format!("a{n}"), json!({"type": "string"}));
        json!({"$defs": defs, "$ref": "#/$defs/a0"})
    }

    #[test]
    fn exponential_branching_is_refused() {
        for kind in ["anyOf", "allOf", "oneOf"] {
            let e = analyze(&doubling(kind, 40)).unwrap_err();
            assert!(e.message.contains("more than 100000"), "{kind}: {e:?}");
        }
        // A few levels of it are fine: 2^6 = 64 paths to the leaf, 382 subschemas on the way.
        let c = analyze(&doubling("anyOf", 6)).unwrap();
        assert!(c.per_place >= 64 && c.per_place < 1000, "{c:?}");
        // Nested unions multiply, and are fine: 40 blocks whose content is one of 30.
        let contents: Vec<Value> = (0..30).map(|i| json!({"properties": {"c": {"const": i}}})).collect();
        let blocks: Vec<Value> =
            (0..40).map(|i| json!({"properties": {"b": {"const": i}, "content": {"oneOf": contents}}})).collect();
        let c = analyze(&json!({"type": "array", "items": {"oneOf": blocks}})).unwrap();
        assert!(c.per_place >= 1200, "{c:?}");
    }

    #[test]
    fn recursion_that_doubles_at_each_level_is_refused_and_a_tree_is_not() {
        let doubling = json!({"$defs": {"n": {"anyOf": [
            {"properties": {"x": {"$ref": "#/$defs/n"}}},
            {"properties": {"x": {"$ref": "#/$defs/n"}}}
        ]}}, "$ref": "#/$defs/n"});
        assert!(analyze(&doubling).unwrap_err().message.contains("levels down"));
        // A binary tree: left and right are different places, so nothing multiplies.
        let tree = json!({"$defs": {"t": {"type": "object", "properties": {
            "value": {"type": "number"},
            "left": {"$ref": "#/$defs/t"},
            "right": {"$ref": "#/$defs/t"}
        }}}, "$ref": "#/$defs/t"});
        assert!(analyze(&tree).unwrap().per_place < 10);
        // Any JSON value, recursively (items and additionalProperties).
        let json_value = json!({"$defs": {"v": {"anyOf": [
            {"type": ["null", "boolean", "number", "string"]},
            {"type": "array", "items": {"$ref": "#/$defs/v"}},
            {"type": "object", "additionalProperties": {"$ref": "#/$defs/v"}}
        ]}}, "$ref": "#/$defs/v"});
        assert!(analyze(&json_value).unwrap().per_place < 10);
    }

    /// Schemas as people write them pass: a real recursive one (the draft-07 meta-schema: `#`
    /// under `properties`, `items`, `anyOf`, `allOf`…), and pydantic's shape of models referring
    /// to each other with optional fields and a union of 30 variants.
    #[test]
    fn real_world_schemas_pass() {
        let meta: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/schemas/draft7-metaschema.json")).unwrap();
        let c = analyze(&meta).unwrap();
        assert!(c.per_place < 100, "{c:?}");
        let variants: Vec<Value> = (0..30).map(|i| json!({"$ref": format!("#/$defs/V{i}")})).collect();
        let mut defs = serde_json::Map::new();
        for i in 0..30 {
            defs.insert(
                format!("V{i}"),
                json!({"type": "object", "properties": {
                    "kind": {"const": format!("v{i}")},
                    "owner": {"$ref": "#/$defs/Person"},
                    "note": {"anyOf": [{"type": "string"}, {"type": "null"}]}
                }, "required": ["kind"]}),
            );
        }
        defs.insert(
            "Person".into(),
            json!({"type": "object", "properties": {
                "name": {"type": "string"},
                "friends": {"type": "array", "items": {"$ref": "#/$defs/Person"}},
                "address": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]}
            }}),
        );
        defs.insert("Address".into(), json!({"type": "object", "properties": {"city": {"type": "string"}}}));
        let pydantic = json!({"$defs": defs, "anyOf": variants});
        let c = analyze(&pydantic).unwrap();
        assert!(c.per_place < 200, "{c:?}");
    }

    #[test]
    fn an_inplace_ref_loop_is_refused() {
        let e = analyze(&json!({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/b"}]}, "b": {"$ref": "#/$defs/a"}},
            "$ref": "#/$defs/a"}))
        .unwrap_err();
        assert!(e.message.contains("without end"), "{e:?}");
    }

    #[test]
    fn refs_it_cannot_follow_are_refused_and_local_ones_are_followed() {
        let e = analyze(&json!({"$ref": "https://example.com/s.json"})).unwrap_err();
        assert!(e.message.contains("a $ref to a place in this schema"), "{e:?}");
        assert_eq!(e.pointer, "/$ref");
        for ok in [
            json!({"$defs": {"x": {"$anchor": "x", "type": "string"}}, "properties": {"a": {"$ref": "#x"}}}),
            json!({"$defs": {"x": {"$id": "T0", "type": "string"}}, "properties": {"a": {"$ref": "T0"}}}),
            json!({"$defs": {"a b": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/a%20b"}}}),
            json!({"properties": {"self": {"$ref": "#"}}}),
        ] {
            assert!(analyze(&ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_work_of_a_call_is_its_places_times_the_bound() {
        let c = Cost { per_place: 10_000 };
        assert_eq!(c.too_costly("[1,2,3]"), None);
        let big = format!("[{}0]", "0,".repeat(100_000));
        assert_eq!(c.too_costly(&big), Some(10_000 * 100_002));
    }
}
