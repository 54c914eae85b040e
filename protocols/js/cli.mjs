#!/usr/bin/env node
// Decodes batches to the golden JSON form of docs/batch-format-v1.md §7, one line per batch:
//   {"header": {...}, "points": [[sid, ts_ms, type, value, tq], ...]}   a batch
//   {"error": code, "gw": str|null, "seq": int|null}                    a malformed batch
//
//   node protocols/js/cli.mjs a.bin b.bin        each file one payload
//   node protocols/js/cli.mjs -                  stdin: payloads, each after its length
//                                                (4 bytes, big-endian)
// Exit status 0 when every payload was read (malformed batches included), 2 for a usage or
// input error (a file that cannot be read, stdin cut inside a payload).

import { readFileSync } from "node:fs";
import { goldenDoc } from "./decode.mjs";

/** JSON text of a golden doc; integers beyond 2^53 (BigInts) written exactly. */
function jsonText(value) {
  if (typeof value === "bigint") return value.toString();
  if (Array.isArray(value)) return `[${value.map(jsonText).join(",")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.entries(value)
      .map(([k, v]) => `${JSON.stringify(k)}:${jsonText(v)}`)
      .join(",")}}`;
  }
  return JSON.stringify(value);
}

function docText(doc) {
  if (!("points" in doc)) return jsonText(doc);
  // The points hold no BigInt: JSON.stringify writes them fast.
  return `{"header":${jsonText(doc.header)},"points":${JSON.stringify(doc.points)}}`;
}

function framed(input) {
  const out = [];
  let pos = 0;
  while (pos < input.length) {
    if (pos + 4 > input.length) throw new Error(`stdin ends inside a length prefix at byte ${pos}`);
    const len = input.readUInt32BE(pos);
    pos += 4;
    if (pos + len > input.length) throw new Error(`stdin ends inside a payload of ${len} bytes`);
    out.push(input.subarray(pos, pos + len));
    pos += len;
  }
  return out;
}

function main(args) {
  if (args.length === 0 || args.includes("-h") || args.includes("--help")) {
    process.stderr.write(
      "usage: node cli.mjs FILE.bin ...   or   node cli.mjs - < length-prefixed payloads\n",
    );
    return 2;
  }
  let payloads;
  try {
    payloads = args.length === 1 && args[0] === "-" ? framed(readFileSync(0)) : args.map((f) => readFileSync(f));
  } catch (e) {
    process.stderr.write(`cli.mjs: ${e.message}\n`);
    return 2;
  }
  for (const p of payloads) process.stdout.write(`${docText(goldenDoc(p))}\n`);
  return 0;
}

process.exitCode = main(process.argv.slice(2));
