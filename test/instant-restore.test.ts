/**
 * Instant restore end to end with real clients: the daemon as a child process, a 4 GiB
 * sparse backup, `backup restore --instant` answered within a second with URIs that
 * nbdinfo and qemu-img attach at once; while the copy runs (throttled), two libnbd guests
 * (TCP and unix socket) do random reads, writes, partial-block writes, trims, zeroes and
 * flushes, every read checked against the expected image (backup overlaid with the
 * writes); at completion the target file equals that image bit for bit.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import test from 'ava';
import {
  Guest, bg, bgJson, firstDifference, makeSparseImage, preadFile, preparedBackup, pwriteFile, randInt, rng, run, seededBytes, shaHex, showSession, startDaemon, tmpDir, waitFor,
  type SessionJson,
} from './helpers/instant.js';

const GiB = 1024 ** 3;

/** the daemon's own time from request to export, from its log line */
function startedMs(log: string[], id: string): number {
  const line = log.map((l) => JSON.parse(l) as { event?: string; session?: string; prepareMs: number; activateMs: number }).find((j) => j.event === 'instant-restore-started' && j.session === id);
  return line ? line.prepareMs + line.activateMs : Infinity;
}
const MiB = 1024 ** 2;
const CHUNK = MiB;

test('instant restore of a 4 GiB sparse backup: nbdinfo and qemu-img attach before hydration ends (times logged; npm run bench instant checks the 1 s target), guest I/O checked while hydrating, bit-exact at the end', async (t) => {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src.img');
  const extents = makeSparseImage(src, 4 * GiB, 40, 256 * 1024, 4242);
  const { data } = await preparedBackup(dir, src, { chunkSize: CHUNK });
  await bgJson(data, ['volume', 'create', '--name', 'tgt', '--size', '4G']);
  // the expected image: the backup, then every write of the guests
  const expected = path.join(dir, 'expected.img');
  execFileSync('cp', ['--sparse=always', src, expected]);
  const d = await startDaemon(t, data);

  const r = await bg(data, ['-f', 'json', 'backup', 'restore', 'full', 'tgt', '--instant', '--copy-rate', '16K', '--copy-concurrency', '2']);
  t.is(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout) as SessionJson;
  t.is(s.status, 'running');
  t.is(s.export_name, 'restore-tgt');
  t.is(s.uri, d.uri('restore-tgt'));
  t.is(s.unix_uri, d.unixUri('restore-tgt'));
  const info = await run('nbdinfo', ['--json', s.uri!]);
  const qemu = await run('qemu-img', ['info', '--output=json', '--image-opts', `driver=nbd,server.type=unix,server.path=${d.socket},export=restore-tgt`]);
  const served = startedMs(d.log, s.id);
  t.log(`backup restore --instant returned in ${r.ms.toFixed(0)} ms (daemon side ${served} ms; the rest is node starting the CLI on a shared machine); nbdinfo attached in ${info.ms.toFixed(0)} ms, qemu-img info in ${qemu.ms.toFixed(0)} ms`);
  t.true(Number.isFinite(served), 'the daemon logged its claim, prepare and export of the target');
  t.is(info.code, 0, info.stderr);
  t.is(qemu.code, 0, qemu.stderr);
  const ji = JSON.parse(info.stdout) as { exports: { 'export-size': number; 'is_read_only': boolean }[] };
  t.is(ji.exports[0]!['export-size'], 4 * GiB);
  t.false(ji.exports[0]!.is_read_only);
  t.is((JSON.parse(qemu.stdout) as { 'virtual-size': number })['virtual-size'], 4 * GiB);
  const backup = await bgJson<{ status: string }>(data, ['backup', 'show', 'full']);
  t.is(backup.status, 'restoring');
  t.is((await bgJson<{ status: string }>(data, ['volume', 'show', 'tgt'])).status, 'restoring-backup');

  // two guests on disjoint halves: TCP and unix socket
  const guests = [new Guest(t, s.uri!), new Guest(t, s.unix_uri!)];
  for (const g of guests) {
    const hello = await g.ready;
    t.true(hello.ok, hello.error);
    t.is(hello.size, 4 * GiB);
    t.true(hello.trim && hello.fua);
  }
  const stats = { reads: 0, writes: 0, partial: 0, trims: 0, zeroes: 0, flushes: 0, readsWhileHydrating: 0 };
  let hydrating = true;
  const half = 2 * GiB;
  const work = async (gi: number) => {
    const g = guests[gi]!;
    const rr = rng(100 + gi);
    const lo = gi * half;
    const near = extents.filter((e) => e.offset >= lo && e.offset < lo + half);
    for (let i = 0; i < 220; i++) {
      // half the requests near backup data (copy-on-read, bring-in), half anywhere
      let off: number;
      if (near.length && rr() < 0.6) {
        const e = near[randInt(rr, 0, near.length - 1)]!;
        off = Math.max(lo, e.offset + randInt(rr, -CHUNK, e.length));
      } else off = lo + randInt(rr, 0, half - 1);
      const len = Math.min(lo + half - off, randInt(rr, 1, 300 * 1024));
      const k = rr();
      if (k < 0.45) {
        const a = await g.read(off, len);
        t.true(a.ok, a.error);
        t.is(a.sha, shaHex(preadFile(expected, off, len)), `guest ${gi} op ${i}: read ${off}+${len}`);
        stats.reads++;
        if (hydrating) stats.readsWhileHydrating++;
      } else if (k < 0.75) {
        const buf = seededBytes(rr, len);
        const a = await g.write(off, buf, rr() < 0.1);
        t.true(a.ok, a.error);
        pwriteFile(expected, off, buf);
        stats.writes++;
        if (off % CHUNK !== 0 || len % CHUNK !== 0) stats.partial++;
      } else if (k < 0.85) {
        const n = Math.min(lo + half - off, randInt(rr, 1, 3 * CHUNK));
        const a = await g.trim(off, n);
        t.true(a.ok, a.error);
        pwriteFile(expected, off, Buffer.alloc(n));
        stats.trims++;
      } else if (k < 0.93) {
        const n = Math.min(lo + half - off, randInt(rr, 1, 3 * CHUNK));
        const a = await g.zero(off, n);
        t.true(a.ok, a.error);
        pwriteFile(expected, off, Buffer.alloc(n));
        stats.zeroes++;
      } else {
        const a = await g.flush();
        t.true(a.ok, a.error);
        stats.flushes++;
      }
    }
  };
  const watch = (async () => {
    while (hydrating) {
      const v = await showSession(data, 'restore-tgt');
      if (v.status !== 'running') hydrating = false;
      await new Promise((res) => setTimeout(res, 300));
    }
  })();
  await Promise.all([work(0), work(1)]);
  const mid = await showSession(data, 'restore-tgt');
  t.log(`guest: ${JSON.stringify(stats)}; session then ${mid.blocks_owned}/${mid.blocks_total} blocks, ${mid.rate_bps} B/s`);
  t.is(mid.status, 'running', 'the guests ran while the copy was still going (throttled)');
  t.true(stats.readsWhileHydrating > 50);
  t.true(mid.blocks_owned < mid.blocks_total);

  // let it finish
  await bgJson(data, ['restore', 'throttle', 'restore-tgt', '--rate', '0', '--concurrency', '4']);
  const done = await waitFor('completion', async () => {
    const v = await showSession(data, 'restore-tgt');
    return v.status === 'completed' ? v : null;
  });
  hydrating = false;
  await watch;
  t.is(done.blocks_owned, done.blocks_total);
  t.true(done.attached);
  t.is((await bgJson<{ status: string }>(data, ['backup', 'show', 'full'])).status, 'available');
  t.is((await bgJson<{ status: string }>(data, ['volume', 'show', 'tgt'])).status, 'available');
  // still served after completion, and reads still match
  for (let i = 0; i < 20; i++) {
    const e = extents[i]!;
    const a = await guests[e.offset < half ? 0 : 1]!.read(e.offset, e.length);
    t.is(a.sha, shaHex(preadFile(expected, e.offset, e.length)));
  }
  t.is((await run('nbdinfo', ['--size', s.uri!])).stdout.trim(), String(4 * GiB));
  for (const g of guests) await g.close();
  await d.kill('SIGTERM');

  const tgt = (await bgJson<{ path: string }>(data, ['volume', 'show', 'tgt'])).path;
  t.is(fs.statSync(tgt).size, 4 * GiB);
  t.is(firstDifference(tgt, expected), -1, 'the target equals the backup overlaid with the guests\' writes, bit for bit');
});
