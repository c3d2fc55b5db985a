//! Host hook chains (SPEC §4.2): a payload passed through every running plugin that handles a
//! hook, in priority order (ties by name); `stop: true` ends the chain; a plugin that fails or
//! times out is skipped, told with `onError`, and the chain goes on.

use crate::router::call_plugin;
use crate::Daemon;
use plugind_protocol::control::HooksRunResult;
use plugind_protocol::methods::{self, HookResult};
use serde_json::{json, Value};

impl Daemon {
    /// Runs hook `hook` over `payload`.
    pub async fn run_hook(&self, hook: &str, payload: Value) -> HooksRunResult {
        let mut chain: Vec<(i64, std::sync::Arc<crate::PluginEntry>)> = self
            .plugins()
            .into_iter()
            .filter(|p| p.status().state.is_running())
            .filter_map(|p| {
                let prio = p.status().manifest.as_ref()?.hooks.get(hook).copied()?;
                Some((prio, p))
            })
            .collect();
        chain.sort_by(|(pa, a), (pb, b)| pa.cmp(pb).then_with(|| a.name.cmp(&b.name)));
        let mut result = HooksRunResult { payload, handled_by: Vec::new(), stopped_by: None };
        for (_, entry) in chain {
            let params = json!({ "hook": hook, "payload": result.payload });
            let write = |out: &mut Vec<u8>| plugind_protocol::jsonrpc::write_json(out, &params);
            let outcome = call_plugin(&entry, methods::HOOK, write, None, None).await.and_then(|raw| {
                serde_json::from_str::<HookResult>(raw.get()).map_err(|e| {
                    plugind_protocol::RpcError::invalid_params(format!("hook result is not {{ payload, stop? }}: {e}"))
                })
            });
            match outcome {
                Ok(r) => {
                    result.payload = r.payload;
                    result.handled_by.push(entry.name.to_string());
                    if r.stop {
                        result.stopped_by = Some(entry.name.to_string());
                        break;
                    }
                }
                Err(e) => {
                    entry.log.warn(format!("hook {hook} skipped: {e}"));
                    let mut data = e.data.clone().unwrap_or_else(|| json!({}));
                    if let Some(obj) = data.as_object_mut() {
                        obj.insert("hook".into(), json!(hook));
                        obj.insert("plugin".into(), json!(&*entry.name));
                    }
                    if let Some(i) = entry.routes().first() {
                        i.peer
                            .notify(methods::ON_ERROR, &json!({ "code": e.code, "message": e.message, "data": data }));
                    }
                }
            }
        }
        result
    }
}
