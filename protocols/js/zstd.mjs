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
 * Returns {contentSize, end, compressedBlocks}; throws FrameFault for R10-R13, in that order
 * of discovery: magic and header (bad_zstd), no content size (zstd_no_content_size), more
 * than 64 MiB (body_too_large), the blocks (bad_zstd), bytes after the frame
 * (zstd_trailing_bytes).
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
  if (fcsBytes === 0) {
    throw new FrameFault("zstd_no_content_size", "the frame header does not declare the content size");
  }
  let contentSize = 0;
  for (let i = fcsBytes - 1; i >= 0; i--) contentSize = contentSize * 256 + body[pos + i];
  if (fcsBytes === 2) contentSize += 256;
  pos += fcsBytes;
  if (contentSize > MAX_CONTENT_SIZE) {
    throw new FrameFault(
      "body_too_large",
      `the frame declares ${contentSize} bytes, more than ${MAX_CONTENT_SIZE} (64 MiB)`,
    );
  }
  let compressedBlocks = 0;
  let rawBytes = 0;
  for (;;) {
    if (pos + 3 > body.length) throw new FrameFault("bad_zstd", "the frame is cut short (block header)");
    const bh = body[pos] | (body[pos + 1] << 8) | (body[pos + 2] << 16);
    pos += 3;
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >>> 3;
    if (type === 3) throw new FrameFault("bad_zstd", "a block of the reserved type 3");
    if (type === 2) compressedBlocks += 1;
    else rawBytes += size;
    pos += type === 1 ? 1 : size;
    if (pos > body.length) throw new FrameFault("bad_zstd", "the frame is cut short (block)");
    if (last) break;
  }
  if (checksum) {
    pos += 4;
    if (pos > body.length) throw new FrameFault("bad_zstd", "the frame is cut short (checksum)");
  }
  if (pos < body.length) {
    throw new FrameFault("zstd_trailing_bytes", `${body.length - pos} bytes after the zstd frame`);
  }
  // libzstd cannot tell this module an error when the output is 0 bytes long, so a frame that
  // declares 0 bytes is judged here: raw and RLE blocks of 0 bytes only.
  if (contentSize === 0 && (compressedBlocks > 0 || rawBytes > 0)) {
    throw new FrameFault("bad_zstd", "a frame that declares 0 bytes has blocks with content");
  }
  return { contentSize, end: pos };
}

/** The frame's content: exactly its declared size, else FrameFault bad_zstd. */
export function decompressFrame(body) {
  const { contentSize } = frameInfo(body);
  if (contentSize === 0) return new Uint8Array(0);
  const out = zstd.decode(body, contentSize);
  if (out.length !== contentSize) {
    throw new FrameFault(
      "bad_zstd",
      `the frame does not decompress to the ${contentSize} bytes it declares (corrupt blocks, another size, or a wrong checksum)`,
    );
  }
  return out;
}
