//! Property tests (issue 9): the JSON-RPC message parser and printers, and the manifest
//! validator. The properties live in `tests/props/` and are shared with the cargo-fuzz targets
//! of `fuzz/`; inputs the fuzzers found are kept below as regression tests.

#![allow(clippy::unwrap_used)]

#[path = "props/jsonrpc.rs"]
mod jsonrpc;
#[path = "props/manifest.rs"]
mod manifest;

use jsonrpc::Owned;
use plugind_protocol::jsonrpc::{self as rpc, Message, RpcError};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::{json, Value};

/// JSON values without non-integer numbers (see `jsonrpc::has_float`).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(Value::Array),
            btree_map(".{0,8}", inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An id as a peer may write it: a number or a string.
fn id() -> impl Strategy<Value = Value> {
    prop_oneof![any::<u64>().prop_map(Value::from), ".{0,10}".prop_map(Value::String)]
}

/// A message and the line the crate's printers make of it.
fn message() -> impl Strategy<Value = (Owned, Vec<u8>)> {
    let text = |v: &Value| serde_json::to_string(v).unwrap();
    prop_oneof![
        // Params are structured (an object or an array) in JSON-RPC 2.0.
        (any::<u64>(), ".{0,16}", json_value()).prop_map(move |(n, m, p)| {
            let p = serde_json::json!({ "v": p });
            (Owned::Request(n.to_string(), m.clone(), Some(text(&p))), rpc::request_line(n, &m, &p))
        }),
        (".{0,16}", json_value()).prop_map(move |(m, p)| {
            let p = serde_json::json!([p]);
            (Owned::Notification(m.clone(), Some(text(&p))), rpc::notification_line(&m, &p))
        }),
        (id(), json_value()).prop_map(move |(i, r)| {
            let raw = rpc::to_raw(&i);
            (Owned::Response(text(&i), Ok(text(&r))), rpc::result_line(&raw, &r))
        }),
        (id(), any::<i64>(), ".{0,16}", proptest::option::of(json_value())).prop_map(move |(i, code, msg, data)| {
            // `"data": null` reads back as no data: the same thing to every JSON-RPC peer.
            let e = RpcError { code, message: msg, data: data.filter(|d| !d.is_null()) };
            let raw = rpc::to_raw(&i);
            let line = rpc::error_line(&raw, &e);
            (Owned::Response(text(&i), Err(e)), line)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn jsonrpc_parse_of_print_is_the_message((want, line) in message()) {
        prop_assert_eq!(line.last(), Some(&b'\n'));
        let body = &line[..line.len() - 1];
        prop_assert!(!body.contains(&b'\n'), "one line");
        let got = Message::parse(body).unwrap();
        prop_assert_eq!(Owned::of(&got), want);
        jsonrpc::check_line(body);
    }

    #[test]
    fn jsonrpc_arbitrary_bytes(line in vec(any::<u8>(), 0..200)) {
        jsonrpc::check_line(&line);
    }

    #[test]
    fn jsonrpc_json_like_text(line in "[{}\\[\\]\":,0-9a-z. \\\\\r\t-]{0,80}") {
        jsonrpc::check_line(line.as_bytes());
    }

    #[test]
    fn jsonrpc_envelopes_with_odd_members(
        jsonrpc in proptest::option::of(prop_oneof![Just(json!("2.0")), Just(json!("1.0")), Just(json!(null)), Just(json!(2))]),
        id in proptest::option::of(prop_oneof![id(), Just(json!(null)), Just(json!([1])), Just(json!({"a": 1})), Just(json!(1.5))]),
        method in proptest::option::of(prop_oneof![".{0,8}".prop_map(Value::String), Just(json!(1)), Just(json!(null))]),
        params in proptest::option::of(json_value()),
        result in proptest::option::of(json_value()),
        error in proptest::option::of(prop_oneof![
            Just(json!({"code": -1, "message": "m"})),
            Just(json!({"code": "x", "message": "m"})),
            Just(json!({"message": "m"})),
            Just(json!("boom")),
            Just(json!(null)),
        ]),
    ) {
        let mut m = serde_json::Map::new();
        for (k, v) in [("jsonrpc", jsonrpc), ("id", id), ("method", method), ("params", params), ("result", result), ("error", error)] {
            if let Some(v) = v {
                m.insert(k.to_owned(), v);
            }
        }
        jsonrpc::check_line(serde_json::to_string(&Value::Object(m)).unwrap().as_bytes());
    }
}

/// A manifest document: each known field absent, plausible, or of a wrong type.
fn manifest_doc() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        4 => "[a-z0-9][a-z0-9._-]{0,10}".prop_map(Value::String),
        1 => ".{0,8}".prop_map(Value::String),
        1 => json_value(),
    ];
    let version = prop_oneof![
        4 => "[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{1,2}(-[a-z]{1,4})?".prop_map(Value::String),
        1 => ".{0,6}".prop_map(Value::String),
        1 => json_value(),
    ];
    let main = prop_oneof![
        "[a-z]{1,6}\\.(py|js|sh)".prop_map(Value::String),
        Just(json!("")),
        Just(json!("/abs/main.py")),
        json_value(),
    ];
    let command = prop_oneof![vec(".{0,6}", 0..3).prop_map(|v| json!(v)), json_value()];
    let uint = prop_oneof![
        4 => (0u64..100_000).prop_map(Value::from),
        1 => Just(json!(u64::MAX)),
        1 => Just(json!(-1)),
        1 => Just(json!(1.5)),
        1 => json_value(),
    ];
    let limits = btree_map(
        prop_oneof![
            Just("memory_mb"),
            Just("cpu_seconds"),
            Just("open_files"),
            Just("processes"),
            Just("max_inflight"),
            Just("max_queue"),
            Just("other")
        ],
        uint.clone(),
        0..5,
    )
    .prop_map(|m| json!(m));
    let restart = (
        proptest::option::of(prop_oneof![
            Just(json!("always")),
            Just(json!("never")),
            Just(json!("on-failure")),
            json_value()
        ]),
        proptest::option::of(uint.clone()),
        proptest::option::of(uint.clone()),
        proptest::option::of(uint.clone()),
    )
        .prop_map(|(policy, max_restarts, window_s, cooldown_s)| {
            let mut r = serde_json::Map::new();
            for (k, v) in
                [("policy", policy), ("max_restarts", max_restarts), ("window_s", window_s), ("cooldown_s", cooldown_s)]
            {
                if let Some(v) = v {
                    r.insert(k.to_owned(), v);
                }
            }
            Value::Object(r)
        });
    let deps = prop_oneof![
        vec(prop_oneof!["[a-z]{1,6}", "[a-z]{1,6}@[\\^~>=<]{0,2}[0-9]\\.[0-9]", ".{0,6}"], 0..3).prop_map(|v| json!(v)),
        json_value(),
    ];
    let perms = prop_oneof![
        vec(prop_oneof![Just("networking"), Just("storage"), Just("filesystem"), Just("process"), Just("root")], 0..4)
            .prop_map(|v| json!(v)),
        json_value(),
    ];
    let fields = (
        (proptest::option::of(name), proptest::option::of(version), proptest::option::of(main)),
        (proptest::option::of(command), proptest::option::of(uint.clone()), proptest::option::of(uint.clone())),
        (proptest::option::of(limits), proptest::option::of(restart), proptest::option::of(uint)),
        (proptest::option::of(deps.clone()), proptest::option::of(deps), proptest::option::of(perms)),
        (proptest::option::of(json_value()), proptest::option::of(json_value()), proptest::option::of(json_value())),
    );
    fields.prop_map(|((n, v, m), (c, t, mt), (l, r, i), (req, opt, p), (env, hooks, x))| {
        let mut o = serde_json::Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                o.insert(k.to_owned(), v);
            }
        };
        put("name", n);
        put("version", v);
        put("main", m);
        put("command", c);
        put("timeout_ms", t);
        put("max_timeout_ms", mt);
        put("limits", l);
        put("restart", r);
        put("instances", i);
        put("dependencies", Some(json!({"required": req, "optional": opt})));
        put("permissions", p);
        put("env", env);
        put("hooks", hooks);
        put("x-extension", x);
        Value::Object(o)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn manifest_arbitrary_bytes(text in vec(any::<u8>(), 0..200)) {
        manifest::check_text(&text);
    }

    #[test]
    fn manifest_documents(doc in manifest_doc()) {
        manifest::check_text(serde_json::to_string(&doc).unwrap().as_bytes());
    }
}

#[test]
fn manifest_examples_hold_the_properties() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut n = 0;
    for dir in ["manifests/examples", "examples", "tests/fixtures/plugins"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            let file = if p.is_dir() { p.join("plugin.json") } else { p };
            if file.extension().is_some_and(|x| x == "json") && file.exists() {
                manifest::check_text(&std::fs::read(&file).unwrap());
                n += 1;
            }
        }
    }
    assert!(n >= 5, "found {n} manifests");
}

/// Inputs the fuzzers found (fuzz/artifacts), kept as regression tests.
#[test]
fn jsonrpc_regression_raw_params_keep_their_line_breaks() {
    // jsonrpc_parse: raw params keep their whitespace, line breaks included. Lines read from a
    // socket or a pipe cannot hold a `\n`, but an HTTP body can: the router flattens raw params
    // before they reach a plugin (supervisor/tests/it/clients.rs).
    let line = b"{\"method\":\"$/cancel\",\"params\":{\"id\":\r\n4}}";
    jsonrpc::check_line(line);
    let Message::Notification { params, .. } = Message::parse(line).unwrap() else { panic!() };
    assert_eq!(params.unwrap().get(), "{\"id\":\r\n4}");
}
