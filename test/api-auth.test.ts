/**
 * Access to the API: tokens (stored as hashes) over TLS with the real openstack client, a member
 * confined to its project, unknown tokens 401; noauth refused off loopback, tokens without TLS
 * refused off loopback; and the `instant: true` restore extension, read back over NBD.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { createHash, randomBytes } from 'node:crypto';
import { cli, cliJson, tmpDir, writeConfig } from './helpers/core.js';
import { makeCerts } from './helpers/nbd-tls.js';
import { http, startApi, until, waitBackup, waitVolume } from './helpers/api.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

test('tokens over TLS: openstack with admin_token, a member sees its project only, an unknown token is 401, blockgate.json holds only hashes', async (t) => {
  const root = tmpDir(t);
  const data = path.join(root, 'data');
  const certs = await makeCerts(path.join(root, 'certs'));
  const cert = path.join(root, 'api-cert.pem');
  const key = path.join(root, 'api-key.pem');
  const ca = path.join(root, 'ca.pem');
  fs.writeFileSync(cert, certs.cert);
  fs.writeFileSync(key, certs.key);
  fs.writeFileSync(ca, certs.ca);
  const img = path.join(root, 'v.img');
  fs.writeFileSync(img, randomBytes(2 * MiB));
  await cliJson(data, ['volume', 'create', '--name', 'v1', '--file', img, '--project', 'p1']);
  const admin = await cliJson<{ token: string; mode: string }>(data, ['token', 'add', '--user', 'ops', '--project', 'admin', '--role', 'admin', '--label', 'ops', '--enable']);
  t.is(admin.mode, 'tokens');
  const alice = await cliJson<{ token: string }>(data, ['token', 'add', '--user', 'alice', '--project', 'p1']);
  const bob = await cliJson<{ token: string }>(data, ['token', 'add', '--user', 'bob', '--project', 'p2']);
  const file = fs.readFileSync(path.join(data, 'blockgate.json'), 'utf8');
  for (const tk of [admin.token, alice.token, bob.token]) t.false(file.includes(tk), 'no token in blockgate.json');
  t.is((fs.statSync(path.join(data, 'blockgate.json')).mode & 0o777), 0o600);

  const d = await startApi(t, data, ['--api-tls-cert', cert, '--api-tls-key', key]);
  const endpoint = `https://localhost:${d.port}/v3`;
  const osc = (token: string, args: string[]) => run('openstack', ['--os-auth-type', 'admin_token', '--os-token', token, '--os-endpoint', endpoint, '--os-cacert', ca, ...args], { env: { ...process.env, HOME: root } }).then(
    (r) => ({ code: 0, ...r }),
    (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
  );
  const made = await osc(alice.token, ['volume', 'backup', 'create', '--name', 'by-alice', 'v1', '-f', 'json']);
  t.is(made.code, 0, made.stderr);
  const id = (JSON.parse(made.stdout) as { id: string }).id;
  const done = await until('the backup', async () => {
    const r = await osc(alice.token, ['volume', 'backup', 'show', id, '-f', 'json']);
    const s = (JSON.parse(r.stdout) as { status: string }).status;
    return s === 'available' ? s : undefined;
  });
  t.is(done, 'available');
  t.deepEqual((JSON.parse((await osc(alice.token, ['volume', 'backup', 'list', '-f', 'json'])).stdout) as { Name: string }[]).map((b) => b.Name), ['by-alice']);
  t.deepEqual(JSON.parse((await osc(bob.token, ['volume', 'backup', 'list', '-f', 'json'])).stdout), [], "bob does not see alice's backup");
  const bobShow = await osc(bob.token, ['volume', 'backup', 'show', id]);
  t.is(bobShow.code, 1);
  t.regex(bobShow.stderr, /No volumebackup with a name or ID/);
  const all = JSON.parse((await osc(admin.token, ['volume', 'backup', 'list', '--all-projects', '-f', 'json'])).stdout) as { Name: string }[];
  t.deepEqual(all.map((b) => b.Name), ['by-alice']);
  const bad = await osc('not-a-token', ['volume', 'backup', 'list']);
  t.is(bad.code, 1);
  t.regex(bad.stderr, /HTTP 401/);
  // noauth headers mean nothing in tokens mode
  const r = await run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--cacert', ca, '-H', 'X-Auth-Token: ops:admin', '-H', 'X-User-Id: ops', `${endpoint}/backups`]);
  t.is(r.stdout, '401');
  // revoking alice's token locks her out at the next start
  const list = await cliJson<{ id: string; user: string }[]>(data, ['token', 'list']);
  await cliJson(data, ['token', 'remove', list.find((x) => x.user === 'alice')!.id]);
  await d.stop();
  const d2 = await startApi(t, data, ['--api-tls-cert', cert, '--api-tls-key', key]);
  const gone = await run('openstack', ['--os-auth-type', 'admin_token', '--os-token', alice.token, '--os-endpoint', `https://localhost:${d2.port}/v3`, '--os-cacert', ca, 'volume', 'backup', 'list'], { env: { ...process.env, HOME: root } }).catch((e: { stderr: string }) => e);
  t.regex((gone as { stderr: string }).stderr, /HTTP 401/);
});

test('noauth is refused off loopback, and so are tokens without TLS', async (t) => {
  const data = path.join(tmpDir(t), 'data');
  const r = await cli(data, ['serve', '--nbd-port', '0', '--nbd-socket', '', '--api-host', '0.0.0.0', '--api-port', '0']);
  t.is(r.code, 2);
  t.regex(r.stderr, /refusing to serve the API on "0\.0\.0\.0" with auth\.mode noauth/);
  writeConfig(data, { auth: { mode: 'tokens', tokens: [] } } as never);
  const r2 = await cli(data, ['serve', '--nbd-port', '0', '--nbd-socket', '', '--api-host', '0.0.0.0', '--api-port', '0']);
  t.is(r2.code, 2);
  t.regex(r2.stderr, /without TLS/);
});

test('restore with "instant": true returns the NBD URIs at once; the data read over NBD is the backup, and the target completes', async (t) => {
  const root = tmpDir(t);
  const data = path.join(root, 'data');
  const content = randomBytes(16 * MiB);
  const img = path.join(root, 'v.img');
  fs.writeFileSync(img, content);
  await cliJson(data, ['volume', 'create', '--name', 'v1', '--file', img, '--project', 'p1']);
  const d = await startApi(t, data);
  const b = ((await http(d, 'POST', '/v3/backups', { backup: { volume_id: (await cliJson<{ id: string }>(data, ['volume', 'show', 'v1'])).id } })).json as { backup: { id: string } }).backup.id;
  t.is(await waitBackup(d, b), 'available');
  const r = await http(d, 'POST', `/v3/backups/${b}/restore`, { restore: { name: 'fast', instant: true } });
  t.is(r.status, 202);
  const out = (r.json as { restore: { backup_id: string; volume_id: string; volume_name: string; instant: { uri: string; export_name: string; session_id: string } } }).restore;
  t.is(out.backup_id, b);
  t.is(out.volume_name, 'fast');
  t.regex(out.instant.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/restore-fast$/);
  const copy = path.join(root, 'read.img');
  await run('nbdcopy', [out.instant.uri, copy]);
  t.is(sha(fs.readFileSync(copy)), sha(content));
  t.is(await waitVolume(d, out.volume_id, ['available']), 'available');
  t.is(sha(fs.readFileSync(path.join(data, 'volumes', 'fast.img'))), sha(content));
});
