// {{name}}: a plugind plugin. plugind starts it as `node main.mjs` in this directory.
import { serve } from "./plugind-sdk.mjs"; // the SDK is the file next to this one

serve({
  methods: {
    // execute "hello" {name?} -> {"greeting": "Hello, NAME!"}
    hello: (params) => ({ greeting: `Hello, ${params?.name ?? "world"}!` }),
  },
});
