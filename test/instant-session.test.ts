/**
 * Instant-restore sessions through the CLI and a real daemon: no daemon -> a clear error;
 * one restore into a volume at a time; list/show with progress; cancel (volume
 * error_restoring, export gone, attached guest gets errors); restore into a new volume with
 * --detach-on-complete; a completed session still served after a restart until detached;
 * cancel with no daemon running; bad options.
 */
import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { Catalog } from '../catalog/catalog.js';
import {
  Guest, bg, bgJson, firstDifference, makeSparseImage, preparedBackup, run, showSession, startDaemon, tmpDir, waitFor, type SessionJson,
} from './helpers/instant.js';

const MiB = 1024 ** 2;

async function setup(t: ExecutionContext) {
  const dir = tmpDir(t);
  const src = path.join(dir, 'src.img');
  makeSparseImage(src, 64 * MiB, 24, 512 * 1024, 77);
  const { data, backupId } = await preparedBackup(dir, src, { chunkSize: 256 * 1024 });
  await bgJson(data, ['volume', 'create', '--name', 'tgt', '--size', '64M']);
  return { dir, src, data, backupId };
}

const status = async (data: string, what: 'backup' | 'volume', ref: string) => (await bgJson<{ status: string; status_reason?: string | null }>(data, [what, 'show', ref]));

test('no daemon: --instant says how to start one and changes nothing', async (t) => {
  const { data } = await setup(t);
  const r = await bg(data, ['backup', 'restore', 'full', 'tgt', '--instant']);
  t.is(r.code, 1);
  t.regex(r.stderr, /no blockgate daemon is running for .*; start it with blockgate serve/);
  t.is((await status(data, 'backup', 'full')).status, 'available');
  t.is((await status(data, 'volume', 'tgt')).status, 'available');
  const bad = await bg(data, ['backup', 'restore', 'full', 'tgt', '--instant', '--copy-rate', 'fast']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /--copy-rate/);
  const list = await bgJson<unknown[]>(data, ['restore', 'list']);
  t.deepEqual(list, []);
});

test('one restore into a volume at a time; list and show report progress; cancel leaves the volume error_restoring', async (t) => {
  const { data } = await setup(t);
  const d = await startDaemon(t, data);
  const s = await bgJson<SessionJson>(data, ['backup', 'restore', 'full', 'tgt', '--instant', '--copy-rate', '64K', '--copy-concurrency', '1']);
  t.is(s.status, 'running');

  // a second restore into the same volume, instant or plain, is refused clearly
  const again = await bg(data, ['backup', 'restore', 'full', 'tgt', '--instant']);
  t.is(again.code, 4);
  t.regex(again.stderr, /already running.*only one restore into a volume at a time/);
  const plain = await bg(data, ['backup', 'restore', 'full', 'tgt']);
  t.is(plain.code, 4);
  t.regex(plain.stderr, /is restoring|restoring-backup/);
  // and the backup cannot be deleted while it restores
  t.is((await bg(data, ['backup', 'delete', 'full'])).code, 4);

  const guest = new Guest(t, s.uri!);
  t.true((await guest.ready).ok);
  t.true((await guest.read(0, 4096)).ok);
  await waitFor('progress', async () => (await showSession(data, s.id)).bytes_copied > 0 || (await showSession(data, s.id)).blocks_owned > 0);
  const list = await bgJson<SessionJson[]>(data, ['restore', 'list']);
  t.is(list.length, 1);
  t.is(list[0]!.id, s.id);
  const shown = await showSession(data, 'restore-tgt');
  t.is(shown.id, s.id);
  t.true(shown.blocks_total === 256);
  t.true(shown.blocks_owned > 0 && shown.blocks_owned < shown.blocks_total, `${shown.blocks_owned}/${shown.blocks_total}`);
  const table = await bg(data, ['restore', 'list']);
  t.regex(table.stdout, /restore-tgt/);
  t.regex(table.stdout, /\d+\/256 \(/);
  t.regex(table.stdout, /B\/s/);

  const c = await bgJson<SessionJson>(data, ['restore', 'cancel', s.id]);
  t.is(c.status, 'cancelled');
  t.is(c.status_reason, 'instant restore cancelled: volume incomplete');
  const vol = await status(data, 'volume', 'tgt');
  t.is(vol.status, 'error_restoring');
  t.is(vol.status_reason, 'instant restore cancelled: volume incomplete');
  t.is((await status(data, 'backup', 'full')).status, 'available');
  // the attached guest now gets errors; the export is gone
  const after = await guest.read(0, 4096);
  t.false(after.ok);
  t.not((await run('nbdinfo', ['--size', s.uri!])).code, 0);
  t.is((await bg(data, ['restore', 'cancel', s.id])).code, 4);
  guest.kill();
  // the volume is unusable for a new instant restore until reset, as in Cinder
  t.is((await bg(data, ['backup', 'restore', 'full', 'tgt', '--instant'])).code, 4);
  await d.kill('SIGTERM');
});

test('restore into a new volume with --detach-on-complete: complete, exact, export gone', async (t) => {
  const { data, src } = await setup(t);
  const d = await startDaemon(t, data);
  const s = await bgJson<SessionJson>(data, ['backup', 'restore', 'full', '--instant', '--name', 'fresh', '--detach-on-complete']);
  t.is(s.export_name, 'restore-fresh');
  const done = await waitFor('completion', async () => {
    const v = await showSession(data, s.id);
    return v.status === 'completed' ? v : null;
  });
  t.false(done.attached);
  t.is(done.uri, null);
  const vol = await bgJson<{ status: string; path: string; size: number }>(data, ['volume', 'show', 'fresh']);
  t.is(vol.status, 'available');
  t.is(vol.size, 64 * MiB);
  t.is(firstDifference(vol.path, src), -1);
  await waitFor('export gone', async () => (await run('nbdinfo', ['--size', d.uri('restore-fresh')])).code !== 0);
  await d.kill('SIGTERM');
});

test('a completed session stays served across a daemon restart until detached', async (t) => {
  const { data } = await setup(t);
  let d = await startDaemon(t, data);
  const s = await bgJson<SessionJson>(data, ['backup', 'restore', 'full', 'tgt', '--instant']);
  await waitFor('completion', async () => (await showSession(data, s.id)).status === 'completed');
  await d.kill('SIGTERM');
  d = await startDaemon(t, data);
  const size = await run('nbdinfo', ['--size', d.uri('restore-tgt')]);
  t.is(size.code, 0, size.stderr);
  t.is(size.stdout.trim(), String(64 * MiB));
  // writable, and still the volume
  const g = new Guest(t, d.uri('restore-tgt'));
  t.true((await g.ready).ok);
  t.true((await g.write(4096, Buffer.alloc(4096, 7))).ok);
  t.true((await g.flush()).ok);
  await g.close();
  const vol = await bgJson<{ path: string }>(data, ['volume', 'show', 'tgt']);
  t.true(fs.readFileSync(vol.path).subarray(4096, 8192).equals(Buffer.alloc(4096, 7)));
  // a new restore into it is refused while it is attached
  const again = await bg(data, ['backup', 'restore', 'full', 'tgt', '--instant']);
  t.is(again.code, 4);
  t.regex(again.stderr, /still attached as export restore-tgt.*restore detach/);
  const det = await bgJson<SessionJson>(data, ['restore', 'detach', s.id]);
  t.false(det.attached);
  t.not((await run('nbdinfo', ['--size', d.uri('restore-tgt')])).code, 0);
  // now it can be restored into again
  const s2 = await bgJson<SessionJson>(data, ['backup', 'restore', 'full', 'tgt', '--instant']);
  t.not(s2.id, s.id);
  await waitFor('second completion', async () => (await showSession(data, s2.id)).status === 'completed');
  await d.kill('SIGTERM');
});

test('cancel with no daemon running settles the catalog; a restarted daemon does not resume it', async (t) => {
  const { data } = await setup(t);
  let d = await startDaemon(t, data);
  const s = await bgJson<SessionJson>(data, ['backup', 'restore', 'full', 'tgt', '--instant', '--copy-rate', '128K']);
  await d.kill('SIGKILL');
  // the daemon is gone: the session waits to be resumed, recovery by other commands leaves it alone
  t.is((await status(data, 'backup', 'full')).status, 'restoring');
  t.is((await status(data, 'volume', 'tgt')).status, 'restoring-backup');
  const offline = await showSession(data, s.id);
  t.is(offline.status, 'running');
  t.is(offline.served_by_pid, null);
  const c = await bgJson<SessionJson>(data, ['restore', 'cancel', 'restore-tgt']);
  t.is(c.status, 'cancelled');
  t.is((await status(data, 'volume', 'tgt')).status, 'error_restoring');
  t.is((await status(data, 'backup', 'full')).status, 'available');
  d = await startDaemon(t, data);
  t.not((await run('nbdinfo', ['--size', d.uri('restore-tgt')])).code, 0);
  t.is((await showSession(data, s.id)).status, 'cancelled');
  await d.kill('SIGTERM');
});

test('bad requests: unknown backup or volume, throttle of a finished session, bad numbers', async (t) => {
  const { data } = await setup(t);
  const d = await startDaemon(t, data);
  t.is((await bg(data, ['backup', 'restore', 'nope', 'tgt', '--instant'])).code, 3);
  t.is((await bg(data, ['backup', 'restore', 'full', 'nope', '--instant'])).code, 3);
  t.is((await bg(data, ['restore', 'show', 'nope'])).code, 3);
  t.is((await bg(data, ['restore', 'cancel', 'nope'])).code, 3);
  t.is((await bg(data, ['backup', 'restore', 'full', 'tgt', '--instant', '--copy-concurrency', '0'])).code, 2);
  await bgJson(data, ['volume', 'create', '--name', 'small', '--size', '1M']);
  const small = await bg(data, ['backup', 'restore', 'full', 'small', '--instant']);
  t.is(small.code, 4);
  t.regex(small.stderr, /smaller than backup/);
  t.is((await status(data, 'backup', 'full')).status, 'available');
  t.is((await status(data, 'volume', 'small')).status, 'available');
  const s = await bgJson<SessionJson>(data, ['backup', 'restore', 'full', 'tgt', '--instant']);
  await waitFor('completion', async () => (await showSession(data, s.id)).status === 'completed');
  t.is((await bg(data, ['restore', 'throttle', s.id, '--rate', '1M'])).code, 4);
  t.is((await bg(data, ['restore', 'throttle', s.id])).code, 2);
  t.is((await bg(data, ['restore', 'cancel', s.id])).code, 4);
  await d.kill('SIGTERM');
});

test('Cinder\'s way to cancel: the backup set to error while restoring cancels the session', async (t) => {
  const { data, backupId } = await setup(t);
  const d = await startDaemon(t, data);
  const s = await bgJson<SessionJson>(data, ['backup', 'restore', 'full', 'tgt', '--instant', '--copy-rate', '128K']);
  const cat = new Catalog(path.join(data, 'catalog'));
  try {
    cat.transition(backupId, ['restoring'], 'error', { fail_reason: 'restore cancelled by the operator', owner: null });
  } finally {
    await cat.close();
  }
  const v = await waitFor('cancel', async () => {
    const x = await showSession(data, s.id);
    return x.status === 'cancelled' ? x : null;
  }, 15000);
  t.is(v.status_reason, 'instant restore cancelled: volume incomplete');
  const vol = await status(data, 'volume', 'tgt');
  t.is(vol.status, 'error_restoring');
  t.is((await status(data, 'backup', 'full')).status, 'error');
  t.not((await run('nbdinfo', ['--size', d.uri('restore-tgt')])).code, 0);
  await d.kill('SIGTERM');
});
