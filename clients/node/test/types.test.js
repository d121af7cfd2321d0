// The hand-written types (src/index.d.ts) checked by tsc against a typed example that uses
// the package by its name, as an application would (test/types/example.ts), including
// mistakes the types must refuse. Needs `npm ci` here (typescript, a devDependency).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

const root = fileURLToPath(new URL("..", import.meta.url));
const tsc = fileURLToPath(new URL("../node_modules/typescript/bin/tsc", import.meta.url));

test("the types compile a typed example and refuse its mistakes (tsc --noEmit)", () => {
  assert.ok(existsSync(tsc), `typescript is not installed: run npm ci in ${root} (scripts/test.sh does)`);
  try {
    execFileSync(process.execPath, [tsc, "-p", "test/types/tsconfig.json"], { cwd: root, encoding: "utf8" });
  } catch (e) {
    assert.fail(`tsc found errors:\n${e.stdout}${e.stderr}`);
  }
});
