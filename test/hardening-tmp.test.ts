/**
 * Issue 12 item 9: no /tmp races. `browse` (as root) makes its default directory with mkdtemp
 * (never the predictable /tmp/blockgate-browse-<id>), refuses a symlink or a directory others
 * can change, and keeps its state in the data dir (0600, never through a symlink); the
 * control socket of a data dir with a long path lives in a mkdtemp directory named from the
 * data dir, never at a predictable /tmp name an attacker could squat.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { createHash } from 'node:crypto';
import type { BrowseState } from '../gateway/fuse/browse.js';
import { SOCKET_POINTER, controlSocketPath } from '../gateway/instant/control.js';
import { cli, cliJson, tmpDir, writeConfig } from './helpers/core.js';
import { cleanupUnder, cliBackup, mountsUnder, requireFuse } from './helpers/fuse.js';
import { startDaemon } from './helpers/daemon.js';

const mode = (p: string) => fs.lstatSync(p).mode & 0o777;

async function setup(t: ExecutionContext) {
  const dir = tmpDir(t, 'bg-tmp-');
  cleanupUnder(t, dir);
  const data = path.join(dir, 'data');
  writeConfig(data, { chunkSize: 256 * 1024, codec: 'zstd' });
  const vol = path.join(dir, 'vol.img');
  fs.writeFileSync(vol, Buffer.alloc(4 * 1024 * 1024)); // no filesystem: browse mounts only the catalog
  const r = await cli(data, ['volume', 'create', '--name', 'vol', '--file', vol]);
  if (r.code !== 0) throw new Error(r.stderr);
  const id = await cliBackup(data, 'vol', 'b1');
  return { dir, data, id };
}

test('browse without DIR: a fresh mkdtemp directory, not the predictable name an attacker planted', async (t) => {
  if (!requireFuse(t, true)) return;
  const s = await setup(t);
  // the old default, planted as a symlink to a directory of the victim's
  const planted = path.join(os.tmpdir(), `blockgate-browse-${s.id.slice(0, 8)}`);
  const victim = path.join(s.dir, 'victim');
  fs.mkdirSync(victim);
  fs.rmSync(planted, { force: true, recursive: true });
  fs.symlinkSync(victim, planted);
  t.teardown(() => fs.rmSync(planted, { force: true }));
  const r = await cli(s.data, ['-f', 'json', 'browse', 'b1', '--detach']);
  t.is(r.code, 0, r.stderr);
  const st = JSON.parse(r.stdout) as BrowseState;
  t.teardown(() => cli(s.data, ['browse', '--close', st.dir]));
  t.not(st.dir, planted);
  t.true(st.dir.startsWith(path.join(os.tmpdir(), `blockgate-browse-${s.id.slice(0, 8)}-`)), st.dir);
  t.is(mode(st.dir), 0o700);
  t.deepEqual(fs.readdirSync(victim), [], 'nothing was made through the planted symlink');
  // the state is in the data dir, private; nothing of ours in DIR but the catalog mount
  t.deepEqual(fs.readdirSync(path.join(s.data, 'browse')).filter((n) => n.endsWith('.json')).length, 1);
  for (const n of fs.readdirSync(path.join(s.data, 'browse'))) t.is(mode(path.join(s.data, 'browse', n)), 0o600, n);
  t.false(fs.existsSync(path.join(st.dir, '.blockgate-browse.json')));
  const c = await cli(s.data, ['browse', '--close', st.dir]);
  t.is(c.code, 0, c.stderr);
  t.false(fs.existsSync(st.dir), 'the directory it made is removed');
  t.deepEqual(fs.readdirSync(path.join(s.data, 'browse')), [], 'state and log removed');
  t.deepEqual(await mountsUnder(st.dir), []);
});

test('browse refuses a DIR that is a symlink, or that other users can change; nothing is made there', async (t) => {
  if (!requireFuse(t, true)) return;
  const s = await setup(t);
  const victim = path.join(s.dir, 'victim');
  fs.mkdirSync(victim);
  const link = path.join(s.dir, 'link');
  fs.symlinkSync(victim, link);
  const r1 = await cli(s.data, ['browse', 'b1', link, '--detach']);
  t.is(r1.code, 2, r1.stderr);
  t.regex(r1.stderr, /is a symbolic link/);
  t.deepEqual(fs.readdirSync(victim), []);
  const open = path.join(s.dir, 'open');
  fs.mkdirSync(open);
  fs.chmodSync(open, 0o777);
  const r2 = await cli(s.data, ['browse', 'b1', open, '--detach']);
  t.is(r2.code, 2, r2.stderr);
  t.regex(r2.stderr, /writable by others/);
  t.deepEqual(fs.readdirSync(open), []);
  const theirs = path.join(s.dir, 'theirs');
  fs.mkdirSync(theirs);
  fs.chownSync(theirs, 65534, 65534);
  const r3 = await cli(s.data, ['browse', 'b1', path.join(theirs, 'sub'), '--detach']);
  t.is(r3.code, 2, r3.stderr);
  t.regex(r3.stderr, /belongs to uid 65534/);
  t.deepEqual(fs.readdirSync(theirs), []);
  t.deepEqual(await mountsUnder(s.dir), []);
});

test('a long data dir path: the control socket is in a private mkdtemp dir, not a /tmp name an attacker can squat', async (t) => {
  const dir = tmpDir(t, 'bg-tmp-sock-');
  const data = path.join(dir, 'a-data-directory-with-a-long-name'.repeat(3), 'data');
  writeConfig(data, { chunkSize: 65536 });
  t.true(Buffer.byteLength(path.join(data, 'control.sock')) > 100);
  // the attacker listens first at the name the old code used
  const squat = path.join(os.tmpdir(), `blockgate-${createHash('sha256').update(data).digest('hex').slice(0, 16)}.sock`);
  fs.rmSync(squat, { force: true });
  const fake = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(req.url === '/restores' ? JSON.stringify([{ id: 'attacker' }]) : JSON.stringify({ pid: 1 }));
  });
  await new Promise<void>((r) => fake.listen(squat, () => r()));
  t.teardown(() => new Promise<void>((r) => fake.close(() => r())));
  const nbdSock = path.join(tmpDir(t, 'bg-nbd-'), 'nbd.sock');
  const d = await startDaemon(t, data, ['--nbd-socket', nbdSock]);
  t.false(d.log.join('\n').includes('another blockgate daemon'), d.log.join('\n'));
  const sock = controlSocketPath(data)!;
  t.truthy(sock);
  t.not(sock, squat);
  t.true(path.basename(path.dirname(sock)).startsWith('blockgate-ctl-'), sock);
  t.is(mode(path.dirname(sock)), 0o700);
  t.is(mode(sock), 0o600);
  t.is(mode(path.join(data, SOCKET_POINTER)), 0o600);
  // the CLI talks to the real daemon
  t.deepEqual(await cliJson<unknown[]>(data, ['restore', 'list']), []);
  await d.stop();
  t.false(fs.existsSync(path.dirname(sock)), 'the private socket dir is removed at stop');
  t.false(fs.existsSync(path.join(data, SOCKET_POINTER)));
  t.is(controlSocketPath(data), null);
});
