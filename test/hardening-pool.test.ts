/**
 * Issue 12 item 6: the chunk worker pool survives a dying worker (the task it ran fails with a
 * clear error, every other task still runs), and zstd/lz4 payloads never decompress to more
 * than the chunk header's plain length (a hostile object cannot make a decode allocate more).
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import lz4 from 'lz4-napi';
import { Compressor } from 'zstd-napi';
import { CHUNK_HEADER, CHUNK_MAGIC, CHUNK_VERSION, ChunkCorruptError, decodeChunk, encodeChunk, sha256 } from '../drivers/chunk.js';
import { CODEC_ID, type CodecName } from '../drivers/codec.js';
import { ChunkWorkerPool, WorkerDiedError } from '../drivers/workers/pool.js';
import { tmpDir } from './helpers/core.js';

const run = promisify(execFile);
const CRASH_WORKER = new URL('./helpers/crash-worker.js', import.meta.url);
const DECODE_RSS = fileURLToPath(new URL('./helpers/decode-rss.js', import.meta.url));
const MiB = 1024 * 1024;

function hashTask(pool: ChunkWorkerPool, data: Buffer, length = data.length) {
  const ab = new ArrayBuffer(data.length);
  Buffer.from(ab).set(data);
  return pool.hash(ab, length);
}

test('a worker that dies fails only its own task: queued tasks run on a replacement (pool of 1)', async (t) => {
  t.timeout(60_000, 'queued tasks were never dispatched after the worker died');
  const pool = new ChunkWorkerPool(1, CRASH_WORKER);
  t.teardown(() => pool.close());
  const bufs = Array.from({ length: 6 }, () => randomBytes(4096));
  // the poison goes first, so every other task is queued behind it on the only worker
  const poison = hashTask(pool, randomBytes(64), 7);
  const rest = bufs.map((b) => hashTask(pool, b));
  const err = await t.throwsAsync(poison, { instanceOf: WorkerDiedError });
  t.regex(err!.message, /chunk worker died during hash: poisoned task/);
  const done = await Promise.all(rest);
  t.deepEqual(done.map((r) => r.digest), bufs.map((b) => sha256(b).toString('hex')));
  // and the pool goes on serving
  const again = randomBytes(1000);
  t.is((await hashTask(pool, again)).digest, sha256(again).toString('hex'));
});

test('several deaths among many tasks on a pool of 2: every other task completes with the right answer', async (t) => {
  t.timeout(60_000, 'tasks were stranded after worker deaths');
  const pool = new ChunkWorkerPool(2, CRASH_WORKER);
  t.teardown(() => pool.close());
  const jobs = Array.from({ length: 40 }, (_, i) => (i % 9 === 4 ? null : randomBytes(2048 + i)));
  const results = await Promise.allSettled(jobs.map((b) => (b ? hashTask(pool, b) : hashTask(pool, randomBytes(16), 7))));
  results.forEach((r, i) => {
    const b = jobs[i];
    if (b) {
      t.is(r.status, 'fulfilled', `task ${i}`);
      if (r.status === 'fulfilled') t.is(r.value.digest, sha256(b).toString('hex'));
    } else {
      t.is(r.status, 'rejected', `poisoned task ${i}`);
      if (r.status === 'rejected') t.true(r.reason instanceof WorkerDiedError, String(r.reason));
    }
  });
});

test('the real worker pool still encodes and decodes (decode of a corrupt object is a clear error)', async (t) => {
  const pool = new ChunkWorkerPool(2);
  t.teardown(() => pool.close());
  const plain = Buffer.alloc(256 * 1024, 'blockgate ');
  const digest = sha256(plain).toString('hex');
  for (const c of ['none', 'zlib', 'zstd', 'lz4'] as CodecName[]) {
    const obj = encodeChunk(plain, c).object;
    t.true((await pool.decode(obj, digest)).equals(plain), c);
  }
  const bad = Buffer.from(encodeChunk(plain, 'zstd').object);
  bad.writeUInt32BE(1000, 8);
  await t.throwsAsync(pool.decode(bad, digest), { name: 'ChunkCorruptError' });
});

/** a chunk object with a hand-made header: codec and plain length as given, payload as given */
function object(codec: CodecName, plainLength: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(CHUNK_HEADER);
  CHUNK_MAGIC.copy(h, 0);
  h[4] = CHUNK_VERSION;
  h[5] = CODEC_ID[codec];
  h.writeUInt32BE(plainLength, 8);
  return Buffer.concat([h, payload]);
}

async function decodeInChild(t: import('ava').ExecutionContext, obj: Buffer): Promise<{ error: string | null; growthKiB: number }> {
  const file = path.join(tmpDir(t), 'object');
  fs.writeFileSync(file, obj);
  const { stdout } = await run(process.execPath, [DECODE_RSS, file, '0'.repeat(64)], { maxBuffer: MiB });
  return JSON.parse(stdout) as { error: string | null; growthKiB: number };
}

test('hostile zstd and lz4 payloads are refused without decompressing past the header length', async (t) => {
  t.timeout(120_000);
  const bomb = Buffer.alloc(256 * MiB); // 256 MiB of zeros: a few KB of zstd, ~1 MiB of lz4
  const z = new Compressor().compress(bomb);
  const l = lz4.compressSync(bomb);
  const cases: [string, Buffer][] = [
    // a zstd frame that says (and holds) 256 MiB, in a chunk whose header says 64 KiB
    ['zstd frame larger than the header', object('zstd', 64 * 1024, z)],
    // lz4's own size prefix says 256 MiB
    ['lz4 prefix larger than the header', object('lz4', 4 * MiB, l)],
    // lz4 prefix rewritten to agree with the header, the block still holds 256 MiB
    ['lz4 block larger than its prefix', object('lz4', 4 * MiB, Buffer.concat([Buffer.from([0, 0, 0x40, 0]), l.subarray(4)]))],
  ];
  for (const [what, obj] of cases) {
    const r = await decodeInChild(t, obj);
    t.truthy(r.error, what);
    t.regex(r.error!, /^ChunkCorruptError: chunk 0+ is corrupt: /, what);
    // unbounded, the decode writes 256 MiB (peak RSS +256 MiB); bounded, at most the header's size
    t.true(r.growthKiB < 48 * 1024, `${what}: peak RSS grew by ${r.growthKiB} KiB`);
    t.log(`${what}: ${r.error} (peak RSS +${r.growthKiB} KiB)`);
  }
});

test('decode refuses a header plain length over 16 MiB and a payload longer than its plaintext', (t) => {
  const plain = randomBytes(100_000);
  const d = sha256(plain).toString('hex');
  t.throws(() => decodeChunk(object('zstd', 16 * MiB + 1, Buffer.alloc(10)), d), { instanceOf: ChunkCorruptError, message: /plaintext length 16777217 too large/ });
  t.throws(() => decodeChunk(object('none', 1000, plain), d), { instanceOf: ChunkCorruptError, message: /longer than its plaintext/ });
  // the honest objects still decode, for every codec
  for (const c of ['none', 'zlib', 'zstd', 'lz4'] as CodecName[]) t.true(decodeChunk(encodeChunk(plain, c).object, d).equals(plain));
  const text = Buffer.alloc(300_000, 'abc');
  for (const c of ['zlib', 'zstd', 'lz4'] as CodecName[]) {
    const enc = encodeChunk(text, c);
    t.is(enc.codec, c);
    t.true(decodeChunk(enc.object, sha256(text).toString('hex')).equals(text));
  }
});
