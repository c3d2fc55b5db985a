//! {{name}}: a plugind plugin written with the Rust SDK.
//!
//! plugind calls `execute` with a method name and its params; add methods to the `match`.
//! `println!` is safe: the SDK sends it to stderr, which plugind keeps as this plugin's log.
//!
//! To wait (a timer, a socket), use tokio through the SDK, no dependency to add:
//! `plugind_sdk::tokio::time::sleep(d).await`. Never block the thread (`std::thread::sleep`, a
//! blocking HTTP client, a long computation): the plugin reads plugind's messages on the same
//! runtime, so every other call, ping and cancel would wait behind it. Put such work in
//! `plugind_sdk::tokio::task::spawn_blocking(...).await`.

use plugind_sdk::{json, Context, Plugin, RpcError, Value};

struct MyPlugin;

impl Plugin for MyPlugin {
    async fn execute(&self, _ctx: Context, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "hello" => {
                let name = params
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("world");
                Ok(json!({ "greeting": format!("Hello, {name}!") }))
            }
            _ => Err(RpcError::method_not_found(method)),
        }
    }
}

fn main() {
    plugind_sdk::run(MyPlugin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugind_sdk::testing::TestHost;

    #[tokio::test]
    async fn hello_greets_by_name_or_the_world() {
        let host = TestHost::start(MyPlugin)
            .await
            .expect("init and register succeed");
        assert_eq!(
            host.execute("hello", json!({ "name": "Ada" })).await,
            Ok(json!({ "greeting": "Hello, Ada!" }))
        );
        assert_eq!(
            host.execute("hello", json!({})).await,
            Ok(json!({ "greeting": "Hello, world!" }))
        );
    }

    #[tokio::test]
    async fn unknown_methods_are_method_not_found() {
        let host = TestHost::start(MyPlugin)
            .await
            .expect("init and register succeed");
        let err = host
            .execute("nope", json!({}))
            .await
            .expect_err("no such method");
        assert_eq!(err.code, plugind_sdk::codes::METHOD_NOT_FOUND);
    }
}
