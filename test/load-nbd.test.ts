/**
 * Load (issue 12): 64 NBD clients read random ranges of 8 backups for about two minutes, each
 * read verified against the source image, while other volumes are backed up 4 at a time and
 * their previous backups deleted and garbage-collected, over and over. Zero wrong bytes, zero
 * errors (NBD and CLI), and the daemon's peak RSS within its bound.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { cli, cliJson, mixedContent, mutate, tmpDir, writeConfig } from './helpers/core.js';
import { startDaemon } from './helpers/daemon.js';
import { RawClient } from './helpers/nbd-rawclient.js';
import { rss } from './helpers/nbd-access.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const CHUNK = 64 * KiB;
const READ_BACKUPS = 8;
const READ_SIZE = 16 * MiB;
const CLIENTS = 64;
const CHURN = 4;
const CHURN_SIZE = 16 * MiB;
const CACHE_BYTES = 32 * MiB;
const TOTAL_INFLIGHT = 64 * MiB;
const SLACK = 128 * MiB;
const DURATION_MS = Number(process.env.LOAD_SECONDS ?? 100) * 1000;
const CMD_READ = 0;

/** reassembles a structured read reply (data, hole, none chunks) into bytes; throws on an error chunk */
function assemble(chunks: { type: number; payload: Buffer }[], offset: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (const c of chunks) {
    if (c.type === 0) continue;
    if (c.type === 1) c.payload.copy(out, Number(c.payload.readBigUInt64BE(0)) - offset, 8);
    else if (c.type === 2) out.fill(0, Number(c.payload.readBigUInt64BE(0)) - offset, Number(c.payload.readBigUInt64BE(0)) - offset + c.payload.readUInt32BE(8));
    else throw new Error(`error chunk type ${c.type}: ${c.payload.subarray(6).toString()}`);
  }
  return out;
}

test('64 NBD clients read 8 backups (verified) while backups, deletes and GC run: no wrong byte, no error, RSS bounded', async (t) => {
  t.timeout(DURATION_MS + 5 * 60 * 1000);
  const dir = tmpDir(t, 'bg-load-');
  const dataDir = path.join(dir, 'data');
  writeConfig(dataDir, {
    chunkSize: CHUNK,
    cacheBytes: CACHE_BYTES,
    nbd: { maxInFlightBytes: '4M', maxTotalInFlightBytes: TOTAL_INFLIGHT },
  } as never);
  const sources: Buffer[] = [];
  for (let i = 0; i < READ_BACKUPS; i++) {
    const img = path.join(dir, `r${i}.img`);
    sources.push(mixedContent(READ_SIZE, CHUNK, i + 1));
    fs.writeFileSync(img, sources[i]!);
    await cliJson(dataDir, ['volume', 'create', '--name', `r${i}`, '--file', img]);
    await cliJson(dataDir, ['backup', 'create', `r${i}`, '--name', 'b']);
  }
  const churn: { img: string; data: Buffer }[] = [];
  for (let i = 0; i < CHURN; i++) {
    const img = path.join(dir, `c${i}.img`);
    const data = mixedContent(CHURN_SIZE, CHUNK);
    fs.writeFileSync(img, data);
    churn.push({ img, data });
    await cliJson(dataDir, ['volume', 'create', '--name', `c${i}`, '--file', img]);
  }
  const d = await startDaemon(t, dataDir);
  const pid = d.child.pid!;
  await new Promise((r) => setTimeout(r, 1000));
  const idle = await rss(pid);
  const deadline = Date.now() + DURATION_MS;

  let reads = 0;
  let bytes = 0;
  let wrong = 0;
  const errors: string[] = [];
  const clients: RawClient[] = [];
  t.teardown(() => clients.forEach((c) => c.destroy()));
  const reader = async (i: number) => {
    const c = await RawClient.connect(d.port);
    clients.push(c);
    await c.greet();
    const structured = i % 2 === 1;
    const b = i % READ_BACKUPS;
    await c.go(`r${b}@b`, { structured });
    const src = sources[b]!;
    let cookie = 0n;
    while (Date.now() < deadline) {
      const len = (1 + Math.floor(Math.random() * 256)) * 4 * KiB;
      const off = Math.floor(Math.random() * ((READ_SIZE - len) / 512 + 1)) * 512;
      c.request(CMD_READ, off, len, { cookie: ++cookie });
      try {
        let got: Buffer;
        if (structured) got = assemble(await c.readStructured(), off, len);
        else {
          const r = await c.readSimple(len);
          if (r.error) throw new Error(`NBD error ${r.error}`);
          got = r.data;
        }
        if (!got.equals(src.subarray(off, off + len))) wrong++;
        reads++;
        bytes += len;
      } catch (e) {
        errors.push(`client ${i} read ${off}+${len}: ${(e as Error).message}`);
        return;
      }
    }
  };

  let cycles = 0;
  const churner = async () => {
    let previous: string[] = [];
    while (Date.now() < deadline || cycles === 0) {
      for (const c of churn) {
        mutate(c.data, CHUNK, 40);
        randomBytes(CHUNK).copy(c.data, Math.floor(Math.random() * (CHURN_SIZE / CHUNK)) * CHUNK);
        fs.writeFileSync(c.img, c.data);
      }
      const made = await Promise.all(churn.map((_, i) => cli(dataDir, ['-f', 'json', 'backup', 'create', `c${i}`, '--name', `n${cycles}`])));
      const ids: string[] = [];
      for (const r of made) {
        if (r.code !== 0) errors.push(`backup create: ${r.stderr}`);
        else ids.push((JSON.parse(r.stdout) as { id: string }).id);
      }
      for (const id of previous) {
        const r = await cli(dataDir, ['backup', 'delete', id]);
        if (r.code !== 0) errors.push(`backup delete: ${r.stderr}`);
      }
      previous = ids;
      const gc = await cli(dataDir, ['-f', 'json', 'repo', 'gc']);
      if (gc.code !== 0) errors.push(`repo gc: ${gc.stderr}`);
      cycles++;
    }
  };

  await Promise.all([...Array.from({ length: CLIENTS }, (_, i) => reader(i)), churner()]);
  const peak = await rss(pid);
  const bound = idle.rss + CACHE_BYTES + 2 * TOTAL_INFLIGHT + SLACK;
  t.log(`${reads} verified reads (${(bytes / MiB).toFixed(0)} MiB) by ${CLIENTS} clients in ${DURATION_MS / 1000} s; ${cycles} cycles of ${CHURN} backups + delete + gc`);
  t.log(`daemon RSS idle ${(idle.rss / MiB).toFixed(0)} MiB, peak (VmHWM) ${(peak.hwm / MiB).toFixed(0)} MiB, bound ${(bound / MiB).toFixed(0)} MiB`);
  t.deepEqual(errors, []);
  t.is(wrong, 0);
  t.true(reads > CLIENTS, 'the clients did read');
  t.true(cycles >= 1);
  t.true(peak.hwm <= bound, `VmHWM ${(peak.hwm / MiB).toFixed(0)} MiB over the bound of ${(bound / MiB).toFixed(0)} MiB`);
  // after all that, every backup is still whole (GC took nothing a backup names)
  const v = await cli(dataDir, ['-f', 'json', 'backup', 'verify', '--all']);
  t.is(v.code, 0, v.stderr);
  const summary = JSON.parse(v.stdout) as { backups_failed: number; backups_ok: number };
  t.is(summary.backups_failed, 0);
  t.true(summary.backups_ok >= READ_BACKUPS);
});
