// Drives Gatehouse with the official MCP TypeScript SDK, for tests/api/legacy_sse.rs.
//
//   node client.mjs sse <url> <token> [<origin for POSTs>]
//   node client.mjs streamable <url> <token>
//   node client.mjs call <url> <token> <tool> <arguments as JSON>
//
// `sse` connects with SSEClientTransport (the 2024-11-05 HTTP+SSE transport); with a
// third argument its POSTs go to that origin instead, as a load balancer might send
// them to another instance. `streamable` connects with StreamableHTTPClientTransport.
// Either way: connect (initialize), tools/list, tools/call whoami, then one JSON line
// on stdout with what came back. `call` (for tests/api/gateway.rs) connects with
// StreamableHTTPClientTransport, lists every page of tools and calls <tool>.
// MCP_SDK_DIR names where the SDK is installed.
const sdk = `${process.env.MCP_SDK_DIR}/node_modules/@modelcontextprotocol/sdk/dist/esm`;
const { Client } = await import(`${sdk}/client/index.js`);
const { SSEClientTransport } = await import(`${sdk}/client/sse.js`);
const { StreamableHTTPClientTransport } = await import(`${sdk}/client/streamableHttp.js`);

const [mode, url, token, postOrigin, callArgs] = process.argv.slice(2);
const target = new URL(url);
const opts = { requestInit: { headers: { Authorization: `Bearer ${token}` } } };
if (mode === 'call') {
  const client = new Client({ name: 'gatehouse-sdk-test', version: '1.0.0' });
  try {
    await client.connect(new StreamableHTTPClientTransport(target, opts));
    const tools = [];
    let cursor;
    do {
      const page = await client.listTools(cursor ? { cursor } : {});
      tools.push(...page.tools);
      cursor = page.nextCursor;
    } while (cursor);
    const result = await client.callTool({ name: postOrigin, arguments: JSON.parse(callArgs) });
    console.log(JSON.stringify({ tools, result }));
    await client.close();
    process.exit(0);
  } catch (e) {
    console.error(`client failed: ${e?.stack ?? e}`);
    process.exit(1);
  }
}
if (postOrigin) {
  opts.fetch = (u, init) =>
    fetch(init?.method === 'POST' ? String(u).replace(target.origin, postOrigin) : u, init);
}
const transport = mode === 'sse'
  ? new SSEClientTransport(target, opts)
  : new StreamableHTTPClientTransport(target, opts);
const client = new Client({ name: 'gatehouse-sdk-test', version: '1.0.0' });
try {
  await client.connect(transport);
  const tools = await client.listTools();
  const whoami = await client.callTool({ name: 'whoami', arguments: {} });
  console.log(JSON.stringify({
    server: client.getServerVersion(),
    tools: tools.tools.map((t) => t.name),
    whoami,
  }));
  await client.close();
  process.exit(0);
} catch (e) {
  console.error(`client failed: ${e?.stack ?? e}`);
  process.exit(1);
}
