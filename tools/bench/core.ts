/**
 * Backup benchmark: full backup, incremental after ~5% of blocks changed, and restore (made
 * durable: every tool's restore is timed with a `sync`) of a realistic image, by blockgate,
 * restic and borg (fixed 4 MiB chunker). Each round gives every tool a fresh repository and
 * runs the tools one after the other (A B C A B C ...), cleanup and the image's reset outside
 * the timing; rows are medians with min and max, plus the bytes each repository stored.
 * Then blockgate's peak RSS for a 1 GiB and an 8 GiB volume.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash } from 'node:crypto';
import { changeBlocks, makeFsImage, makeLargeImage } from './image.js';
import { measure, sh, warmCache } from './run.js';
import { ROUNDS, Samples } from './stats.js';

export const CLI = fileURLToPath(new URL('../cli.js', import.meta.url));

export interface Row {
  suite: string;
  tool: string;
  op: string;
  seconds: number;
  mbps: number;
  rssMiB: number;
  /** throughput (the mbps column) of the slowest and fastest round, when there were rounds */
  min?: number;
  max?: number;
  runs?: number;
  /** bytes the operation added to its repository (median of the rounds) */
  storedBytes?: number;
}

function fileSha(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(8 * 1024 * 1024);
  for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  fs.closeSync(fd);
  return h.digest('hex');
}

/** bytes of every file under `dir` (apparent sizes) */
export function treeBytes(dir: string): number {
  let n = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) n += fs.statSync(path.join(e.parentPath, e.name)).size;
  }
  return n;
}

interface Tool {
  name: string;
  repo: string;
  init(): Promise<void>;
  full(): Promise<{ seconds: number; rssMiB: number }>;
  incremental(): Promise<{ seconds: number; rssMiB: number }>;
  /** restores the incremental into `out`, returns the restored file */
  restore(out: string): Promise<{ m: { seconds: number; rssMiB: number }; file: string }>;
}

export async function benchCore(work: string, sizeMiB: number): Promise<Row[]> {
  const rows: Row[] = [];
  const img = path.join(work, 'volume.img');
  const pristine = path.join(work, 'volume.pristine.img');
  const bytes = sizeMiB * 1024 * 1024;
  console.error(`bench: making a ${sizeMiB} MiB ext4 image`);
  makeFsImage(img, sizeMiB, work);
  fs.copyFileSync(img, pristine);

  // the image is read from the page cache by every tool: this VM's disk varies 4x from one cold
  // read to the next, which would drown the tools' own differences
  const warm = () => warmCache(img);
  const data = path.join(work, 'bg-data');
  const restic = path.join(work, 'restic-repo');
  const resticEnv = { RESTIC_PASSWORD: 'bench', RESTIC_REPOSITORY: restic, RESTIC_CACHE_DIR: path.join(work, 'restic-cache') };
  const borg = path.join(work, 'borg-repo');
  const borgEnv = { BORG_REPO: borg, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes', BORG_BASE_DIR: path.join(work, 'borg-base') };
  const bg = (args: string[]) => measure(process.execPath, [CLI, '--data-dir', data, ...args]);
  // every restore is timed to durable: the tool, then sync, in one measured command
  const durable = (cmd: string, args: string[], env: NodeJS.ProcessEnv = {}, cwd?: string) =>
    measure('/bin/sh', ['-c', '"$@" && sync', 'sh', cmd, ...args], env, cwd);
  const borgCreate = (name: string) => measure('borg', ['create', '--chunker-params', 'fixed,4194304', '--read-special', `::${name}`, img], borgEnv, work);
  const tools: Tool[] = [
    {
      name: 'blockgate',
      repo: path.join(data, 'repo'),
      init: async () => void (await sh(process.execPath, [CLI, '--data-dir', data, 'volume', 'create', '--name', 'vol', '--file', img])),
      full: () => bg(['backup', 'create', 'vol', '--name', 'full']),
      incremental: () => bg(['backup', 'create', '--incremental', 'vol', '--name', 'inc']),
      restore: async (out) => {
        const m = await durable(process.execPath, [CLI, '--data-dir', data, '-f', 'json', 'backup', 'restore', 'inc', '--name', `restored-${Date.now()}`]);
        return { m, file: (JSON.parse(m.stdout) as { path: string }).path };
      },
    },
    {
      name: 'restic',
      repo: restic,
      init: async () => void (await sh('restic', ['init', '-q'], resticEnv)),
      full: () => measure('restic', ['backup', '-q', img], resticEnv),
      incremental: () => measure('restic', ['backup', '-q', img], resticEnv),
      restore: async (out) => ({ m: await durable('restic', ['restore', 'latest', '--target', out], resticEnv), file: path.join(out, img) }),
    },
    {
      name: 'borg',
      repo: borg,
      init: async () => void (await sh('borg', ['init', '--encryption=none'], borgEnv)),
      full: () => borgCreate('full'),
      incremental: () => borgCreate('inc'),
      restore: async (out) => ({ m: await durable('borg', ['extract', '::inc'], borgEnv, out), file: path.join(out, img.replace(/^\//, '')) }),
    },
  ];
  const clean = () => {
    for (const d of [data, restic, borg, resticEnv.RESTIC_CACHE_DIR, borgEnv.BORG_BASE_DIR]) fs.rmSync(d, { recursive: true, force: true });
  };
  const samples = new Samples('backup');
  const out = path.join(work, 'restore');
  for (let round = 0; round < ROUNDS; round++) {
    console.error(`bench: backup round ${round + 1}/${ROUNDS}`);
    clean();
    fs.copyFileSync(pristine, img);
    const want = fileSha(img);
    // A B C in a different order each round, so no tool always runs first
    const order = tools.map((_, i) => tools[(i + round) % tools.length]!);
    const before = new Map<string, number>();
    for (const t of order) {
      await t.init();
      warm();
      const m = await t.full();
      const stored = treeBytes(t.repo);
      before.set(t.name, stored);
      samples.time(t.name, 'full backup', m.seconds, bytes, m.rssMiB, stored);
    }
    const changed = changeBlocks(img, 0.05);
    console.error(`bench: incremental backups after changing ${changed} blocks`);
    const wantInc = fileSha(img);
    for (const t of order) {
      warm();
      const m = await t.incremental();
      samples.time(t.name, 'incremental 5%', m.seconds, bytes, m.rssMiB, treeBytes(t.repo) - before.get(t.name)!);
    }
    for (const t of order) {
      fs.rmSync(out, { recursive: true, force: true });
      fs.mkdirSync(out, { recursive: true, mode: 0o700 });
      warm();
      const { m, file } = await t.restore(out);
      if (fileSha(file) !== wantInc) throw new Error(`${t.name} restore is not bit-exact`);
      fs.rmSync(file, { force: true });
      samples.time(t.name, 'restore', m.seconds, bytes, m.rssMiB);
    }
    if (want === wantInc) throw new Error('bench: the 5% change changed nothing');
  }
  rows.push(...samples.rows());
  fs.copyFileSync(pristine, img);
  fs.rmSync(pristine, { force: true });

  console.error('bench: RSS for 1 GiB vs 8 GiB volumes');
  const rss = new Samples('backup');
  for (let round = 0; round < ROUNDS; round++) {
    for (const gib of [1, 8]) {
      const big = path.join(work, `big-${gib}.img`);
      makeLargeImage(big, gib * 1024, img);
      const d = path.join(work, `bg-rss-${gib}`);
      fs.rmSync(d, { recursive: true, force: true });
      await sh(process.execPath, [CLI, '--data-dir', d, 'volume', 'create', '--name', 'big', '--file', big]);
      warmCache(big);
      const m = await measure(process.execPath, [CLI, '--data-dir', d, 'backup', 'create', 'big']);
      rss.time('blockgate', `full backup ${gib} GiB`, m.seconds, gib * 1024 ** 3, m.rssMiB);
      fs.rmSync(d, { recursive: true, force: true });
      fs.rmSync(big, { force: true });
    }
  }
  rows.push(...rss.rows());
  clean();
  fs.rmSync(out, { recursive: true, force: true });
  return rows;
}
