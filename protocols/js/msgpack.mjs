// A strict MessagePack reader for the batch format (docs/batch-format-v1.md §0).
//
// General msgpack libraries hide what the format's checks need: they turn 1.0 into 1, let a
// later duplicate key overwrite an earlier one, turn str keys and int keys into the same
// object property, and replace bytes that are not UTF-8 with U+FFFD. This reader keeps every
// distinction:
//
//   int         a Number when it is a safe integer (|x| <= 2^53 - 1), else a BigInt
//   float       a MsgFloat (so 1.0 is never an int)
//   str         a string; the bytes must be UTF-8 (RFC 3629: no overlong forms, no
//               surrogates, nothing above U+10FFFF), else MsgpackError
//   bin         a Uint8Array (a view of the input, not a copy)
//   array       an Array
//   map         a MsgMap: its keys and values in wire order, duplicates kept
//   ext         a MsgExt; type -1 (msgpack's timestamp) must be one: 4, 8 or 12 bytes,
//               nanoseconds below 10^9; the reserved types -128 to -2 are kept as they are
//   nil, bool   null, true, false
//
// Arrays and maps nest at most MAX_DEPTH deep (§0: the outermost is depth 1): a deeper one is
// not msgpack to the format, so the reader's recursion stays shallow.

export const MAX_DEPTH = 32;

/**
 * The bytes are not exactly msgpack as §0 defines it: truncated, a reserved byte (0xc1), a str
 * not UTF-8, a timestamp that is not one, or arrays and maps nested deeper than MAX_DEPTH.
 */
export class MsgpackError extends Error {}

export class MsgFloat {
  constructor(value) {
    this.value = value;
  }
}

export class MsgMap {
  constructor(keys, values) {
    this.keys = keys;
    this.values = values;
  }
}

export class MsgExt {
  constructor(type, data) {
    this.type = type;
    this.data = data;
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const SAFE = BigInt(Number.MAX_SAFE_INTEGER);

function intValue(big) {
  return big >= -SAFE && big <= SAFE ? Number(big) : big;
}

/** Reads msgpack values from `bytes` (a Uint8Array), from `pos` on. */
export class Reader {
  constructor(bytes) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }

  /** True when every byte was read. */
  get atEnd() {
    return this.pos === this.bytes.length;
  }

  need(n) {
    if (n > this.bytes.length - this.pos) {
      throw new MsgpackError(`cut short: ${n} more bytes needed at byte ${this.pos}`);
    }
  }

  u8() {
    this.need(1);
    return this.bytes[this.pos++];
  }

  u16() {
    this.need(2);
    const v = this.view.getUint16(this.pos);
    this.pos += 2;
    return v;
  }

  u32() {
    this.need(4);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  take(n) {
    this.need(n);
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  str(n) {
    const raw = this.take(n);
    try {
      return utf8.decode(raw);
    } catch {
      throw new MsgpackError(`a str of ${n} bytes at byte ${this.pos - n} is not UTF-8`);
    }
  }

  /** The length of an array or map: each element takes at least one byte. */
  count(n, perItem) {
    this.need(n * perItem);
    return n;
  }

  /** One value. */
  read(depth = 0) {
    const b = this.u8();
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return b - 0x100;
    if (b >= 0x80 && b <= 0x8f) return this.map(b & 0x0f, depth);
    if (b >= 0x90 && b <= 0x9f) return this.array(b & 0x0f, depth);
    if (b >= 0xa0 && b <= 0xbf) return this.str(b & 0x1f);
    const v = this.view;
    let p;
    switch (b) {
      case 0xc0:
        return null;
      case 0xc2:
        return false;
      case 0xc3:
        return true;
      case 0xc4:
        return this.take(this.u8());
      case 0xc5:
        return this.take(this.u16());
      case 0xc6:
        return this.take(this.u32());
      case 0xc7:
        return this.ext(this.u8());
      case 0xc8:
        return this.ext(this.u16());
      case 0xc9:
        return this.ext(this.u32());
      case 0xca:
        this.need(4);
        p = this.pos;
        this.pos += 4;
        return new MsgFloat(v.getFloat32(p));
      case 0xcb:
        this.need(8);
        p = this.pos;
        this.pos += 8;
        return new MsgFloat(v.getFloat64(p));
      case 0xcc:
        return this.u8();
      case 0xcd:
        return this.u16();
      case 0xce:
        return this.u32();
      case 0xcf:
        this.need(8);
        p = this.pos;
        this.pos += 8;
        return intValue(v.getBigUint64(p));
      case 0xd0:
        this.need(1);
        return v.getInt8(this.pos++);
      case 0xd1:
        this.need(2);
        p = this.pos;
        this.pos += 2;
        return v.getInt16(p);
      case 0xd2:
        this.need(4);
        p = this.pos;
        this.pos += 4;
        return v.getInt32(p);
      case 0xd3:
        this.need(8);
        p = this.pos;
        this.pos += 8;
        return intValue(v.getBigInt64(p));
      case 0xd4:
        return this.ext(1);
      case 0xd5:
        return this.ext(2);
      case 0xd6:
        return this.ext(4);
      case 0xd7:
        return this.ext(8);
      case 0xd8:
        return this.ext(16);
      case 0xd9:
        return this.str(this.u8());
      case 0xda:
        return this.str(this.u16());
      case 0xdb:
        return this.str(this.u32());
      case 0xdc:
        return this.array(this.u16(), depth);
      case 0xdd:
        return this.array(this.u32(), depth);
      case 0xde:
        return this.map(this.u16(), depth);
      case 0xdf:
        return this.map(this.u32(), depth);
      default: // 0xc1, the one byte msgpack never uses
        throw new MsgpackError(`byte 0x${b.toString(16)} at byte ${this.pos - 1} is not msgpack`);
    }
  }

  ext(n) {
    const at = this.pos; // the type byte
    const type = this.u8();
    const data = this.take(n);
    if (type === 0xff) checkTimestamp(data, at);
    return new MsgExt(type > 127 ? type - 256 : type, data);
  }

  /** `depth` arrays and maps hold the one starting here (0 for the outermost). */
  nest(depth) {
    if (depth >= MAX_DEPTH) {
      throw new MsgpackError(`arrays and maps nested more than ${MAX_DEPTH} deep at byte ${this.pos}`);
    }
  }

  array(n, depth) {
    this.nest(depth);
    this.count(n, 1);
    const out = new Array(n);
    for (let i = 0; i < n; i++) out[i] = this.read(depth + 1);
    return out;
  }

  map(n, depth) {
    this.nest(depth);
    this.count(n, 2);
    const keys = new Array(n);
    const values = new Array(n);
    for (let i = 0; i < n; i++) {
      keys[i] = this.read(depth + 1);
      values[i] = this.read(depth + 1);
    }
    return new MsgMap(keys, values);
  }
}

/**
 * An ext of type -1 is msgpack's timestamp: 4 bytes (seconds), 8 (30 bits of nanoseconds, 34
 * of seconds) or 12 (4 of nanoseconds, 8 of seconds), nanoseconds at most 999,999,999.
 */
function checkTimestamp(data, at) {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let nanos = 0;
  if (data.length === 8) nanos = view.getUint32(0) >>> 2;
  else if (data.length === 12) nanos = view.getUint32(0);
  else if (data.length !== 4) {
    throw new MsgpackError(`a timestamp (ext -1) of ${data.length} bytes at byte ${at}, not 4, 8 or 12`);
  }
  if (nanos > 999_999_999) {
    throw new MsgpackError(`a timestamp (ext -1) at byte ${at} with ${nanos} nanoseconds`);
  }
}

/** Reads `bytes` as exactly one msgpack value; MsgpackError if it is not, or bytes follow. */
export function readOne(bytes) {
  const r = new Reader(bytes);
  const value = r.read();
  if (!r.atEnd) {
    throw new MsgpackError(`${bytes.length - r.pos} bytes after the value`);
  }
  return value;
}
