/**
 * Worker thread for the CPU-heavy per-chunk work: hashing, zero detection, compression,
 * decompression and digest verification. Buffers arrive and leave as transferred
 * ArrayBuffers, so nothing is copied between threads.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';
import { MAX_CHUNK, OBJECT_OVERHEAD, ChunkCorruptError, type Sealing, decodeChunk, encodeChunk, isAllZero } from '../chunk.js';
import { type RepoKeys, contentDigest } from '../crypto.js';

/** the repository's keys when it is encrypted (given once, at the worker's start) */
const init = workerData as { keys?: { enc: Uint8Array; name: Uint8Array } | null } | undefined;
const keys: RepoKeys | null = init?.keys ? { enc: Buffer.from(init.keys.enc), name: Buffer.from(init.keys.name) } : null;
const sealing: Sealing | null = keys ? { keys, kind: 'chunks' } : null;
import type { CodecName } from '../codec.js';

export type ChunkTask =
  | { id: number; op: 'hash'; buf: ArrayBuffer; length: number }
  | { id: number; op: 'decodeRun'; path?: string; object?: ArrayBuffer; offset: number; length: number; blobs: [offset: number, length: number, plain: number, digest: string][] }
  | { id: number; op: 'hashBlocks'; buf: ArrayBuffer; length: number; block: number }
  | { id: number; op: 'encodeBlocks'; buf: ArrayBuffer; blocks: [offset: number, length: number, digest: string][]; codec: CodecName; out: ArrayBuffer }
  | { id: number; op: 'encode'; buf: ArrayBuffer; length: number; codec: CodecName; out: ArrayBuffer; digest: string }
  | { id: number; op: 'decode'; object: ArrayBuffer; offset: number; length: number; digest: string; out?: ArrayBuffer }
  | { id: number; op: 'decodeFile'; path: string; digest: string; offset: number; length: number };

export type ChunkResult =
  | {
      id: number;
      ok: true;
      buf?: ArrayBuffer;
      digest?: string;
      zero?: boolean;
      out?: ArrayBuffer;
      outLength?: number;
      codec?: CodecName;
      plain?: ArrayBuffer;
      /** hashBlocks: one digest per block, '' for an all-zero block */
      digests?: string[];
      /** encodeBlocks: each object's length (laid out one after the other in out) and codec */
      lengths?: number[];
      codecs?: CodecName[];
      /** decodeRun: per blob, the error that failed it ('' when it decoded) */
      errors?: string[];
    }
  | { id: number; ok: false; error: string; name: string };

function own(b: Buffer): ArrayBuffer {
  // hand back a buffer we may transfer: copy only if it shares a pooled ArrayBuffer
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer) return b.buffer;
  const ab = new ArrayBuffer(b.length);
  Buffer.from(ab).set(b);
  return ab;
}

parentPort!.on('message', (t: ChunkTask) => {
  try {
    if (t.op === 'decodeRun') {
      // neighbouring blobs of one pack: one read of their range, each blob decoded and verified on its own
      let run: Buffer;
      if (t.path !== undefined) {
        run = Buffer.allocUnsafe(t.length);
        let n = 0;
        let fd: number;
        try {
          fd = openSync(t.path, 'r');
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          parentPort!.postMessage({ id: t.id, ok: false, error: code === 'ENOENT' ? 'its pack is missing from the repository' : (e as Error).message, name: code === 'ENOENT' ? 'ObjectNotFoundError' : 'Error' } satisfies ChunkResult);
          return;
        }
        try {
          while (n < t.length) {
            const got = readSync(fd, run, n, t.length - n, t.offset + n);
            if (got === 0) break;
            n += got;
          }
        } finally {
          closeSync(fd);
        }
        run = run.subarray(0, n);
      } else {
        run = Buffer.from(t.object!);
      }
      const total = t.blobs.reduce((a, b) => a + b[2], 0);
      const out = new ArrayBuffer(total);
      const view = Buffer.from(out);
      const errors: string[] = [];
      let at = 0;
      for (const [offset, length, plainLength, digest] of t.blobs) {
        try {
          if (plainLength > MAX_CHUNK) throw new ChunkCorruptError(digest, `plaintext length ${plainLength} too large`);
          const blob = run.subarray(offset, offset + length);
          if (blob.length < length) throw new ChunkCorruptError(digest, `its pack ends before the blob does (${blob.length} of ${length} bytes)`);
          const plain = decodeChunk(blob, digest, sealing);
          if (plain.length !== plainLength) throw new ChunkCorruptError(digest, `holds ${plain.length} bytes, the index says ${plainLength}`);
          plain.copy(view, at);
          errors.push('');
        } catch (e) {
          errors.push((e as Error).message);
        }
        at += plainLength;
      }
      parentPort!.postMessage({ id: t.id, ok: true, out, errors } satisfies ChunkResult, [out]);
    } else if (t.op === 'hashBlocks') {
      // a segment of many blocks in one message: one round trip per segment, not per block
      const digests: string[] = [];
      for (let off = 0; off < t.length; off += t.block) {
        const data = Buffer.from(t.buf, off, Math.min(t.block, t.length - off));
        digests.push(isAllZero(data) ? '' : contentDigest(keys, data));
      }
      parentPort!.postMessage({ id: t.id, ok: true, buf: t.buf, digests } satisfies ChunkResult, [t.buf]);
    } else if (t.op === 'encodeBlocks') {
      const out = Buffer.from(t.out);
      const lengths: number[] = [];
      const codecs: CodecName[] = [];
      let at = 0;
      for (const [offset, length, digest] of t.blocks) {
        const enc = encodeChunk(Buffer.from(t.buf, offset, length), t.codec, sealing ? { ...sealing, digest } : undefined);
        if (at + enc.object.length > out.length) throw new Error(`encoded blocks exceed the output buffer`);
        enc.object.copy(out, at);
        at += enc.object.length;
        lengths.push(enc.object.length);
        codecs.push(enc.codec);
      }
      parentPort!.postMessage({ id: t.id, ok: true, buf: t.buf, out: t.out, lengths, codecs } satisfies ChunkResult, [t.buf, t.out]);
    } else if (t.op === 'hash') {
      const data = Buffer.from(t.buf, 0, t.length);
      const zero = isAllZero(data);
      const digest = zero ? '' : contentDigest(keys, data);
      parentPort!.postMessage({ id: t.id, ok: true, buf: t.buf, digest, zero } satisfies ChunkResult, [t.buf]);
    } else if (t.op === 'encode') {
      // the object is copied into the caller's output buffer, so the caller makes no garbage
      const enc = encodeChunk(Buffer.from(t.buf, 0, t.length), t.codec, sealing ? { ...sealing, digest: t.digest } : undefined);
      if (enc.object.length > t.out.byteLength) throw new Error(`encoded chunk (${enc.object.length} bytes) exceeds the output buffer`);
      enc.object.copy(Buffer.from(t.out));
      parentPort!.postMessage({ id: t.id, ok: true, buf: t.buf, out: t.out, outLength: enc.object.length, codec: enc.codec } satisfies ChunkResult, [t.buf, t.out]);
    } else if (t.op === 'decodeFile') {
      // the worker reads the object itself: the caller's thread never touches the compressed bytes
      let object: Buffer;
      try {
        const fd = openSync(t.path, 'r');
        try {
          if (t.length >= 0) {
            // a blob of a pack: one pread of its range (a short read is a truncated pack)
            if (t.length > OBJECT_OVERHEAD + MAX_CHUNK) throw new ChunkCorruptError(t.digest, `blob of ${t.length} bytes is larger than any chunk`);
            object = Buffer.allocUnsafe(t.length);
            let n = 0;
            while (n < t.length) {
              const got = readSync(fd, object, n, t.length - n, t.offset + n);
              if (got === 0) break;
              n += got;
            }
            object = object.subarray(0, n);
          } else {
            // no chunk object is larger than its header and the largest chunk: never read more
            const size = fstatSync(fd).size;
            if (size > OBJECT_OVERHEAD + MAX_CHUNK) throw new ChunkCorruptError(t.digest, `object of ${size} bytes is larger than any chunk`);
            object = readFileSync(fd);
          }
        } finally {
          closeSync(fd);
        }
      } catch (e) {
        if (e instanceof ChunkCorruptError) throw e;
        const code = (e as NodeJS.ErrnoException).code;
        parentPort!.postMessage({ id: t.id, ok: false, error: code === 'ENOENT' ? (t.length >= 0 ? `chunk ${t.digest}: its pack is missing from the repository` : `chunk ${t.digest} is missing from the repository`) : (e as Error).message, name: code === 'ENOENT' ? 'ObjectNotFoundError' : 'Error' } satisfies ChunkResult);
        return;
      }
      const plain = own(decodeChunk(object, t.digest, sealing));
      parentPort!.postMessage({ id: t.id, ok: true, plain } satisfies ChunkResult, [plain]);
    } else if (t.out) {
      // decode into the caller's buffer and hand both back: no allocation on the caller's side
      const plain = decodeChunk(Buffer.from(t.object, t.offset, t.length), t.digest, sealing);
      if (plain.length > t.out.byteLength) throw new Error(`chunk ${t.digest} (${plain.length} bytes) exceeds the output buffer`);
      plain.copy(Buffer.from(t.out));
      parentPort!.postMessage({ id: t.id, ok: true, buf: t.object, out: t.out, outLength: plain.length } satisfies ChunkResult, [t.object, t.out]);
    } else {
      const plain = own(decodeChunk(Buffer.from(t.object, t.offset, t.length), t.digest, sealing));
      const transfer = plain === t.object ? [plain] : [plain, t.object];
      parentPort!.postMessage({ id: t.id, ok: true, plain } satisfies ChunkResult, transfer);
    }
  } catch (e) {
    const err = e as Error;
    parentPort!.postMessage({ id: t.id, ok: false, error: err.message, name: err.name } satisfies ChunkResult);
  }
});
