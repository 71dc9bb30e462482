/**
 * The hydrate filter in process, against models: a target with a volatile cache, a backup
 * in memory with random latencies. Semantics (copy-on-read, bring-in of partial writes,
 * trim/zero, FLUSH/FUA commit order), the guest-write vs copier race, throttling.
 */
import test from 'ava';
import { HydrateDevice } from '../gateway/devices/hydrate.js';
import { MemLog, MemSource, VolatileDisk, randInt, rng, seededBytes } from './helpers/instant.js';

const BS = 16 * 1024;

function backupImage(r: () => number, blocks: number, tail = 0): Buffer {
  const img = Buffer.alloc(blocks * BS + tail);
  for (let b = 0; b * BS < img.length; b++) {
    const kind = r();
    const len = Math.min(BS, img.length - b * BS);
    if (kind < 0.3) continue; // hole
    seededBytes(r, len).copy(img, b * BS);
  }
  return img;
}

function setup(seed: number, opts: { blocks?: number; tail?: number; concurrency?: number; rate?: number; targetExtra?: number; syncBlocks?: number; syncIntervalMs?: number; fresh?: boolean } = {}) {
  const r = rng(seed);
  const img = backupImage(r, opts.blocks ?? 48, opts.tail ?? 0);
  const source = new MemSource(img, BS, r);
  const size = img.length + (opts.targetExtra ?? 0);
  const blocks = Math.ceil(size / BS);
  // the target starts with old garbage (nothing of it may show through), or, as a session
  // starts a file target, truncated: all zeroes, the backup's holes owned from the start
  const disk = new VolatileDisk(opts.fresh ? Buffer.alloc(size) : seededBytes(r, size), r);
  const owned = new Uint8Array(blocks);
  if (opts.fresh) for (let b = 0; b < blocks; b++) owned[b] = b * BS >= img.length || source.isHole(b) ? 1 : 0;
  const log = new MemLog(blocks, r, owned);
  let done!: () => void;
  const completed = new Promise<void>((res) => (done = res));
  const dev = new HydrateDevice(disk, source, {
    blockSize: BS,
    owned,
    knownZero: opts.fresh ? new Uint8Array(blocks).fill(1) : undefined,
    commit: log.commit,
    concurrency: opts.concurrency ?? 3,
    rateBytesPerSec: opts.rate ?? 0,
    syncBlocks: opts.syncBlocks ?? 8,
    syncIntervalMs: opts.syncIntervalMs ?? 20,
    onComplete: () => done(),
  });
  return { r, img, source, disk, log, dev, completed };
}

test('random guest I/O while hydrating: every read matches, the target ends bit-exact', async (t) => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    const { r, img, disk, log, dev, completed } = setup(seed, { tail: seed % 2 ? 5000 : 0, targetExtra: seed % 3 === 0 ? 3 * BS + 100 : 0, fresh: seed >= 5 });
    // what the guest must see: the backup, then past its end what the target holds, then its own writes
    const expected = Buffer.from(disk.current);
    img.copy(expected);
    dev.start();
    let reads = 0;
    for (let i = 0; i < 150; i++) {
      const off = randInt(r, 0, dev.size - 1);
      const len = Math.min(dev.size - off, randInt(r, 1, 3 * BS));
      const k = r();
      if (k < 0.45) {
        const got = await dev.read(off, len);
        t.true(got.equals(expected.subarray(off, off + len)), `seed ${seed} op ${i}: read ${off}+${len}`);
        reads++;
      } else if (k < 0.75) {
        const data = seededBytes(r, len);
        await dev.write(off, data, r() < 0.1);
        data.copy(expected, off);
      } else if (k < 0.85) {
        await dev.trim(off, len);
        expected.fill(0, off, off + len);
      } else if (k < 0.93) {
        await dev.zero(off, len);
        expected.fill(0, off, off + len);
      } else await dev.flush();
    }
    for (const e of await dev.blockStatus(0, dev.size)) {
      if (e.zero) t.true(expected.subarray(e.offset, e.offset + e.length).every((x) => x === 0), `seed ${seed}: extent ${e.offset}+${e.length} reported zero`);
    }
    await completed;
    await dev.settle();
    t.true(disk.current.equals(expected), `seed ${seed}: target equals backup + writes`);
    const all = await dev.read(0, dev.size);
    t.true(all.equals(expected));
    t.is(dev.stats().blocksDurable, dev.blocks);
    t.true(log.committed.every((x) => x === 1));
    t.true(reads > 30);
    await dev.close();
  }
});

test('a guest write racing the copier for the same block wins (full and partial writes)', async (t) => {
  for (const partial of [false, true]) {
    const r = rng(7);
    const img = Buffer.alloc(8 * BS);
    seededBytes(r, img.length).copy(img);
    let release!: () => void;
    const gate = new Promise<void>((res) => (release = res));
    let fetched!: () => void;
    const copierHasFetched = new Promise<void>((res) => (fetched = res));
    const source = new MemSource(img, BS, r, 0);
    const inner = source.read.bind(source);
    let calls = 0;
    // the copier's fetch of block 3 is held until the guest write was acknowledged
    source.read = async (b: number) => {
      const d = await inner(b);
      if (b === 3 && calls++ === 0) {
        fetched();
        await gate;
      }
      return d;
    };
    const disk = new VolatileDisk(Buffer.alloc(img.length), r, 0);
    const owned = new Uint8Array(8).fill(1);
    owned[3] = 0;
    const dev = new HydrateDevice(disk, source, { blockSize: BS, owned, concurrency: 1, commit: new MemLog(8, r).commit });
    dev.start();
    await copierHasFetched;
    const data = seededBytes(r, partial ? 1000 : BS);
    const off = 3 * BS + (partial ? 777 : 0);
    await dev.write(off, data);
    release();
    // let the copier go on with the data it fetched before the write
    while (dev.stats().copierRunning) await new Promise((res) => setTimeout(res, 2));
    await dev.stop();
    await dev.settle();
    const want = Buffer.from(img.subarray(3 * BS, 4 * BS));
    data.copy(want, off - 3 * BS);
    t.true(disk.current.subarray(3 * BS, 4 * BS).equals(want), `partial=${partial}: the guest's data survived the copier`);
    t.true((await dev.read(3 * BS, BS)).equals(want));
    await dev.close();
  }
});

test('copy-on-read: a block read once is written into the target and never fetched again', async (t) => {
  const { disk, source, dev, img } = setup(11);
  const b = [...Array(48).keys()].find((i) => !source.isHole(i))!;
  const before = source.reads;
  const got = await dev.read(b * BS + 100, 200);
  t.true(got.equals(img.subarray(b * BS + 100, b * BS + 300)));
  await dev.settle();
  t.true(disk.current.subarray(b * BS, (b + 1) * BS).equals(img.subarray(b * BS, (b + 1) * BS)), 'the whole block was brought in');
  const after = source.reads;
  t.is(after - before, 1);
  await dev.read(b * BS, BS);
  await dev.read(b * BS + 5, 10);
  t.is(source.reads, after, 'served from the target afterwards');
  t.is(dev.stats().blocksOwned, 1);
  t.is(dev.stats().guestReadsFromBackup, 1);
  await dev.close();
});

test('partial write, zero and trim of a block not owned bring the rest of the block in from the backup', async (t) => {
  const { disk, source, dev, img } = setup(12);
  const data = [...Array(48).keys()].filter((i) => !source.isHole(i));
  const [b1, b2, b3] = data;
  const w = Buffer.alloc(100, 0xab);
  await dev.write(b1! * BS + 50, w);
  await dev.zero(b2! * BS + 10, 300);
  await dev.trim(b3! * BS + BS - 64, 64);
  const want1 = Buffer.from(img.subarray(b1! * BS, (b1! + 1) * BS));
  w.copy(want1, 50);
  const want2 = Buffer.from(img.subarray(b2! * BS, (b2! + 1) * BS));
  want2.fill(0, 10, 310);
  const want3 = Buffer.from(img.subarray(b3! * BS, (b3! + 1) * BS));
  want3.fill(0, BS - 64);
  for (const [b, want] of [[b1!, want1], [b2!, want2], [b3!, want3]] as const) {
    t.true(disk.current.subarray(b * BS, (b + 1) * BS).equals(want), `block ${b} on the target: backup merged with the change`);
    t.true((await dev.read(b * BS, BS)).equals(want));
  }
  // a change that covers whole blocks does not read the backup
  const reads = source.reads;
  await dev.write(data[4]! * BS, Buffer.alloc(BS, 1));
  await dev.zero(data[5]! * BS, 2 * BS);
  t.is(source.reads, reads);
  await dev.close();
});

test('FLUSH and FUA commit ownership after the target is durable and before they return', async (t) => {
  const { disk, log, dev, source } = setup(13, { syncBlocks: 1_000_000, syncIntervalMs: 1_000_000 });
  const data = [...Array(48).keys()].filter((i) => !source.isHole(i));
  // a write, then a flush
  const a = Buffer.alloc(BS, 0x11);
  await dev.write(data[0]! * BS, a);
  t.is(log.committed[data[0]!], 0, 'not committed before a flush');
  await dev.flush();
  t.is(log.committed[data[0]!], 1, 'committed when FLUSH returns');
  t.true(disk.durable.subarray(data[0]! * BS, (data[0]! + 1) * BS).equals(a), 'and its data is durable');
  // FUA on a partial write to a block not owned
  const c = Buffer.alloc(10, 0x22);
  await dev.write(data[1]! * BS + 3, c, true);
  t.is(log.committed[data[1]!], 1, 'committed when the FUA write returns');
  t.true(disk.durable.subarray(data[1]! * BS + 3, data[1]! * BS + 13).equals(c));
  // zero with FUA
  await dev.zero(data[2]! * BS, 10, { fua: true });
  t.is(log.committed[data[2]!], 1);
  await dev.close();
});

test('throttling: the copier keeps to its rate; guest reads are served meanwhile; raising it finishes the copy', async (t) => {
  const { dev, completed, img } = setup(14, { blocks: 64, rate: 10 * BS, concurrency: 2 });
  dev.start();
  await new Promise((r) => setTimeout(r, 500));
  const copied = dev.stats().bytesCopied;
  t.true(copied <= 9 * BS, `copied ${copied / BS} blocks in 0.5 s at 10 blocks/s`);
  // a guest read while throttled is not held behind the copier: it is answered while most blocks are still to copy
  const got = await dev.read(60 * BS, 2 * BS);
  t.true(got.equals(img.subarray(60 * BS, 62 * BS)));
  t.true(dev.stats().bytesCopied < 32 * BS, `guest read answered with ${dev.stats().bytesCopied / BS} of 64 blocks copied`);
  dev.setThrottle({ rate: 0, concurrency: 4 });
  await completed;
  t.deepEqual(dev.throttle, { rate: 0, concurrency: 4 });
  await dev.close();
});

test('shutdown: requests fail with the reason, the copier stops', async (t) => {
  const { dev } = setup(15, { rate: 4 * BS });
  dev.start();
  await dev.shutdown('instant restore cancelled: volume incomplete');
  const e = await t.throwsAsync(dev.read(0, 10));
  t.regex(e!.message, /cancelled/);
  await t.throwsAsync(dev.write(0, Buffer.alloc(1)));
  t.false(dev.stats().copierRunning);
  await dev.close();
});
