/** The CLI hands `backup create --no-wait` and `backup restore` to the daemon's job module when one runs for the data dir. */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import type { JobRecord } from '../catalog/jobs.js';
import { controlRequest } from '../gateway/instant/control.js';
import { cliJson, tmpDir } from './helpers/core.js';
import { startApi, until, waitBackup } from './helpers/api.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

test('with a daemon running, backup create --no-wait and backup restore run as its jobs', async (t) => {
  const root = tmpDir(t);
  const data = path.join(root, 'data');
  const content = randomBytes(6 * 1024 * 1024);
  fs.writeFileSync(path.join(root, 'v.img'), content);
  await cliJson(data, ['volume', 'create', '--name', 'v', '--file', path.join(root, 'v.img')]);
  const d = await startApi(t, data, ['--workers', '1']);
  const b = await cliJson<{ id: string; status: string }>(data, ['backup', 'create', '--no-wait', '--name', 'nw', 'v']);
  t.is(b.status, 'creating');
  t.is(await waitBackup(d, b.id), 'available');
  const restored = await cliJson<{ path: string; status: string }>(data, ['backup', 'restore', 'nw', '--name', 'copy']);
  t.is(restored.status, 'available');
  t.is(sha(fs.readFileSync(restored.path)), sha(content));
  const jobs = await until('the jobs', async () => {
    const all = await controlRequest<JobRecord[]>(data, 'GET', '/jobs');
    return all.length === 2 && all.every((j) => j.status === 'done') ? all : undefined;
  });
  t.deepEqual(jobs.map((j) => j.kind), ['backup', 'restore']);
  t.true(jobs.every((j) => j.owner?.pid === d.child.pid), 'the daemon ran them');
});
