// The official OpenAI Node SDK against a real `inferd serve` on a free port, with
// the real default chat model and the MiniLM embedding model in one process:
// chat, streamed chat (same text at temperature 0), embeddings (the SDK's default
// base64 and float), and an error naming the field. The binary comes from
// $INFERD_BIN (default target/debug/inferd).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import path from "node:path";
import { fileURLToPath } from "node:url";
import OpenAI from "openai";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = process.env.INFERD_BIN ?? path.join(root, "target", "debug", "inferd");
let server;
let client;

before(async () => {
  server = spawn(bin, ["serve", "--port", "0", "--model", "smollm2-135m", "--model", "minilm-l6"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("inferd serve did not become ready in 60 s")), 60000);
    server.on("exit", (code) => reject(new Error(`inferd serve exited with ${code}`)));
    createInterface({ input: server.stderr }).on("line", (line) => {
      const m = line.match(/ready: (http:\/\/[0-9.:]+)\/v1/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
  });
  client = new OpenAI({ baseURL: `${base}/v1`, apiKey: "unused", maxRetries: 0 });
});

after(() => server?.kill("SIGTERM"));

const question = {
  model: "smollm2-135m",
  messages: [{ role: "user", content: "What is the capital of France?" }],
  temperature: 0,
  max_tokens: 24,
};

test("chat, and the same text streamed", async () => {
  const full = await client.chat.completions.create(question);
  const text = full.choices[0].message.content;
  assert.match(text, /Paris/);
  assert.equal(full.choices[0].finish_reason, "stop");
  assert.ok(full.usage.prompt_tokens > 0);
  const stream = await client.chat.completions.create({ ...question, stream: true, stream_options: { include_usage: true } });
  let streamed = "";
  let usage = null;
  for await (const chunk of stream) {
    streamed += chunk.choices[0]?.delta?.content ?? "";
    usage = chunk.usage ?? usage;
  }
  assert.equal(streamed, text);
  assert.equal(usage.completion_tokens, full.usage.completion_tokens);
});

test("embeddings, base64 (the SDK default) and float", async () => {
  const texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Quarterly revenue grew by 4%."];
  const r = await client.embeddings.create({ model: "minilm-l6", input: texts });
  const v = r.data.map((d) => d.embedding);
  assert.deepEqual(v.map((x) => x.length), [384, 384, 384]);
  const dot = (a, b) => a.reduce((s, x, i) => s + x * b[i], 0);
  assert.ok(Math.abs(dot(v[0], v[0]) - 1) < 1e-4, "L2-normalised");
  assert.ok(dot(v[0], v[1]) > dot(v[0], v[2]) + 0.2, "similar sentences are closer");
  const f = await client.embeddings.create({ model: "minilm-l6", input: texts[0], encoding_format: "float" });
  assert.ok(f.data[0].embedding.every((x, i) => Math.abs(x - v[0][i]) < 1e-6), "float and base64 agree");
});

test("errors name the field", async () => {
  await assert.rejects(client.chat.completions.create({ ...question, top_p: 1.5 }), (e) => {
    assert.equal(e.status, 400);
    assert.equal(e.param, "top_p");
    return true;
  });
  await assert.rejects(client.embeddings.create({ model: "nope", input: "x" }), (e) => e.status === 404);
});
