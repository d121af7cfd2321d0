// The README's five-line example, run as it is written (only the API's URL is replaced by
// the test resource server's), in a node of its own that imports the package by its name.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

import { env } from "./helpers.js";

const root = fileURLToPath(new URL("..", import.meta.url));

test("the README's first example reaches the resource server", () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const example = /```js\n([\s\S]*?)```/.exec(readme)?.[1];
  assert.ok(example, "the README starts with a js example");
  assert.equal(example.trim().split("\n").length, 5, "five lines");
  const resource = env("DPOP_TEST_RESOURCE");
  const script = example.replace("https://api.example.com", resource);
  const out = execFileSync(process.execPath, ["--input-type=module", "--eval", script], {
    cwd: root,
    encoding: "utf8",
    env: { ...process.env, API_TOKEN: env("DPOP_TEST_TOKEN") },
  });
  assert.match(out, /^200 \{/);
  assert.match(out, /path: '\/v1\/items'/);
  assert.match(out, new RegExp(`jkt: '${env("DPOP_TEST_JKT")}'`));
});
