/**
 * Memory benchmark: peak RSS of `backup create` at 64 KiB chunks for a 1 GiB and a 64 GiB
 * volume of the same make-up (sparse files: one distinct random 64 KiB block every 4 MiB,
 * so the 64 GiB one writes 16384 new chunks and 2048 map pages), each run three times, the
 * median RSS kept. Memory must be bounded by configuration, not by volume size: DESIGN.md's
 * target is the 64 GiB peak within 10% of the 1 GiB one.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { CLI, type Row } from './core.js';
import { ROUNDS, median } from './stats.js';
import { measure } from './run.js';

const MiB = 1024 * 1024;

function sparseImage(file: string, gib: number): void {
  const fd = fs.openSync(file, 'w');
  const size = gib * 1024 * MiB;
  for (let off = 0; off < size; off += 4 * MiB) fs.writeSync(fd, randomBytes(64 * 1024), 0, 64 * 1024, off);
  fs.ftruncateSync(fd, size);
  fs.closeSync(fd);
}


export async function benchMemory(work: string): Promise<Row[]> {
  const rows: Row[] = [];
  const sizes = [1, 64];
  for (const gib of sizes) {
    const img = path.join(work, `sparse-${gib}g.img`);
    console.error(`bench: memory: a sparse ${gib} GiB image`);
    sparseImage(img, gib);
    const rss: number[] = [];
    const secs: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const data = path.join(work, `bg-mem-${gib}`);
      fs.rmSync(data, { recursive: true, force: true });
      fs.mkdirSync(data, { recursive: true, mode: 0o700 });
      fs.writeFileSync(path.join(data, 'blockgate.json'), JSON.stringify({ chunkSize: 64 * 1024 }), { mode: 0o600 });
      await measure(process.execPath, [CLI, '--data-dir', data, 'volume', 'create', '--name', 'v', '--file', img]);
      const m = await measure(process.execPath, [CLI, '--data-dir', data, 'backup', 'create', 'v']);
      rss.push(m.rssMiB);
      secs.push(m.seconds);
      fs.rmSync(data, { recursive: true, force: true });
    }
    fs.rmSync(img, { force: true });
    const s = median(secs);
    rows.push({ suite: 'memory', tool: 'blockgate', op: `backup 64K chunks ${gib} GiB`, seconds: s, mbps: (gib * 1024 * MiB) / 1e6 / s, rssMiB: median(rss) });
    console.error(`bench: memory ${gib} GiB: RSS median ${median(rss).toFixed(0)} MiB [${Math.min(...rss).toFixed(0)}–${Math.max(...rss).toFixed(0)}], ${s.toFixed(1)} s`);
  }
  return rows;
}
