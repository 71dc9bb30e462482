/**
 * Child process for the decompression-bound test: decodes one chunk object file (argv: file,
 * digest) with decodeChunk and prints what happened and how much the peak RSS grew (KiB).
 */
import fs from 'node:fs';
import { decodeChunk, encodeChunk, sha256 } from '../../drivers/chunk.js';
import type { CodecName } from '../../drivers/codec.js';

const [file, digest] = process.argv.slice(2) as [string, string];
const object = fs.readFileSync(file);
// warm up every codec (native modules, contexts) so only the hostile decode is measured
const sample = Buffer.alloc(256 * 1024, 'warm up ');
for (const c of ['zlib', 'zstd', 'lz4'] as CodecName[]) decodeChunk(encodeChunk(sample, c).object, sha256(sample).toString('hex'));
const before = process.resourceUsage().maxRSS;
let error: string | null = null;
try {
  decodeChunk(object, digest);
} catch (e) {
  error = `${(e as Error).name}: ${(e as Error).message}`;
}
const after = process.resourceUsage().maxRSS;
process.stdout.write(JSON.stringify({ error, growthKiB: after - before }) + '\n');
