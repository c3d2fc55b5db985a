// The echo plugin on the Node SDK, as `pluginctl new --lang node` writes one (plugind-bench's SDK
// overhead lines; raw/echo.mjs is the same plugin without the SDK).

import { serve } from "./plugind-sdk.mjs";

serve({
  methods: {
    echo: (params) => params,
  },
});
