/**
 * The daemon killed with SIGKILL at random moments of an instant restore, 20 times, while
 * two libnbd guests (TCP and unix socket, disjoint halves) write, trim, zero, read and
 * flush. After every restart the session resumes under the same export name, the durable
 * progress never goes back, every write acknowledged before an acknowledged FLUSH reads
 * back, and each byte written without a flush holds either its new value or its value at the
 * last flush. At the end the target equals the model bit for bit.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import test from 'ava';
import {
  Guest, bgJson, makeSparseImage, preparedBackup, randInt, rng, shaHex, showSession, startDaemon, tmpDir, waitFor, type Daemon, type SessionJson,
} from './helpers/instant.js';

const MiB = 1024 ** 2;
const SIZE = 256 * MiB;
const HALF = SIZE / 2;
const CHUNK = 256 * 1024;
const ROUNDS = 20;

interface Write {
  off: number;
  data: Buffer;
  ack: number | null;
  durable: boolean;
}

test.serial(`SIGKILL of the daemon at random moments, ${ROUNDS} rounds: the session resumes and every flushed write survives`, async (t) => {
  t.timeout(280_000);
  const dir = tmpDir(t);
  const src = path.join(dir, 'src.img');
  const extents = makeSparseImage(src, SIZE, 1200, 128 * 1024, 9001);
  const { data } = await preparedBackup(dir, src, { chunkSize: CHUNK, syncIntervalMs: 150 });
  await bgJson(data, ['volume', 'create', '--name', 'tgt', '--size', '256M']);
  const durable = fs.readFileSync(src); // content as of the last acknowledged flush
  const expected = Buffer.from(durable); // content the guests see (acknowledged writes applied)
  const r = rng(20260501);

  let d: Daemon = await startDaemon(t, data);
  const s = await bgJson<SessionJson>(data, ['backup', 'restore', 'full', 'tgt', '--instant', '--copy-rate', '256K', '--copy-concurrency', '2']);
  t.is(s.export_name, 'restore-tgt');
  let uncertain: Write[] = [];
  let flushedLast: Write[] = [];
  const progress: string[] = [];
  let lastDurableBlocks = 0;
  const totals = { writes: 0, flushedWrites: 0, lostWrites: 0, keptWrites: 0, flushes: 0, reads: 0, readBackBytes: 0, flushedChecked: 0 };

  for (let round = 1; round <= ROUNDS; round++) {
    if (round > 1) {
      d = await startDaemon(t, data);
      const v = await showSession(data, s.id);
      t.is(v.status, 'running', `round ${round}`);
      t.is(v.export_name, 'restore-tgt');
      t.is(v.resumes, round - 1);
      t.is(v.served_by_pid, d.pid);
      t.true(v.blocks_owned >= lastDurableBlocks, `round ${round}: resumed with ${v.blocks_owned} blocks owned, ${lastDurableBlocks} were committed`);
    }
    const guests = [new Guest(t, d.uri('restore-tgt')), new Guest(t, d.unixUri('restore-tgt'))];
    for (const g of guests) {
      const hello = await g.ready;
      t.true(hello.ok, `round ${round}: ${hello.error}`);
    }

    // what the crash left: each byte written since the last flush holds its new value or its flushed one
    for (const [from, to, ws] of mergeRegions(uncertain)) {
      for (let off = from; off < to; off += MiB) {
        const len = Math.min(MiB, to - off);
        const a = await guests[0]!.read(off, len, true);
        t.true(a.ok, a.error);
        const got = Buffer.from(a.data!, 'base64');
        let bad = -1;
        for (let i = 0; i < len && bad < 0; i++) {
          const b = off + i;
          if (got[i] === durable[b]) continue;
          if (!ws.some((w) => b >= w.off && b < w.off + w.data.length && w.data[b - w.off] === got[i])) bad = b;
        }
        t.is(bad, -1, `round ${round}: byte ${bad} is neither its flushed value nor an unflushed write's`);
        got.copy(durable, off);
        got.copy(expected, off);
        totals.readBackBytes += len;
      }
    }
    for (const w of uncertain) {
      if (w.ack === null) continue;
      if (durable.subarray(w.off, w.off + w.data.length).equals(w.data)) totals.keptWrites++;
      else totals.lostWrites++;
    }
    t.true(expected.equals(durable));
    for (const [from, to] of mergeRegions(flushedLast)) {
      const a = await guests[1]!.read(from, to - from);
      t.true(a.ok, a.error);
      t.is(a.sha, shaHex(durable.subarray(from, to)), `round ${round}: a write made durable by a flush before the kill was lost (${from}+${to - from})`);
      totals.flushedChecked++;
    }

    // the guests' workload, and the kill
    const writes: Write[] = [];
    let seq = 0;
    let killed = false;
    const work = async (gi: number) => {
      const g = guests[gi]!;
      const rr = rng(round * 100 + gi);
      const lo = gi * HALF;
      const mine = extents.filter((e) => e.offset >= lo && e.offset < lo + HALF);
      while (!killed) {
        await new Promise((res) => setTimeout(res, randInt(rr, 0, 12))); // a guest thinks between requests
        let off = lo + randInt(rr, 0, HALF - 1);
        if (mine.length && rr() < 0.25) off = Math.max(lo, Math.min(lo + HALF - 1, mine[randInt(rr, 0, mine.length - 1)]!.offset + randInt(rr, -CHUNK, CHUNK)));
        const len = Math.min(lo + HALF - off, randInt(rr, 1, 96 * 1024));
        const k = rr();
        if (k < 0.3) {
          const a = await g.read(off, len);
          if (!a.ok) break;
          t.is(a.sha, shaHex(expected.subarray(off, off + len)), `round ${round}: read ${off}+${len}`);
          totals.reads++;
        } else if (k < 0.85) {
          const zero = k >= 0.75;
          const w: Write = { off, data: zero ? Buffer.alloc(len) : randomBytes(len), ack: null, durable: false };
          writes.push(w);
          const a = zero ? (rr() < 0.5 ? await g.trim(off, len) : await g.zero(off, len)) : await g.write(off, w.data);
          if (!a.ok) break;
          w.ack = ++seq;
          w.data.copy(expected, off);
          totals.writes++;
        } else {
          const issued = ++seq;
          const a = await g.flush();
          if (!a.ok) break;
          totals.flushes++;
          // everything acknowledged before the flush was sent is now durable
          for (const w of writes.filter((x) => !x.durable && x.ack !== null && x.ack < issued).sort((x, y) => x.ack! - y.ack!)) {
            w.durable = true;
            w.data.copy(durable, w.off);
            totals.flushedWrites++;
          }
        }
      }
    };
    const delay = round % 7 === 3 ? randInt(r, 0, 60) : randInt(r, 250, 1500);
    const killer = (async () => {
      await new Promise((res) => setTimeout(res, delay));
      killed = true;
      await d.kill('SIGKILL');
    })();
    await Promise.all([work(0), work(1), killer]);
    for (const g of guests) g.kill();
    // writes not covered by a flush (acknowledged or in flight) may or may not have survived;
    // those a flush made durable must read back exactly after the restart
    uncertain = writes.filter((w) => !w.durable);
    flushedLast = writes.filter((w) => w.durable);
    const v = await showSession(data, s.id);
    t.true(v.blocks_durable >= lastDurableBlocks, `round ${round}: committed progress went back`);
    lastDurableBlocks = v.blocks_durable;
    progress.push(`${v.blocks_durable}`);
    t.is(v.status, 'running', `round ${round}: the copy must still be running (throttled) for the kill to land mid-hydration`);
    t.true(v.blocks_durable < v.blocks_total);
  }

  // last restart: read back what the last kill left, let the copy finish, compare everything
  d = await startDaemon(t, data);
  const g = new Guest(t, d.uri('restore-tgt'));
  t.true((await g.ready).ok);
  for (const [from, to, ws] of mergeRegions(uncertain)) {
    const a = await g.read(from, to - from, true);
    const got = Buffer.from(a.data!, 'base64');
    for (let i = 0; i < got.length; i++) {
      const b = from + i;
      if (got[i] !== durable[b] && !ws.some((w) => b >= w.off && b < w.off + w.data.length && w.data[b - w.off] === got[i])) {
        t.fail(`final: byte ${b} is neither its flushed value nor an unflushed write's`);
        break;
      }
    }
    got.copy(durable, from);
  }
  await g.close();
  await bgJson(data, ['restore', 'throttle', s.id, '--rate', '0', '--concurrency', '4']);
  const done = await waitFor('completion', async () => {
    const v = await showSession(data, s.id);
    return v.status === 'completed' ? v : null;
  }, 60000);
  t.is(done.resumes, ROUNDS);
  await d.kill('SIGTERM');
  const tgt = (await bgJson<{ path: string; status: string }>(data, ['volume', 'show', 'tgt']));
  t.is(tgt.status, 'available');
  const final = fs.readFileSync(tgt.path);
  t.is(final.length, SIZE);
  let diff = -1;
  if (!final.equals(durable)) for (let i = 0; i < SIZE && diff < 0; i++) if (final[i] !== durable[i]) diff = i;
  t.is(diff, -1, 'the target equals the backup with every surviving write, bit for bit');
  t.log(`${ROUNDS} kills; ${totals.writes} writes acknowledged, ${totals.flushedWrites} made durable by ${totals.flushes} flushes, ${totals.reads} reads checked; ${totals.flushedChecked} flushed regions read back after kills; unflushed at a kill: ${totals.keptWrites} survived, ${totals.lostWrites} lost (allowed); ${(totals.readBackBytes / MiB).toFixed(1)} MiB read back after kills`);
  t.log(`committed blocks after each kill (of ${done.blocks_total}): ${progress.join(' ')}`);
  t.true(totals.flushedWrites > 100);
});

/** merges the ranges of writes into disjoint [from, to) regions, each with the writes over it */
function mergeRegions(ws: Write[]): [number, number, Write[]][] {
  const sorted = [...ws].sort((a, b) => a.off - b.off);
  const out: [number, number, Write[]][] = [];
  for (const w of sorted) {
    const last = out.at(-1);
    if (last && w.off <= last[1]) {
      last[1] = Math.max(last[1], w.off + w.data.length);
      last[2].push(w);
    } else out.push([w.off, w.off + w.data.length, [w]]);
  }
  return out;
}
