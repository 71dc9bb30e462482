/**
 * Backup benchmark: full backup, incremental after ~5% of blocks changed, and restore of a
 * realistic image, by blockgate, restic and borg (fixed 4 MiB chunker) in the same run;
 * then blockgate's peak RSS for a 1 GiB and an 8 GiB volume.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash } from 'node:crypto';
import { changeBlocks, makeFsImage, makeLargeImage } from './image.js';
import { measure, sh, warmCache } from './run.js';

export const CLI = fileURLToPath(new URL('../cli.js', import.meta.url));

export interface Row {
  suite: string;
  tool: string;
  op: string;
  seconds: number;
  mbps: number;
  rssMiB: number;
}

function fileSha(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
  for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  fs.closeSync(fd);
  return h.digest('hex');
}

export async function benchCore(work: string, sizeMiB: number): Promise<Row[]> {
  const rows: Row[] = [];
  const img = path.join(work, 'volume.img');
  const bytes = sizeMiB * 1024 * 1024;
  const row = (tool: string, op: string, m: { seconds: number; rssMiB: number }, moved = bytes) =>
    rows.push({ suite: 'backup', tool, op, seconds: m.seconds, mbps: moved / 1e6 / m.seconds, rssMiB: m.rssMiB });
  console.error(`bench: making a ${sizeMiB} MiB ext4 image`);
  makeFsImage(img, sizeMiB, work);

  // the image is read from the page cache by every tool: this VM's disk varies 4x from one cold
  // read to the next, which would drown the tools' own differences
  const warm = () => warmCache(img);
  const data = path.join(work, 'bg-data');
  const bg = (args: string[]) => measure(process.execPath, [CLI, '--data-dir', data, ...args]);
  const restic = path.join(work, 'restic-repo');
  const resticEnv = { RESTIC_PASSWORD: 'bench', RESTIC_REPOSITORY: restic, RESTIC_CACHE_DIR: path.join(work, 'restic-cache') };
  const borg = path.join(work, 'borg-repo');
  const borgEnv = { BORG_REPO: borg, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes', BORG_BASE_DIR: path.join(work, 'borg-base') };
  for (const d of [data, restic, borg]) fs.rmSync(d, { recursive: true, force: true });
  await sh(process.execPath, [CLI, '--data-dir', data, 'volume', 'create', '--name', 'vol', '--file', img]);
  await sh('restic', ['init', '-q'], resticEnv);
  await sh('borg', ['init', '--encryption=none'], borgEnv);

  console.error('bench: full backups');
  warm();
  row('blockgate', 'full backup', await bg(['backup', 'create', 'vol', '--name', 'full']));
  warm();
  row('restic', 'full backup', await measure('restic', ['backup', '-q', img], resticEnv));
  warm();
  row('borg', 'full backup', await measure('borg', ['create', '--chunker-params', 'fixed,4194304', '--read-special', '::full', img], borgEnv, work));

  const changed = changeBlocks(img, 0.05);
  console.error(`bench: incremental backups after changing ${changed} blocks`);
  warm();
  row('blockgate', 'incremental 5%', await bg(['backup', 'create', '--incremental', 'vol', '--name', 'inc']));
  warm();
  row('restic', 'incremental 5%', await measure('restic', ['backup', '-q', img], resticEnv));
  warm();
  row('borg', 'incremental 5%', await measure('borg', ['create', '--chunker-params', 'fixed,4194304', '--read-special', '::inc', img], borgEnv, work));

  console.error('bench: restores');
  const want = fileSha(img);
  const out = path.join(work, 'restore');
  for (const tool of ['blockgate', 'restic', 'borg']) {
    fs.rmSync(out, { recursive: true, force: true });
    fs.mkdirSync(out, { recursive: true });
    warm();
    let m;
    let file: string;
    if (tool === 'blockgate') {
      m = await bg(['-f', 'json', 'backup', 'restore', 'inc', '--name', `restored-${Date.now()}`]);
      file = (JSON.parse(m.stdout) as { path: string }).path;
    } else if (tool === 'restic') {
      m = await measure('restic', ['restore', 'latest', '--target', out], resticEnv);
      file = path.join(out, img);
    } else {
      m = await measure('borg', ['extract', '::inc'], borgEnv, out);
      file = path.join(out, img.replace(/^\//, ''));
    }
    if (fileSha(file) !== want) throw new Error(`${tool} restore is not bit-exact`);
    fs.rmSync(file, { force: true });
    row(tool, 'restore', m);
  }

  console.error('bench: RSS for 1 GiB vs 8 GiB volumes');
  for (const gib of [1, 8]) {
    const big = path.join(work, `big-${gib}.img`);
    makeLargeImage(big, gib * 1024, img);
    const d = path.join(work, `bg-rss-${gib}`);
    fs.rmSync(d, { recursive: true, force: true });
    await sh(process.execPath, [CLI, '--data-dir', d, 'volume', 'create', '--name', 'big', '--file', big]);
    warm();
    const m = await measure(process.execPath, [CLI, '--data-dir', d, 'backup', 'create', 'big']);
    row('blockgate', `full backup ${gib} GiB`, m, gib * 1024 ** 3);
    fs.rmSync(d, { recursive: true, force: true });
    fs.rmSync(big, { force: true });
  }
  for (const d of [data, restic, borg, out]) fs.rmSync(d, { recursive: true, force: true });
  return rows;
}
