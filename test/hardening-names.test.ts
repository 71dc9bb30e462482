/**
 * Issue 12 item 7: every name that becomes a path is validated in one place
 * (gateway/names.ts) where it enters: volume create, restore --name, instant restore (CLI and
 * daemon). A bad name is a usage error (exit 2) and nothing is created anywhere.
 */
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { checkName, InvalidNameError } from '../gateway/names.js';
import { BadRequestError, controlRequest } from '../gateway/instant/control.js';
import { cli, cliJson, fileSha, tmpDir, treeState, writeConfig } from './helpers/core.js';
import { startDaemon } from './helpers/daemon.js';

const BAD = ['../../escaped', '../escaped', 'a/b', '/abs', '.', '..', '-rf', '.hidden', '', 'x'.repeat(129), 'a b', 'a\\b', 'new\nline', 'é'];

async function setup(t: ExecutionContext) {
  // the data dir two levels down, so ../../escaped would land in the test's own dir
  const dir = tmpDir(t, 'bg-names-');
  const dataDir = path.join(dir, 'deep', 'data');
  writeConfig(dataDir, { chunkSize: 65536 });
  const img = path.join(dir, 'disk.img');
  fs.writeFileSync(img, Buffer.concat([randomBytes(512 * 1024), Buffer.alloc(512 * 1024)]));
  await cliJson(dataDir, ['volume', 'create', '--name', 'disk', '--file', img]);
  const b = await cliJson(dataDir, ['backup', 'create', 'disk', '--name', 'monday']);
  return { dir, dataDir, img, backup: b.id as string };
}

/** every file anywhere under the test dir, and anything named escaped* outside it nearby */
function everything(dir: string): string[] {
  return treeState(dir).filter((l) => !l.startsWith('deep/data/catalog/'));
}

test('checkName: plain names pass; separators, dot names, leading dash, odd characters and long names are refused', (t) => {
  for (const ok of ['disk', 'restore-monday', 'a.b_c-1', 'X', '9lives', 'x'.repeat(128)]) t.is(checkName('volume', ok), ok);
  for (const bad of BAD) {
    const e = t.throws(() => checkName('volume', bad), { instanceOf: InvalidNameError }, JSON.stringify(bad));
    t.regex(e!.message, /^invalid volume name /);
  }
  t.regex(t.throws(() => checkName('volume', '../x'))!.message, /no '\/'/);
  t.regex(t.throws(() => checkName('volume', '..'))!.message, /not '\.' or '\.\.'/);
  t.regex(t.throws(() => checkName('volume', '-rf'))!.message, /no leading '-'/);
  t.throws(() => checkName('volume', 42), { instanceOf: InvalidNameError });
});

test('backup restore --name ../../escaped is refused (exit 2): no escaped.img, no volume, nothing created', async (t) => {
  const s = await setup(t);
  const before = everything(s.dir);
  const vols = await cliJson<unknown[]>(s.dataDir, ['volume', 'list']);
  for (const name of BAD) {
    const r = await cli(s.dataDir, ['backup', 'restore', s.backup, '--name', name]);
    t.is(r.code, 2, `${JSON.stringify(name)}: ${r.stderr}`);
    t.regex(r.stderr, /invalid volume name/, JSON.stringify(name));
  }
  t.false(fs.existsSync(path.join(s.dir, 'escaped.img')), 'nothing escaped the data dir');
  t.false(fs.existsSync(path.join(s.dir, 'deep', 'escaped.img')));
  t.deepEqual(everything(s.dir), before, 'no file was created or changed');
  t.deepEqual(await cliJson<unknown[]>(s.dataDir, ['volume', 'list']), vols, 'no volume was registered');
  t.is((await cliJson(s.dataDir, ['backup', 'show', s.backup])).status, 'available', 'the backup was not claimed');
  // a good name still restores, inside the data dir
  const ok = await cliJson(s.dataDir, ['backup', 'restore', s.backup, '--name', 'copy.1']);
  t.is(ok.path, path.join(s.dataDir, 'volumes', 'copy.1.img'));
  t.is(fileSha(ok.path as string), fileSha(s.img));
});

test('volume create --name with a path or dot name is a usage error (exit 2), nothing created', async (t) => {
  const s = await setup(t);
  const before = everything(s.dir);
  for (const name of BAD.filter((n) => n !== '')) {
    const r = await cli(s.dataDir, ['volume', 'create', '--name', name, '--size', '1M']);
    t.is(r.code, 2, `${JSON.stringify(name)}: ${r.stderr}`);
    t.regex(r.stderr, /invalid volume name/);
  }
  t.deepEqual(everything(s.dir), before);
  const ok = await cliJson(s.dataDir, ['volume', 'create', '--name', 'new-vol', '--size', '1M']);
  t.is(ok.path, path.join(s.dataDir, 'volumes', 'new-vol.img'));
});

test('instant restore: a bad --name is refused by the CLI (exit 2) and by the daemon (usage), nothing created', async (t) => {
  const s = await setup(t);
  const d = await startDaemon(t, s.dataDir);
  const before = everything(s.dir).filter((l) => !l.includes('.sock'));
  for (const name of ['../../escaped', '..', '-x', 'a/b']) {
    const r = await cli(s.dataDir, ['backup', 'restore', s.backup, '--instant', '--name', name]);
    t.is(r.code, 2, `${name}: ${r.stderr}`);
    t.regex(r.stderr, /invalid volume name/);
    // straight to the daemon's control socket, past the CLI's check
    const e = await t.throwsAsync(controlRequest(s.dataDir, 'POST', '/restores', { backup: s.backup, name }), { instanceOf: BadRequestError });
    t.regex(e!.message, /invalid volume name/);
  }
  t.false(fs.existsSync(path.join(s.dir, 'escaped.img')));
  t.deepEqual(everything(s.dir).filter((l) => !l.includes('.sock')), before);
  t.deepEqual(await cliJson<unknown[]>(s.dataDir, ['restore', 'list']), []);
  await d.stop();
});
