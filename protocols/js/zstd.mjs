// The body's zstd frame (docs/batch-format-v1.md §2.1, R10-R13), checked before and after
// decompression. Decompression itself is the reference libzstd, compiled to WebAssembly
// (npm `zstddec`): it verifies the content checksum when a frame has one, and refuses a frame
// whose blocks give more or fewer bytes than its header declares.

import { ZSTDDecoder } from "zstddec";

export const MAX_CONTENT_SIZE = 64 * 1024 * 1024; // R12: 67,108,864 bytes

const MAGIC = [0x28, 0xb5, 0x2f, 0xfd];
const DICT_ID_BYTES = [0, 1, 2, 4];
const FCS_BYTES = [0, 2, 4, 8]; // by Frame_Content_Size_flag; flag 0 is 1 byte when single segment

const zstd = new ZSTDDecoder();
await zstd.init();

/** A fault of the compression stage: `code` is the error code of §6. */
export class FrameFault extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/**
 * Reads the frame header and walks the blocks without decompressing (RFC 8878 §3.1.1).
 * Returns {contentSize, end}; throws FrameFault in the order of §6 stage 2: the frame's bytes
 * (R10, bad_zstd: magic, reserved bit, header cut short, a declared size of 0, a block cut
 * short or of the reserved type, the checksum cut short), then no content size
 * (zstd_no_content_size, R11), more than 64 MiB (body_too_large, R12), bytes after the frame
 * (zstd_trailing_bytes, R13). Decompression comes after all of them (decompressFrame).
 */
export function frameInfo(body) {
  if (body.length < 5 || MAGIC.some((m, i) => body[i] !== m)) {
    throw new FrameFault("bad_zstd", "the body does not start with the zstd frame magic 28 b5 2f fd");
  }
  const fhd = body[4];
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  if (fhd & 0x08) {
    throw new FrameFault("bad_zstd", "the frame header's reserved bit is set");
  }
  const fcsBytes = fcsFlag === 0 ? singleSegment : FCS_BYTES[fcsFlag];
  let pos = 5 + (singleSegment ? 0 : 1) + DICT_ID_BYTES[fhd & 3];
  if (pos + fcsBytes > body.length) {
    throw new FrameFault("bad_zstd", "the frame header is cut short");
  }
  let contentSize = null;
  if (fcsBytes > 0) {
    contentSize = 0;
    for (let i = fcsBytes - 1; i >= 0; i--) contentSize = contentSize * 256 + body[pos + i];
    if (fcsBytes === 2) contentSize += 256;
    if (contentSize === 0) {
      throw new FrameFault("bad_zstd", "the frame declares a content size of 0 (a body is never empty)");
    }
  }
  pos += fcsBytes;
  for (;;) {
    if (pos + 3 > body.length) throw new FrameFault("bad_zstd", "the frame is cut short (block header)");
    const bh = body[pos] | (body[pos + 1] << 8) | (body[pos + 2] << 16);
    pos += 3;
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >>> 3;
    if (type === 3) throw new FrameFault("bad_zstd", "a block of the reserved type 3");
    pos += type === 1 ? 1 : size;
    if (pos > body.length) throw new FrameFault("bad_zstd", "the frame is cut short (block)");
    if (last) break;
  }
  if (checksum) {
    pos += 4;
    if (pos > body.length) throw new FrameFault("bad_zstd", "the frame is cut short (checksum)");
  }
  if (contentSize === null) {
    throw new FrameFault("zstd_no_content_size", "the frame header does not declare the content size");
  }
  if (contentSize > MAX_CONTENT_SIZE) {
    throw new FrameFault(
      "body_too_large",
      `the frame declares ${contentSize} bytes, more than ${MAX_CONTENT_SIZE} (64 MiB)`,
    );
  }
  if (pos < body.length) {
    throw new FrameFault("zstd_trailing_bytes", `${body.length - pos} bytes after the zstd frame`);
  }
  return { contentSize, end: pos };
}

/** The frame's content: exactly its declared size, else FrameFault bad_zstd. */
export function decompressFrame(body) {
  const { contentSize } = frameInfo(body);
  // contentSize is at least 1: zstddec reports an error as an empty output, which only a
  // non-empty declared size tells apart from success.
  const out = zstd.decode(body, contentSize);
  if (out.length !== contentSize) {
    throw new FrameFault(
      "bad_zstd",
      `the frame does not decompress to the ${contentSize} bytes it declares (corrupt blocks, another size, or a wrong checksum)`,
    );
  }
  return out;
}
