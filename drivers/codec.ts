/**
 * Compression codecs for chunk payloads. Each codec has a stable numeric id that is
 * written into every chunk object header, so a repository can be read whatever codec
 * it is configured with today.
 */
import zlib from 'node:zlib';
import { Compressor } from 'zstd-napi';
import type * as ZstdBinding from 'zstd-napi/binding.js';
import { createRequire } from 'node:module';
import lz4 from 'lz4-napi';

export const CODECS = ['none', 'zlib', 'zstd', 'lz4'] as const;
export type CodecName = (typeof CODECS)[number];
export const CODEC_ID: Record<CodecName, number> = { none: 0, zlib: 1, zstd: 2, lz4: 3 };

export function codecName(id: number): CodecName {
  const name = CODECS[id];
  if (name === undefined) throw new Error(`unknown codec id ${id}`);
  return name;
}

export function parseCodec(name: string): CodecName {
  if ((CODECS as readonly string[]).includes(name)) return name as CodecName;
  throw new Error(`unknown compression "${name}": use one of ${CODECS.join(', ')}`);
}

/** zstd-napi's low-level binding (its DCtx decompresses into a buffer we size) */
const zstdBinding = createRequire(import.meta.url)('zstd-napi/binding.js') as typeof ZstdBinding;
let zstdC: Compressor | undefined;
let zstdD: ZstdBinding.DCtx | undefined;

export function compress(codec: CodecName, data: Buffer): Buffer {
  switch (codec) {
    case 'none':
      return data;
    case 'zlib':
      return zlib.deflateSync(data, { level: 6 });
    case 'zstd':
      if (!zstdC) {
        zstdC = new Compressor();
        zstdC.setParameters({ compressionLevel: 3 });
      }
      return zstdC.compress(data);
    case 'lz4':
      return lz4.compressSync(data);
  }
}

/**
 * Decompresses a payload whose plaintext is `plainLength` bytes (the chunk header's, itself
 * bounded by the caller): never allocates or writes more than that, whatever the payload
 * claims (a zstd frame's content size, lz4's size prefix) or holds.
 */
export function decompress(codec: CodecName, data: Buffer, plainLength: number): Buffer {
  let out: Buffer;
  switch (codec) {
    case 'none':
      out = data;
      break;
    case 'zlib':
      out = zlib.inflateSync(data, { maxOutputLength: Math.max(1, plainLength) });
      break;
    case 'zstd': {
      // one-shot into a buffer of the header's size: zstd fails ("destination buffer is too
      // small") rather than write past it, and never sizes anything by the frame's own claim
      zstdD ??= new zstdBinding.DCtx();
      out = Buffer.allocUnsafe(plainLength);
      let n: number;
      try {
        n = zstdD.decompress(out, data);
      } catch (e) {
        zstdD = undefined; // a context left mid-frame is not reused
        throw new Error(`zstd payload does not decompress to ${plainLength} bytes: ${(e as Error).message}`);
      }
      out = out.subarray(0, n);
      break;
    }
    case 'lz4': {
      // lz4-napi's block format: u32 little-endian plaintext length, then the block; lz4_flex
      // allocates by that prefix, so it must be the header's before the block is touched
      if (data.length < 4) throw new Error(`lz4 payload of ${data.length} bytes has no length prefix`);
      const claimed = data.readUInt32LE(0);
      if (claimed !== plainLength) throw new Error(`lz4 payload says ${claimed} bytes, header says ${plainLength}`);
      out = lz4.uncompressSync(data);
      break;
    }
  }
  if (out.length !== plainLength) {
    throw new Error(`${codec} payload decompressed to ${out.length} bytes, header says ${plainLength}`);
  }
  return out;
}
