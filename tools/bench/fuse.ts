/**
 * FUSE benchmark: sequential read of a backup's disk image through `blockgate mount` with
 * `dd bs=1M` (first read after dropping the page cache, then again with caches warm), side
 * by side with `restic mount` reading the same image from a restic repository. The RSS
 * column is the peak RSS of the serving process (blockgate mount / restic mount).
 * Rounds interleave the two (blockgate, restic, blockgate, ...); rows are medians with min
 * and max. Target (DESIGN.md): blockgate at least 2x restic mount.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { CLI, type Row } from './core.js';
import { makeFsImage } from './image.js';
import { dropCaches, measure, peakRssMiB, sh } from './run.js';
import { ROUNDS, Samples } from './stats.js';
import { findMount, lazyUnmount } from '../../gateway/fuse/mount.js';

async function waitFor(what: string, ok: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`bench: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function stop(p: ChildProcess, mnt: string, signal: NodeJS.Signals): Promise<void> {
  if (p.exitCode === null && p.signalCode === null) {
    const done = new Promise((r) => p.once('exit', r));
    p.kill(signal);
    await Promise.race([done, new Promise((r) => setTimeout(r, 15_000))]);
    if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }
  if (await findMount(mnt)) await lazyUnmount(mnt).catch(() => undefined);
}

export async function benchFuse(work: string, sizeMiB: number): Promise<Row[]> {
  const samples = new Samples('fuse');
  const img = path.join(work, 'volume.img');
  if (!fs.existsSync(img) || fs.statSync(img).size !== sizeMiB * 1024 * 1024) makeFsImage(img, sizeMiB, work);
  const bytes = fs.statSync(img).size;
  const data = path.join(work, 'bg-fuse');
  const restic = path.join(work, 'restic-fuse');
  const resticEnv = { RESTIC_PASSWORD: 'bench', RESTIC_REPOSITORY: restic, RESTIC_CACHE_DIR: path.join(work, 'restic-fuse-cache') };
  const mnt = path.join(work, 'mnt-fuse');
  for (const d of [data, restic, resticEnv.RESTIC_CACHE_DIR]) fs.rmSync(d, { recursive: true, force: true });
  if (await findMount(mnt)) await lazyUnmount(mnt);
  fs.mkdirSync(mnt, { recursive: true, mode: 0o700 });

  const read = async (tool: string, file: string, server: ChildProcess) => {
    dropCaches();
    for (const op of ['dd first read', 'dd cached']) {
      const m = await measure('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M']);
      samples.time(tool, op, m.seconds, bytes, peakRssMiB(server.pid!));
    }
  };

  await sh(process.execPath, [CLI, '--data-dir', data, 'volume', 'create', '--name', 'vol', '--file', img]);
  await sh(process.execPath, [CLI, '--data-dir', data, 'backup', 'create', 'vol', '--name', 'b']);
  await sh('restic', ['init', '-q'], resticEnv);
  await sh('restic', ['backup', '-q', img], resticEnv);
  const blockgate = async () => {
    dropCaches();
    const bg = spawn(process.execPath, [CLI, '--data-dir', data, 'mount', mnt], { stdio: 'ignore' });
    try {
      await waitFor('blockgate mount', async () => (await findMount(mnt))?.source === `blockgate:${bg.pid}`);
      await read('blockgate', path.join(mnt, 'volumes', 'vol', 'b', 'disk.img'), bg);
    } finally {
      await stop(bg, mnt, 'SIGTERM');
    }
  };
  const resticMount = async () => {
    dropCaches();
    const rs = spawn('restic', ['mount', '--no-default-permissions', mnt], { stdio: 'ignore', env: { ...process.env, ...resticEnv } });
    const file = path.join(mnt, 'snapshots', 'latest', img);
    try {
      await waitFor('restic mount', async () => !!(await findMount(mnt)) && (await fs.promises.stat(file).then(() => true, () => false)));
      await read('restic', file, rs);
    } finally {
      await stop(rs, mnt, 'SIGINT');
    }
  };
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 ? [resticMount, blockgate] : [blockgate, resticMount];
    for (const f of order) {
      console.error(`bench: fuse round ${round + 1}/${ROUNDS} — ${f === blockgate ? 'blockgate' : 'restic'} mount`);
      await f();
    }
  }
  for (const d of [data, restic, resticEnv.RESTIC_CACHE_DIR]) fs.rmSync(d, { recursive: true, force: true });
  fs.rmdirSync(mnt);
  return samples.rows();
}
