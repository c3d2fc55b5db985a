//! `execute`, `services.list`, `services.call`.

use crate::control::connection::Conn;
use crate::registry::{HostService, ServiceCallIn};
use crate::router::Call;
use crate::trace::{MetaIn, TraceIn};
use crate::transport::peer::{with_progress_to, Reply};
use crate::Daemon;
use bytes::Bytes;
use plugind_protocol::control::ServicesRegisterParams;
use plugind_protocol::jsonrpc::{to_raw, RpcError};
use plugind_protocol::methods::ListServicesParams;
use plugind_protocol::methods::ServiceInfo;
use plugind_protocol::scan::{self, NotTaken};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::sync::Arc;

/// Control `execute` params: names borrowed from the request line (unless escaped), `params`
/// kept raw.
#[derive(Deserialize)]
struct ExecuteIn<'a> {
    #[serde(borrow)]
    plugin: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(default, borrow)]
    params: Option<&'a RawValue>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Trace context (`traceparent`, `tracestate`).
    #[serde(default, borrow, rename = "_meta")]
    meta: Option<MetaIn<'a>>,
}

impl<'a> ExecuteIn<'a> {
    /// [`ExecuteRequest::scan`] for the params object, walked where it stands in the line.
    fn scan(value: scan::Value<'a, '_>) -> Result<Self, NotTaken> {
        let (mut plugin, mut method, mut params, mut timeout_ms, mut meta) = (None, None, None, None, None);
        value.fields(["plugin", "method", "params", "timeout_ms", "_meta"], |n, value| {
            match n {
                0 => plugin = Some(Cow::Borrowed(value.required_str()?)),
                1 => method = Some(Cow::Borrowed(value.required_str()?)),
                2 => params = value.raw_opt()?,
                3 => timeout_ms = value.u64_opt()?,
                _ => meta = MetaIn::scan(value)?,
            }
            Ok(())
        })?;
        Ok(ExecuteIn { plugin: plugin.ok_or(NotTaken)?, method: method.ok_or(NotTaken)?, params, timeout_ms, meta })
    }
}

/// Calls a plugin's `execute`.
pub async fn execute(daemon: &Daemon, raw: Option<&RawValue>) -> Reply {
    let p: ExecuteIn<'_> =
        serde_json::from_str(raw.map_or("{}", RawValue::get)).map_err(|e| RpcError::params_not_fitting(&e))?;
    execute_parsed(daemon, p, None).await
}

/// [`execute`] of params already read, from `line` (if it has no line break: see
/// [`crate::router::ExecuteOut`]).
async fn execute_parsed(daemon: &Daemon, p: ExecuteIn<'_>, line: Option<&Bytes>) -> Reply {
    let call = Call {
        method: &p.method,
        params: p.params,
        timeout_ms: p.timeout_ms,
        service: None,
        caller: None,
        not_after: None,
        trace: TraceIn::from_meta(p.meta.as_ref()),
        params_line: line,
    };
    daemon.execute(&p.plugin, call).await
}

/// A control `execute` request parsed in one pass: the envelope and its `params` together, where
/// the general path ([`crate::transport::peer::Peer::accept`], then [`execute`]) delimits the
/// params first and parses them again. `execute` is nearly every request, and that second scan
/// was a tenth of plugind's instructions per call.
#[derive(Deserialize)]
pub struct ExecuteRequest<'a> {
    #[serde(default, borrow, deserialize_with = "plugind_protocol::jsonrpc::borrowed_opt_str")]
    jsonrpc: Option<Cow<'a, str>>,
    /// The request id, to answer with.
    #[serde(borrow)]
    pub id: &'a RawValue,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    params: ExecuteIn<'a>,
}

impl<'a> ExecuteRequest<'a> {
    /// `line` as a valid JSON-RPC `execute` request with well-formed params; None for anything
    /// else (including a malformed `execute`), which takes the general path and gets its error
    /// there.
    pub fn parse(line: &'a [u8]) -> Option<Self> {
        let mut other_method = false;
        let req = match Self::scan(line, &mut other_method) {
            Ok(req) => req,
            // Another method: the general path's.
            Err(NotTaken) if other_method => return None,
            Err(NotTaken) => {
                // serde_json decides what the scanner leaves (and rejects what is malformed);
                // lines without the literal `"method":"execute"` are not even tried. One
                // searcher for the process: `memmem::find` would build one per line.
                static EXECUTE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
                    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(br#""method":"execute""#));
                EXECUTE.find(line)?;
                serde_json::from_str(std::str::from_utf8(line).ok()?).ok()?
            }
        };
        let valid = req.method == "execute"
            && req.jsonrpc.as_deref().is_none_or(|v| v == "2.0")
            && req.id.get() != "null"
            && plugind_protocol::jsonrpc::valid_id(req.id);
        valid.then_some(req)
    }

    /// The request by the fast scanner, which delimits the caller's `params` without a serde
    /// walk over them (on a 64 KiB payload, that walk was the largest cost of the call). The
    /// same members as the derived `Deserialize`; anything it does not take (a member twice, a
    /// type the struct does not allow, escaped names) is `NotTaken`, left to serde_json. A plain
    /// method name other than `execute` stops the scan at once, with `other_method` set.
    fn scan(line: &'a [u8], other_method: &mut bool) -> Result<Self, NotTaken> {
        let (mut jsonrpc, mut id, mut method, mut params) = (None, None, None, None);
        scan::fields(line, ["jsonrpc", "id", "method", "params"], |n, value| {
            match n {
                0 => jsonrpc = value.plain_str()?.map(Cow::Borrowed),
                1 => id = Some(scan::raw(value.text()?)),
                2 => {
                    let name = value.required_str()?;
                    if name != "execute" {
                        *other_method = true;
                        return Err(NotTaken);
                    }
                    method = Some(Cow::Borrowed(name));
                }
                _ => params = Some(ExecuteIn::scan(value)?),
            }
            Ok(())
        })?;
        Ok(ExecuteRequest {
            jsonrpc,
            id: id.ok_or(NotTaken)?,
            method: method.ok_or(NotTaken)?,
            params: params.ok_or(NotTaken)?,
        })
    }

    /// Runs it as a host call of `conn` (cancellable, progress relayed). `line` is the line it
    /// was parsed from, if that has no line break (its large params are passed on from it).
    pub async fn run(self, daemon: &Daemon, conn: &Conn, line: Option<&Bytes>) -> Reply {
        // `cancel::host_call`, with the call's future pinned where it is made: moved into the
        // wrapper and from there into this future, its 2 KB were copied twice per request.
        let to = crate::control::cancel::progress_to(conn, self.id);
        let mut call = std::pin::pin!(execute_parsed(daemon, self.params, line));
        std::future::poll_fn(|cx| with_progress_to(&to, || std::future::Future::poll(call.as_mut(), cx))).await
    }
}

/// Services of running plugins.
pub fn services_list(daemon: &Daemon, p: ListServicesParams) -> Result<Box<RawValue>, RpcError> {
    Ok(to_raw(&daemon.list_services(p.capability.as_deref())))
}

/// Calls a service through the registry.
pub async fn services_call(daemon: &Daemon, raw: Option<&RawValue>) -> Reply {
    let p = ServiceCallIn::parse(raw)?;
    let dep = crate::registry::dependency(&p.service, p.version.as_deref())?;
    daemon
        .call_service(
            &dep,
            Call {
                method: &p.method,
                params: p.params,
                timeout_ms: p.timeout_ms,
                service: Some(&p.service),
                caller: None,
                not_after: None,
                trace: TraceIn::from_meta(p.meta.as_ref()),
                params_line: None,
            },
        )
        .await
}

/// A host offers a service for as long as this connection stays open.
pub fn services_register(daemon: &Daemon, conn: &Conn, p: ServicesRegisterParams) -> Result<Box<RawValue>, RpcError> {
    let version = semver::Version::parse(&p.version)
        .map_err(|e| RpcError::invalid_params(format!("version {:?}: {e}", p.version)))?;
    if p.name.is_empty() || p.name.contains(char::is_whitespace) || p.name.contains('@') {
        return Err(RpcError::invalid_params(format!(
            "service name {:?}: expected a name without spaces or '@'",
            p.name
        )));
    }
    let info = ServiceInfo {
        name: p.name,
        version: version.to_string(),
        plugin: format!("host:{}", conn.id),
        methods: p.methods,
        capabilities: p.capabilities,
    };
    daemon.add_host_service(Arc::new(HostService::new(
        conn.id,
        conn.host_described(),
        info,
        version,
        conn.peer.clone(),
    )));
    Ok(to_raw(&()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast(line: &str) -> Option<(String, String, String, Option<String>)> {
        ExecuteRequest::parse(line.as_bytes()).map(|r| {
            let p = r.params;
            (r.id.get().to_owned(), p.plugin.into_owned(), p.method.into_owned(), p.params.map(|v| v.get().to_owned()))
        })
    }

    #[test]
    fn one_pass_parse_takes_only_valid_execute_requests() {
        let ok = r#"{"jsonrpc":"2.0","id":7,"method":"execute","params":{"plugin":"echo","method":"echo","params":{"a":[1, 2]}}}"#;
        assert_eq!(fast(ok), Some(("7".into(), "echo".into(), "echo".into(), Some(r#"{"a":[1, 2]}"#.into()))));
        // Escaped names are unescaped, as on the general path.
        let escaped = r#"{"id":"x","method":"execute","params":{"plugin":"e\u0063ho","method":"m"}}"#;
        assert_eq!(fast(escaped), Some((r#""x""#.into(), "echo".into(), "m".into(), None)));
        // Everything else takes the general path, which answers with the right error.
        for other in [
            r#"{"jsonrpc":"1.0","id":1,"method":"execute","params":{"plugin":"a","method":"m"}}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"execute","params":{"plugin":"a","method":"m"}}"#,
            r#"{"jsonrpc":"2.0","method":"execute","params":{"plugin":"a","method":"m"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"execute","params":{"method":"m"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"execute","method":"execute","params":{"plugin":"a","method":"m"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"execute.x","params":{"plugin":"a","method":"m","note":"\"method\":\"execute\""}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"plugins.list","params":{}}"#,
            "\"method\":\"execute\" but not JSON",
        ] {
            assert_eq!(fast(other), None, "{other}");
        }
    }

    /// A request's members as text, to compare the scanner's reading with serde's.
    fn fields(r: &ExecuteRequest<'_>) -> Vec<Option<String>> {
        let p = &r.params;
        let meta = p.meta.as_ref();
        vec![
            r.jsonrpc.as_deref().map(str::to_owned),
            Some(r.id.get().to_owned()),
            Some(r.method.to_string()),
            Some(p.plugin.to_string()),
            Some(p.method.to_string()),
            p.params.map(|v| v.get().to_owned()),
            p.timeout_ms.map(|t| t.to_string()),
            meta.and_then(|m| m.traceparent.as_deref().map(str::to_owned)),
            meta.and_then(|m| m.tracestate.as_deref().map(str::to_owned)),
        ]
    }

    /// Whatever the scanner reads, serde reads the same, on requests and on every one-byte
    /// mutation of them; and the usual requests take the fast path.
    #[test]
    fn scanned_requests_match_serde() {
        let seeds = [
            r#"{"jsonrpc":"2.0","id":5,"method":"execute","params":{"plugin":"echo","method":"echo","params":{"msg":"hi","n":[1,2.5e3]}}}"#,
            r#"{"method":"execute","params":{"timeout_ms":250,"method":"m","plugin":"p","params":null,"_meta":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01","tracestate":"a=1"}},"id":"x","jsonrpc":"2.0"}"#,
        ];
        for seed in seeds {
            assert!(ExecuteRequest::scan(seed.as_bytes(), &mut false).is_ok(), "{seed}");
        }
        let mut taken = 0;
        for seed in seeds {
            for t in scan::one_byte_mutations(seed, b"\"\\{}[],:0-1.nul \x02") {
                if let Ok(ours) = ExecuteRequest::scan(t.as_bytes(), &mut false) {
                    taken += 1;
                    let theirs: ExecuteRequest<'_> =
                        serde_json::from_str(&t).unwrap_or_else(|e| panic!("scanner took {t:?}, serde: {e}"));
                    assert_eq!(fields(&ours), fields(&theirs), "{t:?}");
                }
            }
        }
        assert!(taken > 100, "{taken}");
        // Left to serde: a member twice, a negative or fractional timeout, escaped names.
        for t in [
            r#"{"id":1,"method":"execute","params":{"plugin":"a","plugin":"b","method":"m"}}"#,
            r#"{"id":1,"method":"execute","params":{"plugin":"a","method":"m","timeout_ms":1.5}}"#,
            r#"{"id":1,"method":"execute","params":{"plugin":"\u0061","method":"m"}}"#,
        ] {
            assert!(ExecuteRequest::scan(t.as_bytes(), &mut false).is_err(), "{t}");
        }
    }
}
