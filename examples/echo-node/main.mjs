// echo-node: the example contract (docs/protocol.md, "The example plugins") on the Node SDK.

import { setTimeout as sleep } from "node:timers/promises";
// The SDK is used straight from the repository, no install step.
import { serve, PluginError } from "../../sdk/node/plugind-sdk.mjs";

// Resolves true after `ms`, or false as soon as the call is cancelled.
const wait = (ms, signal) => sleep(ms, true, { signal }).catch(() => false);

serve({
  methods: {
    echo: (params) => params,

    hello: (params) => ({ greeting: `Hello, ${params?.name ?? "world"}!` }),

    sleep: async ({ ms }, ctx) => {
      await wait(ms, ctx.signal);
      return { slept: ms }; // the SDK answers -32800 instead if the call was cancelled meanwhile
    },

    progress: async ({ steps, interval_ms = 0 }, ctx) => {
      for (let i = 1; i <= steps; i++) {
        if (!(await wait(interval_ms, ctx.signal))) return null; // cancelled
        ctx.progress({ progress: i, total: steps });
      }
      return { steps };
    },

    // A PluginError from plugind propagates unchanged to our caller.
    call: ({ service, method, params }, ctx) => ctx.callService(service, method, params),

    env: ({ name }) => ({ value: process.env[name] ?? null }),

    fail: ({ code, message, data }) => {
      throw new PluginError(code, message, data);
    },

    exit: (params) => process.exit(params?.code ?? 0),

    print: () => {
      console.log("echo-node: this console.log lands on stderr");
      return { printed: true };
    },
  },
});
