"""MCP stdio server with one tool, `echo`, that returns its arguments as JSON text: the MCP
counterpart of the plugind echo plugin (params {"msg":"hello","n":42} come back unchanged).
Started by client.py. mcp 2.x: `MCPServer` is what 1.x called `FastMCP`."""

import json

from mcp.server import MCPServer

server = MCPServer("plugind-bench-echo")


# structured_output=False: text content only, as the TypeScript peer's server answers.
@server.tool(structured_output=False)
def echo(msg: str, n: int) -> str:
    """Returns its arguments as JSON text."""
    return json.dumps({"msg": msg, "n": n}, separators=(",", ":"))


if __name__ == "__main__":
    server.run("stdio")
