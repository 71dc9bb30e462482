/**
 * Repository scale (issue 9, "the repository is the truth"): `repo gc` and `catalog rebuild`
 * on a repository of 1000 backups, and full `backup verify` against `backup restore` (to
 * durable) of the bench image.
 *
 * The 1000 backups (64 KiB chunks, ten 4–8 MiB volumes, a few chunks of one volume changed
 * before each backup, so every backup has its own page and a few chunks of its own) are made
 * in this process through the engine: that is setup, not measured. Every measured command is
 * the CLI in its own process (run.ts `measure`), in interleaved rounds, reported as the median
 * with min and max. BENCH_QUICK=1: one round and 200 backups. BENCH_REPO_BACKUPS overrides
 * the count.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes, randomFillSync } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { Appliance } from '../../gateway/appliance.js';
import { runBackup, startBackup } from '../../gateway/engine/backup.js';
import { createVolume } from '../../gateway/engine/volumes.js';
import { deleteBackup } from '../../gateway/engine/delete.js';
import { CLI, type Row } from './core.js';
import { makeFsImage } from './image.js';
import { measure, sh } from './run.js';

export const SUITE = 'repo-scale';

/** a row of this suite: seconds and mbps are the median round's; min/max and every round kept */
export interface ScaleRow extends Row {
  key: 'startup' | 'gc' | 'gc-after-delete' | 'rebuild' | 'verify' | 'restore';
  rounds: number[];
  min: number;
  max: number;
  /** backups in the repository measured (gc, rebuild), or deleted before the gc (gc-after-delete) */
  backups?: number;
}

const SMALL_CHUNK = 64 * 1024;
const VOLUMES = 10;
const CHANGED_PER_BACKUP = 3;

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

function flush(): void {
  spawnSync('sync');
}

/** a volume image: per 64 KiB chunk, 20% holes, 40% random (incompressible), 40% text */
function fillVolume(file: string, bytes: number, seed: number): void {
  const buf = Buffer.alloc(bytes);
  for (let c = 0; c < bytes / SMALL_CHUNK; c++) {
    const kind = (c * 7 + seed * 3) % 10;
    if (kind < 2) continue;
    const part = buf.subarray(c * SMALL_CHUNK, (c + 1) * SMALL_CHUNK);
    if (kind < 6) {
      randomFillSync(part);
    } else {
      let text = '';
      for (let j = 0; text.length < SMALL_CHUNK; j++) text += `vol${seed} chunk ${c} line ${j} ${(c * 2654435761 + j * 40503) >>> 0} backup page extent journal\n`;
      part.write(text.slice(0, SMALL_CHUNK));
    }
  }
  fs.writeFileSync(file, buf, { mode: 0o600 });
}

/** changes a few chunks of a volume (4 KiB of new random data in each) */
function touchVolume(fd: number, bytes: number): void {
  const chunks = bytes / SMALL_CHUNK;
  for (let k = 0; k < CHANGED_PER_BACKUP; k++) {
    const c = Math.floor(Math.random() * chunks);
    const at = c * SMALL_CHUNK + 4096 * Math.floor(Math.random() * (SMALL_CHUNK / 4096));
    fs.writeSync(fd, randomBytes(4096), 0, 4096, at);
  }
}

/** Makes `count` backups of ten small volumes in-process; returns their ids, oldest first. */
async function makeRepository(dataDir: string, volDir: string, count: number): Promise<string[]> {
  fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  fs.mkdirSync(volDir, { recursive: true, mode: 0o700 });
  fs.writeFileSync(path.join(dataDir, 'blockgate.json'), JSON.stringify({ chunkSize: SMALL_CHUNK }) + '\n', { mode: 0o600 });
  const app = await Appliance.open(dataDir);
  const ids: string[] = [];
  try {
    const vols: { name: string; fd: number; bytes: number }[] = [];
    for (let v = 0; v < VOLUMES; v++) {
      const bytes = (4 + (v % 5)) * 1024 * 1024;
      const file = path.join(volDir, `v${v}.img`);
      fillVolume(file, bytes, v);
      await createVolume(app, { name: `v${v}`, file });
      vols.push({ name: `v${v}`, fd: fs.openSync(file, 'r+'), bytes });
    }
    const start = Date.now();
    for (let i = 0; i < count; i++) {
      const v = vols[i % VOLUMES]!;
      if (i >= VOLUMES) touchVolume(v.fd, v.bytes);
      const rec = await startBackup(app, { volume: v.name, incremental: i >= VOLUMES, name: `b${i}` });
      const done = await runBackup(app, rec);
      if (done.status !== 'available') throw new Error(`setup backup ${i} ended ${done.status}: ${done.fail_reason}`);
      ids.push(done.id);
      if ((i + 1) % 100 === 0) console.error(`bench: repo-scale: ${i + 1}/${count} backups made in-process (${((Date.now() - start) / 1000).toFixed(1)} s)`);
    }
    for (const v of vols) fs.closeSync(v.fd);
  } finally {
    await app.close();
  }
  return ids;
}

function dirStats(dir: string): { files: number; bytes: number } {
  let files = 0;
  let bytes = 0;
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        files++;
        bytes += fs.statSync(p).size;
      }
    }
  };
  if (fs.existsSync(dir)) walk(dir);
  return { files, bytes };
}

export async function benchRepo(work: string, sizeMiB: number): Promise<Row[]> {
  const quick = process.env.BENCH_QUICK === '1';
  const count = Number(process.env.BENCH_REPO_BACKUPS ?? (quick ? 200 : 1000));
  const rounds = quick ? 1 : 3;
  const toDelete = Math.max(1, Math.round(count / 10));
  const rows: ScaleRow[] = [];
  const base = path.join(work, 'repo-scale');
  fs.rmSync(base, { recursive: true, force: true });
  fs.mkdirSync(base, { recursive: true, mode: 0o700 });
  const node = process.execPath;

  const report = (key: ScaleRow['key'], op: string, secs: number[], rss: number[], bytes?: number, backups?: number) => {
    const med = median(secs);
    const row: ScaleRow = {
      suite: SUITE,
      tool: 'blockgate',
      op,
      seconds: med,
      mbps: bytes ? bytes / 1e6 / med : 0,
      rssMiB: Math.max(...rss),
      key,
      rounds: secs,
      min: Math.min(...secs),
      max: Math.max(...secs),
      backups,
    };
    rows.push(row);
    console.error(`bench: repo-scale ${op}: median ${med.toFixed(2)} s [${row.min.toFixed(2)}–${row.max.toFixed(2)}] over ${secs.length} round(s)${bytes ? `, ${row.mbps.toFixed(1)} MB/s` : ''}, peak RSS ${row.rssMiB.toFixed(0)} MiB`);
  };

  // ---- 1. gc and rebuild of a repository of `count` backups
  const data = path.join(base, 'data');
  const repoDir = path.join(data, 'repo');
  console.error(`bench: repo-scale: making ${count} backups of ${VOLUMES} small volumes (64 KiB chunks) in-process`);
  const setupStart = Date.now();
  const ids = await makeRepository(data, path.join(base, 'vols'), count);
  const stats = { chunks: dirStats(path.join(repoDir, 'chunks')), pages: dirStats(path.join(repoDir, 'pages')), manifests: dirStats(path.join(repoDir, 'manifests')) };
  console.error(
    `bench: repo-scale: ${count} backups in ${((Date.now() - setupStart) / 1000).toFixed(1)} s; repository: ${stats.manifests.files} manifests, ` +
      `${stats.pages.files} pages (${(stats.pages.bytes / 2 ** 20).toFixed(1)} MiB), ${stats.chunks.files} chunks (${(stats.chunks.bytes / 2 ** 20).toFixed(1)} MiB)`,
  );

  const rebuildDir = path.join(base, 'rebuild');
  const freshRebuildDir = () => {
    fs.rmSync(rebuildDir, { recursive: true, force: true });
    fs.mkdirSync(rebuildDir, { recursive: true, mode: 0o700 });
    fs.writeFileSync(path.join(rebuildDir, 'blockgate.json'), JSON.stringify({ repository: { driver: 'dir', path: repoDir } }) + '\n', { mode: 0o600 });
  };
  // what every figure here includes: the CLI's own start (node, modules), no repository work
  const upSecs: number[] = [];
  const upRss: number[] = [];
  const gcSecs: number[] = [];
  const gcRss: number[] = [];
  const rbSecs: number[] = [];
  const rbRss: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const u = await measure(node, [CLI, '--help']);
    upSecs.push(u.seconds);
    upRss.push(u.rssMiB);

    flush();
    const g = await measure(node, [CLI, '--data-dir', data, '-f', 'json', 'repo', 'gc']);
    const gr = JSON.parse(g.stdout) as { liveBackups: number; removedChunks: number; removedPages: number };
    if (gr.liveBackups !== count) throw new Error(`gc saw ${gr.liveBackups} live backups, not ${count}`);
    console.error(`bench: repo-scale gc round ${r + 1}: ${g.seconds.toFixed(2)} s (removed ${gr.removedChunks} chunks, ${gr.removedPages} pages)`);
    gcSecs.push(g.seconds);
    gcRss.push(g.rssMiB);

    freshRebuildDir(); // an empty catalog on the same repository, outside the timing
    flush();
    const b = await measure(node, [CLI, '--data-dir', rebuildDir, '-f', 'json', 'catalog', 'rebuild']);
    const br = JSON.parse(b.stdout) as { added: number; errors: unknown[]; pagesAdded: number; chunksIndexed: number };
    if (br.added !== count || br.errors.length) throw new Error(`rebuild added ${br.added} of ${count} backups, ${br.errors.length} error(s): ${JSON.stringify(br.errors.slice(0, 3))}`);
    console.error(`bench: repo-scale rebuild round ${r + 1}: ${b.seconds.toFixed(2)} s (${br.pagesAdded} pages, ${br.chunksIndexed} chunks indexed)`);
    rbSecs.push(b.seconds);
    rbRss.push(b.rssMiB);
  }
  report('startup', 'cli start (--help)', upSecs, upRss);
  report('gc', `gc ${count} backups`, gcSecs, gcRss, undefined, count);
  report('rebuild', `rebuild ${count} backups`, rbSecs, rbRss, undefined, count);

  // one gc that sweeps: the oldest tenth of the backups deleted first (outside the timing)
  {
    const app = await Appliance.open(data);
    try {
      for (const id of ids.slice(0, toDelete)) await deleteBackup(app, id);
    } finally {
      await app.close();
    }
    flush();
    const g = await measure(node, [CLI, '--data-dir', data, '-f', 'json', 'repo', 'gc']);
    const gr = JSON.parse(g.stdout) as { liveBackups: number; removedChunks: number; removedPages: number; removedManifests: number; freedBytes: number };
    if (gr.liveBackups !== count - toDelete) throw new Error(`gc after deleting ${toDelete} saw ${gr.liveBackups} live backups, not ${count - toDelete}`);
    console.error(
      `bench: repo-scale gc after deleting ${toDelete}: ${g.seconds.toFixed(2)} s (removed ${gr.removedChunks} chunks, ${gr.removedPages} pages, ` +
        `${(gr.freedBytes / 2 ** 20).toFixed(1)} MiB)`,
    );
    report('gc-after-delete', `gc after deleting ${toDelete}`, [g.seconds], [g.rssMiB], undefined, toDelete);
  }
  fs.rmSync(base, { recursive: true, force: true });
  fs.mkdirSync(base, { recursive: true, mode: 0o700 });

  // ---- 2. full verify against restore to durable, on the bench image (default 4 MiB chunks)
  const imgMiB = quick ? Math.min(sizeMiB, 256) : sizeMiB;
  const img = path.join(base, 'vr.img');
  console.error(`bench: repo-scale: making a ${imgMiB} MiB ext4 image for verify vs restore`);
  makeFsImage(img, imgMiB, base);
  const bytes = imgMiB * 1024 * 1024;
  const vr = path.join(base, 'vr-data');
  await sh(node, [CLI, '--data-dir', vr, 'volume', 'create', '--name', 'vol', '--file', img]);
  await sh(node, [CLI, '--data-dir', vr, 'backup', 'create', 'vol', '--name', 'vr']);
  const vSecs: number[] = [];
  const vRss: number[] = [];
  const rSecs: number[] = [];
  const rRss: number[] = [];
  for (let r = 0; r < rounds; r++) {
    flush();
    const v = await measure(node, [CLI, '--data-dir', vr, '-f', 'json', 'backup', 'verify', 'vr']);
    const vs = JSON.parse(v.stdout) as { backups_failed: number; chunks_checked: number; bytes_read: number };
    if (vs.backups_failed) throw new Error(`verify failed: ${v.stdout.slice(0, 500)}`);
    console.error(`bench: repo-scale verify round ${r + 1}: ${v.seconds.toFixed(2)} s (${vs.chunks_checked} chunks, ${(vs.bytes_read / 2 ** 20).toFixed(0)} MiB read)`);
    vSecs.push(v.seconds);
    vRss.push(v.rssMiB);

    flush();
    const m = await measure(node, [CLI, '--data-dir', vr, '-f', 'json', 'backup', 'restore', 'vr', '--name', `r${r}`]);
    const file = (JSON.parse(m.stdout) as { path: string }).path;
    const t = process.hrtime.bigint();
    const s = spawnSync('sync', [file]); // fsync of the restored file: durable, as a restore must be
    if (s.status !== 0) throw new Error(`sync ${file} failed: ${s.stderr}`);
    const syncSecs = Number(process.hrtime.bigint() - t) / 1e9;
    console.error(`bench: repo-scale restore round ${r + 1}: ${(m.seconds + syncSecs).toFixed(2)} s (of which fsync ${syncSecs.toFixed(2)} s)`);
    rSecs.push(m.seconds + syncSecs);
    rRss.push(m.rssMiB);
    fs.rmSync(file, { force: true });
  }
  // both over the volume's size, so their ratio is the ratio of times
  report('verify', 'verify (full)', vSecs, vRss, bytes);
  report('restore', 'restore + fsync', rSecs, rRss, bytes);
  fs.rmSync(base, { recursive: true, force: true });
  return rows;
}
