// The contract for this decoder (docs/batch-format-v1.md §7): every golden vector decodes to
// its .json exactly, every malformed vector is refused with its error code, gw and seq; and a
// few batches built here with @msgpack/msgpack for rules the vectors leave to each decoder.
// Run: cd protocols/js && npm ci && npm test

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync, readdirSync } from "node:fs";
import { describe, test } from "node:test";
import { encode } from "@msgpack/msgpack";
import { BatchDecodeError, decodeBatch, goldenDoc } from "./decode.mjs";

const GOLDEN = new URL("../../tests/golden/", import.meta.url);
const MALFORMED = new URL("malformed/", GOLDEN);

const names = (dir) =>
  readdirSync(dir)
    .filter((f) => f.endsWith(".bin"))
    .map((f) => f.slice(0, -4))
    .sort();
const bin = (dir, name) => new Uint8Array(readFileSync(new URL(`${name}.bin`, dir)));
const json = (dir, name) => JSON.parse(readFileSync(new URL(`${name}.json`, dir), "utf8"));
/** BigInt-free header for comparison with a .json (every vector keeps numbers below 2^53). */
const plain = (header) => JSON.parse(JSON.stringify(header, (k, v) => (typeof v === "bigint" ? Number(v) : v)));

describe("golden vectors (tests/golden/*.bin)", () => {
  for (const name of names(GOLDEN)) {
    test(`${name} decodes to ${name}.json`, () => {
      const want = json(GOLDEN, name);
      const got = goldenDoc(bin(GOLDEN, name));
      assert.ok(!("error" in got), `refused: ${JSON.stringify(got)}`);
      assert.deepEqual(plain(got.header), want.header);
      if ("points" in want) {
        assert.deepEqual(got.points, want.points);
      } else {
        assert.equal(got.points.length, want.point_count);
        for (const [i, point] of want.points_at) assert.deepEqual(got.points[i], point, `point ${i}`);
      }
    });
  }

  test("every .bin is the one SHA256SUMS lists (a vector never changes)", () => {
    const listed = readFileSync(new URL("SHA256SUMS", GOLDEN), "utf8").trim().split("\n");
    for (const line of listed) {
      const [sum, path] = line.split(/\s+/);
      const digest = createHash("sha256").update(readFileSync(new URL(path, GOLDEN))).digest("hex");
      assert.equal(digest, sum, path);
    }
    assert.equal(listed.length, names(GOLDEN).length + names(MALFORMED).length);
  });
});

describe("malformed vectors (tests/golden/malformed/*.bin)", () => {
  for (const name of names(MALFORMED)) {
    test(`${name} is refused as ${json(MALFORMED, name).error}`, () => {
      const want = json(MALFORMED, name);
      assert.deepEqual(goldenDoc(bin(MALFORMED, name)), { error: want.error, gw: want.gw, seq: want.seq });
      assert.throws(
        () => decodeBatch(bin(MALFORMED, name)),
        (e) => e instanceof BatchDecodeError && e.code === want.error && e.gw === want.gw && e.seq === want.seq,
      );
    });
  }
});

describe("every golden vector, damaged at its ends (R1)", () => {
  for (const name of names(GOLDEN).filter((n) => n !== "largest")) {
    test(`${name} with one byte more, or one byte less, is not_msgpack with no gw or seq`, () => {
      const payload = bin(GOLDEN, name);
      const longer = Uint8Array.from([...payload, 0xc0]);
      const shorter = payload.subarray(0, payload.length - 1);
      for (const p of [longer, shorter]) {
        assert.deepEqual(goldenDoc(p), { error: "not_msgpack", gw: null, seq: null });
      }
    });
  }
});

describe("decodeBatch, the API for integrators", () => {
  test("the worked example (§8) gives Numbers, the IEEE bits and time qualities", () => {
    const { header, points } = decodeBatch(bin(GOLDEN, "meter_two_polls"));
    assert.equal(header.gw, "hk-cab-0142");
    assert.equal(header.seq, 41);
    assert.deepEqual(points[0], {
      sid: 1,
      ts: 1763800000000,
      type: "f32",
      value: 230.20001220703125,
      bits: "43663334",
      tq: 0,
    });
    assert.equal(points[7].type, "f64");
    assert.equal(points[7].value, 31422.5664);
    assert.equal(points.length, header.n);
  });

  test("u64 above 2^53 is a BigInt, small ints are Numbers, NaN keeps its bits", () => {
    const { points } = decodeBatch(bin(GOLDEN, "values"));
    assert.equal(points[1].value, 18446744073709551615n);
    assert.equal(points[3].value, -1);
    const nan = points.find((p) => p.bits === "ffc12345");
    assert.ok(Number.isNaN(nan.value));
  });

  test("a malformed batch throws BatchDecodeError naming the gateway and batch", () => {
    assert.throws(() => decodeBatch(bin(MALFORMED, "zstd_then_more")), {
      name: "BatchDecodeError",
      code: "zstd_trailing_bytes",
      gw: "gw-bad",
      seq: 77,
    });
  });
});

// ------------------------------------------------------------- batches built here, by rule

/**
 * One zstd frame of raw blocks (RFC 8878): single segment, content size in 8 bytes, a checksum
 * when given; `fhd` ORs more bits into the frame header descriptor, `dictId` adds a 1-byte id.
 */
function rawFrame(content, { checksum = null, declare = content.length, fhd = 0, dictId = null } = {}) {
  const out = [0x28, 0xb5, 0x2f, 0xfd, 0xe0 | (checksum ? 0x04 : 0) | (dictId === null ? 0 : 1) | fhd];
  if (dictId !== null) out.push(dictId);
  const fcs = new DataView(new ArrayBuffer(8));
  fcs.setBigUint64(0, BigInt(declare), true);
  out.push(...new Uint8Array(fcs.buffer));
  const BLOCK = 1 << 17;
  for (let at = 0; at === 0 || at < content.length; at += BLOCK) {
    const chunk = content.subarray(at, at + BLOCK);
    const last = at + BLOCK >= content.length ? 1 : 0;
    const bh = last | (chunk.length << 3);
    out.push(bh & 255, (bh >> 8) & 255, bh >> 16, ...chunk);
  }
  if (checksum) out.push(...checksum);
  return Uint8Array.from(out);
}

/** Series ids as the sids bin (§2.4): zigzagged differences, byte-shuffled. */
function sidsBin(ids) {
  const words = [];
  let prev = 0n;
  for (const id of ids.map(BigInt)) {
    const d = BigInt.asIntN(64, id - prev);
    words.push(BigInt.asUintN(64, (d << 1n) ^ (d >> 63n)));
    prev = id;
  }
  const out = new Uint8Array(8 * words.length);
  words.forEach((w, k) => {
    for (let b = 0; b < 8; b++) out[b * words.length + k] = Number((w >> BigInt(8 * b)) & 0xffn);
  });
  return out;
}

/** A str batch: each group [6, series, 1 sample, ts_mode], every value strings[0], t0 0. */
function strBody({ groups = [[1, 0]], ids = null, strings = ["x"], columns = null } = {}) {
  const rows = groups.reduce((s, [series]) => s + series, 0);
  const layout = groups.map(([series, mode]) => [6, series, 1, mode]);
  const sids = sidsBin(ids ?? Array.from({ length: rows }, (_, i) => i + 1));
  return encode([0, layout, sids, new Uint8Array(8 * groups.length), columns ?? [[6, new Uint8Array(4 * rows)]], strings]);
}

function strBatch({ strings = ["x"], header = {}, frame = rawFrame, body = strBody({ strings }) } = {}) {
  return encode(
    { v: 1, gw: "gw-js", seq: 1, boot: 1, created: 0, dropped: 0, n: 1, z: "zstd", body: frame(body), ...header },
    { useBigInt64: true, ignoreUndefined: true },
  );
}

const refused = (code) => ({ error: code, gw: "gw-js", seq: 1 });

describe("rules each decoder must keep, on batches built here", () => {
  test("a str keeps a leading U+FEFF (a BOM is a character, not a marker)", () => {
    const { points } = decodeBatch(strBatch({ strings: ["\ufeffđèn"] }));
    assert.equal(points[0].value, "\ufeffđèn");
  });

  test("arrays and maps nest at most 32 deep, in the header and in the body (§0, R1, R14)", () => {
    const nested = (arrays) => {
      const deep = new Uint8Array(arrays + 1).fill(0x91);
      deep[arrays] = 0xc0;
      return deep;
    };
    // payload is a fixmap (depth 1): one more entry, "zz" -> [[[...nil...]]]
    const grown = (arrays) => {
      const payload = strBatch();
      return Uint8Array.from([payload[0] + 1, ...payload.subarray(1), 0xa2, 0x7a, 0x7a, ...nested(arrays)]);
    };
    assert.equal(decodeBatch(grown(31)).points[0].value, "x"); // R9: ignored, at depth 32
    for (const arrays of [32, 1000, 100_000]) {
      assert.deepEqual(goldenDoc(grown(arrays)), { error: "not_msgpack", gw: null, seq: null });
    }
    // the body (depth 1) with a 30-deep array after strings: bad_body at 33, however deep
    const body = (arrays) => {
      const b = strBody();
      return Uint8Array.from([b[0] + 1, ...b.subarray(1), ...nested(arrays)]);
    };
    assert.deepEqual(goldenDoc(strBatch({ frame: () => rawFrame(body(31)) })), refused("bad_body")); // R14: 7th not a bin
    for (const arrays of [32, 1000, 100_000]) {
      assert.deepEqual(goldenDoc(strBatch({ frame: () => rawFrame(body(arrays)) })), refused("bad_body"));
    }
  });

  test("an ext -1 must be a msgpack timestamp; reserved ext types are kept (§0, R9)", () => {
    const payload = strBatch();
    const withExt = (ext) => Uint8Array.from([payload[0] + 1, ...payload.subarray(1), 0xa2, 0x7a, 0x7a, ...ext]);
    const ns = (n) => [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
    const good = [
      [0xd6, 0xff, 0, 0, 0, 1], // 32-bit seconds
      [0xd7, 0xff, ...ns(999_999_999 << 2), 0, 0, 0, 5], // 64-bit, nanoseconds 999,999,999
      [0xc7, 12, 0xff, ...ns(999_999_999), 255, 255, 255, 255, 255, 255, 255, 251], // 96-bit, -5 s
      [0xc7, 4, 0xff, 0, 0, 0, 1], // 32-bit seconds in an ext 8
      [0xd4, 0xee, 0], // reserved type -18
      [0xc7, 0, 0x80], // reserved type -128, empty
    ];
    for (const ext of good) assert.equal(decodeBatch(withExt(ext)).points[0].value, "x", ext.join(" "));
    const bad = [
      [0xd5, 0xff, 0, 1], // 2 bytes
      [0xc7, 0, 0xff], // 0 bytes
      [0xd7, 0xff, ...ns(1_000_000_000 << 2 >>> 0), 0, 0, 0, 5], // 64-bit, 10^9 ns
      [0xc7, 12, 0xff, ...ns(1_000_000_000), 0, 0, 0, 0, 0, 0, 0, 5], // 96-bit, 10^9 ns
    ];
    for (const ext of bad) {
      assert.deepEqual(goldenDoc(withExt(ext)), { error: "not_msgpack", gw: null, seq: null }, ext.join(" "));
    }
  });

  test("seq 2^63-1 and created -2^63 come back exactly, as BigInts", () => {
    const { header } = decodeBatch(strBatch({ header: { seq: 2n ** 63n - 1n, created: -(2n ** 63n) } }));
    assert.equal(header.seq, 2n ** 63n - 1n);
    assert.equal(header.created, -(2n ** 63n));
  });

  test("a frame whose content checksum is wrong is bad_zstd (R10)", () => {
    const payload = strBatch({ frame: (body) => rawFrame(body, { checksum: [1, 2, 3, 4] }) });
    assert.deepEqual(goldenDoc(payload), { error: "bad_zstd", gw: "gw-js", seq: 1 });
  });

  test("a frame declaring 0 bytes with a raw block of content is bad_zstd (R10)", () => {
    const payload = strBatch({ frame: (body) => rawFrame(body, { declare: 0 }) });
    assert.deepEqual(goldenDoc(payload), { error: "bad_zstd", gw: "gw-js", seq: 1 });
  });

  test("a frame declaring 0 bytes is bad_zstd even when it holds none (R10: no body is empty)", () => {
    const payload = strBatch({ frame: () => rawFrame(new Uint8Array(0)) });
    assert.deepEqual(goldenDoc(payload), { error: "bad_zstd", gw: "gw-js", seq: 1 });
  });

  test("v 1.0 (a float) is bad_header, v 2 is unsupported_version whatever else is wrong", () => {
    const float = encode({ v: 1.5, gw: "g", seq: 3 });
    assert.equal(goldenDoc(float).error, "bad_header");
    assert.deepEqual(goldenDoc(encode({ v: 2, gw: "g", seq: 3 })), { error: "unsupported_version", gw: "g", seq: 3 });
  });

  test("a dictionary str with an overlong or surrogate UTF-8 form is bad_body (§0)", () => {
    const body = encode([0, [[6, 1, 1, 0]], new Uint8Array([2, 0, 0, 0, 0, 0, 0, 0]), new Uint8Array(8), [[6, new Uint8Array(4)]], ["ab"]]);
    const at = Buffer.from(body).indexOf("ab") - 1; // the fixstr byte 0xa2, then "ab"
    for (const bad of [[0xc0, 0xaf], [0xed, 0xa0, 0x80]]) {
      const broken = Uint8Array.from([...body.subarray(0, at), 0xa0 | bad.length, ...bad, ...body.subarray(at + 3)]);
      const batch = strBatch({ frame: () => rawFrame(broken) });
      assert.deepEqual(goldenDoc(batch), { error: "bad_body", gw: "gw-js", seq: 1 });
    }
  });

  test("stage 1 in rule-number order: R4 before R7 and R8, a v not an int is bad_header (§6)", () => {
    assert.deepEqual(goldenDoc(strBatch({ header: { z: "gzip", boot: undefined } })), refused("bad_header"));
    assert.deepEqual(goldenDoc(strBatch({ header: { z: "gzip", n: 2_000_000 } })), refused("unsupported_compression"));
    assert.deepEqual(goldenDoc(strBatch({ header: { v: "1" } })), refused("bad_header"));
  });

  test("stage 2: the frame's bytes (R10) before R11, R12 and R13, decompression last (§6)", () => {
    const body = strBody();
    // no content size, not single segment (a window byte follows), one raw block
    const bh = 0x01 | (body.length << 3);
    const noSize = Uint8Array.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x00, bh & 255, (bh >> 8) & 255, bh >> 16, ...body]);
    assert.deepEqual(goldenDoc(strBatch({ frame: () => noSize })), refused("zstd_no_content_size"));
    assert.deepEqual(goldenDoc(strBatch({ frame: () => Uint8Array.from([...noSize, 0]) })), refused("zstd_no_content_size"));
    assert.deepEqual(goldenDoc(strBatch({ frame: () => noSize.subarray(0, noSize.length - 1) })), refused("bad_zstd"));
    const huge = rawFrame(body, { declare: 64 * 1024 * 1024 + 1 });
    assert.deepEqual(goldenDoc(strBatch({ frame: () => Uint8Array.from([...huge, 0]) })), refused("body_too_large"));
    assert.deepEqual(goldenDoc(strBatch({ frame: () => huge.subarray(0, huge.length - 1) })), refused("bad_zstd"));
    const wrong = rawFrame(body, { declare: body.length + 1 }); // whole, but another size
    assert.deepEqual(goldenDoc(strBatch({ frame: () => Uint8Array.from([...wrong, 0]) })), refused("zstd_trailing_bytes"));
    assert.deepEqual(goldenDoc(strBatch({ frame: () => wrong })), refused("bad_zstd"));
  });

  test("a frame naming a dictionary, or with its reserved bit set, is bad_zstd (R10)", () => {
    assert.deepEqual(goldenDoc(strBatch({ frame: (b) => rawFrame(b, { dictId: 7 }) })), refused("bad_zstd"));
    assert.deepEqual(goldenDoc(strBatch({ frame: (b) => rawFrame(b, { fhd: 0x08 }) })), refused("bad_zstd"));
  });

  test("stage 6 rule by rule over the batch, R18 before R21 whatever the group (§6)", () => {
    const body = strBody({ groups: [[1, 1], [1, 0], [2, 0]], ids: [5, 6, 9, 7] });
    assert.deepEqual(goldenDoc(strBatch({ body, header: { n: 4 } })), refused("sids_not_ascending"));
    const ascending = strBody({ groups: [[1, 1], [1, 0], [2, 0]], ids: [5, 6, 7, 9] });
    assert.deepEqual(goldenDoc(strBatch({ body: ascending, header: { n: 4 } })), refused("bad_ts_mode"));
  });

  test("column types compare as integers of any sign (R25, R26, R28)", () => {
    const four = new Uint8Array(4);
    const order = strBody({ columns: [[6, four], [-5, four]] });
    assert.deepEqual(goldenDoc(strBatch({ body: order })), refused("column_order"));
    const unused = strBody({ columns: [[-5, four], [6, four]] });
    assert.deepEqual(goldenDoc(strBatch({ body: unused })), refused("column_unused"));
  });

  test("stage 5 rule by rule over the entries: R26 before R27, R27 before R28 (§6)", () => {
    const four = new Uint8Array(4);
    const twiceThenOrder = strBody({ columns: [[6, four], [6, four], [1, four]] });
    assert.deepEqual(goldenDoc(strBatch({ body: twiceThenOrder })), refused("column_order"));
    const unusedThenTwice = strBody({ columns: [[1, four], [6, four], [6, four]] });
    assert.deepEqual(goldenDoc(strBatch({ body: unusedThenTwice })), refused("column_twice"));
  });

  test("a code point above U+10FFFF is not UTF-8, a noncharacter is (§0)", () => {
    const body = strBody({ strings: ["ab"] });
    const at = Buffer.from(body).indexOf("ab") - 1;
    const withStr = (bytes) => Uint8Array.from([...body.subarray(0, at), 0xa0 | bytes.length, ...bytes, ...body.subarray(at + 3)]);
    assert.deepEqual(goldenDoc(strBatch({ body: withStr([0xf4, 0x90, 0x80, 0x80]) })), refused("bad_body"));
    assert.equal(decodeBatch(strBatch({ body: withStr([0xef, 0xbf, 0xbe]) })).points[0].value, "\ufffe");
  });
});
