/**
 * Crash safety of the hydrate filter, proved on a model: the target is a disk with a
 * volatile write cache (a power cut keeps the flushed image plus ANY subset of the writes not
 * yet flushed), the catalog commits bits atomically. A guest writes, trims, zeroes and
 * flushes while the copier runs; the power is cut at a random instant; a new device resumes
 * from the surviving image and the committed bits and hydrates to the end. Then every byte
 * must hold the value of the last write acknowledged before the last acknowledged FLUSH (or
 * the backup's, if none), unless a later write (unflushed, maybe in flight) touched it.
 * The same check run against the two wrong orderings (bits committed before the target's
 * fdatasync; a FLUSH that does not commit bits) must catch them: the test can fail.
 */
import test from 'ava';
import { HydrateDevice, type HydrateOptions } from '../gateway/devices/hydrate.js';
import { MemLog, MemSource, VolatileDisk, randInt, rng, seededBytes } from './helpers/instant.js';

const BS = 16 * 1024;
const BLOCKS = 32;

interface Outcome {
  violations: number;
  firstViolation: string;
  flushedWrites: number;
  unflushedWrites: number;
  committedAtCrash: number;
}

async function crashRun(seed: number, unsafe?: HydrateOptions['unsafeForTest']): Promise<Outcome> {
  const r = rng(seed);
  const img = Buffer.alloc(BLOCKS * BS);
  for (let b = 0; b < BLOCKS; b++) if (r() > 0.25) seededBytes(r, BS).copy(img, b * BS);
  const source = new MemSource(img, BS, r);
  // half the runs start as a session does on a file: truncated target, holes owned and committed
  const fresh = r() < 0.5;
  const disk = new VolatileDisk(fresh ? Buffer.alloc(img.length) : seededBytes(r, img.length), r);
  const owned = new Uint8Array(BLOCKS);
  if (fresh) for (let b = 0; b < BLOCKS; b++) owned[b] = source.isHole(b) ? 1 : 0;
  const log = new MemLog(BLOCKS, r, owned);
  const syncIntervalMs = r() < 0.5 ? 10 : 400;
  const common = { blockSize: BS, concurrency: randInt(r, 1, 3), syncBlocks: randInt(r, 2, 12), syncIntervalMs, unsafeForTest: unsafe };
  const dev = new HydrateDevice(disk, source, { ...common, owned, knownZero: fresh ? new Uint8Array(BLOCKS).fill(1) : undefined, commit: log.commit, rateBytesPerSec: r() < 0.5 ? 0 : 40 * BS });
  dev.start();

  // the guest: sequential requests, each recorded before it is sent
  const writes: { off: number; data: Buffer }[] = [];
  let flushed = 0; // writes[0..flushed) were acknowledged before an acknowledged FLUSH (or were FUA)
  let crashed = false;
  let image!: Buffer;
  let bits!: Uint8Array;
  let onCrash!: () => void;
  const crash = new Promise<void>((res) => (onCrash = res));
  setTimeout(() => {
    // the power cut: what is on the platter and what the catalog committed, at this instant
    crashed = true;
    image = disk.crash(() => r() < 0.5);
    bits = Uint8Array.from(log.committed);
    log.crashed = true;
    onCrash();
  }, randInt(r, 3, 150));
  const guest = (async () => {
    while (!crashed) {
      const off = randInt(r, 0, img.length - 1);
      const len = Math.min(img.length - off, randInt(r, 1, 2 * BS));
      const k = r();
      if (k < 0.15) {
        const n = writes.length;
        await dev.flush();
        if (!crashed) flushed = Math.max(flushed, n);
      } else if (k < 0.3) {
        await dev.read(off, len);
      } else {
        const data = k < 0.75 ? seededBytes(r, len) : Buffer.alloc(len);
        const fua = r() < 0.1;
        writes.push({ off, data });
        const n = writes.length;
        if (k < 0.75) await dev.write(off, data, fua);
        else if (k < 0.87) await dev.zero(off, len, { fua });
        else await dev.trim(off, len, fua);
        if (fua && !crashed) flushed = Math.max(flushed, n);
      }
    }
  })().catch(() => undefined);
  await Promise.race([guest, crash]);
  await crash;
  void dev.stop();
  const unflushed = writes.slice(flushed);

  // the appliance restarts: resume from the committed bits over the surviving image
  const disk2 = new VolatileDisk(image, r);
  const log2 = new MemLog(BLOCKS, r, bits);
  let done!: () => void;
  const completed = new Promise<void>((res) => (done = res));
  const dev2 = new HydrateDevice(disk2, source, { ...common, owned: bits, commit: log2.commit, onComplete: () => done() });
  dev2.start();
  await completed;
  await dev2.close();

  const durable = Buffer.from(img);
  for (const w of writes.slice(0, flushed)) w.data.copy(durable, w.off);
  const final = disk2.current;
  let violations = 0;
  let firstViolation = '';
  for (let i = 0; i < final.length; i++) {
    if (final[i] === durable[i]) continue;
    if (unflushed.some((w) => i >= w.off && i < w.off + w.data.length && w.data[i - w.off] === final[i])) continue;
    if (!violations) firstViolation = `byte ${i} (block ${Math.floor(i / BS)}): ${final[i]} but flushed state says ${durable[i]}`;
    violations++;
  }
  return { violations, firstViolation, flushedWrites: flushed, unflushedWrites: unflushed.length, committedAtCrash: bits.reduce((s, x) => s + x, 0) };
}

test('power cut at random instants: every write acknowledged before a FLUSH/FUA survives resume (200 runs)', async (t) => {
  let flushed = 0;
  let unflushed = 0;
  let midway = 0;
  for (let seed = 1; seed <= 200; seed++) {
    const o = await crashRun(seed);
    t.is(o.violations, 0, `seed ${seed}: ${o.firstViolation}`);
    flushed += o.flushedWrites;
    unflushed += o.unflushedWrites;
    if (o.committedAtCrash > 0 && o.committedAtCrash < BLOCKS) midway++;
  }
  t.log(`${flushed} flushed writes checked, ${unflushed} unflushed; ${midway} cuts landed mid-hydration`);
  t.true(flushed > 200, 'the runs did flush writes');
  t.true(midway > 50, 'the cuts came mid-hydration');
});

for (const unsafe of ['commit-before-flush', 'flush-without-commit'] as const) {
  test(`the check catches the wrong ordering: ${unsafe}`, async (t) => {
    let caught = 0;
    for (let seed = 1; seed <= 200 && caught < 3; seed++) {
      const o = await crashRun(seed, unsafe);
      if (o.violations) caught++;
    }
    t.true(caught >= 3, `${unsafe} must lose acknowledged data in some runs`);
  });
}
