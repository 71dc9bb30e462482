/**
 * Compression codecs for chunk payloads. Each codec has a stable numeric id that is
 * written into every chunk object header, so a repository can be read whatever codec
 * it is configured with today.
 */
import zlib from 'node:zlib';
import { Compressor, Decompressor } from 'zstd-napi';
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

let zstdC: Compressor | undefined;
let zstdD: Decompressor | undefined;

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

export function decompress(codec: CodecName, data: Buffer, plainLength: number): Buffer {
  let out: Buffer;
  switch (codec) {
    case 'none':
      out = data;
      break;
    case 'zlib':
      out = zlib.inflateSync(data, { maxOutputLength: plainLength });
      break;
    case 'zstd':
      zstdD ??= new Decompressor();
      out = zstdD.decompress(data);
      break;
    case 'lz4':
      out = lz4.uncompressSync(data);
      break;
  }
  if (out.length !== plainLength) {
    throw new Error(`${codec} payload decompressed to ${out.length} bytes, header says ${plainLength}`);
  }
  return out;
}
