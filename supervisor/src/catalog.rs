//! The method catalog: what a plugin says its methods are, and the params check at the boundary.
//!
//! # Theory of operation
//! A plugin's catalog comes from two places: its manifest's `methods`, known before it starts,
//! and the `methods` object of its `register` answer, known once an instance has registered.
//! [`Catalog::build`] merges them when an instance answers `register` (the manifest wins where
//! both name a method) and compiles every `params` schema once, there; the instance keeps the
//! result (`Instance::catalog`) for as long as it lives. So a call validates against the catalog
//! of the very instance it is routed to: during a hot reload the old generation's calls use the
//! old catalog and the new generation's the new one, with no lock and no lookup table to keep in
//! step.
//!
//! Schemas are JSON Schema 2020-12 unless their `$schema` names another draft; `format` is not
//! asserted (it is an annotation in 2020-12). Neither remote nor file `$ref`s are fetched: the
//! engine is built without either, so a schema cannot make plugind read a file or open a socket.
//!
//! The manifest's schemas are also compiled when the manifest loads ([`check_manifest`]): an
//! invalid one makes the plugin `invalid` (a load error, `-32007` when started), naming the JSON
//! pointer of the bad part (`/methods/greet/params/type`). One from `register` is only rejected,
//! with a warning in the plugin's log: the plugin is already running, and its other methods work.
//!
//! On the call path ([`crate::router::execute_on`]) a method without a `params` schema costs one
//! hash lookup and no allocation; one with a schema parses the params once and validates them.
//! A mismatch is `-32602` with `data: { plugin, method, errors: [ { path, message } ] }` and the
//! plugin never sees the call.

use crate::caps::{self, Cap};
use crate::logs::PluginLog;
use plugind_protocol::codes;
use plugind_protocol::jsonrpc::RpcError;
use plugind_protocol::manifest::{escape_pointer, Manifest, MethodSpec, MAX_METHOD_NAME_BYTES};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Most `errors` one `-32602` answer lists: enough to fix a call, not a copy of a huge document.
pub const MAX_PARAM_ERRORS: usize = 20;

/// A schema that does not compile, at the JSON pointer of its bad part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pointer}: expected {message}")]
pub struct SchemaError {
    /// Where, from the document's root: `/methods/greet/params/type`.
    pub pointer: String,
    /// What was expected and found (`a JSON Schema type (one of …), found "objekt"`).
    pub message: String,
}

/// A params schema compiled, with the bound on the work of checking one place of a value.
pub struct Compiled {
    validator: jsonschema::Validator,
    cost: crate::schema_cost::Cost,
}

impl Compiled {
    /// Whether `value` matches the schema.
    pub fn is_valid(&self, value: &Value) -> bool {
        self.validator.is_valid(value)
    }
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compiled").field("cost", &self.cost).finish_non_exhaustive()
    }
}

/// Compiles `schema`, found at `pointer` of its document: refused if it does not compile, or if
/// checking a value against it could cost without bound (`crate::schema_cost`).
pub fn compile(schema: &Value, pointer: &str) -> Result<Compiled, SchemaError> {
    let cost = crate::schema_cost::analyze(schema)
        .map_err(|e| SchemaError { pointer: format!("{pointer}{}", e.pointer), message: e.message })?;
    Ok(Compiled { validator: build(schema, pointer)?, cost })
}

/// The schema engine's validator for `schema`, found at `pointer` of its document.
fn build(schema: &Value, pointer: &str) -> Result<jsonschema::Validator, SchemaError> {
    // `format` stays an annotation, as 2020-12 says; the draft is `$schema`'s, else 2020-12.
    // `pattern`s run on the linear-time `regex` engine: a plugin's schema is checked inside
    // plugind on every call, so a backtracking pattern (`^(a+)+$`) must not be able to burn
    // plugind's CPU. Look-around and back-references are refused at load time instead.
    // Each regex is bounded in size (compiled) and cache (lazy DFA): a 30-byte `\p{L}{200}`
    // compiled to 12 MB by default, and 300 of them took plugind to the OOM killer (audit 18).
    let patterns = jsonschema::PatternOptions::regex().size_limit(REGEX_SIZE_LIMIT).dfa_size_limit(REGEX_DFA_LIMIT);
    let options = jsonschema::options().should_validate_formats(false).with_pattern_options(patterns);
    options.build(schema).map_err(|e| {
        // The schema is the instance the meta-schema was checked against, so the error's
        // instance path is the bad part's place inside the schema.
        let at = e.instance_path().to_string();
        let found = e.instance();
        // A misspelt type is the usual mistake; the meta-schema says it as an `anyOf` failure,
        // which names the validator's rule, not what the author wrote.
        let message = match (at.rsplit('/').next(), found.as_ref()) {
            (Some("type"), Value::String(_)) => format!(
                "a JSON Schema type (one of \"array\", \"boolean\", \"integer\", \"null\", \"number\", \"object\", \"string\"), found {found}"
            ),
            _ => format!("a valid JSON Schema: {e}"),
        };
        SchemaError { pointer: format!("{pointer}{at}"), message }
    })
}

/// Compiles every schema of the manifest's `methods`; the first that fails, if any.
pub fn check_manifest(m: &Manifest) -> Result<(), SchemaError> {
    let mut patterns = PatternBudget::default();
    for (name, spec) in &m.methods {
        let at = format!("/methods/{}", escape_pointer(name));
        for (key, schema) in [("params", &spec.params), ("result", &spec.result)] {
            if let Some(schema) = schema {
                let compiled = compile(schema, &format!("{at}/{key}"))?;
                if key == "params" {
                    patterns.take(&compiled, &format!("{at}/params"))?;
                }
            }
        }
    }
    Ok(())
}

/// The patterns a catalog's `params` schemas may still keep ([`MAX_CATALOG_PATTERNS`]).
#[derive(Default)]
struct PatternBudget {
    kept: usize,
    /// The patterns of the plugin's live catalogs ([`MAX_PLUGIN_PATTERNS`]), when building one.
    plugin: Option<Arc<AtomicUsize>>,
}

impl PatternBudget {
    /// Takes `compiled`'s patterns, or refuses it (its pointer `at`) past the budget.
    fn take(&mut self, compiled: &Compiled, at: &str) -> Result<(), SchemaError> {
        let n = compiled.cost.patterns;
        if self.kept + n > MAX_CATALOG_PATTERNS {
            return Err(SchemaError {
                pointer: at.to_owned(),
                message: format!(
                    "at most {MAX_CATALOG_PATTERNS} patterns in a plugin's params schemas together, found {} more \
                     than that with this one",
                    self.kept + n - MAX_CATALOG_PATTERNS
                ),
            });
        }
        if let Some(live) = &self.plugin {
            if live.fetch_add(n, Ordering::AcqRel) + n > MAX_PLUGIN_PATTERNS {
                live.fetch_sub(n, Ordering::AcqRel);
                return Err(SchemaError {
                    pointer: at.to_owned(),
                    message: format!(
                        "at most {MAX_PLUGIN_PATTERNS} patterns compiled for all of a plugin's instances together \
                         (instances that answer `register` differently each build a catalog of their own)"
                    ),
                });
            }
        }
        self.kept += n;
        Ok(())
    }

    /// What the catalog built keeps of the plugin's budget, given back when it is dropped.
    fn lease(self) -> Option<PatternLease> {
        self.plugin.map(|live| PatternLease { live, kept: self.kept })
    }
}

/// A catalog's share of its plugin's [`MAX_PLUGIN_PATTERNS`], given back when it is dropped.
#[derive(Debug)]
struct PatternLease {
    live: Arc<AtomicUsize>,
    kept: usize,
}

impl Drop for PatternLease {
    fn drop(&mut self) {
        self.live.fetch_sub(self.kept, Ordering::AcqRel);
    }
}

/// The top-level `methods` of a `register` answer, if it has one.
pub fn register_methods(answer: &RawValue) -> Option<Value> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        methods: Option<Value>,
    }
    serde_json::from_str::<Option<Answer>>(answer.get()).ok().flatten().and_then(|a| a.methods)
}

/// Where a method of the catalog was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The manifest's `methods`.
    Manifest,
    /// The `methods` of the `register` answer.
    Register,
}

/// One method of a catalog, its params schema compiled.
pub struct Method {
    /// As declared.
    pub spec: MethodSpec,
    /// Where.
    pub source: Source,
    /// The compiled `params` schema.
    params: Option<Compiled>,
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Method").field("spec", &self.spec).field("source", &self.source).finish_non_exhaustive()
    }
}

/// Checks whose bound on work is above this (about 5 ms) run off the event loop
/// ([`Method::check_is_heavy`]).
pub const INLINE_CHECK_WORK: u64 = 1_000_000;

impl Method {
    /// Whether checking `params` against the method's schema could take long enough (up to
    /// about a second, [`crate::schema_cost::MAX_CALL_WORK`]) that it must not run on the event
    /// loop, where it would hold up every other plugin's calls (audit 18).
    pub fn check_is_heavy(&self, params: Option<&RawValue>) -> bool {
        self.params
            .as_ref()
            .is_some_and(|c| c.cost.quick_bound(params.map_or("null", RawValue::get)) > INLINE_CHECK_WORK)
    }

    /// `Ok` when the method has no `params` schema or `params` (`null` when absent) matches it;
    /// else `-32602` listing at most [`MAX_PARAM_ERRORS`] mismatches, each with the JSON pointer
    /// into params where it is (`""` for params itself).
    pub fn check_params(&self, plugin: &str, method: &str, params: Option<&RawValue>) -> Result<(), RpcError> {
        let Some(Compiled { validator, cost }) = &self.params else { return Ok(()) };
        // Bounded work: what one place of a value can cost, times the places in these params.
        if let Some(work) = cost.too_costly(params.map_or("null", RawValue::get)) {
            return Err(RpcError::with_data(
                codes::INVALID_PARAMS,
                format!(
                    "params for {plugin} method {method} too large to check against its schema: about {work} subschema checks, over the {} allowed per call (send smaller params, or simplify the schema)",
                    crate::schema_cost::MAX_CALL_WORK
                ),
                serde_json::json!({ "plugin": plugin, "method": method, "errors": [] }),
            ));
        }
        let value: Value = match params {
            None => Value::Null,
            // Params were checked to be JSON when the request was read; this cannot fail.
            Some(raw) => serde_json::from_str(raw.get()).map_err(|e| RpcError::params_not_fitting(&e))?,
        };
        if validator.is_valid(&value) {
            return Ok(());
        }
        if cost.too_costly_to_explain(params.map_or("null", RawValue::get)) {
            return Err(RpcError::with_data(
                codes::INVALID_PARAMS,
                format!(
                    "invalid params for {plugin} method {method}: they do not match its schema (where is not said: \
                     the schema's unions make a full report of these params too large; check them with a validator)"
                ),
                serde_json::json!({ "plugin": plugin, "method": method, "errors": [] }),
            ));
        }
        let errors: Vec<Value> = validator
            .iter_errors(&value)
            .take(MAX_PARAM_ERRORS)
            .map(|e| serde_json::json!({ "path": e.instance_path().to_string(), "message": cut_display(&e, MAX_ERROR_MESSAGE) }))
            .collect();
        let first = errors.first().map_or_else(String::new, |e| {
            let path = e["path"].as_str().unwrap_or_default();
            let at = if path.is_empty() { String::new() } else { format!(" at {path}") };
            format!(": {}{at}", e["message"].as_str().unwrap_or_default())
        });
        Err(RpcError::with_data(
            codes::INVALID_PARAMS,
            format!("invalid params for {plugin} method {method}{first}"),
            serde_json::json!({ "plugin": plugin, "method": method, "errors": errors }),
        ))
    }
}

/// Most bytes one compiled `pattern` may take (`\p{L}{6}` fits, `\p{L}{8}` does not).
pub const REGEX_SIZE_LIMIT: usize = 256 << 10;

/// Most bytes of one pattern's lazy DFA cache.
pub const REGEX_DFA_LIMIT: usize = 512 << 10;

/// Most patterns the `params` schemas of one plugin's catalog keep compiled, together.
pub const MAX_CATALOG_PATTERNS: usize = 128;

/// Most patterns all the live catalogs of one plugin keep compiled: two catalogs' worth (the
/// serving generation's and the next one's). Instances that answer `register` differently each
/// build a catalog of their own, so without this 64 instances kept 64 catalogs of regexes
/// (1.7 GB, the OOM killer: audit 18). With the limits above, at most about 200 MB per plugin.
pub const MAX_PLUGIN_PATTERNS: usize = 2 * MAX_CATALOG_PATTERNS;

/// Longest `message` of one entry of a `-32602` answer's `errors`, in bytes: the schema
/// engine's message quotes the value that failed, whole, so a 7 MB string failing twenty
/// subschemas made a 147 MB answer (audit 18).
pub const MAX_ERROR_MESSAGE: usize = 512;

/// `item` displayed, cut after `max` bytes (at a character boundary, with `…`): the display
/// stops once past it, so a huge value quoted in it is never written out whole.
fn cut_display(item: &impl fmt::Display, max: usize) -> String {
    struct Bounded {
        text: String,
        max: usize,
    }
    impl fmt::Write for Bounded {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let room = self.max + 1 - self.text.len();
            if s.len() < room {
                self.text.push_str(s);
                return Ok(());
            }
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.text.push_str(&s[..end]);
            Err(fmt::Error)
        }
    }
    let mut out = Bounded { text: String::new(), max };
    if fmt::write(&mut out, format_args!("{item}")).is_err() || out.text.len() > max {
        let mut end = max.min(out.text.len());
        while !out.text.is_char_boundary(end) {
            end -= 1;
        }
        out.text.truncate(end);
        out.text.push('…');
    }
    out.text
}

/// The catalog a plugin's instances share while they answer `register` alike (the rule): one
/// catalog for all, not one each (32 instances with 256 large methods each held 540 MB of
/// plugind's memory, audit 16). Keyed by the manifest and the answer's text.
#[derive(Clone, Default)]
pub struct SharedCatalog {
    last: Arc<std::sync::Mutex<LastBuilt>>,
    /// The patterns of the plugin's live catalogs.
    patterns: Arc<AtomicUsize>,
}

/// The key (manifest and `register` answer) and the catalog built last.
type LastBuilt = Option<(u64, std::sync::Arc<Catalog>)>;

impl SharedCatalog {
    /// The catalog of an instance of `m` whose `register` answer is `answer`: the one built last
    /// when both are the same, else a new one (kept for the next instance).
    pub fn get_or_build(
        &self,
        m: &std::sync::Arc<Manifest>,
        answer: &RawValue,
        log: &PluginLog,
    ) -> std::sync::Arc<Catalog> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (std::sync::Arc::as_ptr(m) as usize).hash(&mut h);
        answer.get().hash(&mut h);
        let key = h.finish();
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, catalog)) = last.as_ref().filter(|(k, _)| *k == key) {
            return catalog.clone();
        }
        let budget = PatternBudget { kept: 0, plugin: Some(self.patterns.clone()) };
        let catalog = Arc::new(Catalog::build_within(m, register_methods(answer).as_ref(), log, budget));
        *last = Some((key, catalog.clone()));
        catalog
    }
}

/// A plugin's methods: the manifest's merged with one instance's `register` answer.
#[derive(Debug, Default)]
pub struct Catalog {
    methods: HashMap<String, Method>,
    /// Its share of the plugin's patterns.
    _patterns: Option<PatternLease>,
}

impl Catalog {
    /// The catalog of an instance of `m` whose `register` answer carried `registered` (its
    /// top-level `methods`, if any). Problems with the registered ones (not an object, over the
    /// caps, a bad shape, a schema that does not compile, a name the manifest already has) drop
    /// that method with a warning in `log`; the manifest's were checked when it loaded.
    pub fn build(m: &Manifest, registered: Option<&Value>, log: &PluginLog) -> Catalog {
        Self::build_within(m, registered, log, PatternBudget::default())
    }

    /// [`Catalog::build`] within `patterns`, the plugin's budget of compiled patterns.
    fn build_within(m: &Manifest, registered: Option<&Value>, log: &PluginLog, mut patterns: PatternBudget) -> Catalog {
        let mut methods = HashMap::with_capacity(m.methods.len());
        for (name, spec) in &m.methods {
            let at = format!("/methods/{}", escape_pointer(name));
            match Self::method(spec.clone(), Source::Manifest, &at, &mut patterns) {
                Ok(method) => {
                    methods.insert(name.clone(), method);
                }
                // Not reached for a manifest that loaded; kept safe all the same.
                Err(e) => log.warn(format!("manifest: method {name:?} ignored: {e}")),
            }
        }
        match registered {
            None | Some(Value::Null) => {}
            Some(Value::Object(decls)) => {
                if decls.len() > caps::REGISTER_CATALOG_METHODS {
                    log.over_cap(
                        Cap::RegisterCatalog,
                        format!(
                            "register: methods cut to the first {} of {}",
                            caps::REGISTER_CATALOG_METHODS,
                            decls.len()
                        ),
                    );
                }
                let mut bytes = 0usize;
                for (name, decl) in decls.iter().take(caps::REGISTER_CATALOG_METHODS) {
                    let size = serde_json::to_string(decl).map_or(usize::MAX / 2, |s| s.len());
                    bytes += name.len() + size;
                    if bytes > caps::REGISTER_CATALOG_BYTES {
                        log.over_cap(
                            Cap::RegisterCatalog,
                            format!(
                                "register: methods from {name:?} on dropped: a catalog holds at most {} bytes of JSON",
                                caps::REGISTER_CATALOG_BYTES
                            ),
                        );
                        break;
                    }
                    if let Some((name, method)) = Self::registered(m, name, decl, size, log, &mut patterns) {
                        methods.insert(name, method);
                    }
                }
            }
            Some(_) => log.warn("register: `methods` ignored: expected an object keyed by method name".into()),
        }
        Catalog { methods, _patterns: patterns.lease() }
    }

    /// One method of a `register` answer, or None (warned about).
    /// `size`: its compact JSON's length.
    fn registered(
        m: &Manifest,
        name: &str,
        decl: &Value,
        size: usize,
        log: &PluginLog,
        patterns: &mut PatternBudget,
    ) -> Option<(String, Method)> {
        if m.methods.contains_key(name) {
            log.warn(format!("register: method {name:?} ignored: the manifest defines it, and the manifest wins"));
            return None;
        }
        if name.is_empty() || name.len() > MAX_METHOD_NAME_BYTES || size > caps::REGISTER_METHOD_BYTES {
            log.over_cap(
                Cap::RegisterCatalog,
                format!(
                    "register: a method dropped: names must be 1 to {MAX_METHOD_NAME_BYTES} bytes and each \
                     method at most {} bytes of JSON",
                    caps::REGISTER_METHOD_BYTES
                ),
            );
            return None;
        }
        let at = format!("/methods/{}", escape_pointer(name));
        let spec = match MethodSpec::from_value(decl, &at, m.max_timeout_ms) {
            Ok(mut spec) => {
                // Unknown keys are the plugin's to send but not plugind's to keep.
                spec.extra.clear();
                spec
            }
            Err(errors) => {
                let why: Vec<String> = errors.iter().map(ToString::to_string).collect();
                log.warn(format!("register: method {name:?} rejected: {}", why.join("; ")));
                return None;
            }
        };
        match Self::method(spec, Source::Register, &at, patterns) {
            Ok(method) => Some((name.to_owned(), method)),
            Err(e) => {
                log.warn(format!("register: method {name:?} rejected: {e}"));
                None
            }
        }
    }

    /// `spec` with its schemas compiled (`result` only checked: results are not validated).
    fn method(spec: MethodSpec, source: Source, at: &str, patterns: &mut PatternBudget) -> Result<Method, SchemaError> {
        let params = spec.params.as_ref().map(|s| compile(s, &format!("{at}/params"))).transpose()?;
        if let Some(result) = &spec.result {
            compile(result, &format!("{at}/result"))?;
        }
        if let Some(compiled) = &params {
            patterns.take(compiled, &format!("{at}/params"))?;
        }
        Ok(Method { spec, source, params })
    }

    /// The method called `name`, if the catalog has it.
    #[inline]
    pub fn get(&self, name: &str) -> Option<&Method> {
        if self.methods.is_empty() {
            return None;
        }
        self.methods.get(name)
    }

    /// Whether it has no method.
    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// One line for `check`: `methods: greet [params, idempotent], sleep [timeout 300 ms]`.
    pub fn summary(&self) -> String {
        if self.methods.is_empty() {
            return "methods: none declared".to_owned();
        }
        let mut names: Vec<&String> = self.methods.keys().collect();
        names.sort();
        let described: Vec<String> = names
            .into_iter()
            .map(|name| {
                let m = &self.methods[name];
                let mut notes = Vec::new();
                if m.params.is_some() {
                    notes.push("params schema".to_owned());
                }
                if let Some(t) = m.spec.timeout_ms {
                    notes.push(format!("timeout {t} ms"));
                }
                if m.spec.idempotent == Some(true) {
                    notes.push("idempotent".to_owned());
                }
                if m.source == Source::Register {
                    notes.push("from register".to_owned());
                }
                if notes.is_empty() {
                    name.clone()
                } else {
                    format!("{name} [{}]", notes.join(", "))
                }
            })
            .collect();
        format!("methods: {}", described.join(", "))
    }

    /// Every method in the manifest's shape, by name (the status object's `methods`).
    pub fn specs(&self) -> BTreeMap<String, MethodSpec> {
        self.methods.iter().map(|(k, m)| (k.clone(), m.spec.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns_cannot_backtrack_inside_plugind() {
        // Exponential on a backtracking engine; linear here, and simply no match.
        let v = compile(&json!({ "type": "string", "pattern": "^(a+)+$" }), "/p").unwrap();
        assert!(!v.is_valid(&json!(format!("{}!", "a".repeat(5000)))));
        assert!(v.is_valid(&json!("aaaa")));
        // What only a backtracking engine can do is refused when the schema loads.
        let e = compile(&json!({ "type": "string", "pattern": "(?<=a)b" }), "/methods/m/params").unwrap_err();
        assert!(e.pointer.starts_with("/methods/m/params"), "{e}");
    }

    fn manifest(methods: Value) -> Manifest {
        Manifest::from_value(&json!({"name": "p", "version": "1.0.0", "main": "m.py", "methods": methods}))
            .expect("valid test manifest")
    }

    fn raw(v: Value) -> Box<RawValue> {
        RawValue::from_string(v.to_string()).expect("JSON")
    }

    /// Audit 18: 300 patterns of 30 bytes (`\p{L}{190}`, 12 MB compiled each) took plugind to
    /// the OOM killer. Each compiled pattern is bounded, and so is their number per plugin.
    #[test]
    fn patterns_are_bounded_in_size_and_number() {
        assert!(compile(&json!({"pattern": "\\p{L}{4}"}), "").is_ok());
        let e = compile(&json!({"pattern": "\\p{L}{190}"}), "/methods/m/params").unwrap_err();
        assert!(e.pointer.starts_with("/methods/m/params"), "{e}");
        let sixty = |tag: &str| {
            let any: Vec<Value> = (0..60).map(|i| json!({"pattern": format!("^{tag}{i}$")})).collect();
            json!({"params": {"anyOf": any}})
        };
        let m = manifest(json!({"a": sixty("a"), "b": sixty("b"), "c": sixty("c")}));
        let e = check_manifest(&m).unwrap_err();
        assert!(e.message.contains("at most 128 patterns"), "{e}");
        let log = PluginLog::new("p", 100, tokio::sync::broadcast::channel(4).0);
        let c = Catalog::build(
            &manifest(json!({})),
            Some(&json!({"a": sixty("a"), "b": sixty("b"), "c": sixty("c")})),
            &log,
        );
        assert_eq!(["a", "b", "c"].iter().filter(|m| c.get(m).is_some()).count(), 2, "the third is refused");
    }

    /// Audit 18 (second round): 64 instances answering `register` each a little differently
    /// built 64 catalogs of 128 patterns (1.7 GB). A plugin's live catalogs share one budget.
    #[test]
    fn a_plugins_live_catalogs_share_one_pattern_budget() {
        let log = PluginLog::new("p", 100, tokio::sync::broadcast::channel(4).0);
        let m = Arc::new(manifest(json!({})));
        let shared = SharedCatalog::default();
        let answer = |nonce: usize| {
            let methods: serde_json::Map<String, Value> = (0..2)
                .map(|k| {
                    let any: Vec<Value> = (0..64).map(|i| json!({"pattern": format!("^{nonce}-{k}-{i}$")})).collect();
                    (format!("m{k}"), json!({"params": {"anyOf": any}}))
                })
                .collect();
            raw(json!({"services": [], "methods": methods}))
        };
        let first = shared.get_or_build(&m, &answer(1), &log);
        let second = shared.get_or_build(&m, &answer(2), &log);
        assert!(first.get("m0").is_some() && second.get("m1").is_some());
        let third = shared.get_or_build(&m, &answer(3), &log);
        assert!(third.get("m0").is_none() && third.get("m1").is_none(), "past the plugin's budget");
        drop((first, third));
        let fourth = shared.get_or_build(&m, &answer(4), &log);
        assert!(fourth.get("m0").is_some(), "a dropped catalog gives its patterns back");
    }

    #[test]
    fn an_error_message_quoting_a_huge_value_is_cut() {
        let m = manifest(
            json!({"m": {"params": {"type": "array", "items": {"allOf": [{"type": "integer"}, {"type": "integer"}]}}}}),
        );
        let c = Catalog::build(&m, None, &PluginLog::new("p", 100, tokio::sync::broadcast::channel(4).0));
        let e = c.get("m").unwrap().check_params("p", "m", Some(&raw(json!(["é".repeat(1 << 20)])))).unwrap_err();
        let errors = e.data.as_ref().unwrap()["errors"].as_array().unwrap().clone();
        assert_eq!(errors.len(), 2, "{errors:?}");
        for err in &errors {
            let message = err["message"].as_str().unwrap();
            assert!(message.len() <= MAX_ERROR_MESSAGE + '…'.len_utf8() && message.ends_with('…'), "{}", message.len());
        }
        assert!(e.message.len() < 2 * MAX_ERROR_MESSAGE, "{}", e.message.len());
        assert_eq!(cut_display(&"short", 10), "short");
        assert_eq!(cut_display(&"exactly10!", 10), "exactly10!");
        assert_eq!(cut_display(&"éééééé", 5), "éé…");
    }

    #[test]
    fn a_bad_schema_is_named_by_its_pointer() {
        let m = manifest(json!({"greet": {"params": {"type": "object", "properties": {"n": {"type": 5}}}}}));
        let e = check_manifest(&m).unwrap_err();
        assert_eq!(e.pointer, "/methods/greet/params/properties/n/type", "{e}");
        let m = manifest(json!({"a/b": {"result": {"minimum": "x"}}}));
        assert_eq!(check_manifest(&m).unwrap_err().pointer, "/methods/a~1b/result/minimum");
        assert!(check_manifest(&manifest(json!({"ok": {"params": true}}))).is_ok());
        // A misspelt type is said as one, not as the meta-schema's `anyOf`.
        let e = check_manifest(&manifest(json!({"m": {"params": {"type": "objekt"}}}))).unwrap_err();
        assert_eq!(e.pointer, "/methods/m/params/type");
        assert!(e.message.starts_with("a JSON Schema type (one of ") && e.message.ends_with("found \"objekt\""), "{e}");
        assert!(!e.to_string().contains("anyOf"), "{e}");
    }

    /// A call whose params times its schema's bound per place passes the work allowed per call
    /// is refused unchecked; the same schema takes small params.
    #[test]
    fn params_too_costly_for_their_schema_are_refused_unchecked() {
        // 13 levels of an anyOf naming the next one twice: about 24,000 subschemas per place.
        let mut defs = serde_json::Map::new();
        for i in 0..13 {
            let next = json!({"$ref": format!("#/$defs/a{}", i + 1)});
            defs.insert(format!("a{i}"), json!({"anyOf": [next.clone(), next]}));
        }
        defs.insert("a13".into(), json!({"type": ["array", "integer"]}));
        let m = manifest(json!({"m": {"params": {"$defs": defs, "$ref": "#/$defs/a0"}}}));
        let c = Catalog::build(&m, None, &PluginLog::new("p", 100, tokio::sync::broadcast::channel(4).0));
        let method = c.get("m").unwrap();
        assert!(method.check_params("p", "m", Some(&raw(json!([1, 2, 3])))).is_ok());
        let big = raw(serde_json::Value::Array(vec![json!(0); 10_000]));
        let e = method.check_params("p", "m", Some(&big)).unwrap_err();
        assert_eq!(e.code, codes::INVALID_PARAMS);
        assert!(e.message.contains("too large to check against its schema"), "{}", e.message);
    }

    #[test]
    fn mismatches_carry_pointers_into_params() {
        let m = manifest(json!({"sum": {"params": {
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": {"type": "integer"}}}
        }}}));
        let c = Catalog::build(&m, None, &PluginLog::new("p", 100, tokio::sync::broadcast::channel(4).0));
        let sum = c.get("sum").unwrap();
        assert!(sum.check_params("p", "sum", Some(&raw(json!({"items": [1, 2]})))).is_ok());
        let e = sum.check_params("p", "sum", Some(&raw(json!({"items": [1, "two", 3.5]})))).unwrap_err();
        assert_eq!(e.code, codes::INVALID_PARAMS);
        let data = e.data.unwrap();
        let paths: Vec<&str> = data["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["/items/1", "/items/2"]);
        assert_eq!(data["plugin"], "p");
        let e = sum.check_params("p", "sum", None).unwrap_err();
        assert_eq!(e.data.unwrap()["errors"][0]["path"], "");
    }

    #[test]
    fn draft_is_2020_12_unless_schema_says_and_formats_are_not_asserted() {
        // `prefixItems` is 2020-12; under draft-07 it is an unknown keyword and asserts nothing.
        let tuple = json!({"prefixItems": [{"type": "integer"}]});
        let v = compile(&tuple, "").unwrap();
        assert!(!v.is_valid(&json!(["x"])));
        let mut old = tuple.clone();
        old["$schema"] = json!("http://json-schema.org/draft-07/schema#");
        assert!(compile(&old, "").unwrap().is_valid(&json!(["x"])));
        let email = compile(&json!({"type": "string", "format": "email"}), "").unwrap();
        assert!(email.is_valid(&json!("not an address")));
    }

    #[test]
    fn the_manifest_wins_and_bad_registered_methods_are_dropped() {
        let m = manifest(json!({"greet": {"description": "from the manifest"}}));
        let log = PluginLog::new("p", 100, tokio::sync::broadcast::channel(4).0);
        let reg = json!({
            "greet": {"description": "from register"},
            "add": {"params": {"type": "object"}, "timeout_ms": 100, "x-extra": 1},
            "bad": {"params": {"type": "nope"}},
            "slow": {"timeout_ms": 10_000_000}
        });
        let c = Catalog::build(&m, Some(&reg), &log);
        let specs = c.specs();
        assert_eq!(specs.keys().collect::<Vec<_>>(), ["add", "greet"]);
        assert_eq!(specs["greet"].description.as_deref(), Some("from the manifest"));
        assert_eq!(c.get("add").unwrap().source, Source::Register);
        assert!(specs["add"].extra.is_empty());
        let text: Vec<String> = log.tail(100).into_iter().map(|l| l.message).collect();
        let text = text.join("\n");
        assert!(text.contains("\"greet\" ignored: the manifest defines it"), "{text}");
        assert!(text.contains("\"bad\" rejected: /methods/bad/params/type"), "{text}");
        assert!(text.contains("\"slow\" rejected: /methods/slow/timeout_ms"), "{text}");
    }
}
