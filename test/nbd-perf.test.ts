/**
 * Read throughput: `nbdcopy URI null:` from our server against `nbdkit file` serving the
 * same raw file, over unix sockets, median of alternating runs. The in-memory device stands
 * for the backup read path with chunks cached (reads return slices of cached buffers); the
 * file device is the plain pread path.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BlockDevice } from '../blockdev/types.js';
import { FileDevice } from './helpers/nbd-devices.js';
import { runOk, startServer, tempDir } from './helpers/nbd-harness.js';

const MiB = 1024 * 1024;

async function timeCopy(uri: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  await runOk('nbdcopy', [uri, 'null:'], { timeoutMs: 120_000 });
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

test('nbdcopy to null: throughput compared with nbdkit file on the same data', async (t) => {
  t.timeout(120_000);
  const dir = await tempDir(t);
  const img = join(dir, 'img.raw');
  await runOk('bash', ['-c', `head -c ${384 * MiB} /dev/urandom > '${img}'`]);
  const bytes = await readFile(img);
  const cached: BlockDevice = { size: bytes.length, readOnly: true, canMultiConn: true, read: async (o, l) => bytes.subarray(o, o + l) };
  const file = await FileDevice.open(img);
  t.teardown(() => file.close());
  const h = await startServer(t, { cached: { device: cached }, file: { device: file } });
  const ours = join(dir, 'ours.sock');
  await h.server.listenUnix(ours);

  const kitSock = join(dir, 'kit.sock');
  const kit = spawn('nbdkit', ['-f', '--exit-with-parent', '-U', kitSock, 'file', img], { stdio: 'ignore' });
  t.teardown(() => {
    if (kit.exitCode === null) kit.kill('SIGKILL');
  });
  for (let i = 0; i < 100 && !existsSync(kitSock); i++) await new Promise((r) => setTimeout(r, 50));

  const uris = {
    nbdkit: `nbd+unix:///?socket=${kitSock}`,
    cached: `nbd+unix:///cached?socket=${ours}`,
    file: `nbd+unix:///file?socket=${ours}`,
  };
  const times: Record<keyof typeof uris, number[]> = { nbdkit: [], cached: [], file: [] };
  await timeCopy(uris.nbdkit); // warm the page cache and the clients
  for (let i = 0; i < 5; i++) {
    for (const k of Object.keys(uris) as Array<keyof typeof uris>) times[k].push(await timeCopy(uris[k]));
  }
  const mbps = (s: number) => Math.round(bytes.length / MiB / s);
  const kitT = median(times.nbdkit);
  const cachedRatio = kitT / median(times.cached);
  const fileRatio = kitT / median(times.file);
  t.log(`nbdkit file ${mbps(kitT)} MiB/s; ours cached ${mbps(median(times.cached))} MiB/s (${cachedRatio.toFixed(2)}x); ours file ${mbps(median(times.file))} MiB/s (${fileRatio.toFixed(2)}x)`);
  // design target is 0.8x for cached data (measured 1.1-1.2x alone); the bounds are loose so that
  // other test files running on the same 2 cores do not make this flaky, yet a lost pipeline fails
  t.true(cachedRatio >= 0.5, `cached read path at ${cachedRatio.toFixed(2)}x of nbdkit file`);
  t.true(fileRatio >= 0.2, `file read path at ${fileRatio.toFixed(2)}x of nbdkit file`);
});
