//! mock-llm: the LLM gateway example's model, on the Rust SDK.
//!
//! It provides the service `llm@1.0.0` with one method, `chat`: params `{ model?, messages: [ {
//! role, content } ] }`, result `{ model, content }` where `content` is `"echo: "` followed by the
//! last user message exactly as it arrived (the text of its parts, for a multi-part message) — so
//! what the redactor did is visible in the answer.

use plugind_sdk::{json, Context, Plugin, Registry, RpcError, Value};

struct MockLlm;

impl Plugin for MockLlm {
    async fn register(&self, registry: &mut Registry) -> Result<(), RpcError> {
        registry.register_service("llm", "1.0.0").methods(["chat"]).capability("llm");
        Ok(())
    }

    async fn execute(&self, _ctx: Context, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "chat" => {
                let messages = params
                    .get("messages")
                    .and_then(Value::as_array)
                    .ok_or_else(|| RpcError::invalid_params("messages: expected an array of { role, content }"))?;
                let last_user = messages
                    .iter()
                    .rev()
                    .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                    .and_then(|m| m.get("content"))
                    .map(text_of)
                    .unwrap_or_default();
                let model = params.get("model").and_then(Value::as_str).unwrap_or("mock-llm");
                Ok(json!({ "model": model, "content": format!("echo: {last_user}") }))
            }
            _ => Err(RpcError::method_not_found(method)),
        }
    }
}

/// A message's `content` as text: the string itself, or the `text` of each part of a list
/// (OpenAI's multi-part messages), joined by spaces.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

fn main() {
    plugind_sdk::run(MockLlm);
}
