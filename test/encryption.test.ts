/**
 * Encryption at rest: an encrypted repository's objects reveal nothing without the key
 * (chunk and page names are keyed, every chunk, page and manifest is sealed with its name
 * authenticated), and everything works the same on it: backups, restore, NBD, FUSE, instant
 * restore, record export/import, catalog rebuild, verify, GC; on a directory repository and
 * on S3 with an RBD volume. A wrong or missing key is one clear line and touches nothing; a
 * tampered or swapped object is an error naming it and the block.
 */
import ava, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { S3Store } from '../drivers/store/s3.js';
import { cephTest, getCeph, getS3, rbd, rbdApply } from './helpers/ceph.js';
import { parseRbdSpec } from '../drivers/volume/rbd.js';
import { CLI, cli, mixedContent, mutate, sha, tmpDir, treeState } from './helpers/core.js';
import { run, startDaemon } from './helpers/daemon.js';
import { requireFuse, startMount } from './helpers/fuse.js';
import { execFile } from 'node:child_process';

const CS = 64 * 1024;
const PASS = 'correct horse battery staple';
// the daemon and mounts this file starts inherit it (each test file runs in its own process)
process.env.BLOCKGATE_PASSPHRASE = PASS;

function bgEnv(dataDir: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, '--data-dir', dataDir, ...args], { env: { ...process.env, BLOCKGATE_PASSPHRASE: PASS, ...env }, maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}
async function bgJ<T = Record<string, unknown>>(dataDir: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<T> {
  const r = await bgEnv(dataDir, ['-f', 'json', ...args], env);
  if (r.code !== 0) throw new Error(`blockgate ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

function objects(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name));
      else out.push(path.join(d, e.name));
    }
  };
  if (fs.existsSync(dir)) walk(dir);
  return out;
}

async function encryptedSetup(t: ExecutionContext) {
  const root = tmpDir(t);
  const data = path.join(root, 'data');
  const repo = path.join(root, 'repo');
  fs.mkdirSync(data);
  fs.writeFileSync(path.join(data, 'blockgate.json'), JSON.stringify({ chunkSize: CS }));
  await bgJ(data, ['repo', 'create', '--driver', 'dir', '--path', repo, '--encrypt']);
  const img = path.join(root, 'v.img');
  const v1 = mixedContent(3 * 1024 * 1024, CS);
  fs.writeFileSync(img, v1);
  await bgJ(data, ['volume', 'create', '--name', 'v', '--file', img]);
  const full = await bgJ<{ id: string }>(data, ['backup', 'create', 'v', '--name', 'full']);
  const v2 = Buffer.from(v1);
  mutate(v2, CS, 6);
  fs.writeFileSync(img, v2);
  const inc = await bgJ<{ id: string }>(data, ['backup', 'create', 'v', '--incremental', '--name', 'inc']);
  return { root, data, repo, img, v1, v2, full, inc };
}

ava('an encrypted directory repository: names reveal nothing, objects are sealed, backups restore bit-exact, and verify, export/import, rebuild and GC work', async (t) => {
  t.timeout(5 * 60_000);
  const s = await encryptedSetup(t);
  // names: no stored chunk is named by the SHA-256 of any block of the volume
  const names = new Set(objects(path.join(s.repo, 'chunks')).map((f) => path.basename(f)));
  t.true(names.size > 10);
  for (const v of [s.v1, s.v2]) {
    for (let o = 0; o < v.length; o += CS) t.false(names.has(createHash('sha256').update(v.subarray(o, o + CS)).digest('hex')), `block at ${o} is not named by its SHA-256`);
  }
  // contents: no object holds a block or the text in the clear; manifests and config have no secret
  const text = Buffer.from('the quick brown fox');
  for (const f of [...objects(path.join(s.repo, 'chunks')), ...objects(path.join(s.repo, 'pages')), ...objects(path.join(s.repo, 'manifests'))]) {
    const b = fs.readFileSync(f);
    t.is(b.indexOf(text), -1, `${f} holds no plaintext`);
    t.is(b.indexOf(Buffer.from('"volume_name"')), -1, `${f} holds no record in the clear`);
  }
  // no 64-byte run of the volume (sampled where it is not zeroes) stands in any object
  const runs: Buffer[] = [];
  while (runs.length < 300) {
    const o = Math.floor(Math.random() * (s.v2.length - 64));
    const r = s.v2.subarray(o, o + 64);
    if (r.some((x) => x !== 0)) runs.push(r);
  }
  for (const f of objects(s.repo)) {
    const b = fs.readFileSync(f);
    t.false(runs.some((r) => b.includes(r)), `${path.relative(s.repo, f)} holds no run of the volume`);
  }
  const config = fs.readFileSync(path.join(s.repo, 'config'), 'utf8');
  t.false(config.includes(PASS));
  t.regex(config, /"algorithm": "aes-256-gcm"/);
  // restore, verify
  await bgJ(s.data, ['backup', 'restore', 'full', '--name', 'r1']);
  t.is(sha(fs.readFileSync(path.join(s.data, 'volumes', 'r1.img'))), sha(s.v1));
  await bgJ(s.data, ['backup', 'restore', 'inc', '--name', 'r2']);
  t.is(sha(fs.readFileSync(path.join(s.data, 'volumes', 'r2.img'))), sha(s.v2));
  const ver = await bgJ<{ backups_ok: number; backups_failed: number }>(s.data, ['backup', 'verify', '--all']);
  t.deepEqual([ver.backups_ok, ver.backups_failed], [2, 0]);
  // a second appliance with the passphrase: record import; then a lost catalog rebuilt
  const b = path.join(s.root, 'b');
  fs.mkdirSync(b);
  await bgJ(b, ['repo', 'create', '--driver', 'dir', '--path', s.repo]);
  const ex = await bgJ<{ backup_service: string; backup_url: string }>(s.data, ['backup', 'export', 'inc']);
  t.false(Buffer.from(ex.backup_url, 'base64').toString().includes(PASS), 'no key material in the record');
  await bgJ(b, ['backup', 'import', ex.backup_service, ex.backup_url]);
  await bgJ(b, ['backup', 'restore', s.inc.id, '--name', 'r3']);
  t.is(sha(fs.readFileSync(path.join(b, 'volumes', 'r3.img'))), sha(s.v2));
  fs.rmSync(path.join(s.data, 'catalog'), { recursive: true });
  const rb = await bgJ<{ added: number; errors: unknown[] }>(s.data, ['catalog', 'rebuild']);
  t.deepEqual([rb.added, rb.errors.length], [2, 0]);
  await bgJ(s.data, ['backup', 'restore', 'inc', '--name', 'r4']);
  t.is(sha(fs.readFileSync(path.join(s.data, 'volumes', 'r4.img'))), sha(s.v2));
  // GC: deleting both (on both catalogs) frees every chunk
  await bgJ(b, ['backup', 'delete', s.inc.id]);
  await bgJ(s.data, ['backup', 'delete', 'full']);
  const gc = await bgJ<{ removedChunks: number; liveBackups: number }>(s.data, ['repo', 'gc']);
  t.is(gc.liveBackups, 0);
  t.is(objects(path.join(s.repo, 'chunks')).length, 0);
});

ava('an encrypted repository is served the same: NBD, FUSE and instant restore read it bit-exact', async (t) => {
  t.timeout(5 * 60_000);
  const s = await encryptedSetup(t);
  const d = await startDaemon(t, s.data, []);
  t.teardown(() => d.stop('SIGKILL'));
  fs.writeFileSync(path.join(s.root, 'v1.img'), s.v1);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(s.root, 'v1.img'), d.uri('v@full')]);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', s.img, d.uri('v@inc')]);
  // instant restore into a new volume, complete and exact
  await bgJ(s.data, ['backup', 'restore', 'inc', '--name', 'fresh', '--instant']);
  let done = false;
  for (let i = 0; i < 600 && !done; i++) {
    const v = await bgJ<{ status: string }>(s.data, ['volume', 'show', 'fresh']);
    done = v.status === 'available';
    if (!done) await new Promise((res) => setTimeout(res, 100));
  }
  t.true(done, 'the instant restore completed');
  t.is(sha(fs.readFileSync(path.join(s.data, 'volumes', 'fresh.img'))), sha(s.v2));
  await d.stop();
  if (!requireFuse(t)) return;
  const mnt = path.join(s.root, 'mnt');
  await startMount(t, s.data, mnt);
  t.is(sha(await fs.promises.readFile(path.join(mnt, 'volumes', 'v', 'full', 'disk.img'))), sha(s.v1));
});

ava('a wrong or missing passphrase, or a plain repository opened as encrypted: one clear line, nothing touched', async (t) => {
  const s = await encryptedSetup(t);
  const before = [...treeState(s.repo), ...treeState(path.join(s.data, 'catalog'))];
  for (const [what, env, msg] of [
    ['wrong', { BLOCKGATE_PASSPHRASE: 'not it' }, /wrong passphrase for repository/],
    ['missing', { BLOCKGATE_PASSPHRASE: '' }, /is encrypted: give its passphrase/],
  ] as const) {
    for (const args of [['backup', 'list'], ['backup', 'create', 'v'], ['repo', 'gc'], ['backup', 'restore', 'full', '--name', 'x']]) {
      const r = await bgEnv(s.data, args, env);
      t.is(r.code, 2, `${what}: ${args.join(' ')}`);
      t.regex(r.stderr, msg);
      t.is(r.stderr.trim().split('\n').length, 1);
    }
  }
  t.deepEqual([...treeState(s.repo), ...treeState(path.join(s.data, 'catalog'))], before, 'nothing changed');
  // a plain repository, where this appliance expects an encrypted one
  const plain = path.join(s.root, 'plain');
  const other = path.join(s.root, 'o');
  await cli(other, ['repo', 'create', '--driver', 'dir', '--path', plain]);
  const cfg = JSON.parse(fs.readFileSync(path.join(other, 'blockgate.json'), 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(path.join(other, 'blockgate.json'), JSON.stringify({ ...cfg, encryption: {} }));
  const r = await bgEnv(other, ['backup', 'list']);
  t.is(r.code, 2);
  t.regex(r.stderr, /is not encrypted, but this appliance expects an encrypted one/);
});

ava('a tampered or swapped object is an error naming it and the block, never wrong data', async (t) => {
  const s = await encryptedSetup(t);
  const chunks = objects(path.join(s.repo, 'chunks')).sort();
  const victim = chunks[0]!;
  const buf = fs.readFileSync(victim);
  buf[buf.length - 20]! ^= 0x01;
  fs.writeFileSync(victim, buf);
  const r = await bgEnv(s.data, ['backup', 'restore', 'full', '--name', 'x']);
  const r2 = await bgEnv(s.data, ['backup', 'restore', 'inc', '--name', 'y']);
  const err = r.code ? r.stderr : r2.stderr;
  t.true(r.code !== 0 || r2.code !== 0, 'a restore that reads the object fails');
  t.regex(err, new RegExp(`block \\d+ \\(offset \\d+\\).*${path.basename(victim)}.*fails authentication`));
  // swap: another object's bytes under this name (a valid object, the wrong name)
  fs.copyFileSync(chunks[1]!, victim);
  const ver = await bgEnv(s.data, ['-f', 'json', 'backup', 'verify', '--all']);
  t.is(ver.code, 1, 'verify reports the swapped object');
  t.regex(ver.stdout, new RegExp(`${path.basename(victim)}.*fails authentication`));
  // a flipped bit in a page: verify names the page; in a manifest: a rebuild names the manifest
  const page = objects(path.join(s.repo, 'pages'))[0]!;
  const pb = fs.readFileSync(page);
  pb[pb.length - 1]! ^= 0x80;
  fs.writeFileSync(page, pb);
  const pv = await bgEnv(s.data, ['-f', 'json', 'backup', 'verify', '--all']);
  t.is(pv.code, 1);
  t.regex(pv.stdout, new RegExp(`map page ${path.basename(page)}`));
  const manifest = objects(path.join(s.repo, 'manifests'))[0]!;
  const mb = fs.readFileSync(manifest);
  mb[20]! ^= 0x04;
  fs.writeFileSync(manifest, mb);
  fs.rmSync(path.join(s.data, 'catalog'), { recursive: true });
  const rb = await bgJ<{ errors: { backup: string; error: string }[] }>(s.data, ['catalog', 'rebuild']);
  t.true(rb.errors.some((e) => new RegExp(`object manifests/${path.basename(manifest, '.json')}\\.json fails authentication`).test(e.error)), JSON.stringify(rb.errors));
});

ava('a key file outside the repository; passphrases added and removed without touching data', async (t) => {
  const root = tmpDir(t);
  const data = path.join(root, 'data');
  const keyFile = path.join(root, 'repo.key');
  fs.mkdirSync(data);
  await bgJ(data, ['repo', 'create', '--driver', 'dir', '--path', path.join(root, 'repo'), '--encrypt', '--key-file', keyFile, '--chunk-size', '64K'], { BLOCKGATE_PASSPHRASE: '' });
  t.is(fs.statSync(keyFile).mode & 0o777, 0o600);
  const img = path.join(root, 'v.img');
  const v = randomBytes(512 * 1024);
  fs.writeFileSync(img, v);
  await bgJ(data, ['volume', 'create', '--name', 'v', '--file', img], { BLOCKGATE_PASSPHRASE: '' });
  await bgJ(data, ['backup', 'create', 'v', '--name', 'b'], { BLOCKGATE_PASSPHRASE: '' });
  // another repository's key file is refused
  const other = path.join(root, 'other');
  await bgJ(other, ['repo', 'create', '--driver', 'dir', '--path', path.join(root, 'repo2'), '--encrypt', '--key-file', path.join(root, 'other.key')], { BLOCKGATE_PASSPHRASE: '' });
  fs.copyFileSync(path.join(root, 'other.key'), keyFile);
  const wrong = await bgEnv(data, ['backup', 'list'], { BLOCKGATE_PASSPHRASE: '' });
  t.is(wrong.code, 2);
  t.regex(wrong.stderr, /holds another repository's key/);

  // passphrases: add one (data untouched), use it, remove the first, the last one stays
  const s = await encryptedSetup(t);
  const mtimes = () => objects(path.join(s.repo, 'chunks')).map((f) => `${f}:${fs.statSync(f).mtimeMs}`).sort();
  const chunksBefore = mtimes();
  const added = await bgJ<{ added: string }>(s.data, ['repo', 'key', 'add', '--label', 'ops'], { BLOCKGATE_NEW_PASSPHRASE: 'second one' });
  const keys = await bgJ<{ id: string }[]>(s.data, ['repo', 'key', 'list']);
  t.is(keys.length, 2);
  t.is((await bgEnv(s.data, ['backup', 'list'], { BLOCKGATE_PASSPHRASE: 'second one' })).code, 0);
  const first = keys.find((k) => k.id !== added.added)!.id;
  await bgJ(s.data, ['repo', 'key', 'remove', first], { BLOCKGATE_PASSPHRASE: 'second one' });
  t.is((await bgEnv(s.data, ['backup', 'list'])).code, 2, 'the removed passphrase no longer opens it');
  const last = await bgEnv(s.data, ['repo', 'key', 'remove', added.added], { BLOCKGATE_PASSPHRASE: 'second one' });
  t.is(last.code, 2);
  t.regex(last.stderr, /last passphrase/);
  t.deepEqual(mtimes(), chunksBefore, 'no data object was rewritten (same files, same mtimes)');
});

cephTest('an encrypted S3 repository with an RBD volume: full and incremental backups restore bit-exact, NBD and FUSE read it', async (t) => {
  t.timeout(5 * 60_000);
  const c = await getCeph();
  const s3 = await getS3();
  const bucket = `blockgate-enc-${randomBytes(3).toString('hex')}`;
  const st = await S3Store.open({ endpoint: s3.endpoint, region: s3.region, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, bucket, createBucket: true });
  t.teardown(async () => {
    for await (const n of st.list('')) await st.delete(n);
    await st.close();
  });
  const root = tmpDir(t);
  const data = path.join(root, 'data');
  fs.mkdirSync(data);
  fs.writeFileSync(path.join(data, 'blockgate.json'), JSON.stringify({ chunkSize: 1024 * 1024 }));
  const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey, CEPH_CONF: c.conf };
  await bgJ(data, ['repo', 'create', '--driver', 's3', '--bucket', bucket, '--endpoint', s3.endpoint, '--region', s3.region, '--encrypt'], env);
  const spec = `volumes/bgt-enc-${randomBytes(3).toString('hex')}`;
  const file = path.join(root, 'src.img');
  fs.writeFileSync(file, mixedContent(8 * 1024 * 1024, 1024 * 1024));
  await rbd(c, ['import', '--no-progress', file, spec]);
  t.teardown(async () => {
    await rbd(c, ['snap', 'purge', '--no-progress', spec]).catch(() => undefined);
    await rbd(c, ['remove', '--no-progress', spec]).catch(() => undefined);
  });
  await bgJ(data, ['volume', 'create', '--name', 'r', '--rbd', spec], env);
  await bgJ(data, ['backup', 'create', 'r', '--name', 'full'], env);
  const v1 = await rbd(c, ['export', '--no-progress', spec, '-']);
  const { pool, image } = parseRbdSpec(spec);
  await rbdApply(c, pool, image, [{ op: 'write', offset: 3 * 1024 * 1024 + 4096, data: randomBytes(300 * 1024) }]);
  await bgJ(data, ['backup', 'create', 'r', '--incremental', '--name', 'inc'], env);
  await bgJ(data, ['backup', 'restore', 'full', '--name', 'back'], env);
  t.is(sha(fs.readFileSync(path.join(data, 'volumes', 'back.img'))), sha(v1));
  await bgJ(data, ['backup', 'restore', 'inc', '--name', 'back2'], env);
  t.is(sha(fs.readFileSync(path.join(data, 'volumes', 'back2.img'))), sha(await rbd(c, ['export', '--no-progress', spec, '-'])));
  // NBD and FUSE read the encrypted S3 repository too (chunks fetched as objects, opened in the workers)
  Object.assign(process.env, env);
  const d = await startDaemon(t, data, []);
  fs.writeFileSync(path.join(root, 'v1.img'), v1);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(root, 'v1.img'), d.uri('r@full')]);
  await d.stop();
  if (requireFuse(t)) {
    const mnt = path.join(root, 'mnt');
    await startMount(t, data, mnt);
    t.is(sha(await fs.promises.readFile(path.join(mnt, 'volumes', 'r', 'full', 'disk.img'))), sha(v1), 'FUSE reads it bit-exact');
  }
  const names: string[] = [];
  for await (const n of st.list('chunks/')) names.push(n);
  t.true(names.length > 0);
  t.false(names.some((n) => n.endsWith(createHash('sha256').update(v1.subarray(0, 1024 * 1024)).digest('hex'))), 'names are keyed');
});
