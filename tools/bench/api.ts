/**
 * API benchmark (`npm run bench api`): the Cinder v3 API of `blockgate serve` under 16
 * concurrent clients — latency of backup-create (202 with the backup id; the job runs after)
 * and of backup-list (detail, 100+ backups) as median and p99 over ROUNDS interleaved rounds
 * (target: backup-create median under 50 ms) — and, with a Ceph cluster (CEPH_CONF), the RBD
 * incremental after ~5% of the blocks changed against the full backup, both submitted through
 * the API and timed from the POST to `available` (target: the incremental at least 20x faster).
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Appliance } from '../../gateway/appliance.js';
import { loadConfig } from '../../gateway/config.js';
import { createVolume } from '../../gateway/engine/volumes.js';
import { RbdVolume } from '../../drivers/volume/rbd.js';
import { CLI, type Row } from './core.js';
import { makeFsImage } from './image.js';
import { peakRssMiB, sh } from './run.js';
import { ROUNDS, median } from './stats.js';

const CLIENTS = 16;
const HEADERS = { 'content-type': 'application/json', 'x-user-id': 'admin', 'x-project-id': 'bench' };

interface Daemon {
  child: ChildProcess;
  url: string;
  stop(): Promise<void>;
}

async function serve(data: string, env: NodeJS.ProcessEnv = {}): Promise<Daemon> {
  // BENCH_API_NODE_ARGS: node flags for the daemon (e.g. `--cpu-prof --cpu-prof-dir=DIR` to see where its time goes)
  const nodeArgs = (process.env.BENCH_API_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const child = spawn(process.execPath, [...nodeArgs, CLI, '--data-dir', data, 'serve', '--nbd-port', '0', '--nbd-socket', '', '--api-port', '0', '--workers', '2'], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  const port = await new Promise<number>((resolve, reject) => {
    const log: string[] = [];
    createInterface({ input: child.stderr! }).on('line', (l) => {
      log.push(l);
      try {
        const j = JSON.parse(l) as { event?: string; port?: number; ms?: Record<string, number> };
        if (j.event === 'api-listening') resolve(j.port!);
        if (j.event === 'backup-steps') console.error(`bench api: backup steps (ms): ${JSON.stringify(j.ms)}`);
      } catch {
        /* not JSON */
      }
    });
    child.once('exit', (c) => reject(new Error(`blockgate serve exited ${c}: ${log.slice(-5).join('\n')}`)));
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return { child, url: `http://127.0.0.1:${port}`, stop: async () => { child.kill('SIGTERM'); await exited; } };
}

async function call(d: Daemon, method: string, route: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${d.url}${route}`, { method, headers: HEADERS, ...(body ? { body: JSON.stringify(body) } : {}) });
  const text = await res.text();
  return { status: res.status, json: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

async function backupDone(d: Daemon, id: string): Promise<void> {
  for (;;) {
    const r = await call(d, 'GET', `/v3/backups/${id}`);
    const s = (r.json.backup as { status: string; fail_reason: string | null }) ?? { status: `HTTP ${r.status}`, fail_reason: null };
    if (s.status === 'available') return;
    if (s.status !== 'creating') throw new Error(`backup ${id} ended ${s.status}: ${s.fail_reason}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

/** CLIENTS clients each sending `perClient` requests back to back; every latency in seconds */
async function load(perClient: number, one: (client: number, i: number) => Promise<void>): Promise<{ lat: number[]; wall: number }> {
  const lat: number[] = [];
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: CLIENTS }, async (_, c) => {
      for (let i = 0; i < perClient; i++) {
        const t = performance.now();
        await one(c, i);
        lat.push((performance.now() - t) / 1000);
      }
    }),
  );
  return { lat, wall: (performance.now() - t0) / 1000 };
}

async function latency(work: string): Promise<Row[]> {
  const perClient = process.env.BENCH_QUICK === '1' ? 8 : 16;
  const data = path.join(work, 'bg-api');
  fs.rmSync(data, { recursive: true, force: true });
  fs.mkdirSync(data, { recursive: true, mode: 0o700 });
  fs.writeFileSync(path.join(data, 'blockgate.json'), JSON.stringify({ chunkSize: 64 * 1024, api: { maxQueued: 100000 } }), { mode: 0o600 });
  // one small volume per request: a volume has one backup at a time, as in Cinder
  const vols: string[] = [];
  const app = await Appliance.open(loadConfig(data));
  try {
    const src = path.join(data, 'src');
    fs.mkdirSync(src, { mode: 0o700 });
    for (let i = 0; i < CLIENTS * perClient * ROUNDS; i++) {
      const f = path.join(src, `v${i}.img`);
      fs.writeFileSync(f, randomBytes(64 * 1024), { mode: 0o600 });
      vols.push((await createVolume(app, { name: `v${i}`, file: f, projectId: 'bench', userId: 'admin' })).id);
    }
  } finally {
    await app.close();
  }
  const d = await serve(data);
  const rows: Row[] = [];
  try {
    await call(d, 'PUT', '/v3/os-quota-sets/bench', { quota_set: { backups: -1, backup_gigabytes: -1 } });
    const create: number[] = [];
    const list: number[] = [];
    const roundMedians = { create: [] as number[], list: [] as number[] };
    let next = 0;
    let createWall = 0;
    let listWall = 0;
    for (let round = 0; round < ROUNDS; round++) {
      // interleaved: creates, then lists over what exists by then, each round
      const c = await load(perClient, async () => {
        const r = await call(d, 'POST', '/v3/backups', { backup: { volume_id: vols[next++], name: null, description: null, incremental: false, force: false, container: null, snapshot_id: null } });
        if (r.status !== 202) throw new Error(`backup-create: HTTP ${r.status} ${JSON.stringify(r.json)}`);
      });
      const l = await load(perClient, async () => {
        const r = await call(d, 'GET', '/v3/backups/detail');
        if (r.status !== 200) throw new Error(`backup-list: HTTP ${r.status}`);
      });
      create.push(...c.lat);
      list.push(...l.lat);
      roundMedians.create.push(median(c.lat));
      roundMedians.list.push(median(l.lat));
      createWall += c.wall;
      listWall += l.wall;
    }
    const rss = peakRssMiB(d.child.pid!);
    const add = (op: string, xs: number[], rounds: number[], wall: number, p: number) =>
      rows.push({ suite: 'api', tool: 'blockgate', op, seconds: p === 50 ? median(xs) : pct(xs, p), mbps: xs.length / wall, rssMiB: rss, ...(p === 50 ? { min: Math.min(...rounds), max: Math.max(...rounds), runs: ROUNDS } : {}) });
    add(`backup-create p50 (${CLIENTS} clients)`, create, roundMedians.create, createWall, 50);
    add(`backup-create p99 (${CLIENTS} clients)`, create, roundMedians.create, createWall, 99);
    add(`backup-list p50 (${CLIENTS} clients)`, list, roundMedians.list, listWall, 50);
    add(`backup-list p99 (${CLIENTS} clients)`, list, roundMedians.list, listWall, 99);
    console.error(`bench api: backup-create median ${(median(create) * 1000).toFixed(1)} ms, p99 ${(pct(create, 99) * 1000).toFixed(1)} ms; backup-list median ${(median(list) * 1000).toFixed(1)} ms, p99 ${(pct(list, 99) * 1000).toFixed(1)} ms (${create.length} requests each)`);
  } finally {
    await d.stop();
  }
  return rows;
}

async function rbdThroughApi(work: string, sizeMiB: number): Promise<Row[]> {
  const conf = process.env.CEPH_CONF;
  if (!conf) {
    console.error('bench api: no CEPH_CONF: the RBD incremental through the API is skipped (the rbd suite starts a cluster of its own)');
    return [];
  }
  const bytes = sizeMiB * 1024 * 1024;
  const pool = (process.env.BENCH_RBD_POOL ?? 'volumes').trim();
  const spec = `${pool}/bench-api-${Date.now().toString(36)}${randomBytes(2).toString('hex')}`;
  const env = { CEPH_CONF: conf };
  const data = path.join(work, 'bg-api-rbd');
  fs.rmSync(data, { recursive: true, force: true });
  const img = path.join(work, 'api-rbd.img');
  const rows: Row[] = [];
  let d: Daemon | undefined;
  try {
    console.error(`bench api: a ${sizeMiB} MiB ext4 image as RBD image ${spec}`);
    makeFsImage(img, sizeMiB, work);
    await sh('rbd', ['import', '--no-progress', img, spec], env);
    fs.rmSync(img, { force: true });
    await sh(process.execPath, [CLI, '--data-dir', data, 'volume', 'create', '--name', 'rv', '--rbd', spec, '--ceph-conf', conf, '--project', 'bench'], env);
    // each backup's steps (snapshot, diff, chunks, counts, commit...) are reported
    d = await serve(data, { ...env, BLOCKGATE_BACKUP_STEPS: '1' });
    const vol = ((await call(d, 'GET', '/v3/volumes/detail?name=rv')).json.volumes as { id: string }[])[0]!.id;
    const timed = async (incremental: boolean) => {
      const t = performance.now();
      const r = await call(d!, 'POST', '/v3/backups', { backup: { volume_id: vol, incremental } });
      if (r.status !== 202) throw new Error(`backup-create: HTTP ${r.status} ${JSON.stringify(r.json)}`);
      await backupDone(d!, (r.json.backup as { id: string }).id);
      return (performance.now() - t) / 1000;
    };
    const full: number[] = [];
    const inc: number[] = [];
    const block = 4 * 1024 * 1024;
    for (let round = 0; round < ROUNDS; round++) {
      full.push(await timed(false));
      const rv = new RbdVolume(spec, { conf });
      const dev = await rv.open('write');
      try {
        for (let i = 0; i < Math.floor(bytes / block); i++) if (((i + round * 7) * 2654435761) % 1000 < 50) await dev.write(i * block + 8192, randomBytes(64 * 1024));
        await dev.flush();
      } finally {
        await dev.close();
      }
      inc.push(await timed(true));
    }
    const rss = peakRssMiB(d.child.pid!);
    rows.push({ suite: 'api', tool: 'blockgate', op: 'rbd full backup (API)', seconds: median(full), mbps: bytes / 1e6 / median(full), rssMiB: rss, min: bytes / 1e6 / Math.max(...full), max: bytes / 1e6 / Math.min(...full), runs: ROUNDS });
    rows.push({ suite: 'api', tool: 'blockgate', op: 'rbd incremental 5% (API)', seconds: median(inc), mbps: bytes / 1e6 / median(inc), rssMiB: rss, min: bytes / 1e6 / Math.max(...inc), max: bytes / 1e6 / Math.min(...inc), runs: ROUNDS });
    console.error(`bench api: RBD through the API: full ${median(full).toFixed(2)} s, incremental 5% ${median(inc).toFixed(2)} s: ${(median(full) / median(inc)).toFixed(1)}x faster (target >= 20)`);
  } finally {
    await d?.stop();
    spawnSync('rbd', ['snap', 'purge', '--no-progress', spec], { env: { ...process.env, ...env }, stdio: 'ignore' });
    spawnSync('rbd', ['remove', '--no-progress', spec], { env: { ...process.env, ...env }, stdio: 'ignore' });
  }
  return rows;
}

export async function benchApi(work: string, sizeMiB: number): Promise<Row[]> {
  return [...(await latency(work)), ...(await rbdThroughApi(work, sizeMiB))];
}

// `node dist/tools/bench/api.js` runs this suite alone
if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const work = path.resolve(process.env.BENCH_DIR ?? '.bench');
  fs.mkdirSync(work, { recursive: true, mode: 0o700 });
  for (const r of await benchApi(work, Number(process.env.BENCH_SIZE_MIB ?? 2048))) console.log(`${r.op.padEnd(36)} ${(r.seconds * 1000).toFixed(1).padStart(9)} ms ${r.mbps.toFixed(1).padStart(8)} /s`);
}
