//! Property tests (issue 9): the NDJSON frame decoder and the control-socket request path. The
//! properties live in `tests/props/` and are shared with the cargo-fuzz targets of `fuzz/`;
//! inputs the fuzzers found are kept below as regression tests.
//!
//! Issue 16: a model-based test of the plugin lifecycle machine (`tests/props/lifecycle.rs`).

#![allow(clippy::unwrap_used)]

#[path = "props/control.rs"]
mod control;
#[path = "props/frame.rs"]
mod frame;
#[path = "props/lifecycle.rs"]
mod lifecycle;

use plugind::transport::frame::Frame;
use proptest::collection::vec;
use proptest::prelude::*;

/// Bytes that make interesting lines: mostly text, with newlines, `\r`, blanks and binary.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        6 => Just(b'x'),
        2 => Just(b'\n'),
        1 => Just(b'\r'),
        1 => Just(b' '),
        1 => any::<u8>(),
    ];
    vec(byte, 0..400)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn frame_any_chunking_yields_the_same_frames(data in stream(), max in 1usize..48, chunks in vec(1usize..64, 1..6)) {
        frame::check(&data, max, &chunks);
    }

    #[test]
    fn frame_arbitrary_bytes(data in vec(any::<u8>(), 0..600), max in 1usize..200, chunks in vec(1usize..300, 1..4)) {
        frame::check(&data, max, &chunks);
    }

    #[test]
    fn frame_oversized_line_is_reported_once_as_soon_as_it_is_too_long(
        len in 1usize..5000, max in 1usize..64, chunks in vec(1usize..700, 1..5),
    ) {
        let len = max + len;
        let mut data = vec![b'z'; len];
        data.extend_from_slice(b"\nok\n");
        let max = max.max(2);
        let got = frame::decode_chunked(&data, max, &chunks);
        let want = vec![frame::oversized(&data[..len], max), Frame::Line(bytes::Bytes::from_static(b"ok"))];
        prop_assert!(frame::same_frames(&got, &want, max), "{:?}", got);
        // As soon as: with no more than the first read past the limit.
        let Frame::Oversized { len: seen, .. } = got[0] else { unreachable!() };
        let first_read_past = chunks.iter().cycle().scan(0, |at, n| { *at += n; Some(*at) }).find(|at| *at > max).unwrap();
        prop_assert_eq!(seen, first_read_past.min(len));
    }
}

/// Requests a control client may send: known methods with plausible or odd params and ids.
fn request() -> impl Strategy<Value = String> {
    let method = prop_oneof![
        Just("supervisor.status"),
        Just("plugins.list"),
        Just("plugins.get"),
        Just("plugins.start"),
        Just("plugins.stop"),
        Just("plugins.restart"),
        Just("plugins.reload"),
        Just("plugins.trace"),
        Just("execute"),
        Just("services.list"),
        Just("services.call"),
        Just("services.register"),
        Just("hooks.run"),
        Just("logs.tail"),
        Just("events.subscribe"),
        Just("metrics.get"),
        Just("no.such.method"),
    ];
    let params = prop_oneof![
        Just("{}".to_owned()),
        Just("null".to_owned()),
        Just("[1,2]".to_owned()),
        Just(r#"{"name":"x"}"#.to_owned()),
        Just(r#"{"plugin":"p","method":"m","params":{"a":1},"timeout_ms":5}"#.to_owned()),
        Just(r#"{"service":"ui","method":"m","params":{},"timeout_ms":50}"#.to_owned()),
        Just(r#"{"name":"ui","version":"1.0.0"}"#.to_owned()),
        Just(r#"{"name":"ui","version":"nope"}"#.to_owned()),
        Just(r#"{"hook":"onPrompt","payload":{"t":"hi"}}"#.to_owned()),
        Just(r#"{"lines":3,"follow":true}"#.to_owned()),
        "[a-z{}\\[\\]\":,0-9 ]{0,24}",
    ];
    let id = prop_oneof![
        Just("1".to_owned()),
        Just("\"s\"".to_owned()),
        Just("null".to_owned()),
        (0u64..1000).prop_map(|n| n.to_string())
    ];
    (id, method, params, any::<bool>()).prop_map(|(id, m, p, notification)| {
        if notification {
            format!(r#"{{"jsonrpc":"2.0","method":"{m}","params":{p}}}"#)
        } else {
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{m}","params":{p}}}"#)
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn control_requests_each_get_one_answer(reqs in vec(request(), 0..8), garbage in "[ -~]{0,20}", newline_at_end in any::<bool>()) {
        let mut input = reqs.join("\n");
        input.push('\n');
        input.push_str(&garbage);
        if newline_at_end {
            input.push('\n');
        }
        control::Harness::new().check(input.as_bytes());
    }

    #[test]
    fn control_arbitrary_bytes(data in vec(any::<u8>(), 0..300)) {
        control::Harness::new().check(&data);
    }
}

/// Inputs the fuzzers found (fuzz/artifacts), kept as regression tests.
#[test]
fn control_regression_register_then_garbage() {
    // control_request: a host service registered, then a line that is not a message, half-closed.
    let input = concat!(
        r#"{"jsonrpc":"2.0","id":1,"method":"services.register","params":{"name":"ui","version":"1.0.0"}}"#,
        "\n",
        r#"s{"jonrpc":"2.0","id":2,"method":"rervices.call","params":{"service":"ui","method";"m","params":{},"timeout_ms":101}}"#,
        "\n"
    );
    control::Harness::new().check(input.as_bytes());
}

#[test]
fn control_regression_slow_request_then_eof() {
    // control_request: a request still running at EOF must be answered (half-closed client).
    let input = concat!(
        r#"{"jsonrpc":"2.0","id":1,"method":"hooks.run","params":{"hook":"onPrompt","payload":{"a":1}}}"#,
        "\n"
    );
    control::Harness::new().check(input.as_bytes());
}

/// Anything that can happen to one plugin, weighted towards the seams (commands during swaps,
/// crashes during starts).
fn lifecycle_step() -> impl Strategy<Value = lifecycle::Step> {
    use lifecycle::Step;
    prop_oneof![
        3 => Just(Step::Start),
        1 => Just(Step::StartBlocked),
        3 => Just(Step::Stop),
        2 => any::<bool>().prop_map(|hard| Step::Restart { hard }),
        3 => (0u32..4).prop_map(Step::Reload),
        6 => (any::<usize>(), prop::bool::weighted(0.85)).prop_map(|(pick, ok)| Step::Ready { pick, ok }),
        1 => any::<usize>().prop_map(|pick| Step::SpawnFail { pick }),
        3 => (any::<usize>(), prop::bool::weighted(0.2)).prop_map(|(pick, clean)| Step::Crash { pick, clean }),
        5 => any::<usize>().prop_map(|pick| Step::Exit { pick }),
        3 => prop_oneof![Just(50u64), Just(1_000), Just(40_000)].prop_map(|ms| Step::Wait { ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Issue 16: any interleaving of commands, manifest changes, handshakes, crashes and timers
    /// keeps the lifecycle invariants after every step and converges once left alone.
    #[test]
    fn lifecycle_machine_keeps_its_invariants(instances in 1u32..4, steps in vec(lifecycle_step(), 0..60)) {
        let mut w = lifecycle::World::new(instances);
        for s in &steps {
            w.apply(s);
        }
        w.settle();
    }
}

#[test]
fn control_regression_half_closed_after_a_call_to_its_own_service() {
    // Issue 16: the client registers `ui`, a call is routed to it (so the service index holds
    // its connection), then the client half-closes: plugind must answer, then close.
    let input = concat!(
        r#"{"jsonrpc":"2.0","id":1,"method":"services.register","params":{"name":"ui","version":"1.0.0"}}"#,
        "\n",
        r#"{"jsonrpc":"2.0","id":2,"method":"services.call","params":{"service":"ui","method":"m","params":{},"timeout_ms":50}}"#,
        "\n",
        r#"{"jsonrpc":"2.0","id":3,"method":"services.list","params":{}}"#,
        "\n"
    );
    control::Harness::new().check(input.as_bytes());
}
