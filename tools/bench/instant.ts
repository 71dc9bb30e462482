/**
 * Instant-restore benchmark: attach time of `backup restore --instant` for a 1 GiB and a
 * 64 GiB (sparse) backup — the CLI's wall time until nbdinfo answers, and the daemon's own
 * time; hydration throughput against a plain `backup restore` of the same backup; and a
 * guest's random 4 KiB read latency while hydrating (copy held to 64 MB/s so the reads land
 * during it) and once hydrated.
 * BENCH_INSTANT_BIG_GIB sets the large size (default 64).
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { controlRequest } from '../../gateway/instant/control.js';
import type { SessionView } from '../../gateway/instant/sessions.js';
import { CLI, type Row } from './core.js';
import { makeFsImage } from './image.js';
import { dropCaches, measure, peakRssMiB, sh } from './run.js';

const GiB = 1024 ** 3;

interface Daemon {
  child: ChildProcess;
  port: number;
  log: Record<string, unknown>[];
}

async function startDaemon(data: string): Promise<Daemon> {
  const child = spawn(process.execPath, [CLI, '--data-dir', data, 'serve', '--nbd-port', '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
  const log: Record<string, unknown>[] = [];
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('daemon did not start')), 30000);
    createInterface({ input: child.stderr! }).on('line', (line) => {
      try {
        const j = JSON.parse(line) as Record<string, unknown>;
        log.push(j);
        if (j.event === 'listening') {
          clearTimeout(timer);
          resolve(j.port as number);
        }
      } catch {
        /* not JSON */
      }
    });
    child.on('exit', (code) => reject(new Error(`daemon exited ${code}`)));
  });
  return { child, port, log };
}

async function stopDaemon(d: Daemon): Promise<void> {
  if (d.child.exitCode !== null || d.child.signalCode !== null) return;
  const done = new Promise((r) => d.child.on('exit', r));
  d.child.kill('SIGTERM');
  await done;
}

/** a sparse image with 16 MiB of random data scattered over it */
function sparseImage(file: string, bytes: number): void {
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, bytes);
  for (let i = 0; i < 16; i++) fs.writeSync(fd, randomBytes(1024 * 1024), 0, 1024 * 1024, Math.floor(((i + 0.5) * bytes) / 16 / 4096) * 4096);
  fs.closeSync(fd);
}

const bg = (data: string, args: string[]) => sh(process.execPath, [CLI, '--data-dir', data, ...args]);
const bgJson = async <T>(data: string, args: string[]) => JSON.parse(await bg(data, ['-f', 'json', ...args])) as T;

async function waitCompleted(data: string, id: string, timeoutMs: number): Promise<SessionView> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await controlRequest<SessionView>(data, 'GET', `/restores/${id}`);
    if (v.status === 'completed') return v;
    if (v.status !== 'running') throw new Error(`session ${id} is ${v.status}: ${v.status_reason}`);
    if (Date.now() > until) throw new Error(`session ${id} did not complete within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const LATENCY_PY = String.raw`
import sys, time, random, json, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
n = int(sys.argv[2]); lat = []
random.seed(7)
for i in range(n):
    off = random.randrange(0, size // 4096) * 4096
    t = time.perf_counter(); h.pread(4096, off); lat.append(time.perf_counter() - t)
h.shutdown()
lat.sort()
print(json.dumps({"p50": lat[len(lat)//2], "p99": lat[min(len(lat)-1, int(len(lat)*0.99))], "mean": sum(lat)/len(lat), "n": n}))
`;

async function readLatency(uri: string, n: number): Promise<{ p50: number; p99: number; mean: number }> {
  const out = await sh('/usr/bin/python3', ['-c', LATENCY_PY, uri, String(n)]);
  return JSON.parse(out) as { p50: number; p99: number; mean: number };
}

export async function benchInstant(work: string, sizeMiB: number): Promise<Row[]> {
  const rows: Row[] = [];
  const dir = path.join(work, 'instant');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const data = path.join(dir, 'bg-data');
  const big = Number(process.env.BENCH_INSTANT_BIG_GIB ?? 64);

  // 1. attach time, small and large
  for (const gib of [1, big]) {
    console.error(`bench: instant restore: backing up a ${gib} GiB sparse volume`);
    const img = path.join(dir, `sparse-${gib}g.img`);
    sparseImage(img, gib * GiB);
    await bg(data, ['volume', 'create', '--name', `sparse${gib}`, '--file', img]);
    await bg(data, ['backup', 'create', `sparse${gib}`, '--name', `sparse${gib}`]);
    fs.rmSync(img);
  }
  const d = await startDaemon(data);
  try {
    for (const gib of [1, big]) {
      await bg(data, ['volume', 'create', '--name', `t${gib}`, '--size', `${gib}G`]);
      const t0 = process.hrtime.bigint();
      const v = await bgJson<SessionView>(data, ['backup', 'restore', `sparse${gib}`, `t${gib}`, '--instant']);
      const cli = Number(process.hrtime.bigint() - t0) / 1e9;
      await sh('nbdinfo', ['--size', v.uri!]);
      const attach = Number(process.hrtime.bigint() - t0) / 1e9;
      const line = d.log.find((j) => j.event === 'instant-restore-started' && j.session === v.id) as { prepareMs: number; activateMs: number } | undefined;
      const daemonS = line ? (line.prepareMs + line.activateMs) / 1000 : NaN;
      rows.push({ suite: 'instant', tool: 'blockgate', op: `attach ${gib} GiB (CLI+nbdinfo)`, seconds: attach, mbps: 0, rssMiB: 0 });
      rows.push({ suite: 'instant', tool: 'blockgate', op: `attach ${gib} GiB (daemon)`, seconds: daemonS, mbps: 0, rssMiB: 0 });
      console.error(`bench: attach ${gib} GiB: CLI ${cli.toFixed(3)} s, attached after ${attach.toFixed(3)} s, daemon ${daemonS.toFixed(3)} s`);
      await waitCompleted(data, v.id, 600_000);
    }

    // 2. hydration throughput against a plain restore of the same backup
    console.error(`bench: instant restore: a ${sizeMiB} MiB filesystem image`);
    const img = path.join(dir, 'fs.img');
    makeFsImage(img, sizeMiB, dir);
    await bg(data, ['volume', 'create', '--name', 'fsvol', '--file', img]);
    await bg(data, ['backup', 'create', 'fsvol', '--name', 'fs']);
    const bytes = fs.statSync(img).size;
    dropCaches();
    const plain = await measure(process.execPath, [CLI, '--data-dir', data, 'backup', 'restore', 'fs', '--name', 'plain']);
    rows.push({ suite: 'instant', tool: 'blockgate', op: 'restore (plain)', seconds: plain.seconds, mbps: bytes / 1e6 / plain.seconds, rssMiB: plain.rssMiB });

    dropCaches();
    await bg(data, ['volume', 'create', '--name', 'hyd', '--size', String(bytes)]);
    const t0 = process.hrtime.bigint();
    const v = await controlRequest<SessionView>(data, 'POST', '/restores', { backup: 'fs', volume: 'hyd' });
    await waitCompleted(data, v.id, 1_800_000);
    const secs = Number(process.hrtime.bigint() - t0) / 1e9;
    rows.push({ suite: 'instant', tool: 'blockgate', op: 'hydrate (instant)', seconds: secs, mbps: bytes / 1e6 / secs, rssMiB: peakRssMiB(d.child.pid!) });
    console.error(`bench: plain restore ${plain.seconds.toFixed(2)} s, hydration ${secs.toFixed(2)} s (ratio ${(plain.seconds / secs).toFixed(2)})`);

    // 3. a guest's random 4 KiB reads while hydrating, and once hydrated
    dropCaches();
    await bg(data, ['volume', 'create', '--name', 'lat', '--size', String(bytes)]);
    // the copy held to 64 MB/s so that the reads land while it runs (a real volume hydrates for minutes)
    const w = await controlRequest<SessionView>(data, 'POST', '/restores', { backup: 'fs', volume: 'lat', rate: 64_000_000 });
    const during = await readLatency(w.uri!, 400);
    const still = await controlRequest<SessionView>(data, 'GET', `/restores/${w.id}`);
    await controlRequest(data, 'POST', `/restores/${w.id}/throttle`, { rate: 0 });
    await waitCompleted(data, w.id, 1_800_000);
    const after = await readLatency(w.uri!, 400);
    rows.push({ suite: 'instant', tool: 'blockgate', op: 'guest 4k read p50 hydrating', seconds: during.p50, mbps: 0, rssMiB: 0 });
    rows.push({ suite: 'instant', tool: 'blockgate', op: 'guest 4k read p99 hydrating', seconds: during.p99, mbps: 0, rssMiB: 0 });
    rows.push({ suite: 'instant', tool: 'blockgate', op: 'guest 4k read p50 hydrated', seconds: after.p50, mbps: 0, rssMiB: 0 });
    rows.push({ suite: 'instant', tool: 'blockgate', op: 'guest 4k read p99 hydrated', seconds: after.p99, mbps: 0, rssMiB: 0 });
    console.error(`bench: guest 4k reads while hydrating (${still.percent}% done after them): p50 ${(during.p50 * 1000).toFixed(2)} ms, p99 ${(during.p99 * 1000).toFixed(2)} ms; hydrated: p50 ${(after.p50 * 1000).toFixed(2)} ms, p99 ${(after.p99 * 1000).toFixed(2)} ms`);
  } finally {
    await stopDaemon(d);
  }
  fs.rmSync(dir, { recursive: true, force: true });
  return rows;
}
