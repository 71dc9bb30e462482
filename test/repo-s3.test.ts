/**
 * The repository suite on S3 (a real radosgw from tools/ceph/ceph-up.sh, shared per run):
 * bit-exact round trips with every codec, incrementals and dedup measured in S3 objects,
 * delete + GC reclaiming objects, a byte flipped in a stored chunk (through the S3 API)
 * reported on restore; `repo create --driver s3|dir` and `repo info` through the CLI, with
 * credentials kept out of output and config files; and faults through a TCP proxy in front
 * of radosgw: an endpoint that goes away mid-backup (for good: the backup ends `error` with
 * the reason, never `available`; briefly: retries carry it), throttling, and outages and cut
 * responses mid-restore (retried).
 */
import ava, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Appliance } from '../gateway/appliance.js';
import { loadConfig } from '../gateway/config.js';
import { runBackup, startBackup } from '../gateway/engine/backup.js';
import { collectGarbage } from '../gateway/engine/gc.js';
import { deleteBackup } from '../gateway/engine/delete.js';
import { prepareRestore, runRestore } from '../gateway/engine/restore.js';
import { createVolume } from '../gateway/engine/volumes.js';
import { repoInfo } from '../gateway/engine/repo-info.js';
import { CODECS, type CodecName } from '../drivers/codec.js';
import { S3Store } from '../drivers/store/s3.js';
import { cephTest, getS3, rawS3Client, type S3Endpoint } from './helpers/ceph.js';
import { CLI, cliJson, mixedContent, mutate, sha, tmpDir } from './helpers/core.js';
import { backup, restoreToBuffer, rewrite, volumeFrom } from './helpers/engine.js';
import { TcpProxy } from './helpers/tcp-proxy.js';

const test = cephTest;
const CS = 64 * 1024;
const BUCKET = `blockgate-repo-${randomBytes(3).toString('hex')}`;

let s3: S3Endpoint;
let raw: S3Client;

ava.before(async () => {
  s3 = await getS3();
  raw = rawS3Client(s3);
  const st = await S3Store.open({ endpoint: s3.endpoint, region: s3.region, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, bucket: BUCKET, createBucket: true });
  await st.close();
});

ava.after.always(() => raw?.destroy());

/** a secret in a 0600 file, for --secret-key-file (a secret never goes on argv) */
function secretFile(t: ExecutionContext, secret: string): string {
  const f = path.join(tmpDir(t), 'secret');
  fs.writeFileSync(f, `${secret}\n`, { mode: 0o600 });
  return f;
}

async function keys(prefix: string, bucket = BUCKET): Promise<string[]> {
  const out: string[] = [];
  let token: string | undefined;
  do {
    const page = await raw.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    for (const o of page.Contents ?? []) out.push(o.Key!);
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return out.sort();
}

async function wipe(prefix: string, bucket = BUCKET): Promise<void> {
  const all = await keys(prefix, bucket);
  for (let i = 0; i < all.length; i += 32) await Promise.all(all.slice(i, i + 32).map((Key) => raw.send(new DeleteObjectCommand({ Bucket: bucket, Key }))));
}

interface S3AppOptions {
  codec?: CodecName;
  chunkSize?: number;
  /** the endpoint to use (a proxy), default radosgw itself */
  endpoint?: string;
  /** retry settings of the S3 driver (default: the appliance's) */
  retry?: { maxAttempts?: number; retryBaseDelayMs?: number; retryMaxDelayMs?: number };
  prefix?: string;
}

/** An appliance whose repository is a fresh prefix of the test bucket. */
async function s3App(t: ExecutionContext, o: S3AppOptions = {}): Promise<{ app: Appliance; prefix: string; dataDir: string }> {
  const prefix = o.prefix ?? `repo-${randomBytes(5).toString('hex')}`;
  const dataDir = path.join(tmpDir(t), 'data');
  fs.mkdirSync(dataDir, { recursive: true });
  const repository = {
    driver: 's3',
    bucket: BUCKET,
    prefix,
    endpoint: o.endpoint ?? s3.endpoint,
    region: s3.region,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
    ...(o.retry ?? {}),
  };
  fs.writeFileSync(path.join(dataDir, 'blockgate.json'), JSON.stringify({ chunkSize: o.chunkSize ?? CS, codec: o.codec ?? 'zstd', repository }), { mode: 0o600 });
  const app = await Appliance.open(loadConfig(dataDir));
  t.teardown(async () => {
    await app.close();
    await wipe(`${prefix}/`);
  });
  return { app, prefix, dataDir };
}

const chunkKeys = (prefix: string) => keys(`${prefix}/chunks/`);

// ------------------------------------------------------------------ the engine suite on S3

for (const codec of CODECS) {
  test(`S3: backup and restore are bit-exact with ${codec}`, async (t) => {
    const { app, prefix } = await s3App(t, { codec });
    const data = mixedContent(3 * 1024 * 1024 + 12345, CS);
    await volumeFrom(app, 'v', data);
    const b = await backup(app, 'v');
    t.is(b.status, 'available');
    t.is(b.container, `s3://${BUCKET}/${prefix}/ at ${s3.endpoint.replace(/\/$/, '')}`);
    t.is(sha(await restoreToBuffer(app, b.id)), sha(data));
    t.deepEqual(await keys(`${prefix}/manifests/`), [`${prefix}/manifests/${b.id}.json`], 'the manifest is in the bucket');
    t.is((await chunkKeys(prefix)).length, app.catalog.chunks.getCount(), 'one object per indexed chunk');
    t.true((await keys(`${prefix}/config`)).length === 1);
  });
}

test('S3: an incremental stores only the changed chunks; a full of an unchanged volume and a copy of it on another volume store nothing', async (t) => {
  const { app, prefix } = await s3App(t);
  const data = randomBytes(4 * 1024 * 1024);
  await volumeFrom(app, 'v', data);
  await backup(app, 'v');
  const before = (await chunkKeys(prefix)).length;
  t.is(before, 64);
  const changed = mutate(data, CS, 3);
  rewrite(app, 'v', data);
  const inc = await backup(app, 'v', { incremental: true });
  t.is(inc.new_chunks, changed.length);
  t.is((await chunkKeys(prefix)).length, before + changed.length);
  t.is(sha(await restoreToBuffer(app, inc.id)), sha(data));

  const again = await backup(app, 'v');
  t.false(again.is_incremental);
  t.is(again.new_chunks, 0);
  await volumeFrom(app, 'copy', data);
  const other = await backup(app, 'copy');
  t.is(other.new_chunks, 0, 'dedup across volumes');
  t.is((await chunkKeys(prefix)).length, before + changed.length, 'nothing new in the bucket');
  const info = repoInfo(app);
  t.true(info.dedup_ratio >= 3, `dedup ratio ${info.dedup_ratio}`);
});

test('S3: deleting backups and GC remove their objects from the bucket', async (t) => {
  const { app, prefix } = await s3App(t);
  const v1 = randomBytes(2 * 1024 * 1024);
  await volumeFrom(app, 'v', v1);
  const full = await backup(app, 'v');
  const v2 = Buffer.from(v1);
  const changed = mutate(v2, CS, 4);
  rewrite(app, 'v', v2);
  const inc = await backup(app, 'v', { incremental: true });
  await deleteBackup(app, full.id);
  const gc = await collectGarbage(app);
  t.is(gc.removedChunks, changed.length, 'the chunks only the full backup had');
  t.is((await chunkKeys(prefix)).length, app.catalog.chunks.getCount());
  t.is(sha(await restoreToBuffer(app, inc.id)), sha(v2));
  await deleteBackup(app, inc.id);
  await collectGarbage(app);
  t.deepEqual(await chunkKeys(prefix), []);
  t.deepEqual(await keys(`${prefix}/pages/`), []);
  t.deepEqual(await keys(`${prefix}/manifests/`), []);
});

test('S3: a byte flipped in a stored chunk object is reported on restore, naming the block', async (t) => {
  const { app, prefix } = await s3App(t, { codec: 'none' });
  const data = randomBytes(1024 * 1024);
  await volumeFrom(app, 'v', data);
  const b = await backup(app, 'v');
  const victim = app.catalog.mapReader(b).entry(5)!;
  const Key = `${prefix}/chunks/${victim.slice(0, 2)}/${victim}`;
  const obj = Buffer.from(await (await raw.send(new GetObjectCommand({ Bucket: BUCKET, Key }))).Body!.transformToByteArray());
  obj[100] ^= 1;
  await raw.send(new PutObjectCommand({ Bucket: BUCKET, Key, Body: obj }));
  await createVolume(app, { name: 't', size: data.length });
  const prep = await prepareRestore(app, { backup: b.id, volume: 't' });
  const err = await t.throwsAsync(runRestore(app, prep.backup, prep.target));
  t.regex(err!.message, new RegExp(`block 5 \\(offset ${5 * CS}\\).*chunk ${victim} is corrupt`));
  t.is(app.catalog.volume('t').status, 'error_restoring');
  t.is(app.catalog.backupRecord(b.id).status, 'available');
  // a missing object is reported the same way
  await raw.send(new DeleteObjectCommand({ Bucket: BUCKET, Key }));
  await createVolume(app, { name: 't2', size: data.length });
  const prep2 = await prepareRestore(app, { backup: b.id, volume: 't2' });
  const err2 = await t.throwsAsync(runRestore(app, prep2.backup, prep2.target));
  t.regex(err2!.message, new RegExp(`block 5 .*not found`));
});

// ------------------------------------------------------------------ the CLI

function envWithout(...names: string[]): NodeJS.ProcessEnv {
  const e = { ...process.env };
  for (const n of names) delete e[n];
  return e;
}

/** The CLI with exactly this environment (helpers/core.ts's cli() adds process.env back). */
function cliEnv(dataDir: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, '--data-dir', dataDir, ...args], { env }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

test('CLI: repo create --driver s3 with keys from the environment stores no secret; repo info and backups work', async (t) => {
  const dataDir = path.join(tmpDir(t), 'data');
  const prefix = `cli-${randomBytes(4).toString('hex')}`;
  const bucket = `${BUCKET}-cli`; // made by repo create
  t.teardown(() => wipe(`${prefix}/`, bucket));
  const env = { ...envWithout('AWS_ENDPOINT_URL'), AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, AWS_REGION: s3.region };
  const r = await cliEnv(dataDir, ['-f', 'json', 'repo', 'create', '--driver', 's3', '--bucket', bucket, '--prefix', prefix, '--endpoint', s3.endpoint, '--chunk-size', '128K', '--codec', 'lz4'], env);
  t.is(r.code, 0, r.stderr);
  const created = JSON.parse(r.stdout) as Record<string, unknown>;
  t.is(created.driver, 's3');
  t.true(created.created as boolean);
  t.is(created.chunk_size, 128 * 1024);
  t.is(created.codec, 'lz4');
  t.is(created.location, `s3://${bucket}/${prefix}/ at ${s3.endpoint.replace(/\/$/, '')}`);
  const cfg = fs.readFileSync(path.join(dataDir, 'blockgate.json'), 'utf8');
  t.false(cfg.includes(s3.secretAccessKey) || cfg.includes(s3.accessKeyId), 'no key in blockgate.json');
  t.deepEqual(JSON.parse(cfg).repository, { driver: 's3', bucket, prefix, endpoint: s3.endpoint });

  const vol = path.join(tmpDir(t), 'vol.img');
  const data = mixedContent(2 * 1024 * 1024, 128 * 1024);
  fs.writeFileSync(vol, data);
  t.is((await cliEnv(dataDir, ['volume', 'create', '--name', 'v', '--file', vol], env)).code, 0);
  const b = await cliEnv(dataDir, ['-f', 'json', 'backup', 'create', 'v'], env);
  t.is(b.code, 0, b.stderr);
  t.is(JSON.parse(b.stdout).status, 'available');
  const info = await cliEnv(dataDir, ['-f', 'json', 'repo', 'info'], env);
  t.is(info.code, 0, info.stderr);
  const i = JSON.parse(info.stdout) as Record<string, unknown>;
  t.is(i.location, created.location);
  t.is(i.backups, 1);
  t.true((i.chunks as number) > 0);
  t.is((await keys(`${prefix}/chunks/`, bucket)).length, i.chunks as number);

  // without keys in the environment the repository cannot be opened, and says why
  const noKeys = await cliEnv(dataDir, ['repo', 'info'], { ...envWithout('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_PROFILE'), HOME: tmpDir(t), AWS_EC2_METADATA_DISABLED: 'true' });
  t.not(noKeys.code, 0);
  t.regex(noKeys.stderr, /^blockgate: error: .*(access denied|credential)/i);
  t.notRegex(noKeys.stderr, /\n\s+at /);

  // create again: the repository is there already, so it attaches to it
  const again = await cliJson<Record<string, unknown>>(dataDir, ['repo', 'create', '--driver', 's3', '--bucket', bucket, '--prefix', prefix, '--endpoint', s3.endpoint, '--access-key', s3.accessKeyId, '--secret-key-file', secretFile(t, s3.secretAccessKey)]);
  t.false(again.created as boolean);
  t.is(again.id, created.id);
});

test('CLI: keys given to repo create are stored 0600 and never shown; wrong keys and bad usage fail clearly, writing nothing', async (t) => {
  const dataDir = path.join(tmpDir(t), 'data');
  const prefix = `cli-${randomBytes(4).toString('hex')}`;
  t.teardown(() => wipe(`${prefix}/`));
  const env = envWithout('AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_ENDPOINT_URL');
  const wrong = `wrong-${randomBytes(8).toString('hex')}`;
  const bad = await cliEnv(dataDir, ['repo', 'create', '--driver', 's3', '--bucket', BUCKET, '--prefix', prefix, '--endpoint', s3.endpoint, '--access-key', s3.accessKeyId, '--secret-key-file', secretFile(t, wrong)], env);
  t.is(bad.code, 1);
  t.regex(bad.stderr, /^blockgate: error: access denied: check the access key and secret for http:\/\/127\.0\.0\.1:\d+/);
  t.false(bad.stderr.includes(wrong) || bad.stderr.includes(s3.accessKeyId));
  t.false(fs.existsSync(path.join(dataDir, 'blockgate.json')), 'nothing written');

  const ok = await cliEnv(dataDir, ['repo', 'create', '--driver', 's3', '--bucket', BUCKET, '--prefix', prefix, '--endpoint', s3.endpoint, '--access-key', s3.accessKeyId, '--secret-key-file', secretFile(t, s3.secretAccessKey)], env);
  t.is(ok.code, 0, ok.stderr);
  t.false(ok.stdout.includes(s3.secretAccessKey) || ok.stdout.includes(s3.accessKeyId), 'keys not printed');
  const file = path.join(dataDir, 'blockgate.json');
  t.is(fs.statSync(file).mode & 0o777, 0o600);
  const info = await cliEnv(dataDir, ['-f', 'json', 'repo', 'info'], env);
  t.is(info.code, 0, info.stderr);
  t.false(info.stdout.includes(s3.secretAccessKey) || info.stdout.includes(s3.accessKeyId));

  for (const args of [
    ['repo', 'create', '--driver', 's3', '--endpoint', s3.endpoint],
    ['repo', 'create', '--driver', 's3', '--bucket', BUCKET, '--access-key', 'x'],
    ['repo', 'create', '--driver', 'dir'],
    ['repo', 'create', '--driver', 'dir', '--path', '/tmp/x', '--bucket', 'b'],
    ['repo', 'create', '--driver', 'ftp', '--path', '/tmp/x'],
    ['repo', 'create', '--path', '/tmp/x'],
  ]) {
    const r = await cliEnv(path.join(tmpDir(t), 'd'), args, env);
    t.is(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
  }
  const badBucket = await cliEnv(path.join(tmpDir(t), 'd'), ['repo', 'create', '--driver', 's3', '--bucket', 'Bad_Bucket', '--endpoint', s3.endpoint], env);
  t.regex(badBucket.stderr, /invalid S3 bucket name "Bad_Bucket"/);
  const badPrefix = await cliEnv(path.join(tmpDir(t), 'd'), ['repo', 'create', '--driver', 's3', '--bucket', BUCKET, '--prefix', '../x', '--endpoint', s3.endpoint], env);
  t.regex(badPrefix.stderr, /invalid S3 key prefix/);
});

test('CLI: repo create --driver dir, repo info; a catalog with backups of another repository is not moved', async (t) => {
  const dataDir = path.join(tmpDir(t), 'data');
  const repoDir = path.join(tmpDir(t), 'nfs', 'repo');
  const created = await cliJson<Record<string, unknown>>(dataDir, ['repo', 'create', '--driver', 'dir', '--path', repoDir, '--chunk-size', '1M', '--codec', 'zlib']);
  t.true(created.created as boolean);
  t.is(created.location, `dir:${repoDir}`);
  t.is(created.chunk_size, 1024 * 1024);
  t.true(fs.existsSync(path.join(repoDir, 'config')));
  const info = await cliJson<Record<string, unknown>>(dataDir, ['repo', 'info']);
  t.is(info.location, `dir:${repoDir}`);
  t.is(info.codec, 'zlib');
  const vol = path.join(tmpDir(t), 'v.img');
  fs.writeFileSync(vol, randomBytes(3 * 1024 * 1024));
  await cliJson(dataDir, ['volume', 'create', '--name', 'v', '--file', vol]);
  await cliJson(dataDir, ['backup', 'create', 'v']);
  const other = path.join(tmpDir(t), 'other');
  const r = await cliEnv(dataDir, ['repo', 'create', '--driver', 'dir', '--path', other], process.env);
  t.is(r.code, 2);
  t.regex(r.stderr, /holds backups of repository .* use another --data-dir/);
  t.is((await cliJson<Record<string, unknown>>(dataDir, ['repo', 'info'])).location, `dir:${repoDir}`, 'the configuration is unchanged');

  // a data directory whose catalog has no backup yet (a default repository made by an earlier command) moves
  const fresh = path.join(tmpDir(t), 'fresh');
  await cliJson(fresh, ['volume', 'list']);
  const moved = await cliJson<Record<string, unknown>>(fresh, ['repo', 'create', '--driver', 'dir', '--path', other]);
  t.true(moved.created as boolean);
  t.is((await cliJson<Record<string, unknown>>(fresh, ['repo', 'info'])).location, `dir:${other}`);
});

// ------------------------------------------------------------------ faults through a proxy

async function proxyFor(t: ExecutionContext): Promise<TcpProxy & { url: string }> {
  const p = await TcpProxy.forUrl(s3.endpoint);
  t.teardown(() => p.close());
  return p;
}

/** Every new connection is reset and every open one dropped, until `up()`. */
function outage(p: TcpProxy): { up(): void } {
  p.failNext(Number.MAX_SAFE_INTEGER, 'reset-on-connect');
  p.dropAll();
  return { up: () => p.failNext(0, 'reset-on-connect') };
}

test('fault: the endpoint goes away for good mid-backup -> error with the reason, never available; GC cleans up once it is back', async (t) => {
  const proxy = await proxyFor(t);
  const { app, prefix } = await s3App(t, { endpoint: proxy.url, retry: { maxAttempts: 3, retryBaseDelayMs: 20, retryMaxDelayMs: 100 } });
  const data = randomBytes(6 * 1024 * 1024);
  await volumeFrom(app, 'v', data);
  const rec = await startBackup(app, { volume: 'v' });
  let cut: { up(): void } | null = null;
  let t0 = 0;
  const err = await t.throwsAsync(
    runBackup(app, rec, (done, total) => {
      if (!cut && done >= total / 3) {
        cut = outage(proxy);
        t0 = Date.now();
      }
    }),
  );
  t.truthy(cut, 'the outage began mid-backup');
  t.log(`failed ${Date.now() - t0} ms into the outage: ${err?.message}`);
  t.regex(err!.message, /^cannot reach http:\/\/127\.0\.0\.1:\d+: (ECONNRESET|EPIPE|ECONNREFUSED|ECONNABORTED)( \(after 3 attempts\))?$/);
  const after = app.catalog.backupRecord(rec.id);
  t.is(after.status, 'error');
  t.is(after.fail_reason, err!.message);
  t.false(after.fail_reason!.includes(s3.secretAccessKey) || after.fail_reason!.includes(s3.accessKeyId));
  t.is(app.catalog.maps.get(rec.id), undefined, 'no block map committed');
  t.deepEqual(app.catalog.listBackups().filter((b) => b.status === 'available'), []);
  t.true(proxy.stats.faults > 0);

  cut!.up();
  t.deepEqual(await keys(`${prefix}/manifests/`), [], 'no manifest of the failed backup in the bucket');
  const partial = (await chunkKeys(prefix)).length;
  t.log(`${partial} chunk objects left by the failed backup`);
  const gc = await collectGarbage(app);
  t.is(gc.removedChunks, partial, 'GC removes what the failed backup left');
  t.deepEqual(await chunkKeys(prefix), []);
  const ok = await backup(app, 'v');
  t.is(ok.status, 'available');
  t.is(sha(await restoreToBuffer(app, ok.id)), sha(data));
});

test('fault: a short outage mid-backup (endpoint restart) is ridden out by retries', async (t) => {
  const proxy = await proxyFor(t);
  const { app } = await s3App(t, { endpoint: proxy.url }); // the appliance's own retry settings
  const data = randomBytes(6 * 1024 * 1024);
  await volumeFrom(app, 'v', data);
  let cut: { up(): void } | null = null;
  const rec = await startBackup(app, { volume: 'v' });
  const b = await runBackup(app, rec, (done, total) => {
    if (!cut && done >= total / 3) {
      const down = outage(proxy);
      cut = down;
      // the endpoint comes back once the outage has cut two connections (or after 2 s if it has by then),
      // so a slow machine cannot finish the backup's requests around it
      const since = Date.now();
      const poll = setInterval(() => {
        if (proxy.stats.faults >= 2 && Date.now() - since >= 2000) {
          clearInterval(poll);
          down.up();
        }
      }, 50);
    }
  });
  t.truthy(cut);
  t.is(b.status, 'available');
  t.log(`${proxy.stats.faults} connections reset during the outage (2 s at least); the backup completed`);
  t.true(proxy.stats.faults > 1, `${proxy.stats.faults} connections refused during the outage`);
  t.is(sha(await restoreToBuffer(app, b.id)), sha(data));
});

test('fault: throttling (503 SlowDown) mid-backup is retried with backoff', async (t) => {
  const proxy = await proxyFor(t);
  const { app } = await s3App(t, { endpoint: proxy.url });
  const data = randomBytes(4 * 1024 * 1024);
  await volumeFrom(app, 'v', data);
  let armed = false;
  const b = await runBackup(app, await startBackup(app, { volume: 'v' }), (done, total) => {
    if (!armed && done >= total / 4) {
      armed = true;
      proxy.failNext(12, 'respond-503');
    }
  });
  t.is(b.status, 'available');
  t.log(`${proxy.stats.faults} requests answered 503 SlowDown; the backup completed`);
  t.true(proxy.stats.faults >= 1, `${proxy.stats.faults} requests throttled`);
  t.is(sha(await restoreToBuffer(app, b.id)), sha(data));
});

test('fault: an outage and cut responses mid-restore are retried; an endpoint gone for good fails the restore clearly', async (t) => {
  const proxy = await proxyFor(t);
  const { app } = await s3App(t, { endpoint: proxy.url });
  const data = randomBytes(6 * 1024 * 1024);
  await volumeFrom(app, 'v', data);
  const b = await backup(app, 'v');

  // a 2 s outage a quarter of the way through
  await createVolume(app, { name: 't1', size: data.length });
  const p1 = await prepareRestore(app, { backup: b.id, volume: 't1' });
  let cut: { up(): void } | null = null;
  const v1 = await runRestore(app, p1.backup, p1.target, (done, total) => {
    if (!cut && done >= total / 4) {
      cut = outage(proxy);
      setTimeout(() => cut!.up(), 2000);
    }
  });
  t.truthy(cut);
  t.is(v1.status, 'available');
  t.is(sha(fs.readFileSync(v1.path)), sha(data));
  const faults = proxy.stats.faults;
  t.true(faults > 0);

  // responses cut half-way through their body
  await createVolume(app, { name: 't2', size: data.length });
  const p2 = await prepareRestore(app, { backup: b.id, volume: 't2' });
  proxy.dropAll();
  proxy.failNext(10, 'cut-response', 20_000);
  const v2 = await runRestore(app, p2.backup, p2.target);
  t.is(sha(fs.readFileSync(v2.path)), sha(data));
  t.true(proxy.stats.faults > faults);

  // gone for good: the restore fails with the reason, the backup stays available
  const { app: app2 } = await s3App(t, { endpoint: proxy.url, retry: { maxAttempts: 2, retryBaseDelayMs: 10, retryMaxDelayMs: 20 }, prefix: undefined });
  await volumeFrom(app2, 'v', data);
  const b2 = await backup(app2, 'v');
  await createVolume(app2, { name: 't3', size: data.length });
  const p3 = await prepareRestore(app2, { backup: b2.id, volume: 't3' });
  let down: { up(): void } | null = null;
  const err = await t.throwsAsync(
    runRestore(app2, p3.backup, p3.target, (done, total) => {
      if (!down && done >= total / 4) down = outage(proxy);
    }),
  );
  t.regex(err!.message, /block \d+ \(offset \d+\): cannot reach http:\/\/127\.0\.0\.1:\d+/);
  t.is(app2.catalog.volume('t3').status, 'error_restoring');
  t.is(app2.catalog.volume('t3').status_reason, err!.message);
  t.is(app2.catalog.backupRecord(b2.id).status, 'available');
  down!.up();
});
