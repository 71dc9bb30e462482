import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { cli, cliJson, fileSha, tmpDir, writeConfig } from './helpers/core.js';
import { run, startDaemon } from './helpers/daemon.js';

const MiB = 1024 * 1024;

async function chain(t: ExecutionContext) {
  const dir = tmpDir(t);
  const dataDir = path.join(dir, 'data');
  writeConfig(dataDir, { chunkSize: 256 * 1024 });
  const img = path.join(dir, 'disk.img');
  // data, a hole, more data, and a tail that is not a whole chunk
  const v1 = Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(4 * MiB), randomBytes(2 * MiB + 4096)]);
  fs.writeFileSync(img, v1);
  await cliJson(dataDir, ['volume', 'create', '--name', 'disk', '--file', img]);
  const full = await cliJson(dataDir, ['backup', 'create', 'disk', '--name', 'full']);
  const v1sha = fileSha(img);
  const v2 = Buffer.from(v1);
  randomBytes(64 * 1024).copy(v2, 5 * MiB); // into the hole
  randomBytes(1000).copy(v2, 100);
  fs.writeFileSync(img, v2);
  const inc = await cliJson(dataDir, ['backup', 'create', '--incremental', 'disk', '--name', 'inc']);
  return { dir, dataDir, img, full, inc, v1sha, v2sha: fileSha(img), v1 };
}

test('qemu-img compare and nbdcopy see each backup of a chain bit-exact over TCP and the unix socket', async (t) => {
  const c = await chain(t);
  const d = await startDaemon(t, c.dataDir);
  fs.writeFileSync(path.join(c.dir, 'v1.img'), c.v1);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(c.dir, 'v1.img'), d.uri('disk@full')]);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', c.img, d.uri('disk@inc')]);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', c.img, d.uri(c.inc.id as string)]);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', c.img, d.uri(`disk@${c.inc.id}`)]);
  const out = path.join(c.dir, 'copy.img');
  await run('nbdcopy', [`nbd+unix:///disk@full?socket=${d.socket}`, out]);
  t.is(fileSha(out), c.v1sha);
  await run('nbdcopy', [d.uri('disk@inc'), out]);
  t.is(fileSha(out), c.v2sha);
  // a bad name is an unknown export, not a crash
  const bad = await run('nbdinfo', [d.uri('disk@nosuch')]).catch((e: Error) => e);
  t.true(bad instanceof Error);
  await run('nbdinfo', [d.uri('disk@inc')]);
});

test('nbdinfo --list lists every available backup; --map reports holes; exports follow the catalog', async (t) => {
  const c = await chain(t);
  const d = await startDaemon(t, c.dataDir);
  const list = JSON.parse((await run('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${d.port}`])).stdout) as { exports: { 'export-name': string; 'is_read_only': boolean }[] };
  const names = list.exports.map((e) => e['export-name']).sort();
  t.deepEqual(names, ['disk@full', 'disk@full+overlay', 'disk@inc', 'disk@inc+overlay']);
  const map = JSON.parse((await run('nbdinfo', ['--map', '--json', d.uri('disk@full')])).stdout) as { offset: number; length: number; type: number; description: string }[];
  const holes = map.filter((e) => e.description.includes('hole'));
  t.deepEqual(holes.map((h) => [h.offset, h.length]), [[3 * MiB, 4 * MiB]]);
  t.true(holes.every((h) => h.description.includes('zero')));
  // a new backup appears without a restart; a deleted one disappears
  await cliJson(c.dataDir, ['backup', 'create', 'disk', '--name', 'third']);
  await run('nbdinfo', [d.uri('disk@third')]);
  await cliJson(c.dataDir, ['backup', 'delete', 'third']);
  const gone = await run('nbdinfo', [d.uri('disk@third')]).catch((e: Error) => e);
  t.true(gone instanceof Error);
});

test('the overlay export takes writes and reads them back; the backup itself stays unchanged', async (t) => {
  const c = await chain(t);
  const d = await startDaemon(t, c.dataDir);
  const r = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 1000 70000', '-c', 'read -P 0x5a 1000 70000', '-c', 'write -z 0 512', '-c', 'read -P 0 0 512', d.uri('disk@inc+overlay')]);
  t.regex(r.stdout, /read 70000\/70000 bytes at offset 1000/);
  t.notRegex(r.stdout + r.stderr, /Pattern verification failed/);
  // the backup reads as before, and a fresh overlay starts from the backup again
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', c.img, d.uri('disk@inc')]);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', c.img, d.uri('disk@inc+overlay')]);
  const ro = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4096', d.uri('disk@inc')]).catch((e: { stdout: string; stderr: string }) => e);
  t.regex(`${ro.stdout}${ro.stderr}`, /read.only|Permission denied|Operation not permitted/i);
  await cli(c.dataDir, ['backup', 'show', 'inc']);
  t.is(fileSha(c.img), c.v2sha);
});

test('a backup attached over NBD cannot be deleted until it is detached', async (t) => {
  const c = await chain(t);
  const d = await startDaemon(t, c.dataDir);
  // hold a connection open with python libnbd until told to let go (flag files, not sleeps)
  const flag = path.join(c.dir, 'held');
  const holder = run('/usr/bin/python3', [
    '-c',
    `import nbd,time,os\nh=nbd.NBD()\nh.connect_uri("${d.uri('disk@full')}")\nh.pread(4096,0)\nopen("${flag}.ready","w").close()\nend=time.time()+120\nwhile not os.path.exists("${flag}") and time.time()<end: time.sleep(0.05)\nh.shutdown()`,
  ]);
  for (let i = 0; i < 1200 && !fs.existsSync(`${flag}.ready`); i++) await new Promise((r) => setTimeout(r, 50));
  const refused = await cli(c.dataDir, ['backup', 'delete', 'full']);
  fs.writeFileSync(flag, '');
  t.is(refused.code, 4);
  t.regex(refused.stderr, /is attached .*detach it before deleting/);
  await holder;
  // the daemon drops the lease when it sees the disconnect: the delete goes through then
  let ok = await cli(c.dataDir, ['-f', 'json', 'backup', 'delete', 'full']);
  for (let i = 0; i < 100 && ok.code === 4; i++) {
    await new Promise((r) => setTimeout(r, 200));
    ok = await cli(c.dataDir, ['-f', 'json', 'backup', 'delete', 'full']);
  }
  t.is(ok.code, 0, ok.stderr);
  t.is((JSON.parse(ok.stdout) as { status: string }).status, 'deleted');
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', c.img, d.uri('disk@inc')]);
});

test('serve shuts down cleanly on SIGTERM and removes its socket', async (t) => {
  const c = await chain(t);
  const d = await startDaemon(t, c.dataDir);
  t.true(fs.existsSync(d.socket));
  t.is(await d.stop('SIGTERM'), 0);
  t.false(fs.existsSync(d.socket));
  t.true(d.log.some((l) => l.includes('"event":"stopped"')));
});

test('export save keeps an overlay\'s writes as a new backup when its last client disconnects', async (t) => {
  const c = await chain(t);
  const d = await startDaemon(t, c.dataDir);
  const refused = await cli(c.dataDir, ['export', 'save', 'disk@inc+overlay', '--name', 'patched']);
  t.is(refused.code, 4, 'not attached yet');
  // the writer stays connected until the save was asked for (a flag file), so the save meets an attached overlay
  const flag = path.join(c.dir, 'saved.flag');
  const writer = run('/usr/bin/python3', [
    '-c',
    `import nbd,time,os\nh=nbd.NBD()\nh.connect_uri("${d.uri('disk@inc+overlay')}")\nh.pwrite(b"\\x77"*10000, 12345)\nh.flush()\nopen("${flag}.ready","w").close()\nend=time.time()+120\nwhile not os.path.exists("${flag}") and time.time()<end: time.sleep(0.05)\nh.shutdown()`,
  ]);
  for (let i = 0; i < 1200 && !fs.existsSync(`${flag}.ready`); i++) await new Promise((r) => setTimeout(r, 50));
  const saved = await cliJson(c.dataDir, ['export', 'save', 'disk@inc+overlay', '--name', 'patched']);
  fs.writeFileSync(flag, '');
  t.is(saved.saved_as, 'patched');
  await writer;
  let b: Record<string, unknown> | undefined;
  for (let i = 0; i < 100 && b?.status !== 'available'; i++) {
    await new Promise((r) => setTimeout(r, 200));
    b = (await cliJson<Record<string, unknown>[]>(c.dataDir, ['backup', 'list'])).find((x) => x.name === 'patched');
  }
  t.is(b?.status, 'available');
  const expected = fs.readFileSync(c.img);
  expected.fill(0x77, 12345, 12345 + 10000);
  const exp = path.join(c.dir, 'expected.img');
  fs.writeFileSync(exp, expected);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', exp, d.uri('disk@patched')]);
  await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', c.img, d.uri('disk@inc')]);
  t.true(d.log.some((l) => l.includes('"event":"overlay-saved"')));
});
