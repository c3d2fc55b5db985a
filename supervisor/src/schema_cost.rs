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
//! Not every application costs the same: an `enum` or `const` compares the value with each of
//! its members (a subschema's weight grows with them), and a `pattern` or `patternProperties`
//! runs a regex over a string's (or a key's) bytes, so the bound also counts the patterns that
//! can apply at one place, and a call's work counts them against the length of its params
//! (audit 18: an enum of 9000 floats over a million items took 31 s of plugind's CPU, a pattern
//! over 1.5 MB of letters 8 s).
//!
//! `$ref`s are resolved within the document, which must be one resource: `#`, `#/json/pointer`,
//! `#anchor` (`$anchor`, `$dynamicAnchor` or a draft-7 `$id: "#name"`, each name once), or the
//! root's `$id`. Anything else is refused: a reference the analysis cannot follow could hide any
//! cost (and plugind fetches no remote schema anyway). An embedded `$id` is refused, and so is an
//! anchor name used twice: the validator resolves pointers and anchors inside the resource that
//! holds them, so a decoy chain at the root under the same names made a 2^40 chain inside an
//! embedded resource look cheap (audit 18).
//!
//! The analysis itself is bounded ([`MAX_ANALYSIS_WORK`]): a 63 KB schema whose sets of
//! subschemas differ at every level made it build millions of sets, past 2 GB (audit 18).

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

/// Most steps the analysis takes (subschemas and edges visited, over every set it follows), and
/// so about the most entries it holds: a few tens of milliseconds and megabytes.
pub const MAX_ANALYSIS_WORK: u64 = 1_000_000;

/// Most `pattern`s (and `patternProperties` keys) one schema may have: each is a regex compiled
/// and kept for as long as the plugin runs.
pub const MAX_SCHEMA_PATTERNS: usize = 64;

/// What running one pattern over one byte of a string counts as, in subschema applications
/// (an application is about 5 ns): a regex runs at about 2 ns a byte, but one whose lazy DFA
/// gives up (`a[ab]{200}c`) falls back to a matcher of about 1.4 µs a byte (audit 18). So a
/// pattern that can apply at one place allows about 1 MB of params.
pub const PATTERN_BYTE_WORK: u64 = 200;

/// What `minLength`/`maxLength` cost per byte of a string (its characters are counted).
pub const LENGTH_BYTE_WORK: u64 = 1;

/// How many times a subschema under `unevaluatedProperties`/`unevaluatedItems` counts: the
/// validator checks each in-place branch again to mark what it evaluated, level by level
/// (about 2.7 times the work per level: 20 nested levels of 2 KB took 13–24 s, audit 18).
const UNEVALUATED_FACTOR: u64 = 3;

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
    /// Most work at one place: subschemas applied there, each weighted by its `enum`/`const`.
    pub per_place: u64,
    /// Most work per byte at one place: patterns run over its string or keys, its characters
    /// counted (`PATTERN_BYTE_WORK`, `LENGTH_BYTE_WORK` each).
    pub byte_work_per_place: u64,
    /// Whether `uniqueItems` applies somewhere: hashing items whose numbers collide makes it
    /// quadratic in an array's items, so a call counts its places squared.
    pub unique_items: bool,
    /// The schema's patterns (`pattern`s and `patternProperties` keys), each a compiled regex.
    pub patterns: usize,
}

impl Cost {
    /// Whether checking `params` (JSON text) could take more than [`MAX_CALL_WORK`]: the bound
    /// per place times the places in it (counted only when the length alone does not settle it).
    pub fn too_costly(&self, params: &str) -> Option<u64> {
        // Patterns: at most every byte of the params, once per pattern at its place.
        // The length bounds the places; they are counted only when that bound is not enough.
        if self.quick_bound(params) <= MAX_CALL_WORK {
            return None;
        }
        let scans = self.byte_work_per_place.saturating_mul(params.len() as u64);
        let places = places(params);
        let pairs = if self.unique_items { places.saturating_mul(places) } else { 0 };
        let work = self.per_place.saturating_mul(places).saturating_add(scans).saturating_add(pairs);
        (work > MAX_CALL_WORK).then_some(work)
    }

    /// A quick upper bound on the work of checking `params` (from its length alone).
    pub fn quick_bound(&self, params: &str) -> u64 {
        let len = params.len() as u64;
        let pairs = if self.unique_items { len.saturating_mul(len) } else { 0 };
        self.per_place.saturating_add(self.byte_work_per_place).saturating_mul(len).saturating_add(pairs)
    }

    /// Whether saying *where* `params` fails the schema could cost more than
    /// [`MAX_ERROR_WORK`]. The validator's report of a failed `anyOf`/`oneOf` holds the errors of
    /// every branch, nested unions within: about 450 bytes per subschema applied, so a schema
    /// of 91,000 nested branches made each failing item of an array cost 40 MB, and 100 items
    /// took plugind to the OOM killer (audit 16). Checking stays within [`MAX_CALL_WORK`]; a
    /// report past this bound says only that the params do not match.
    pub fn too_costly_to_explain(&self, params: &str) -> bool {
        self.per_place.saturating_mul(params.len() as u64) > MAX_ERROR_WORK
            && self.per_place.saturating_mul(places(params)) > MAX_ERROR_WORK
    }
}

/// How many values `params` (JSON text) holds, at most: every value but the first follows a `,`
/// `:` `[` or `{` (inside strings too: an overcount, on the safe side).
fn places(params: &str) -> u64 {
    1 + params.bytes().filter(|b| matches!(b, b',' | b':' | b'[' | b'{')).count() as u64
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
    /// Each subschema's weight: 1, more with an `enum` or `const` (compared member by member).
    weight: Vec<u64>,
    /// Each subschema's patterns (a `pattern`, the keys of `patternProperties`).
    patterns: Vec<u64>,
    /// Each subschema's work per byte of the string or keys it is applied to.
    byte_work: Vec<u64>,
    /// Each subschema's factor on what it applies in place ([`UNEVALUATED_FACTOR`] or 1).
    factor: Vec<u64>,
    /// Whether some subschema has `uniqueItems: true`.
    unique_items: bool,
    /// Whether `contentMediaType`/`contentEncoding` are checked (drafts 6 and 7 decode the
    /// string, and parse it as JSON: a tree of up to 35 times its size, at every call).
    content_checked: bool,
    /// Whether `id` is draft 4's `$id`.
    draft4: bool,
    /// What makes the schema refused, found on the way.
    problems: Vec<CostError>,
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
        self.weight.push(1);
        self.patterns.push(0);
        self.byte_work.push(0);
        self.factor.push(1);
        self.by_pointer.insert(pointer.to_owned(), id);
        id
    }

    fn refuse(&mut self, pointer: String, message: String) {
        self.problems.push(CostError { pointer, message });
    }

    /// Names node `id` by `name` (`#anchor`, or the root's `$id`): each name once.
    fn name(&mut self, name: String, id: usize, at: String) {
        if self.names.insert(name.clone(), id).is_some() {
            self.refuse(at, format!("each anchor and $id once in a schema, found {name:?} again"));
        }
    }

    /// Adds the subschema `s` at `pointer` and everything under it; its node.
    fn add(&mut self, s: &Value, pointer: &str) -> usize {
        let id = self.node(pointer);
        let Value::Object(o) = s else { return id };
        for key in ["$anchor", "$dynamicAnchor"] {
            if let Some(Value::String(a)) = o.get(key) {
                self.name(format!("#{a}"), id, format!("{pointer}/{}", escape(key)));
            }
        }
        // `$id` (and draft 4's `id`): the root's names the document; an embedded one that is
        // a plain-name fragment (draft 7's anchors) is an anchor; any other starts a resource of
        // its own, where pointers and anchors resolve apart from the root's: refused.
        for key in ["$id", "id"] {
            let Some(Value::String(i)) = o.get(key) else { continue };
            let at = format!("{pointer}/{key}");
            if let Some(anchor) = i.strip_prefix('#').filter(|a| !a.is_empty() && !a.starts_with('/')) {
                self.name(format!("#{anchor}"), id, at);
            } else if pointer.is_empty() {
                let base = i.strip_suffix('#').unwrap_or(i).to_owned();
                self.name(format!("{base}#"), id, at.clone());
                self.name(base, id, at);
            } else if key == "$id" || self.draft4 {
                self.refuse(
                    at,
                    format!("one resource per schema: an $id only at its root (or as \"#name\"), found {i:?}"),
                );
            }
        }
        if let Some(members) = o.get("enum").and_then(Value::as_array) {
            let bytes = serde_json::to_string(members).map_or(0, |t| t.len() as u64);
            self.weight[id] += members.len() as u64 + bytes / 64;
        }
        if let Some(c) = o.get("const") {
            self.weight[id] += 1 + serde_json::to_string(c).map_or(0, |t| t.len() as u64) / 64;
        }
        // Lookups per application: each required name, each key of `dependentRequired` (and
        // draft 7's array `dependencies`) and the names it requires.
        if let Some(r) = o.get("required").and_then(Value::as_array) {
            self.weight[id] += r.len() as u64;
        }
        for key in ["dependentRequired", "dependencies"] {
            for deps in o.get(key).and_then(Value::as_object).into_iter().flat_map(|d| d.values()) {
                if let Some(names) = deps.as_array() {
                    self.weight[id] += 1 + names.len() as u64;
                }
            }
        }
        if o.get("pattern").is_some_and(Value::is_string) {
            self.patterns[id] += 1;
            self.byte_work[id] += PATTERN_BYTE_WORK;
        }
        if let Some(p) = o.get("patternProperties").and_then(Value::as_object) {
            self.patterns[id] += p.len() as u64;
            self.byte_work[id] += PATTERN_BYTE_WORK * p.len() as u64;
        }
        for key in ["minLength", "maxLength"] {
            if o.contains_key(key) {
                self.byte_work[id] += LENGTH_BYTE_WORK;
            }
        }
        if o.contains_key("unevaluatedProperties") || o.contains_key("unevaluatedItems") {
            self.factor[id] = UNEVALUATED_FACTOR;
        }
        if o.get("uniqueItems") == Some(&Value::Bool(true)) {
            self.unique_items = true;
        }
        if self.content_checked {
            for key in ["contentMediaType", "contentEncoding"] {
                if o.contains_key(key) {
                    self.refuse(
                        format!("{pointer}/{key}"),
                        format!(
                            "no {key} under drafts 6 and 7, which decode and parse the string at every call \
                             (in draft 2020-12 it is an annotation)"
                        ),
                    );
                }
            }
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
        // One resource: the only base is the root's.
        let root = if base.is_empty() || self.names.get(base) == Some(&0) { 0 } else { return None };
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
    let draft = schema.get("$schema").and_then(Value::as_str).unwrap_or_default();
    let mut g = Graph {
        content_checked: draft.contains("draft-06") || draft.contains("draft-07"),
        draft4: draft.contains("draft-04") || draft.contains("draft-03"),
        ..Graph::default()
    };
    g.add(schema, "");
    if let Some(e) = g.problems.drain(..).next() {
        return Err(e);
    }
    let patterns: u64 = g.patterns.iter().sum();
    if patterns > MAX_SCHEMA_PATTERNS as u64 {
        return Err(CostError {
            pointer: String::new(),
            message: format!("at most {MAX_SCHEMA_PATTERNS} patterns in a schema, found {patterns}"),
        });
    }
    for (from, reference, at) in std::mem::take(&mut g.refs) {
        let Some(to) = g.resolve(&reference) else {
            return Err(CostError {
                pointer: at,
                message: format!(
                    "a $ref to a place in this schema (`#/…`, `#anchor` or its root's `$id`), found {reference:?}"
                ),
            });
        };
        g.inplace[from].push(to);
    }
    let order = inplace_order(&g)?;
    let mut walk = Walk::new(&g, &order);
    // Breadth first over what can apply at one place: each distinct set (with counts) once, at
    // the shallowest level it appears (its places below can only be fewer further down).
    let start: State = vec![(0, 1)];
    let mut seen = std::collections::HashSet::from([start.clone()]);
    let mut queue = std::collections::VecDeque::from([(start, 0usize)]);
    let (mut per_place, mut byte_work_per_place) = (0u64, 0u64);
    let too_complex = |what: String| CostError {
        pointer: String::new(),
        message: format!("a schema whose cost can be bounded: {what}"),
    };
    while let Some((level, depth)) = queue.pop_front() {
        if seen.len() > MAX_STATES {
            return Err(too_complex(format!(
                "over {MAX_STATES} different sets of subschemas apply at the places of a value"
            )));
        }
        // Every subschema applied at this place, with how many times (paths) it can be.
        let applied = walk.applied(&level);
        let work = applied.iter().fold(0u64, |a, &(n, k)| a.saturating_add(k.saturating_mul(g.weight[n])));
        let scans = applied.iter().fold(0u64, |a, &(n, k)| a.saturating_add(k.saturating_mul(g.byte_work[n])));
        per_place = per_place.max(work);
        byte_work_per_place = byte_work_per_place.max(scans);
        if work > MAX_APPLIED {
            let at = if depth == 0 { "the value itself".to_owned() } else { format!("{depth} levels down the value") };
            return Err(CostError {
                pointer: String::new(),
                message: format!(
                    "a schema that is cheap to check: one place of a value ({at}) can be checked against more than \
                     {MAX_APPLIED} subschemas (an allOf/anyOf/oneOf/$ref that branches again and again, a \
                     recursion into the value that two branches make, or enums that large)"
                ),
            });
        }
        if depth == MAX_DEPTH {
            continue;
        }
        // One level down: what applies at each place (a named property or item gets what any
        // property or item gets too; any other key or index, only that).
        let mut by_place: BTreeMap<&Place, BTreeMap<usize, u64>> = BTreeMap::new();
        for &(n, k) in &applied {
            walk.spent += g.down[n].len() as u64;
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
            walk.spent += next.len() as u64;
            let next: State = next.into_iter().collect();
            if !seen.contains(&next) {
                seen.insert(next.clone());
                queue.push_back((next, depth + 1));
            }
        }
        if walk.spent > MAX_ANALYSIS_WORK {
            return Err(too_complex(format!(
                "finding the bound took over {MAX_ANALYSIS_WORK} steps (too many different sets of subschemas \
                 down the value: split the schema, or share its parts through $defs)"
            )));
        }
    }
    Ok(Cost { per_place, byte_work_per_place, unique_items: g.unique_items, patterns: patterns as usize })
}

/// The subschemas that apply at one place, each with how many times: `(node, count)`, by node.
type State = Vec<(usize, u64)>;

/// Reusable scratch space for [`Walk::applied`], and the steps spent.
struct Walk<'g> {
    g: &'g Graph,
    /// Each node's place in the in-place order.
    position: Vec<usize>,
    /// Times applied, per node (zero between calls).
    times: Vec<u64>,
    /// Whether a node was reached (false between calls).
    reached: Vec<bool>,
    /// Steps spent so far.
    spent: u64,
}

impl<'g> Walk<'g> {
    fn new(g: &'g Graph, order: &[usize]) -> Self {
        let n = g.pointers.len();
        let mut position = vec![0; n];
        for (i, &node) in order.iter().enumerate() {
            position[node] = i;
        }
        Walk { g, position, times: vec![0; n], reached: vec![false; n], spent: 0 }
    }

    /// What applies at a place where `level` applies: `level`'s subschemas and every one they
    /// apply in place, counted along every path. Visits only the subschemas reached.
    fn applied(&mut self, level: &State) -> State {
        let mut reach: Vec<usize> = Vec::new();
        let mut stack: Vec<usize> = level.iter().map(|&(n, _)| n).collect();
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut self.reached[n], true) {
                continue;
            }
            reach.push(n);
            stack.extend(&self.g.inplace[n]);
        }
        self.spent += reach.len() as u64;
        reach.sort_unstable_by_key(|&n| self.position[n]);
        for &(n, k) in level {
            self.times[n] = self.times[n].saturating_add(k);
        }
        for &n in &reach {
            let k = self.times[n].saturating_mul(self.g.factor[n]);
            self.spent += self.g.inplace[n].len() as u64;
            for &c in &self.g.inplace[n] {
                self.times[c] = self.times[c].saturating_add(k);
            }
        }
        let mut out: State = reach.iter().map(|&n| (n, self.times[n])).collect();
        for &n in &reach {
            self.times[n] = 0;
            self.reached[n] = false;
        }
        out.sort_unstable();
        out
    }
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
            json!({"$id": "T0", "$defs": {"x": {"type": "string"}}, "properties": {"a": {"$ref": "T0#/$defs/x"}}}),
            json!({"$schema": "http://json-schema.org/draft-07/schema#", "definitions": {"x": {"$id": "#x"}},
                "properties": {"a": {"$ref": "#x"}}}),
            json!({"$defs": {"a b": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/a%20b"}}}),
            json!({"properties": {"self": {"$ref": "#"}}}),
        ] {
            assert!(analyze(&ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn the_work_of_a_call_is_its_places_times_the_bound() {
        let c = Cost { per_place: 10_000, byte_work_per_place: 0, unique_items: false, patterns: 0 };
        assert_eq!(c.too_costly("[1,2,3]"), None);
        let big = format!("[{}0]", "0,".repeat(100_000));
        assert_eq!(c.too_costly(&big), Some(10_000 * 100_002));
    }

    /// Audit 18: decoys at the root under the names a chain inside an embedded resource uses
    /// (anchors, or pointers resolved in that resource) made a 2^40 chain look cheap.
    #[test]
    fn names_the_validator_resolves_elsewhere_are_refused() {
        let mut chain = serde_json::Map::new();
        let mut decoys = serde_json::Map::new();
        for i in 0..40 {
            let next = json!({"$ref": format!("#a{}", i + 1)});
            chain.insert(format!("a{i}"), json!({"$anchor": format!("a{i}"), "allOf": [next.clone(), next]}));
            decoys.insert(format!("d{i}"), json!({"$anchor": format!("a{i}")}));
        }
        chain.insert("a40".into(), json!({"$anchor": "a40", "type": "integer"}));
        let anchors = json!({"$defs": {"T1": {"$id": "T1", "$defs": chain}, "T2": {"$defs": decoys}}, "$ref": "T1"});
        let e = analyze(&anchors).unwrap_err();
        assert!(e.message.contains("an $id only at its root") || e.message.contains("again"), "{e:?}");
        // The same without the embedded resource: the duplicate anchors alone are refused.
        let dup = json!({"$defs": {"x": {"$anchor": "a"}, "y": {"$anchor": "a"}}, "$ref": "#a"});
        assert!(analyze(&dup).unwrap_err().message.contains("\"#a\" again"));
        // Draft 4's `id` starts a resource too.
        let d4 = json!({"$schema": "http://json-schema.org/draft-04/schema#",
            "definitions": {"T": {"id": "T1", "type": "string"}}});
        assert!(analyze(&d4).unwrap_err().message.contains("an $id only at its root"));
    }

    /// Audit 18: a 63 KB schema whose sets of subschemas differ at every level made the
    /// analysis build millions of them, past 2 GB; it is now refused within its steps.
    #[test]
    fn the_analysis_itself_is_bounded() {
        let chain = |name: &str, n: usize| {
            let mut defs = serde_json::Map::new();
            for i in 0..n {
                defs.insert(
                    format!("{name}{i}"),
                    json!({"properties": {"x": {"$ref": format!("#/$defs/{name}{}", i + 1)}}}),
                );
            }
            defs.insert(format!("{name}{n}"), json!({"properties": {"x": {"$ref": format!("#/$defs/{name}0")}}}));
            defs
        };
        let mut defs = serde_json::Map::new();
        for name in ["a", "b", "c"] {
            defs.extend(chain(name, 22));
        }
        let pattern_props: serde_json::Map<String, Value> = (0..3000).map(|i| (format!("^p{i}$"), json!({}))).collect();
        defs.insert(
            "P".into(),
            json!({"patternProperties": pattern_props, "additionalProperties": {"$ref": "#/$defs/P"}}),
        );
        let schema = json!({"$defs": defs, "properties": {
            "a": {"$ref": "#/$defs/a0"}, "b": {"$ref": "#/$defs/b0"}, "c": {"$ref": "#/$defs/c0"},
            "p": {"$ref": "#/$defs/P"}
        }, "allOf": [{"$ref": "#/$defs/a0"}, {"$ref": "#/$defs/b0"}, {"$ref": "#/$defs/c0"}]});
        let started = std::time::Instant::now();
        let e = analyze(&schema).unwrap_err();
        assert!(e.message.contains("patterns") || e.message.contains("steps") || e.message.contains("sets"), "{e:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
        // Without the patterns, the sets of the three chains alone: refused in its steps, quickly.
        let mut defs = serde_json::Map::new();
        for name in ["a", "b", "c"] {
            defs.extend(chain(name, 22));
        }
        defs.insert("W".into(), json!({"properties": (0..3000).map(|i| (format!("w{i}"), json!({"$ref": "#/$defs/W"}))).collect::<serde_json::Map<String, Value>>(), "additionalProperties": {"$ref": "#/$defs/W"}}));
        let schema = json!({"$defs": defs, "allOf": [{"$ref": "#/$defs/a0"}, {"$ref": "#/$defs/b0"}, {"$ref": "#/$defs/c0"}, {"$ref": "#/$defs/W"}]});
        let started = std::time::Instant::now();
        let r = analyze(&schema);
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?} {r:?}", started.elapsed());
    }

    /// Audit 18 (second round): what an application's bound left out. 20 levels of `allOf`
    /// under `unevaluatedProperties` (2 KB) took 13–24 s for 7 bytes of params; a
    /// `dependentRequired` of 7000 keys looks each up at every object; `uniqueItems` can be
    /// quadratic; `minLength` counts characters.
    #[test]
    fn unevaluated_nesting_lookups_and_unique_items_are_counted() {
        let nested = |depth: usize, kind: &str| {
            let mut defs = serde_json::Map::new();
            defs.insert("L0".into(), json!({"properties": {"a": {}}}));
            for i in 1..=depth {
                defs.insert(
                    format!("L{i}"),
                    json!({ kind: [{"$ref": format!("#/$defs/L{}", i - 1)}], "unevaluatedProperties": false }),
                );
            }
            json!({"$defs": defs, "$ref": format!("#/$defs/L{depth}")})
        };
        for kind in ["allOf", "anyOf", "oneOf"] {
            let e = analyze(&nested(20, kind)).unwrap_err();
            assert!(e.message.contains("more than 100000"), "{kind}: {e:?}");
        }
        assert!(analyze(&nested(4, "allOf")).unwrap().per_place < 1000, "a few levels are fine");
        let keys: serde_json::Map<String, Value> = (0..7000).map(|i| (format!("k{i}"), json!([]))).collect();
        let c = analyze(&json!({"type": "array", "items": {"dependentRequired": keys}})).unwrap();
        assert!(c.per_place >= 7000, "{c:?}");
        assert!(c.too_costly(&format!("[{}{{}}]", "{},".repeat(245_000))).is_some());
        let c = analyze(&json!({"type": "array", "uniqueItems": true})).unwrap();
        assert!(c.unique_items);
        assert!(c.too_costly(&format!("[{}0]", "1,".repeat(100_000))).is_some(), "100,000 items, pairwise");
        assert!(c.too_costly(&format!("[{}0]", "1,".repeat(1000))).is_none());
        let c = analyze(&json!({"type": "string", "minLength": 1, "maxLength": 5})).unwrap();
        assert_eq!(c.byte_work_per_place, 2 * LENGTH_BYTE_WORK);
    }

    /// Audit 18: an application is not always cheap: an `enum` compares with each member, a
    /// pattern runs over a string's bytes.
    #[test]
    fn enums_weigh_and_patterns_count_against_the_bytes() {
        let members: Vec<Value> = (0..9000).map(|i| json!(i as f64 + 0.5)).collect();
        let c = analyze(&json!({"type": "array", "items": {"enum": members}})).unwrap();
        assert!(c.per_place > 9000, "{c:?}");
        let million = format!("[{}8999.5]", "8999.5,".repeat(999_999));
        assert!(c.too_costly(&million).is_some(), "a million items against 9000 members");
        assert!(c.too_costly("[0.5, 1.5]").is_none());
        let c = analyze(&json!({"type": "array", "items": {"type": "string", "pattern": "\\p{L}{8}"}})).unwrap();
        assert_eq!((c.patterns, c.byte_work_per_place), (1, PATTERN_BYTE_WORK));
        let long = format!("[\"{}\"]", "é".repeat(1 << 20));
        assert!(c.too_costly(&long).is_some(), "2 MB of letters under a pattern");
        assert!(c.too_costly(&format!("[\"{}\"]", "é".repeat(256 << 10))).is_none());
        let many: Vec<Value> = (0..65).map(|i| json!({"pattern": format!("^a{i}$")})).collect();
        assert!(analyze(&json!({"anyOf": many})).unwrap_err().message.contains("at most 64 patterns"));
        // Drafts 6 and 7 decode and parse content: refused there, an annotation in 2020-12.
        let d7 = json!({"$schema": "http://json-schema.org/draft-07/schema#", "contentMediaType": "application/json"});
        assert!(analyze(&d7).unwrap_err().message.contains("contentMediaType"));
        assert!(analyze(&json!({"contentMediaType": "application/json"})).is_ok());
    }
}
