// cli.mjs, the bridge the Python tests call (tests/batch_decoders.py): payloads in, one line of
// golden JSON (docs/batch-format-v1.md §7) out per payload, in order.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { encode } from "@msgpack/msgpack";

const CLI = fileURLToPath(new URL("cli.mjs", import.meta.url));
const GOLDEN = new URL("../../tests/golden/", import.meta.url);

function run(args, input) {
  const r = spawnSync(process.execPath, [CLI, ...args], { input, maxBuffer: 1 << 28 });
  return { status: r.status, lines: r.stdout.toString().split("\n").filter(Boolean), stderr: r.stderr.toString() };
}

function framed(payloads) {
  return Buffer.concat(
    payloads.flatMap((p) => {
      const len = Buffer.alloc(4);
      len.writeUInt32BE(p.length);
      return [len, p];
    }),
  );
}

test("cli: length-prefixed payloads on stdin give one golden line each, in order", () => {
  const good = readFileSync(new URL("time_qualities.bin", GOLDEN));
  const bad = readFileSync(new URL("malformed/sids_descending.bin", GOLDEN));
  const r = run(["-"], framed([good, bad, good]));
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.lines.length, 3);
  const want = JSON.parse(readFileSync(new URL("time_qualities.json", GOLDEN), "utf8"));
  const doc = JSON.parse(r.lines[0]);
  assert.deepEqual(doc, { header: want.header, points: want.points });
  assert.deepEqual(JSON.parse(r.lines[1]), { error: "sids_not_ascending", gw: "gw-bad", seq: 77 });
  assert.equal(r.lines[2], r.lines[0]);
});

test("cli: a seq of 2^63-1 is written as its exact decimal digits", () => {
  const payload = encode({ v: 2, gw: "g", seq: 2n ** 63n - 1n }, { useBigInt64: true });
  const r = run(["-"], framed([payload]));
  assert.equal(r.lines[0], '{"error":"unsupported_version","gw":"g","seq":9223372036854775807}');
});

test("cli: stdin cut inside a payload is a usage error (exit 2), not a batch", () => {
  const r = run(["-"], Buffer.from([0, 0, 0, 9, 1, 2]));
  assert.equal(r.status, 2);
  assert.match(r.stderr, /ends inside a payload of 9 bytes/);
  assert.deepEqual(r.lines, []);
});

test("cli: files as arguments, each one payload", () => {
  const path = fileURLToPath(new URL("empty_dropped.bin", GOLDEN));
  const r = run([path, path]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.lines.length, 2);
  assert.equal(JSON.parse(r.lines[0]).header.dropped, 500);
});
