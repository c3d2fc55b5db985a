// MCP stdio server with one tool, `echo`, that returns its arguments: the MCP counterpart of the
// plugind echo plugin (params {"msg":"hello","n":42} come back unchanged). Started by client.mjs.
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { z } from "zod";

const server = new McpServer({ name: "plugind-bench-echo", version: "1.0.0" });

server.registerTool(
  "echo",
  { description: "Returns its arguments as JSON text.", inputSchema: { msg: z.string(), n: z.number() } },
  async (args) => ({ content: [{ type: "text", text: JSON.stringify(args) }] }),
);

await server.connect(new StdioServerTransport());
