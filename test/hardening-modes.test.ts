/**
 * Issue 12 item 8: nothing blockgate makes is readable by other local users. The data dir is
 * 0700, restored images, volumes and overlay scratch files 0600, blockgate.json 0600 and
 * replaced atomically, the NBD and control sockets 0600, FUSE allow_other only when asked.
 *
 * This file runs with umask 000 (ava runs each file in its own process), so every mode
 * checked here comes from the code's explicit modes, not from a kind umask.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import pino from 'pino';
import { Appliance } from '../gateway/appliance.js';
import { loadConfig, saveConfig } from '../gateway/config.js';
import { Daemon } from '../gateway/daemon.js';
import { CowOverlay } from '../blockdev/overlay.js';
import { createVolume } from '../gateway/engine/volumes.js';
import { prepareRestore, runRestore } from '../gateway/engine/restore.js';
import { runBackup, startBackup } from '../gateway/engine/backup.js';
import { ControlServer } from '../gateway/instant/control.js';
import { MemDevice } from './helpers/nbd-devices.js';
import { CLI, cliJson, fileSha, tmpDir, writeConfig } from './helpers/core.js';
import { cleanupUnder, requireFuse, startMount } from './helpers/fuse.js';

const run = promisify(execFile);
process.umask(0o000);

const mode = (p: string) => fs.statSync(p).mode & 0o777;
const lmode = (p: string) => fs.lstatSync(p).mode & 0o777;

async function app(t: ExecutionContext): Promise<{ dir: string; app: Appliance }> {
  const dir = tmpDir(t, 'bg-modes-');
  const dataDir = path.join(dir, 'data'); // new: made by Appliance.open
  const a = await Appliance.open({ ...loadConfig(dataDir), chunkSize: 64 * 1024 });
  t.teardown(() => a.close());
  return { dir, app: a };
}

test('umask 000 is in force in this process (so the modes below are explicit ones)', (t) => {
  const dir = tmpDir(t);
  fs.writeFileSync(path.join(dir, 'probe'), 'x');
  t.is(mode(path.join(dir, 'probe')), 0o666);
});

test('data dir 0700; new volumes, their folder and restored images 0600/0700', async (t) => {
  const { dir, app: a } = await app(t);
  t.is(mode(a.config.dataDir), 0o700, 'data dir');
  const src = path.join(dir, 'src.img');
  fs.writeFileSync(src, randomBytes(256 * 1024));
  const v = await createVolume(a, { name: 'src', file: src });
  const made = await createVolume(a, { name: 'fresh', size: 1024 * 1024 });
  t.is(mode(a.volumesDir), 0o700, 'volumes dir');
  t.is(mode(made.path), 0o600, 'a new volume');
  const b = await runBackup(a, await startBackup(a, { volume: v.id, name: 'b1' }));
  const { backup, target } = await prepareRestore(a, { backup: b.id, newName: 'restored' });
  await runRestore(a, backup, target);
  t.is(target.path, path.join(a.volumesDir, 'restored.img'));
  t.is(mode(target.path), 0o600, 'a restored image');
  t.is(fileSha(target.path), fileSha(src));
});

test('repository objects (chunks, pages, manifests, config) are 0600 in 0700 directories; the catalog too', async (t) => {
  const { dir, app: a } = await app(t);
  const src = path.join(dir, 'src.img');
  fs.writeFileSync(src, randomBytes(256 * 1024));
  const v = await createVolume(a, { name: 'src', file: src });
  await runBackup(a, await startBackup(a, { volume: v.id, name: 'b1' }));
  const repo = path.join(a.config.dataDir, 'repo');
  const seen = { files: 0, dirs: 0 };
  const walk = (d: string) => {
    t.is(mode(d), 0o700, `${path.relative(a.config.dataDir, d) || '.'} is 0700`);
    seen.dirs++;
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else {
        t.is(mode(p), 0o600, `${path.relative(a.config.dataDir, p)} is 0600`);
        seen.files++;
      }
    }
  };
  walk(repo);
  walk(path.join(a.config.dataDir, 'catalog'));
  t.true(seen.files >= 6, `${seen.files} files checked`);
});

test('blockgate.json (may hold S3 keys) is written 0600, atomically, replacing a planted symlink rather than following it', async (t) => {
  const dir = tmpDir(t);
  const dataDir = path.join(dir, 'data');
  writeConfig(dataDir, { chunkSize: 65536 });
  const file = path.join(dataDir, 'blockgate.json');
  fs.chmodSync(file, 0o644);
  const cfg = loadConfig(dataDir);
  saveConfig({ ...cfg, repository: { driver: 's3', bucket: 'b', accessKeyId: 'AK', secretAccessKey: 'SECRET' } }, ['repository']);
  t.is(mode(file), 0o600);
  const saved = JSON.parse(fs.readFileSync(file, 'utf8')) as { chunkSize: number; repository: { secretAccessKey: string } };
  t.is(saved.chunkSize, 65536, 'the other keys are kept');
  t.is(saved.repository.secretAccessKey, 'SECRET');
  t.deepEqual(fs.readdirSync(dataDir), ['blockgate.json'], 'no temp file left');
  // a symlink in place of the config: replaced by a private file, its target untouched
  const victim = path.join(dir, 'victim');
  fs.writeFileSync(victim, '{"codec": "zlib"}\n');
  fs.chmodSync(victim, 0o644);
  fs.rmSync(file);
  fs.symlinkSync(victim, file);
  saveConfig(loadConfig(dataDir), ['codec']);
  t.false(fs.lstatSync(file).isSymbolicLink());
  t.is(lmode(file), 0o600);
  t.is(fs.readFileSync(victim, 'utf8'), '{"codec": "zlib"}\n');
  t.is(mode(victim), 0o644);
});

test('overlay scratch files are 0600 and never opened through a symlink', async (t) => {
  const dir = tmpDir(t);
  const base = new MemDevice(1024 * 1024, { readOnly: true });
  const scratch = path.join(dir, 'overlay.img');
  const ov = await CowOverlay.create(base, scratch);
  t.is(mode(scratch), 0o600);
  await ov.close();
  const victim = path.join(dir, 'victim');
  fs.writeFileSync(victim, 'keep');
  const planted = path.join(dir, 'planted.img');
  fs.symlinkSync(victim, planted);
  await t.throwsAsync(CowOverlay.create(base, planted), { code: 'ELOOP' });
  t.is(fs.readFileSync(victim, 'utf8'), 'keep', 'the symlink target was not truncated');
});

test('the NBD unix socket and the instant-restore control socket are 0600', async (t) => {
  const { app: a } = await app(t);
  const socket = path.join(a.config.dataDir, 'nbd.sock');
  const d = new Daemon(a, { host: '127.0.0.1', port: 0, socket }, pino({ level: 'silent' }));
  await d.start();
  t.teardown(() => d.stop());
  t.true(fs.statSync(socket).isSocket());
  t.is(mode(socket), 0o600, 'NBD socket');
  const c = await ControlServer.listen(a.config.dataDir, async () => ({}));
  t.truthy(c);
  t.teardown(() => c!.close());
  t.is(mode(c!.path), 0o600, 'control socket');
});

test('CLI under a permissive umask: every file it makes in the data dir is private (umask 077 at start)', async (t) => {
  const dir = tmpDir(t);
  fs.chmodSync(dir, 0o755);
  const data = path.join(dir, 'data');
  const src = path.join(dir, 'src.img');
  fs.writeFileSync(src, randomBytes(512 * 1024));
  const sh = (args: string[]) => run('sh', ['-c', 'umask 000; exec "$@"', 'sh', process.execPath, CLI, '--data-dir', data, '-f', 'json', ...args]);
  await sh(['volume', 'create', '--name', 'src', '--file', src]);
  await sh(['backup', 'create', 'src', '--name', 'b1']);
  const r = JSON.parse((await sh(['backup', 'restore', 'b1', '--name', 'copy'])).stdout) as { path: string };
  t.is(mode(data), 0o700);
  t.is(mode(r.path), 0o600);
  const open: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if ((lmode(p) & 0o077) !== 0) open.push(`${path.relative(data, p)} ${lmode(p).toString(8)}`);
      if (e.isDirectory()) walk(p);
    }
  };
  walk(data);
  t.deepEqual(open, [], 'files or dirs open to group or others');
  void cliJson;
});

test('FUSE: other users cannot read the mount unless --allow-other is given', async (t) => {
  if (!requireFuse(t)) return;
  const dir = tmpDir(t, 'bg-modes-fuse-');
  fs.chmodSync(dir, 0o755); // nobody may reach the mount points, not the data dir
  cleanupUnder(t, dir);
  const data = path.join(dir, 'data');
  writeConfig(data, { chunkSize: 65536 });
  const a = await startMount(t, data, path.join(dir, 'private'));
  const b = await startMount(t, data, path.join(dir, 'shared'), ['--allow-other']);
  const asNobody = (p: string) =>
    new Promise<{ code: number | null; err: string }>((resolve) => {
      const c = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'ls', p], { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      c.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      c.on('exit', (code) => resolve({ code, err }));
    });
  const denied = await asNobody(a.mnt);
  t.not(denied.code, 0);
  t.regex(denied.err, /Permission denied/);
  const allowed = await asNobody(b.mnt);
  t.is(allowed.code, 0, allowed.err);
});
