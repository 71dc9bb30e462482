/**
 * Issue 12, item 10: NBD access. Off loopback the daemon serves only with TLS and verified
 * client certificates, and each certificate identity sees (lists, opens, writes) only what
 * nbd.access in blockgate.json gives it; an export it may not see is unknown, exactly like
 * one that does not exist. The unix socket stays the admin's. And no secret on argv:
 * `repo create --secret-key` is refused in favour of --secret-key-file / AWS_SECRET_ACCESS_KEY.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { CLI, cli, cliJson, tmpDir, writeConfig } from './helpers/core.js';
import { run, startDaemon, type RunningDaemon } from './helpers/daemon.js';
import { makeCerts, type TestCerts } from './helpers/nbd-tls.js';
import { clientCert, type ClientCert } from './helpers/nbd-access.js';
import { RawClient } from './helpers/nbd-rawclient.js';
import { repoConfigFrom } from '../tools/cli/repo.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const ERR_UNKNOWN = 0x80000006;
const ERR_TLS_REQD = 0x80000005;
const OPT = { INFO: 6, GO: 7, STARTTLS: 5 };
const CMD = { READ: 0, WRITE: 1 };
const TF_READ_ONLY = 1 << 1;
const EPERM = 1;

/** runs `blockgate serve` expecting it to refuse; killed after 20 s if it serves instead */
function serveRefused(dataDir: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, '--data-dir', dataDir, 'serve', '--nbd-port', '0', '--nbd-socket', '', ...args], { timeout: 20000, killSignal: 'SIGKILL' }, (err, _stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr });
    });
  });
}

async function setup(t: ExecutionContext) {
  const dir = tmpDir(t, 'bg-access-');
  const dataDir = path.join(dir, 'data');
  const certs = await makeCerts(dir);
  const ops1 = await clientCert(dir, 'ops1', '/CN=ops-host-1');
  const ops2 = await clientCert(dir, 'ops2', '/CN=ops-host-2');
  const auditor = await clientCert(dir, 'auditor', '/O=Acme/CN=auditor');
  const fakeAuditor = await clientCert(dir, 'fake', '/CN=auditor');
  const nobody = await clientCert(dir, 'nobody', '/CN=nobody');
  writeConfig(dataDir, {
    chunkSize: 64 * KiB,
    nbd: {
      access: [
        { identity: 'CN=ops-host-1', exports: ['db1@*'], write: false },
        { identity: 'CN=ops-host-2', exports: ['db2@*'], write: true },
        { identity: 'O=Acme,CN=auditor', exports: ['*'] },
      ],
    },
  } as never);
  const data: Record<string, Buffer> = {};
  for (const v of ['db1', 'db2']) {
    data[v] = randomBytes(2 * MiB);
    const img = path.join(dir, `${v}.img`);
    fs.writeFileSync(img, data[v]!);
    await cliJson(dataDir, ['volume', 'create', '--name', v, '--file', img]);
    await cliJson(dataDir, ['backup', 'create', v, '--name', 'full']);
  }
  for (const f of ['server-cert.pem', 'server-key.pem', 'ca-cert.pem']) fs.copyFileSync(path.join(dir, 'pki', f), path.join(dir, f));
  const tlsArgs = ['--tls-cert', path.join(dir, 'server-cert.pem'), '--tls-key', path.join(dir, 'server-key.pem'), '--tls-ca', path.join(dir, 'ca-cert.pem'), '--tls-required'];
  return { dir, dataDir, certs, ops1, ops2, auditor, fakeAuditor, nobody, data, tlsArgs };
}

async function listAs(d: RunningDaemon, who: ClientCert): Promise<string[]> {
  const r = await run('nbdinfo', ['--list', '--json', `nbds://127.0.0.1:${d.port}/?tls-certificates=${who.dir}`]);
  return (JSON.parse(r.stdout) as { exports: { 'export-name': string }[] }).exports.map((e) => e['export-name']).sort();
}

async function tlsClient(d: RunningDaemon, certs: TestCerts, who: ClientCert): Promise<RawClient> {
  const c = await RawClient.connect(d.port);
  await c.greet();
  const r = await c.option(OPT.STARTTLS);
  if (r[0]!.type !== 1) throw new Error('STARTTLS refused');
  await c.startTls({ ca: certs.ca, cert: who.cert, key: who.key });
  return c;
}

/** the final reply of INFO or GO for name: its type and message with the name taken out */
async function answer(c: RawClient, option: number, name: string): Promise<{ type: number; message: string }> {
  const replies = await c.option(option, RawClient.goData(name, [3]));
  const last = replies[replies.length - 1]!;
  return { type: last.type, message: last.data.toString('utf8').split(name).join('<NAME>') };
}

test('serve refuses a non-loopback address without TLS, client certificates and --tls-required, with a clear error', async (t) => {
  const s = await setup(t);
  const bare = await serveRefused(s.dataDir, ['--nbd-host', '0.0.0.0']);
  t.is(bare.code, 2, bare.stderr);
  t.regex(bare.stderr, /^blockgate: error: refusing to serve NBD on "0\.0\.0\.0": it is not a loopback address.*TLS with client certificates/);
  // TLS without a CA (no client certificates) or without --tls-required is not enough either
  const noCa = await serveRefused(s.dataDir, ['--nbd-host', '0.0.0.0', '--tls-cert', path.join(s.dir, 'server-cert.pem'), '--tls-key', path.join(s.dir, 'server-key.pem'), '--tls-required']);
  t.is(noCa.code, 2, noCa.stderr);
  t.regex(noCa.stderr, /--tls-ca/);
  const optional = await serveRefused(s.dataDir, ['--nbd-host', '0.0.0.0', ...s.tlsArgs.filter((a) => a !== '--tls-required')]);
  t.is(optional.code, 2, optional.stderr);
  t.regex(optional.stderr, /--tls-required/);
  // a bad access rule is refused too, naming the field
  const cfgFile = path.join(s.dataDir, 'blockgate.json');
  const good = fs.readFileSync(cfgFile, 'utf8');
  fs.writeFileSync(cfgFile, JSON.stringify({ ...JSON.parse(good), nbd: { access: [{ identity: 'ops-host-1', exports: ['db1@*'] }] } }));
  const badRule = await serveRefused(s.dataDir, ['--nbd-host', '0.0.0.0', ...s.tlsArgs]);
  t.not(badRule.code, 0);
  t.regex(badRule.stderr, /nbd\.access\[0\]\.identity: .*not KEY=value/);
  fs.writeFileSync(cfgFile, good);
  // loopback stays as it was: no TLS needed
  const d = await startDaemon(t, s.dataDir, ['--nbd-host', '127.0.0.1']);
  await run('nbdinfo', [d.uri('db1@full')]);
});

test('off loopback each client certificate sees, opens and writes only what nbd.access gives it; the rest is unknown', async (t) => {
  const s = await setup(t);
  const d = await startDaemon(t, s.dataDir, ['--nbd-host', '0.0.0.0', ...s.tlsArgs]);

  // NBD_OPT_LIST, through libnbd
  t.deepEqual(await listAs(d, s.ops1), ['db1@full', 'db1@full+overlay']);
  t.deepEqual(await listAs(d, s.ops2), ['db2@full', 'db2@full+overlay']);
  t.deepEqual(await listAs(d, s.auditor), ['db1@full', 'db1@full+overlay', 'db2@full', 'db2@full+overlay']);
  t.deepEqual(await listAs(d, s.fakeAuditor), [], 'CN=auditor without O=Acme is not the full subject of the rule');
  t.deepEqual(await listAs(d, s.nobody), []);

  // bytes through libnbd, with the certificate that may see them
  const out = path.join(s.dir, 'copy.img');
  await run('nbdcopy', [`nbds://127.0.0.1:${d.port}/db1@full?tls-certificates=${s.ops1.dir}`, out]);
  t.true(fs.readFileSync(out).equals(s.data.db1!));
  const denied = await run('nbdinfo', [`nbds://127.0.0.1:${d.port}/db2@full?tls-certificates=${s.ops1.dir}`]).catch((e: Error & { stderr?: string }) => e);
  t.true(denied instanceof Error);

  // INFO and GO: an export this client may not see answers exactly like one that does not exist
  const c1 = await tlsClient(d, s.certs, s.ops1);
  t.teardown(() => c1.destroy());
  for (const option of [OPT.INFO, OPT.GO]) {
    const hidden = await answer(c1, option, 'db2@full');
    const missing = await answer(c1, option, 'db2@nosuch');
    t.is(hidden.type, ERR_UNKNOWN);
    t.deepEqual(hidden, missing);
    t.regex(hidden.message, /unknown export/);
    t.notRegex(hidden.message, /forbid|denied|permission|access/i);
  }
  // a writable export under a read-only rule is served read-only
  const ro = await c1.go('db1@full+overlay');
  t.truthy(ro.flags & TF_READ_ONLY);
  c1.request(CMD.WRITE, 0, 4096, { payload: Buffer.alloc(4096, 1), cookie: 7n });
  t.is((await c1.readSimple()).error, EPERM);
  c1.request(CMD.READ, 0, 4096, { cookie: 8n });
  t.true((await c1.readSimple(4096)).data.equals(s.data.db1!.subarray(0, 4096)));

  // write: true writes
  const c2 = await tlsClient(d, s.certs, s.ops2);
  t.teardown(() => c2.destroy());
  const rw = await c2.go('db2@full+overlay');
  t.falsy(rw.flags & TF_READ_ONLY);
  const mine = randomBytes(4096);
  c2.request(CMD.WRITE, 64 * KiB, 4096, { payload: mine, cookie: 1n });
  t.is((await c2.readSimple()).error, 0);
  c2.request(CMD.READ, 64 * KiB, 4096, { cookie: 2n });
  t.true((await c2.readSimple(4096)).data.equals(mine));

  // without TLS nothing is offered at all
  const plain = await RawClient.connect(d.port);
  t.teardown(() => plain.destroy());
  await plain.greet();
  t.is((await answer(plain, OPT.GO, 'db1@full')).type, ERR_TLS_REQD);

  // the unix socket (0600) is the admin's: everything, writable where the export is
  t.is(fs.statSync(d.socket).mode & 0o777, 0o600);
  const admin = JSON.parse((await run('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${d.socket}`])).stdout) as { exports: { 'export-name': string; is_read_only: boolean }[] };
  t.deepEqual(admin.exports.map((e) => e['export-name']).sort(), ['db1@full', 'db1@full+overlay', 'db2@full', 'db2@full+overlay']);
  t.false(admin.exports.find((e) => e['export-name'] === 'db1@full+overlay')!.is_read_only);
});

test('repo create: a secret on argv (--secret-key) is refused; --secret-key-file and AWS_SECRET_ACCESS_KEY give it', async (t) => {
  const dir = tmpDir(t);
  const dataDir = path.join(dir, 'data');
  const secret = `s3cr3t-${randomBytes(6).toString('hex')}`;
  const r = await cli(dataDir, ['repo', 'create', '--driver', 's3', '--bucket', 'backups', '--endpoint', 'http://127.0.0.1:1', '--access-key', 'AKID', '--secret-key', secret]);
  t.is(r.code, 2, r.stderr);
  t.regex(r.stderr, /--secret-key is no longer accepted: .*visible.*--secret-key-file/);
  t.false(r.stderr.includes(secret));
  t.false(fs.existsSync(path.join(dataDir, 'blockgate.json')), 'nothing written');

  const file = path.join(dir, 'secret');
  fs.writeFileSync(file, `${secret}\n`, { mode: 0o600 });
  t.like(repoConfigFrom({ driver: 's3', bucket: 'b', accessKey: 'AKID', secretKeyFile: file }, {}), { accessKeyId: 'AKID', secretAccessKey: secret });
  t.like(repoConfigFrom({ driver: 's3', bucket: 'b', accessKey: 'AKID' }, { AWS_SECRET_ACCESS_KEY: secret }), { accessKeyId: 'AKID', secretAccessKey: secret });
  t.throws(() => repoConfigFrom({ driver: 's3', bucket: 'b', accessKey: 'AKID' }, {}), { message: /--secret-key-file/ });
  t.throws(() => repoConfigFrom({ driver: 's3', bucket: 'b', secretKeyFile: file }, {}), { message: /goes with --access-key/ });
  // the file route gets past usage to the (unreachable) endpoint, and the secret shows nowhere
  const viaFile = await cli(dataDir, ['repo', 'create', '--driver', 's3', '--bucket', 'backups', '--endpoint', 'http://127.0.0.1:1', '--access-key', 'AKID', '--secret-key-file', file]);
  t.not(viaFile.code, 2, viaFile.stderr);
  t.not(viaFile.code, 0);
  t.false(viaFile.stderr.includes(secret) || viaFile.stdout.includes(secret));
  const help = await cli(dataDir, ['repo', 'create', '--help']);
  t.regex(help.stdout, /--secret-key-file/);
});
