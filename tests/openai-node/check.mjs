// The official `openai` npm package against the edge's OpenAI-compatible
// API: a tool call round trip with usage, a streamed completion with the
// usage chunk, and (with a rate-limited route) a 429 as RateLimitError with
// its retry delay. Prints one JSON line of what it saw; tests/python/
// test_edge.py runs it and checks it.
//
//   node check.mjs <base URL of /v1> <model> [<rate-limited model>]
import OpenAI from "openai";

const [baseURL, model, limited] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: process.env.AGENTMESH_API_KEY || "unused", maxRetries: 0 });
const calculator = {
  type: "function",
  function: {
    name: "calculator",
    description: "Evaluates an arithmetic expression.",
    parameters: { type: "object", properties: { expression: { type: "string" } }, required: ["expression"] },
  },
};
const objective = "What is 17 * 23 + sqrt(144)?";
const seen = {};

const first = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: objective }],
  tools: [calculator],
});
const call = first.choices[0].message.tool_calls[0];
seen.tool = call.function.name;
seen.arguments = JSON.parse(call.function.arguments);
seen.usage = first.usage;
const second = await client.chat.completions.create({
  model,
  messages: [
    { role: "user", content: objective },
    first.choices[0].message,
    { role: "tool", tool_call_id: call.id, content: JSON.stringify({ result: 403 }) },
  ],
  tools: [calculator],
});
seen.answer = second.choices[0].message.content;

const stream = await client.chat.completions.create({
  model,
  messages: [{ role: "user", content: "hello" }],
  stream: true,
  stream_options: { include_usage: true },
});
let text = "";
for await (const chunk of stream) {
  if (chunk.choices.length > 0) text += chunk.choices[0].delta.content || "";
  if (chunk.usage) seen.streamUsage = chunk.usage;
}
seen.streamed = text;

if (limited) {
  await client.chat.completions.create({ model: limited, messages: [{ role: "user", content: "hi" }] });
  try {
    await client.chat.completions.create({ model: limited, messages: [{ role: "user", content: "hi" }] });
    seen.rateLimited = false;
  } catch (error) {
    seen.rateLimited = error instanceof OpenAI.RateLimitError;
    seen.status = error.status;
    seen.retryAfter = error.headers?.get?.("retry-after") ?? error.headers?.["retry-after"];
  }
}
console.log(JSON.stringify(seen));
