/**
 * Packs benchmark (issue 16): blockgate with 4 MiB chunk objects against blockgate with
 * small blocks in packs, interleaved rounds, on the bench's ext4 image:
 *   - full backup (throughput, stored bytes, objects written);
 *   - scattered-write incremental: 0.1% of the 4 KiB blocks rewritten at random (a day of
 *     database page writes), bytes the repository grew by, beside what Cinder's 32 KiB-block
 *     driver would store (the touched 32 KiB blocks, zstd) and a 4 MiB-chunk design;
 *   - restore of the incremental, timed to durable;
 *   - NBD: nbdcopy first read and cached, and cold random 4 KiB reads (fio, a fresh daemon).
 * BENCH_PACK_BLOCKS=8,16,32,64 adds packed runs with those block sizes (KiB), the measurement
 * behind the default block size (docs/REPOSITORY.md).
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes, randomInt } from 'node:crypto';
import { compress } from '../../drivers/codec.js';
import { CLI, type Row } from './core.js';
import { makeFsImage } from './image.js';
import { dropCaches, measure, sh, warmCache } from './run.js';
import { ROUNDS, Samples } from './stats.js';
import { stop, waitPort } from './nbd.js';
import { spawn } from 'node:child_process';

const KiB = 1024;
const MiB = 1024 * KiB;

function treeBytes(dir: string): { bytes: number; files: number } {
  let bytes = 0;
  let files = 0;
  const walk = (d: string) => {
    if (!fs.existsSync(d)) return;
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else {
        bytes += fs.statSync(p).size;
        files++;
      }
    }
  };
  walk(dir);
  return { bytes, files };
}

/** what storing each touched `unit` block compressed (zstd) costs */
function touched(file: string, offsets: number[], unit: number): number {
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(unit);
  let total = 0;
  for (const u of new Set(offsets.map((o) => Math.floor(o / unit)))) {
    const n = fs.readSync(fd, buf, 0, unit, u * unit);
    total += compress('zstd', buf.subarray(0, n)).length;
  }
  fs.closeSync(fd);
  return total;
}

async function fioIops(uri: string, seconds: number): Promise<number> {
  const out = await sh('fio', ['--name=randread', '--ioengine=nbd', `--uri=${uri}`, '--rw=randread', '--bs=4k', '--iodepth=16', `--runtime=${seconds}`, '--time_based', '--output-format=json']);
  const j = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: { read: { iops: number } }[] };
  return j.jobs[0]!.read.iops;
}

export async function benchPacks(work: string, sizeMiB: number): Promise<Row[]> {
  const samples = new Samples('packs');
  const pristine = path.join(work, 'packs-pristine.img');
  const img = path.join(work, 'packs-volume.img');
  const bytes = sizeMiB * MiB;
  if (!fs.existsSync(pristine) || fs.statSync(pristine).size !== bytes) makeFsImage(pristine, sizeMiB, work);
  const blocks = (process.env.BENCH_PACK_BLOCKS ?? '16').split(',').map((k) => Number(k) * KiB);
  const designs = [
    { tool: 'blockgate 4M chunks', cfg: { chunkSize: 4 * MiB, packSize: 0 } },
    ...blocks.map((b) => ({ tool: `blockgate packed ${b / KiB}K`, cfg: { chunkSize: b, packSize: 32 * MiB } })),
  ];
  const port = 10871;
  const extra: Record<string, string> = {};
  for (let round = 0; round < ROUNDS; round++) {
    // one set of scattered writes per round, the same for every design
    const offsets: number[] = [];
    const seen = new Set<number>();
    while (offsets.length < Math.floor(bytes / 4096 / 1000)) {
      const o = randomInt(bytes / 4096) * 4096;
      if (!seen.has(o)) seen.add(o), offsets.push(o);
    }
    const writes = offsets.map(() => randomBytes(4096));
    for (let i = 0; i < designs.length; i++) {
      const d = designs[(i + round) % designs.length]!;
      console.error(`bench: packs round ${round + 1}/${ROUNDS} — ${d.tool}`);
      const data = path.join(work, 'bg-packs');
      fs.rmSync(data, { recursive: true, force: true });
      fs.mkdirSync(data, { recursive: true, mode: 0o700 });
      fs.writeFileSync(path.join(data, 'blockgate.json'), JSON.stringify({ ...d.cfg, codec: 'zstd' }), { mode: 0o600 });
      fs.copyFileSync(pristine, img);
      const bg = (args: string[]) => measure(process.execPath, [CLI, '--data-dir', data, ...args]);
      await sh(process.execPath, [CLI, '--data-dir', data, 'volume', 'create', '--name', 'vol', '--file', img]);
      const repo = path.join(data, 'repo');
      warmCache(img);
      const before = treeBytes(repo);
      const full = await bg(['backup', 'create', 'vol', '--name', 'full']);
      const afterFull = treeBytes(repo);
      samples.time(d.tool, 'full backup', full.seconds, bytes, full.rssMiB, afterFull.bytes - before.bytes);
      extra[`${d.tool}: objects written by the full backup`] = String(afterFull.files - before.files);
      const fd = fs.openSync(img, 'r+');
      offsets.forEach((o, k) => fs.writeSync(fd, writes[k]!, 0, 4096, o));
      fs.closeSync(fd);
      warmCache(img);
      const inc = await bg(['backup', 'create', '--incremental', 'vol', '--name', 'inc']);
      const grown = treeBytes(repo).bytes - afterFull.bytes;
      samples.time(d.tool, 'scattered incremental', inc.seconds, bytes, inc.rssMiB, grown);
      if (round === 0 && i === 0) {
        extra['scattered writes (4 KiB)'] = String(offsets.length);
        extra['Cinder 32 KiB blocks would store (touched blocks, zstd)'] = String(touched(img, offsets, 32 * KiB));
        extra['a 4 MiB-chunk design would store (touched chunks, zstd)'] = String(touched(img, offsets, 4 * MiB));
      }
      extra[`${d.tool}: scattered incremental stored (round ${round + 1})`] = String(grown);
      const r = await measure('/bin/sh', ['-c', '"$@" && sync', 'sh', process.execPath, CLI, '--data-dir', data, '-f', 'json', 'backup', 'restore', 'inc', '--name', 'restored']);
      samples.time(d.tool, 'restore', r.seconds, bytes, r.rssMiB);
      fs.rmSync((JSON.parse(r.stdout) as { path: string }).path, { force: true });
      // NBD: a fresh daemon with a cache that holds the image (first read, then cached)
      const uri = `nbd://127.0.0.1:${port}/vol@inc`;
      const serve = () => spawn(process.execPath, [CLI, '--data-dir', data, 'serve', '--nbd-port', String(port), '--nbd-socket', ''], { stdio: 'ignore', env: { ...process.env, BLOCKGATE_CACHE_BYTES: String(bytes + 256 * MiB) } });
      dropCaches();
      let p = serve();
      try {
        await waitPort(uri);
        for (const op of ['nbdcopy first read', 'nbdcopy cached']) {
          const m = await measure('nbdcopy', ['--requests=64', uri, 'null:']);
          samples.time(d.tool, op, m.seconds, bytes);
        }
      } finally {
        await stop(p);
      }
      // cold random 4 KiB reads: a fresh daemon, the default chunk cache, the page cache dropped
      dropCaches();
      p = spawn(process.execPath, [CLI, '--data-dir', data, 'serve', '--nbd-port', String(port), '--nbd-socket', ''], { stdio: 'ignore' });
      try {
        await waitPort(uri);
        const seconds = process.env.BENCH_QUICK === '1' ? 4 : 8;
        samples.rate(d.tool, 'fio randread 4k cold IOPS', await fioIops(uri, seconds), seconds);
      } finally {
        await stop(p);
      }
      fs.rmSync(data, { recursive: true, force: true });
    }
  }
  fs.rmSync(img, { force: true });
  for (const [k, v] of Object.entries(extra)) console.error(`bench: packs ${k}: ${v}`);
  packsNotes = extra;
  return samples.rows();
}

/** figures of the last run that are not rows (object counts, stored bytes per round, the bounds) */
export let packsNotes: Record<string, string> = {};
