/**
 * NBD benchmark: `nbdcopy` of a backup export to null: (first read with a cold chunk cache,
 * then cached) against `nbdkit file` and `qemu-nbd` serving the same image as a raw file;
 * random 4 KiB read IOPS with fio's nbd engine against the same three servers. Each round
 * starts every server afresh (page cache dropped), the servers interleaved A B C A B C ...;
 * rows are medians with min and max.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { CLI, type Row } from './core.js';
import { makeFsImage } from './image.js';
import { dropCaches, measure, sh } from './run.js';
import { ROUNDS, Samples } from './stats.js';

function startServer(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  return spawn(cmd, args, { stdio: 'ignore', env: { ...process.env, ...env } });
}

export async function waitPort(uri: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    try {
      await sh('nbdinfo', ['--size', uri]);
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`${uri} did not come up`);
}

export async function stop(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const done = new Promise((r) => p.on('exit', r));
  p.kill('SIGTERM');
  await done;
}

async function fioIops(uri: string): Promise<number> {
  const out = await sh('fio', ['--name=randread', '--ioengine=nbd', `--uri=${uri}`, '--rw=randread', '--bs=4k', '--iodepth=32', '--runtime=8', '--time_based', '--output-format=json']);
  const j = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: { read: { iops: number } }[] };
  return j.jobs[0]!.read.iops;
}

export async function benchNbd(work: string, sizeMiB: number): Promise<Row[]> {
  const samples = new Samples('nbd');
  const img = path.join(work, 'volume.img');
  if (!fs.existsSync(img) || fs.statSync(img).size !== sizeMiB * 1024 * 1024) makeFsImage(img, sizeMiB, work);
  const bytes = fs.statSync(img).size;
  const data = path.join(work, 'bg-nbd');
  fs.rmSync(data, { recursive: true, force: true });
  await sh(process.execPath, [CLI, '--data-dir', data, 'volume', 'create', '--name', 'vol', '--file', img]);
  await sh(process.execPath, [CLI, '--data-dir', data, 'backup', 'create', 'vol', '--name', 'b']);
  const port = 10870;
  const copy = async (tool: string, op: string, uri: string) => {
    const m = await measure('nbdcopy', ['--requests=64', uri, 'null:']);
    samples.time(tool, op, m.seconds, bytes);
  };
  const iops = async (tool: string, uri: string) => samples.rate(tool, 'fio randread 4k IOPS', await fioIops(uri), 8);

  const servers: { tool: string; uri: string; start: () => ChildProcess }[] = [
    {
      tool: 'blockgate',
      uri: `nbd://127.0.0.1:${port}/vol@b`,
      // a cache that holds the whole image, so the second read is served from memory
      start: () => startServer(process.execPath, [CLI, '--data-dir', data, 'serve', '--nbd-port', String(port), '--nbd-socket', ''], { BLOCKGATE_CACHE_BYTES: String(bytes + 512 * 1024 * 1024) }),
    },
    { tool: 'nbdkit-file', uri: `nbd://127.0.0.1:${port}`, start: () => startServer('nbdkit', ['-f', '-r', '-i', '127.0.0.1', '-p', String(port), 'file', img]) },
    { tool: 'qemu-nbd', uri: `nbd://127.0.0.1:${port}`, start: () => startServer('qemu-nbd', ['-r', '-t', '-b', '127.0.0.1', '-p', String(port), '-f', 'raw', '--shared=8', img]) },
  ];
  for (let round = 0; round < ROUNDS; round++) {
    for (let i = 0; i < servers.length; i++) {
      const s = servers[(i + round) % servers.length]!;
      console.error(`bench: nbd round ${round + 1}/${ROUNDS} — ${s.tool}`);
      dropCaches();
      const p = s.start();
      try {
        await waitPort(s.uri);
        await copy(s.tool, 'nbdcopy first read', s.uri);
        await copy(s.tool, 'nbdcopy cached', s.uri);
        await iops(s.tool, s.uri);
      } finally {
        await stop(p);
      }
    }
  }
  fs.rmSync(data, { recursive: true, force: true });
  return samples.rows();
}
