/**
 * The mount's life and death: SIGTERM / SIGINT unmount cleanly (also with a file open);
 * SIGKILL of the server alone is cleaned up by its auto_unmount helper or its watchdog (each
 * alone is enough); SIGKILL of the server and both guards
 * leaves a stale mount ("Transport endpoint is not connected") that `blockgate umount` or
 * the next `blockgate mount` clears with a clear message; a killed browse server is cleaned
 * up by `browse --close`. Nothing ever needs a reboot.
 */
import ava, { type ExecutionContext } from 'ava';

// serial: a hung or stale FUSE mount holds fusermount's machine-wide lock, which would stall
// the auto_unmount helper another test in this file is waiting for
const test = ava.serial;
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { cli, sha, tmpDir, writeConfig } from './helpers/core.js';
import { cleanupUnder, cliBackup, helperOf, watchdogOf, loopsUnder, makeExt4, mountsUnder, requireFuse, run, startMount, treeSums, waitFor, writeSourceTree } from './helpers/fuse.js';
import { findMount, pidAlive } from '../gateway/fuse/mount.js';
import type { BrowseState } from '../gateway/fuse/browse.js';

interface Setup {
  dir: string;
  data: string;
  mnt: string;
  image: Buffer;
  id: string;
}

async function setup(t: ExecutionContext, withFs = false): Promise<Setup> {
  const dir = tmpDir(t, 'bg-fuse-crash-');
  cleanupUnder(t, dir);
  const data = path.join(dir, 'data');
  writeConfig(data, { chunkSize: 256 * 1024, codec: 'zstd' });
  const vol = path.join(dir, 'vol.img');
  if (withFs) {
    const src = path.join(dir, 'src');
    writeSourceTree(src, 'crash');
    await makeExt4(vol, 16, src);
  } else {
    fs.writeFileSync(vol, Buffer.concat([Buffer.alloc(1024 * 1024, 7), Buffer.from(Array.from({ length: 3 * 1024 * 1024 }, (_, i) => (i * 31) & 0xff))]));
  }
  const r = await cli(data, ['volume', 'create', '--name', 'vol', '--file', vol]);
  if (r.code !== 0) throw new Error(r.stderr);
  const id = await cliBackup(data, 'vol', 'b1');
  return { dir, data, mnt: path.join(dir, 'mnt'), image: fs.readFileSync(vol), id };
}

/** a process that holds a file open (and so keeps the mount busy) */
function holdOpen(t: ExecutionContext, file: string) {
  const child = spawn('bash', ['-c', `exec 3<'${file}'; echo open; sleep 60`], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => void child.kill('SIGKILL'));
  return new Promise<typeof child>((resolve) => child.stdout.once('data', () => resolve(child)));
}

/** what a stat of the mount point says (from a child process) */
async function statError(mnt: string): Promise<string> {
  const r = await run('stat', [mnt]);
  return r.code === 0 ? 'ok' : r.stderr;
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`${signal} unmounts cleanly, even with a file open and being read`, async (t) => {
    if (!requireFuse(t)) return;
    const s = await setup(t);
    const m = await startMount(t, s.data, s.mnt);
    const disk = path.join(s.mnt, 'by-id', s.id, 'disk.img');
    t.is(sha(await fs.promises.readFile(disk)), sha(s.image));
    const holder = await holdOpen(t, disk);
    m.child.kill(signal);
    const { code } = await m.exited;
    t.is(code, 0, m.output());
    t.regex(m.output(), new RegExp(`unmounted .*mnt \\(got ${signal}\\)`));
    t.deepEqual(await mountsUnder(s.dir), []);
    t.is(await statError(s.mnt), 'ok', 'the mount point is a plain directory again');
    holder.kill('SIGKILL');
    // the reader lease went with it: delete works, and the mount point can be mounted again
    const again = await startMount(t, s.data, s.mnt);
    t.deepEqual(await fs.promises.readdir(path.join(s.mnt, 'volumes', 'vol')), ['b1', 'latest']);
    again.child.kill('SIGTERM');
    await again.exited;
    t.is((await cli(s.data, ['backup', 'delete', s.id])).code, 0);
  });
}

for (const guard of ['both guards', 'the watchdog alone'] as const) {
  test(`SIGKILL of the server: the mount is taken down (${guard === 'both guards' ? 'auto_unmount helper and watchdog' : 'its auto_unmount helper killed first: the watchdog alone'}); its reader leases die with it`, async (t) => {
    if (!requireFuse(t)) return;
    const s = await setup(t);
    const m = await startMount(t, s.data, s.mnt);
    const fh = await fs.promises.open(path.join(s.mnt, 'by-id', s.id, 'disk.img'));
    t.teardown(() => fh.close().catch(() => undefined));
    const refused = await cli(s.data, ['backup', 'delete', s.id]);
    t.is(refused.code, 4);
    const helper = await helperOf(m.pid);
    t.truthy(helper, 'a fusermount helper watches the server');
    t.truthy(await watchdogOf(m.pid), 'a watchdog watches the server');
    if (guard === 'the watchdog alone') {
      process.kill(helper!, 'SIGKILL');
      await waitFor('the helper to die', () => !pidAlive(helper!));
    }
    m.child.kill('SIGKILL');
    await m.exited;
    try {
      await waitFor('the helper to unmount', async () => !(await findMount(s.mnt)), 60_000);
    } catch (e) {
      // say where the helper is stuck (or that it left without unmounting), for the next run
      t.log(helperState(helper!));
      throw e;
    }
    t.deepEqual(await mountsUnder(s.dir), []);
    // the open file now fails instead of hanging
    await t.throwsAsync(fh.read(Buffer.alloc(10), 0, 10, 0));
    t.is((await cli(s.data, ['backup', 'delete', s.id])).code, 0, 'a dead reader does not block delete');
  });
}

/** what a process is doing: state, wait channel, kernel stack, and the file locks held on the machine */
function helperState(pid: number): string {
  const read = (f: string) => {
    try {
      return fs.readFileSync(f, 'utf8').trim();
    } catch (e) {
      return `(${(e as Error).message})`;
    }
  };
  if (!pidAlive(pid)) return `the helper (pid ${pid}) has exited without unmounting`;
  const state = read(`/proc/${pid}/status`).split('\n').find((l) => l.startsWith('State:'));
  return `helper pid ${pid}: ${state}; wchan ${read(`/proc/${pid}/wchan`)}\nstack:\n${read(`/proc/${pid}/stack`)}\nlocks:\n${read('/proc/locks')}`;
}

/** kills the server, its auto_unmount helper and its watchdog at once: the mount is left stale */
async function killBoth(t: ExecutionContext, s: Setup) {
  const m = await startMount(t, s.data, s.mnt);
  const helper = await helperOf(m.pid);
  const watchdog = await watchdogOf(m.pid);
  t.truthy(helper);
  t.truthy(watchdog);
  process.kill(helper!, 'SIGKILL');
  process.kill(watchdog!, 'SIGKILL');
  m.child.kill('SIGKILL');
  await m.exited;
  await waitFor('the helper and the watchdog to die', () => !pidAlive(helper!) && !pidAlive(watchdog!));
  t.truthy(await findMount(s.mnt), 'the mount is still in the table');
  t.regex(await statError(s.mnt), /Transport endpoint is not connected/);
  return m;
}

test('SIGKILL of server, helper and watchdog leaves a stale mount; `blockgate umount` clears it and says what it was', async (t) => {
  if (!requireFuse(t)) return;
  const s = await setup(t);
  const m = await killBoth(t, s);
  const r = await cli(s.data, ['umount', s.mnt]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, new RegExp(`mnt was left mounted by a process that is gone \\(pid ${m.pid}\\) \\(Transport endpoint is not connected\\); cleared it with fusermount -u -z`));
  t.deepEqual(await mountsUnder(s.dir), []);
  t.is(await statError(s.mnt), 'ok');
});

test('SIGKILL of server, helper and watchdog leaves a stale mount; the next `blockgate mount` clears it and serves again', async (t) => {
  if (!requireFuse(t)) return;
  const s = await setup(t);
  await killBoth(t, s);
  const m = await startMount(t, s.data, s.mnt);
  t.regex(m.output(), /mnt was still mounted by a process that is gone \(Transport endpoint is not connected\); cleared it with fusermount -u -z/);
  t.is(sha(await fs.promises.readFile(path.join(s.mnt, 'volumes', 'vol', 'latest', 'disk.img'))), sha(s.image));
  t.is((await mountsUnder(s.dir)).length, 1);
});

test('a browse whose catalog server was killed is still closed completely by browse --close', async (t) => {
  if (!requireFuse(t, true)) return;
  const s = await setup(t, true);
  const br = path.join(s.dir, 'browse');
  const r = await cli(s.data, ['-f', 'json', 'browse', 'b1', br, '--detach']);
  t.is(r.code, 0, r.stderr);
  const st = JSON.parse(r.stdout) as BrowseState;
  t.deepEqual(st.mounts.map((x) => x.image), ['disk.img']);
  t.deepEqual(Object.keys(await treeSums(path.join(br, 'disk'))).sort(), Object.keys(await treeSums(path.join(s.dir, 'src'))).sort());
  for (const guard of [await helperOf(st.mountPid!), await watchdogOf(st.mountPid!)]) if (guard) process.kill(guard, 'SIGKILL');
  process.kill(st.mountPid!, 'SIGKILL');
  await waitFor('the server to die', () => !pidAlive(st.mountPid!));
  const c = await cli(s.data, ['browse', '--close', br]);
  t.is(c.code, 0, c.stderr);
  t.deepEqual(await mountsUnder(s.dir), []);
  t.deepEqual(await loopsUnder(s.dir), []);
  t.false(fs.existsSync(br));
});

test('umount of a hung mount (server stopped, not dead) aborts it instead of waiting forever', async (t) => {
  if (!requireFuse(t)) return;
  const s = await setup(t);
  const m = await startMount(t, s.data, s.mnt);
  m.child.kill('SIGSTOP');
  t.teardown(() => void m.child.kill('SIGKILL'));
  const started = Date.now();
  const r = await cli(s.data, ['umount', s.mnt]);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /did not stop; detached the mount with umount -l /);
  t.true(Date.now() - started < 40_000);
  t.deepEqual(await mountsUnder(s.dir), []);
  m.child.kill('SIGKILL');
});
