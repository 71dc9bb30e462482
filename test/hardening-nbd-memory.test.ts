/**
 * Issue 12, item 11 (NBD): memory under hostile load. 256 NBD connections each send one CACHE
 * of a whole 64 MiB backup (8 backups, 64 KiB chunks): the daemon's peak RSS (VmHWM of the
 * child) stays within its configured bound (its idle RSS + the chunk cache + twice the
 * server-wide in-flight budget (object and plaintext of a chunk) + slack for per-connection
 * state and GC lag), a 257th connection is refused cleanly
 * with a log line, and the first 256 keep working (their reads verified byte for byte).
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { cliJson, tmpDir, writeConfig } from './helpers/core.js';
import { startDaemon } from './helpers/daemon.js';
import { RawClient } from './helpers/nbd-rawclient.js';
import { rss } from './helpers/nbd-access.js';
import { MemDevice } from './helpers/nbd-devices.js';
import { BackupDevice } from '../gateway/devices/backup-device.js';
import { HydrateDevice } from '../gateway/devices/hydrate.js';
import type { MapReader } from '../catalog/blockmap.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BACKUPS = 8;
const SIZE = 64 * MiB;
const CONNS = 256;
const CACHE_BYTES = 32 * MiB;
const TOTAL_INFLIGHT = 64 * MiB;
/** per-connection state (sockets, parsers, promises) of 256 connections, GC lag */
const SLACK = 128 * MiB;
const CMD = { READ: 0, CACHE: 5 };

test('256 connections sending CACHE of the whole export keep the daemon within its memory bound; the 257th is refused, the rest keep working', async (t) => {
  t.timeout(10 * 60 * 1000);
  const dir = tmpDir(t, 'bg-nbdmem-');
  const dataDir = path.join(dir, 'data');
  writeConfig(dataDir, {
    chunkSize: 64 * KiB,
    codec: 'lz4',
    cacheBytes: CACHE_BYTES,
    nbd: { maxConnections: CONNS, maxInFlightRequests: 16, maxInFlightBytes: '1M', maxTotalInFlightBytes: TOTAL_INFLIGHT },
  } as never);
  const data: Buffer[] = [];
  for (let i = 0; i < BACKUPS; i++) {
    const img = path.join(dir, `v${i}.img`);
    data.push(randomBytes(SIZE));
    fs.writeFileSync(img, data[i]!);
    await cliJson(dataDir, ['volume', 'create', '--name', `v${i}`, '--file', img]);
    await cliJson(dataDir, ['backup', 'create', `v${i}`, '--name', 'b']);
    fs.rmSync(img);
  }
  const d = await startDaemon(t, dataDir);
  const pid = d.child.pid!;
  await new Promise((r) => setTimeout(r, 1000));
  const idle = await rss(pid);

  const clients: RawClient[] = [];
  t.teardown(() => clients.forEach((c) => c.destroy()));
  for (let i = 0; i < CONNS; i++) {
    const c = await RawClient.connect(d.port);
    clients.push(c);
    await c.greet();
    const info = await c.go(`v${i % BACKUPS}@b`);
    t.is(info.size, SIZE);
  }
  // every connection asks for the whole export at once
  for (const [i, c] of clients.entries()) c.request(CMD.CACHE, 0, SIZE, { cookie: BigInt(i) });
  const cached = Promise.all(clients.map((c) => c.readSimple()));

  // one more is refused while they work: closed before any greeting, and logged
  const extra = await RawClient.connect(d.port);
  t.teardown(() => extra.destroy());
  const greeted = await extra.greet().then(
    () => true,
    () => false,
  );
  t.false(greeted, 'a connection beyond the limit gets no greeting');
  await extra.closed;

  const replies = await cached;
  t.true(replies.every((r) => r.error === 0), 'every CACHE succeeds');
  t.true(d.log.some((l) => /"event":"connection-refused"/.test(l) && /connection limit of 256/.test(l)), 'refusal logged');

  // the first ones keep working: random reads, verified
  let wrong = 0;
  await Promise.all(
    clients.map(async (c, i) => {
      for (let k = 0; k < 4; k++) {
        const len = (1 + Math.floor(Math.random() * 16)) * 4 * KiB;
        const off = Math.floor(Math.random() * ((SIZE - len) / 512)) * 512;
        c.request(CMD.READ, off, len, { cookie: BigInt(k) });
        const r = await c.readSimple(len);
        if (r.error !== 0 || !r.data.equals(data[i % BACKUPS]!.subarray(off, off + len))) wrong++;
      }
    }),
  );
  t.is(wrong, 0);

  const peak = await rss(pid);
  // a chunk in flight may exist twice (its object as read and its plaintext)
  const bound = idle.rss + CACHE_BYTES + 2 * TOTAL_INFLIGHT + SLACK;
  t.log(`daemon RSS idle ${(idle.rss / MiB).toFixed(0)} MiB, peak (VmHWM) ${(peak.hwm / MiB).toFixed(0)} MiB, bound ${(bound / MiB).toFixed(0)} MiB; ${BACKUPS} backups of ${SIZE / MiB} MiB cached by ${CONNS} connections`);
  t.true(peak.hwm <= bound, `VmHWM ${(peak.hwm / MiB).toFixed(0)} MiB over the bound of ${(bound / MiB).toFixed(0)} MiB`);
});

/** counts reads in flight at once */
function gauge() {
  const g = { now: 0, max: 0, total: 0 };
  const track = async <T>(p: () => Promise<T>): Promise<T> => {
    g.now++;
    g.total++;
    g.max = Math.max(g.max, g.now);
    try {
      await new Promise((r) => setImmediate(r));
      return await p();
    } finally {
      g.now--;
    }
  };
  return { g, track };
}

test('BackupDevice.cache and HydrateDevice.cache of a whole device read a few blocks at a time, not the range at once', async (t) => {
  const bs = 64 * KiB;
  const blocks = 512;
  const data = randomBytes(bs * blocks);
  const { g, track } = gauge();
  const map = { entry: (i: number) => (i < blocks ? String(i) : null) } as unknown as MapReader;
  const backup = new BackupDevice(bs * blocks, bs, map, { read: (d: string) => track(async () => data.subarray(Number(d) * bs, (Number(d) + 1) * bs)) });
  await backup.cache(0, bs * blocks);
  t.is(g.total, blocks);
  t.true(g.max <= 8, `BackupDevice.cache had ${g.max} chunk reads in flight`);

  const h = gauge();
  const target = new MemDevice(bs * blocks);
  const hydrate = new HydrateDevice(target, { size: bs * blocks, isHole: () => false, read: (b) => h.track(async () => data.subarray(b * bs, (b + 1) * bs)) }, { blockSize: bs });
  t.teardown(() => hydrate.close());
  await hydrate.cache(0, bs * blocks);
  t.is(h.g.total, blocks);
  t.true(h.g.max <= 8, `HydrateDevice.cache had ${h.g.max} block reads in flight`);
  t.true((await target.read(0, bs * blocks)).equals(data), 'the target holds the backup afterwards');
});
