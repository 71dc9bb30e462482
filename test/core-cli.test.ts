import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { cli, cliJson, fileSha, tmpDir, treeState, writeConfig } from './helpers/core.js';

async function setup(t: ExecutionContext) {
  const dir = tmpDir(t);
  const dataDir = path.join(dir, 'data');
  writeConfig(dataDir, { chunkSize: 65536 });
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, Buffer.concat([randomBytes(1024 * 1024), Buffer.alloc(1024 * 1024)]));
  return { dir, dataDir, img };
}

test('CLI: volume, backup, incremental, list, restore to a new volume, repo info, gc', async (t) => {
  const { dataDir, img } = await setup(t);
  const v = await cliJson(dataDir, ['volume', 'create', '--name', 'disk', '--file', img]);
  t.is(v.size, 2 * 1024 * 1024);
  const full = await cliJson(dataDir, ['backup', 'create', 'disk', '--name', 'monday', '--description', 'first']);
  t.is(full.status, 'available');
  t.is(full.description, 'first');
  t.is(full.size, 1);
  const inc = await cliJson(dataDir, ['backup', 'create', '--incremental', 'disk']);
  t.is(inc.parent_id, full.id);
  t.true(inc.is_incremental as boolean);
  const list = await cliJson<Record<string, unknown>[]>(dataDir, ['backup', 'list', '--volume', 'disk']);
  t.deepEqual(list.map((b) => b.id), [full.id, inc.id]);
  t.true(list[0]!.has_dependent_backups as boolean);
  const restored = await cliJson(dataDir, ['backup', 'restore', 'monday', '--name', 'copy']);
  t.is(fileSha(restored.path as string), fileSha(img));
  const info = await cliJson(dataDir, ['repo', 'info']);
  t.is(info.chunks, 16);
  t.is(info.dedup_ratio, 2);
  const del = await cliJson(dataDir, ['backup', 'delete', 'monday']);
  t.is(del.status, 'deleted');
  const gc = await cliJson(dataDir, ['repo', 'gc']);
  t.is(gc.removedChunks, 0, 'the incremental still uses every chunk');
  const table = await cli(dataDir, ['backup', 'list']);
  t.regex(table.stdout, /│ id .*│ name/);
  t.notRegex(table.stdout, /monday/);
});

test('CLI: a new sparse volume with a size suffix, restore into it, a smaller one refused', async (t) => {
  const { dataDir, img } = await setup(t);
  await cliJson(dataDir, ['volume', 'create', '--name', 'disk', '--file', img]);
  const b = await cliJson(dataDir, ['backup', 'create', 'disk']);
  const big = await cliJson(dataDir, ['volume', 'create', '--name', 'big', '--size', '4M']);
  t.is(big.size, 4 * 1024 * 1024);
  await cliJson(dataDir, ['backup', 'restore', b.id as string, 'big']);
  const out = fs.readFileSync(big.path as string);
  t.true(out.subarray(0, 2 * 1024 * 1024).equals(fs.readFileSync(img)));
  await cliJson(dataDir, ['volume', 'create', '--name', 'small', '--size', '1M']);
  const before = treeState(dataDir).filter((l) => !l.startsWith('catalog/'));
  const r = await cli(dataDir, ['backup', 'restore', b.id as string, 'small']);
  t.is(r.code, 4);
  t.regex(r.stderr, /^blockgate: error: volume small is 1048576 bytes, smaller than backup/);
  t.deepEqual(treeState(dataDir).filter((l) => !l.startsWith('catalog/')), before);
  const shown = await cliJson(dataDir, ['backup', 'show', b.id as string]);
  t.is(shown.status, 'available');
});

test('CLI: bad input gets the documented error and exit code and changes nothing', async (t) => {
  const { dataDir, img } = await setup(t);
  await cliJson(dataDir, ['volume', 'create', '--name', 'disk', '--file', img]);
  const snapshot = async () => JSON.stringify([await cliJson(dataDir, ['backup', 'list', '--all']), await cliJson(dataDir, ['volume', 'list']), treeState(path.join(dataDir, 'repo'))]);
  const before = await snapshot();
  const cases: [string[], number, RegExp][] = [
    [['backup', 'create', 'nosuch'], 3, /volume "nosuch" not found/],
    [['backup', 'create', '--incremental', 'disk'], 4, /no available backup to be the parent of an incremental; create a full backup first/],
    [['volume', 'create', '--name', 'x', '--size', '12Q'], 2, /invalid size "12Q": use bytes or a number with K, M, G or T/],
    [['volume', 'create', '--name', '../etc', '--size', '1M'], 2, /invalid volume name/],
    [['volume', 'create', '--name', 'disk', '--size', '1M'], 4, /already exists/],
    [['volume', 'create', '--name', 'y', '--file', '/nonexistent/disk.img'], 1, /cannot open volume \/nonexistent\/disk.img: ENOENT/],
    [['backup', 'restore', 'nosuch'], 3, /backup "nosuch" not found/],
    [['backup', 'delete', 'nosuch'], 3, /backup "nosuch" not found/],
    [['backup', 'frobnicate'], 2, /unknown command/],
  ];
  for (const [args, code, msg] of cases) {
    const r = await cli(dataDir, args);
    t.is(r.code, code, args.join(' '));
    t.regex(r.stderr, msg, args.join(' '));
    t.notRegex(r.stderr, /\n\s+at /, 'no stack trace');
  }
  t.is(await snapshot(), before);
});

test('CLI: backup create --no-wait returns creating at once and the job finishes in the background', async (t) => {
  const { dataDir, img } = await setup(t);
  await cliJson(dataDir, ['volume', 'create', '--name', 'disk', '--file', img]);
  const b = await cliJson(dataDir, ['backup', 'create', '--no-wait', 'disk']);
  t.is(b.status, 'creating');
  let status = b.status;
  for (let i = 0; i < 100 && status === 'creating'; i++) {
    await new Promise((r) => setTimeout(r, 100));
    status = (await cliJson(dataDir, ['backup', 'show', b.id as string])).status;
  }
  t.is(status, 'available');
});
