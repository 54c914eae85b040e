// Decoder of the gateway's MQTT batch format v1 (contract v1.1), written from
// docs/batch-format-v1.md alone. Section and rule numbers (§2.5, R20) are that page's.
//
//   import { decodeBatch, BatchDecodeError } from "./decode.mjs";
//   const { header, points } = decodeBatch(payload);   // payload: a Uint8Array (or Buffer)
//
// A malformed batch throws BatchDecodeError with the spec's error `code` (§6) and the `gw` and
// `seq` the header gives (null when it does not give them). Nothing of a malformed batch is
// returned.

import { MsgFloat, MsgMap, MsgpackError, readOne } from "./msgpack.mjs";
import { FrameFault, decompressFrame } from "./zstd.mjs";

export const MAX_POINTS = 1_000_000; // R8
export const TYPES = [null, "f32", "f64", "i64", "u64", "bool", "str"]; // layout type codes, R15
export const TIME_QUALITIES = ["good", "corrected", "uncertain"]; // tq 0, 1, 2 (§2.5)

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** A malformed batch: `code` is the error code of docs/batch-format-v1.md §6. */
export class BatchDecodeError extends Error {
  /**
   * @param {string} code  the spec's error code, e.g. "bad_zstd"
   * @param {string} reason  what is wrong, in words
   * @param {string|null} gw  the gateway id, when the header gives it (§6)
   * @param {number|bigint|null} seq  the batch number, when the header gives it (§6)
   */
  constructor(code, reason, gw = null, seq = null) {
    super(`${code}: ${reason}`);
    this.name = "BatchDecodeError";
    this.code = code;
    this.reason = reason;
    this.gw = gw;
    this.seq = seq;
  }
}

class Fault extends Error {
  constructor(code, reason) {
    super(reason);
    this.code = code;
  }
}

const isInt = (x) => typeof x === "number" || typeof x === "bigint";
const inRange = (x, lo, hi) => isInt(x) && x >= lo && x <= hi;
const exact = (big) => (big >= -SAFE && big <= SAFE ? Number(big) : big);

// --------------------------------------------------------------------------------- header, §1

/** The gw and seq a payload's header gives (§6), whatever else is wrong with it. */
function naming(map) {
  let gw = null;
  let seq = null;
  for (let i = 0; i < map.keys.length; i++) {
    const k = map.keys[i];
    const v = map.values[i];
    if (k === "gw") gw = typeof v === "string" ? v : null;
    if (k === "seq") seq = inRange(v, 0, INT64_MAX) ? v : null;
  }
  return { gw, seq };
}

function checkHeader(map) {
  const fields = new Map();
  for (let i = 0; i < map.keys.length; i++) {
    const k = map.keys[i];
    if (typeof k !== "string") throw new Fault("bad_header", "a header key is not a str (R2)");
    if (fields.has(k)) throw new Fault("bad_header", `the header key ${JSON.stringify(k)} appears twice (R2)`);
    fields.set(k, map.values[i]);
  }
  if (fields.has("v") && isInt(fields.get("v")) && fields.get("v") != 1) {
    throw new Fault("unsupported_version", `format version ${fields.get("v")}, this decoder reads 1 (R3)`);
  }
  const need = (key, ok, what) => {
    if (!fields.has(key)) throw new Fault("bad_header", `the header has no ${key} (R4)`);
    const v = fields.get(key);
    if (!ok(v)) throw new Fault("bad_header", `${key} is not ${what} (R4)`);
    return v;
  };
  const v = need("v", isInt, "an int");
  const gw = need("gw", (x) => typeof x === "string", "a str");
  const seq = need("seq", (x) => inRange(x, 0, INT64_MAX), "an int from 0 to 2^63-1");
  const boot = need("boot", (x) => inRange(x, 1, INT64_MAX), "an int from 1 to 2^63-1");
  const created = need("created", (x) => inRange(x, INT64_MIN, INT64_MAX), "an int64");
  const dropped = need("dropped", (x) => inRange(x, 0, INT64_MAX), "an int from 0 to 2^63-1");
  const n = need("n", (x) => isInt(x) && x >= 0, "an int from 0 to 1,000,000");
  const z = need("z", (x) => typeof x === "string", "a str");
  const body = need("body", (x) => x instanceof Uint8Array, "a bin");
  let part = [];
  if (fields.has("part")) {
    part = fields.get("part");
    if (!Array.isArray(part) || part.length < 1 || part.length > 64 || !part.every((x) => x === 1 || x === 2)) {
      throw new Fault("bad_header", "part is not an array of 1 to 64 ints, each 1 or 2 (R5)");
    }
  }
  const droppedWhy = [];
  if (fields.has("dropped_why")) {
    const why = fields.get("dropped_why");
    if (!(why instanceof MsgMap) || why.keys.length > 64) {
      throw new Fault("bad_header", "dropped_why is not a map of at most 64 entries (R6)");
    }
    const seen = new Set();
    let sum = 0n;
    for (let i = 0; i < why.keys.length; i++) {
      const k = why.keys[i];
      const count = why.values[i];
      if (typeof k !== "string" || seen.has(k)) {
        throw new Fault("bad_header", "a dropped_why reason is not a str, or appears twice (R6)");
      }
      if (!inRange(count, 0, INT64_MAX)) {
        throw new Fault("bad_header", `the dropped_why count of ${JSON.stringify(k)} is not an int from 0 to 2^63-1 (R6)`);
      }
      seen.add(k);
      sum += BigInt(count);
      droppedWhy.push([k, count]);
    }
    if (sum > BigInt(dropped)) {
      throw new Fault("bad_header", `the dropped_why counts add up to ${sum}, more than dropped ${dropped} (R6)`);
    }
  }
  if (z !== "zstd") throw new Fault("unsupported_compression", `compression ${JSON.stringify(z)}, not "zstd" (R7)`);
  if (n > MAX_POINTS) throw new Fault("too_many_points", `n ${n} is above ${MAX_POINTS} (R8)`);
  return {
    header: {
      v,
      gw,
      seq,
      boot,
      created,
      dropped,
      n,
      part: [...part],
      dropped_why: Object.fromEntries(droppedWhy),
    },
    body,
  };
}

// ------------------------------------------------------------------------------- body, §2.2

/** Byte planes back to words (§2.8): `count` words of `size` bytes, each LE in the result. */
function unshuffle(bytes, count, size) {
  const out = new Uint8Array(count * size);
  for (let b = 0; b < size; b++) {
    const plane = bytes.subarray(b * count, (b + 1) * count);
    for (let k = 0, o = b; k < count; k++, o += size) out[o] = plane[k];
  }
  return new DataView(out.buffer);
}

const unzigzag64 = (u) => (u >> 1n) ^ -(u & 1n);
const unzigzag32 = (u) => (u >>> 1) ^ -(u & 1);

function checkBody(bytes, n) {
  let body;
  try {
    body = readOne(bytes);
  } catch (e) {
    if (e instanceof MsgpackError) throw new Fault("bad_body", `the body is not one msgpack value: ${e.message} (R14)`);
    throw e;
  }
  if (!Array.isArray(body) || (body.length !== 6 && body.length !== 7)) {
    throw new Fault("bad_body", "the body is not an array of six or seven elements (R14)");
  }
  const [t0, layout, sids, ts, columns, strings, tq] = body;
  const bad = (what) => new Fault("bad_body", `${what} (R14)`);
  if (!inRange(t0, INT64_MIN, INT64_MAX)) throw bad("t0 is not an int64");
  if (!Array.isArray(layout)) throw bad("layout is not an array");
  if (!(sids instanceof Uint8Array)) throw bad("sids is not a bin");
  if (!(ts instanceof Uint8Array)) throw bad("ts is not a bin");
  if (!Array.isArray(columns)) throw bad("columns is not an array");
  if (!Array.isArray(strings) || !strings.every((s) => typeof s === "string")) {
    throw bad("strings is not an array of str");
  }
  if (body.length === 7 && !(tq instanceof Uint8Array)) throw bad("tq is not a bin");

  const groups = layout.map((entry, i) => {
    if (
      !Array.isArray(entry) ||
      entry.length !== 4 ||
      !inRange(entry[0], 1, 6) ||
      !inRange(entry[1], 1, MAX_POINTS) ||
      !inRange(entry[2], 1, MAX_POINTS) ||
      !(entry[3] === 0 || entry[3] === 1)
    ) {
      throw new Fault("bad_layout", `layout entry ${i} is not [type 1-6, series, samples, ts_mode 0-1] (R15)`);
    }
    const [type, series, samples, tsMode] = entry;
    return { type, series, samples, tsMode };
  });
  let points = 0;
  for (const g of groups) {
    points += g.series * g.samples;
    if (points > n) break;
  }
  if (points !== n) throw new Fault("points_mismatch", `the layout has ${points > n ? "more than " : ""}${points} points, the header says n ${n} (R16)`);
  return { t0: BigInt(t0), groups, sids, ts, columns, strings, tq: body.length === 7 ? tq : null };
}

function checkSizes(b) {
  const rows = b.groups.reduce((s, g) => s + g.series, 0);
  const stamps = b.groups.reduce((s, g) => s + g.samples, 0);
  if (b.sids.length !== 8 * rows) throw new Fault("bad_sids", `sids is ${b.sids.length} bytes, not 8 x ${rows} (R17)`);
  if (b.ts.length !== 8 * stamps) throw new Fault("bad_ts", `ts is ${b.ts.length} bytes, not 8 x ${stamps} (R19)`);
  if (b.tq !== null) {
    if (b.tq.length !== stamps) throw new Fault("bad_tq", `tq is ${b.tq.length} bytes, not ${stamps} (R23)`);
    const i = b.tq.findIndex((q) => q > 2);
    if (i >= 0) throw new Fault("bad_tq", `time quality ${b.tq[i]} at ${i} is not 0, 1 or 2 (R23)`);
  }
  return { rows, stamps };
}

const WIDTH = { 1: 4, 2: 8, 3: 8, 4: 8, 5: 0, 6: 4 };

function checkColumns(b) {
  for (const [i, c] of b.columns.entries()) {
    if (!Array.isArray(c) || c.length !== 2 || !isInt(c[0]) || !(c[1] instanceof Uint8Array)) {
      throw new Fault("bad_columns", `column entry ${i} is not [int, bin] (R25)`);
    }
  }
  const types = b.columns.map((c) => c[0]);
  for (let i = 1; i < types.length; i++) {
    if (types[i] < types[i - 1]) throw new Fault("column_order", `column type ${types[i]} after ${types[i - 1]} (R26)`);
  }
  for (let i = 1; i < types.length; i++) {
    if (types[i] == types[i - 1]) throw new Fault("column_twice", `two columns of type ${types[i]} (R27)`);
  }
  const used = new Map(); // type code -> {rows, points}
  for (const g of b.groups) {
    const u = used.get(g.type) ?? { rows: 0, points: 0 };
    u.rows += g.series;
    u.points += g.series * g.samples;
    used.set(g.type, u);
  }
  for (const t of types) {
    if (!used.has(Number(t)) || !(t >= 1 && t <= 6)) throw new Fault("column_unused", `a column of type ${t}, which no group has (R28)`);
  }
  const byType = new Map(b.columns.map(([t, bin]) => [Number(t), bin]));
  for (const t of [...used.keys()].sort()) {
    if (!byType.has(t)) throw new Fault("column_missing", `no column for type ${t} (${TYPES[t]}) (R29)`);
  }
  for (const [t, u] of used) {
    const bin = byType.get(t);
    const want = t === 5 ? Math.ceil(u.points / 8) : u.points * WIDTH[t];
    if (bin.length !== want) {
      throw new Fault("column_size", `the ${TYPES[t]} column is ${bin.length} bytes, not ${want} (R30)`);
    }
  }
  return { used, byType };
}

// ----------------------------------------------------------------------- contents, §2.4-§2.7

/** Series ids, one per row of every group in layout order (R17, R18). */
function seriesIds(b, rows) {
  const words = unshuffle(b.sids, rows, 8);
  const out = new BigInt64Array(rows); // stores modulo 2^64, reads as int64
  let sid = 0n;
  for (let k = 0; k < rows; k++) {
    sid = BigInt.asIntN(64, sid + unzigzag64(words.getBigUint64(8 * k, true)));
    out[k] = sid;
  }
  let k = 0;
  for (const [i, g] of b.groups.entries()) {
    for (let r = 1; r < g.series; r++) {
      if (out[k + r] <= out[k + r - 1]) {
        throw new Fault("sids_not_ascending", `group ${i}: series id ${out[k + r]} after ${out[k + r - 1]} (R18)`);
      }
    }
    k += g.series;
  }
  return out;
}

/** Timestamps, one per sample of every group in layout order (R19-R22). */
function timestamps(b, stamps) {
  const words = unshuffle(b.ts, stamps, 8);
  const offsets = new BigInt64Array(stamps);
  const out = new BigInt64Array(stamps);
  let k = 0;
  let prev = -1; // the start of the previous group's offsets
  for (const [i, g] of b.groups.entries()) {
    if (g.tsMode === 1) {
      if (i === 0) throw new Fault("bad_ts_mode", "the first group is in ts_mode 1 (R21)");
      const before = b.groups[i - 1];
      if (before.samples !== g.samples) {
        throw new Fault("bad_ts_mode", `group ${i} in ts_mode 1 has ${g.samples} samples, the group before ${before.samples} (R21)`);
      }
      for (let s = 0; s < g.samples; s++) {
        offsets[k + s] = offsets[prev + s] + unzigzag64(words.getBigUint64(8 * (k + s), true));
      }
    } else {
      let d = 0n;
      let a = 0n;
      for (let s = 0; s < g.samples; s++) {
        d = BigInt.asIntN(64, d + unzigzag64(words.getBigUint64(8 * (k + s), true)));
        a = BigInt.asIntN(64, a + d);
        offsets[k + s] = a;
      }
    }
    for (let s = 0; s < g.samples; s++) out[k + s] = b.t0 + offsets[k + s];
    prev = k;
    k += g.samples;
  }
  return out;
}

/**
 * The value words of a numeric type (§2.7.1), in layout order, each group row by row, each
 * row sample by sample: a Uint32Array for f32, a BigUint64Array for the others.
 */
function numericWords(b, type, bin, rows, points) {
  const w = WIDTH[type];
  const firsts = unshuffle(bin.subarray(0, rows * w), rows, w);
  const rest = unshuffle(bin.subarray(rows * w), points - rows, w);
  const out = w === 4 ? new Uint32Array(points) : new BigUint64Array(points); // both wrap
  let fi = 0;
  let ri = 0;
  let o = 0;
  for (const g of b.groups) {
    if (g.type !== type) continue;
    let above = w === 4 ? 0 : 0n;
    for (let r = 0; r < g.series; r++) {
      if (w === 4) {
        let x = (above + unzigzag32(firsts.getUint32(4 * fi++, true))) >>> 0;
        above = x;
        out[o++] = x;
        for (let s = 1; s < g.samples; s++) {
          x = (x + unzigzag32(rest.getUint32(4 * ri++, true))) >>> 0;
          out[o++] = x;
        }
      } else {
        out[o] = above + unzigzag64(firsts.getBigUint64(8 * fi++, true));
        above = out[o++];
        for (let s = 1; s < g.samples; s++, o++) {
          out[o] = out[o - 1] + unzigzag64(rest.getBigUint64(8 * ri++, true));
        }
      }
    }
  }
  return out;
}

function boolValues(bin, count) {
  for (let k = count; k < 8 * bin.length; k++) {
    if ((bin[k >> 3] >> (7 - (k & 7))) & 1) {
      throw new Fault("bool_padding", `padding bit ${k - count} of the bool column is set (R32)`);
    }
  }
  const out = new Array(count);
  for (let k = 0; k < count; k++) out[k] = ((bin[k >> 3] >> (7 - (k & 7))) & 1) === 1;
  return out;
}

function stringValues(bin, count, strings) {
  const words = unshuffle(bin, count, 4);
  const out = new Array(count);
  for (let k = 0; k < count; k++) {
    const i = words.getUint32(4 * k, true);
    if (i >= strings.length) {
      throw new Fault("string_index", `str index ${i} is past the dictionary of ${strings.length} (R33)`);
    }
    out[k] = strings[i];
  }
  return out;
}

/**
 * The batch as columns: its header and its groups, each
 * {type, series: BigInt64Array, ts: BigInt64Array, tq: Uint8Array, values}, where values is
 * the group's matrix row by row (Uint32Array of f32 words, BigUint64Array of 64-bit words,
 * an Array of booleans or strings). Throws BatchDecodeError.
 */
export function decodeColumns(payload) {
  const bytes = payload instanceof Uint8Array ? payload : new Uint8Array(payload);
  let map;
  try {
    map = readOne(bytes);
  } catch (e) {
    if (e instanceof MsgpackError) throw new BatchDecodeError("not_msgpack", `the payload is not one msgpack value: ${e.message} (R1)`);
    throw e;
  }
  if (!(map instanceof MsgMap)) throw new BatchDecodeError("bad_header", "the payload is not a msgpack map (R2)");
  const { gw, seq } = naming(map);
  try {
    const { header, body } = checkHeader(map);
    const raw = decompressFrame(body);
    const b = checkBody(raw, header.n);
    const { rows, stamps } = checkSizes(b);
    const { used, byType } = checkColumns(b);
    const sids = seriesIds(b, rows);
    const ts = timestamps(b, stamps);
    const values = new Map();
    if (used.has(5)) values.set(5, boolValues(byType.get(5), used.get(5).points));
    if (used.has(6)) values.set(6, stringValues(byType.get(6), used.get(6).points, b.strings));
    for (const t of [1, 2, 3, 4]) {
      if (used.has(t)) values.set(t, numericWords(b, t, byType.get(t), used.get(t).rows, used.get(t).points));
    }
    const tq = b.tq ?? new Uint8Array(stamps);
    const groups = [];
    const cursor = new Map([...used.keys()].map((t) => [t, 0]));
    let row = 0;
    let stamp = 0;
    for (const g of b.groups) {
      const at = cursor.get(g.type);
      const size = g.series * g.samples;
      cursor.set(g.type, at + size);
      groups.push({
        type: TYPES[g.type],
        series: sids.subarray(row, row + g.series),
        ts: ts.subarray(stamp, stamp + g.samples),
        tq: tq.subarray(stamp, stamp + g.samples),
        values: values.get(g.type).slice(at, at + size),
      });
      row += g.series;
      stamp += g.samples;
    }
    return { header, groups };
  } catch (e) {
    if (e instanceof Fault || e instanceof FrameFault) throw new BatchDecodeError(e.code, e.message, gw, seq);
    throw e;
  }
}

// ------------------------------------------------------------------------------ the points

const scratch = new DataView(new ArrayBuffer(8));

/** An f32 word as a Number (the float32 widened, exactly). */
export function f32Value(word) {
  scratch.setUint32(0, word);
  return scratch.getFloat32(0);
}

/** An f64 word (a BigInt) as a Number. */
export function f64Value(word) {
  scratch.setBigUint64(0, word);
  return scratch.getFloat64(0);
}

/**
 * Decodes one batch (an MQTT payload on .../data) to {header, points}.
 *
 * header: {v, gw, seq, boot, created, dropped, n, part, dropped_why}, as §1 names them;
 *   `part` is [] and `dropped_why` {} when the batch has none.
 * points: in the order of §2.6, each {sid, ts, type, value, tq}:
 *   sid   the series id (resolve it through the gateway's birth, §3)
 *   ts    ms since the Unix epoch
 *   type  "f32", "f64", "i64", "u64", "bool" or "str" (the column it travelled in)
 *   value a Number for f32 and f64 (NaN and infinities included), a Number or a BigInt for
 *         i64 and u64, a boolean, or a string
 *   bits  f32 and f64 only: the IEEE word in lowercase hex (8 or 16 digits), which keeps a
 *         NaN's sign and payload that a Number may not
 *   tq    0 good, 1 corrected, 2 uncertain (§2.5)
 * Integers (header numbers, sid, ts, i64 and u64 values) are Numbers when they are safe
 * integers (|x| <= 2^53 - 1; a gateway's times and ids always are) and BigInts beyond, so
 * each is exact.
 *
 * @param {Uint8Array} payload
 * @returns {{header: object, points: object[]}}
 * @throws {BatchDecodeError} a malformed batch, with the spec's `code`, `gw` and `seq`
 */
export function decodeBatch(payload) {
  const { header, groups } = decodeColumns(payload);
  const points = [];
  for (const g of groups) {
    const ts = Array.from(g.ts, exact);
    const n = g.ts.length;
    for (let r = 0; r < g.series.length; r++) {
      const sid = exact(g.series[r]);
      for (let s = 0; s < n; s++) {
        const word = g.values[r * n + s];
        const p = { sid, ts: ts[s], type: g.type, value: word, tq: g.tq[s] };
        if (g.type === "f32") {
          p.value = f32Value(word);
          p.bits = word.toString(16).padStart(8, "0");
        } else if (g.type === "f64") {
          p.value = f64Value(word);
          p.bits = word.toString(16).padStart(16, "0");
        } else if (g.type === "i64") {
          p.value = exact(BigInt.asIntN(64, word));
        } else if (g.type === "u64") {
          p.value = exact(word);
        }
        points.push(p);
      }
    }
  }
  return { header, points };
}

/**
 * The golden JSON form of docs/batch-format-v1.md §7 for one payload:
 * {header, points: [[sid, ts_ms, type, value, tq], ...]} or {error, gw, seq}.
 * Header numbers may be BigInts beyond 2^53 (toJSON in cli.mjs writes them exactly).
 */
export function goldenDoc(payload) {
  let decoded;
  try {
    decoded = decodeColumns(payload);
  } catch (e) {
    if (e instanceof BatchDecodeError) return { error: e.code, gw: e.gw, seq: e.seq };
    throw e;
  }
  const { header, groups } = decoded;
  const points = [];
  for (const g of groups) {
    const ts = Array.from(g.ts, String);
    const n = g.ts.length;
    for (let r = 0; r < g.series.length; r++) {
      const sid = String(g.series[r]);
      for (let s = 0; s < n; s++) {
        let value = g.values[r * n + s];
        if (g.type === "f32") value = value.toString(16).padStart(8, "0");
        else if (g.type === "f64") value = value.toString(16).padStart(16, "0");
        else if (g.type === "i64") value = String(BigInt.asIntN(64, value));
        else if (g.type === "u64") value = String(value);
        points.push([sid, ts[s], g.type, value, g.tq[s]]);
      }
    }
  }
  return { header, points };
}
