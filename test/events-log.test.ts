/**
 * The embedded event log: append-only, private, crash-safe (a torn tail is dropped on open, a
 * corrupt line is skipped), size-bounded with rotation; `blockgate events` reads it, with
 * --type, --since, -f json and --follow; the engine's own events (gc.end, verify.end,
 * prune.end) land in it from the CLI.
 */
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { EventBus, type BlockgateEvent } from '../gateway/events/bus.js';
import { EventLog, encodeLine, listSegments, segmentName } from '../gateway/events/log.js';
import { LogTail } from '../gateway/events/tail.js';
import { CLI, cli, mixedContent, openApp, tmpDir } from './helpers/core.js';
import { until } from './helpers/kafka.js';
import { backup, volumeFrom } from './helpers/engine.js';
import { run, startDaemon } from './helpers/daemon.js';

function logAt(dir: string, maxBytes = 64 * 1024 * 1024): { bus: EventBus; log: EventLog } {
  const bus = new EventBus('node-a');
  const log = new EventLog(dir, { maxBytes });
  bus.addSink(log);
  return { bus, log };
}

function readAll(dir: string): { events: BlockgateEvent[]; skipped: number } {
  const tail = new LogTail(dir, 'start');
  const events: BlockgateEvent[] = [];
  for (let items = tail.read(); items.length; items = tail.read()) events.push(...items.map((i) => i.event));
  tail.close();
  return { events, skipped: tail.skipped };
}

test('events are appended in order to a private log and read back whole', async (t) => {
  const dir = path.join(tmpDir(t), 'events');
  const { bus } = logAt(dir);
  const sent = [bus.emit('backup.create.start', 'b1', { status: 'creating' }), bus.emit('backup.createprogress', 'b1', { percent: 50 }), bus.emit('backup.create.end', 'b1', { status: 'available', size: 1 })];
  await bus.close();
  t.is(fs.statSync(dir).mode & 0o777, 0o700);
  for (const f of fs.readdirSync(dir)) t.is(fs.statSync(path.join(dir, f)).mode & 0o777, 0o600, f);
  const { events, skipped } = readAll(dir);
  t.deepEqual(events, sent);
  t.is(skipped, 0);
  t.is(events[0]!.node, 'node-a');
});

test('a torn tail (a writer killed mid-line) is dropped when the log is opened, and a corrupt line is skipped', async (t) => {
  const dir = path.join(tmpDir(t), 'events');
  const a = logAt(dir);
  const first = [a.bus.emit('gc.end', 'repo', { removedChunks: 1 }), a.bus.emit('verify.end', 'b1', { status: 'ok' }), a.bus.emit('verify.end', 'b2', { status: 'ok' })];
  await a.bus.close();
  const file = path.join(dir, segmentName(1));
  const whole = fs.readFileSync(file);
  // flip a byte inside the second line's JSON, then leave half of a fourth line at the end
  const second = whole.indexOf('\n') + 10;
  const damaged = Buffer.from(whole);
  damaged[second] = damaged[second]! ^ 0x01;
  const torn = encodeLine({ ...first[0]!, id: 'torn' }).slice(0, 40);
  fs.writeFileSync(file, Buffer.concat([damaged, Buffer.from(torn)]));

  const b = logAt(dir);
  const after = b.bus.emit('export.attach', 'db1@nightly', { export: 'db1@nightly' });
  await b.bus.close();
  const bytes = fs.readFileSync(file);
  t.false(bytes.includes(Buffer.from(torn)), 'the torn tail is gone from the file');
  t.true(bytes.subarray(damaged.length).toString().startsWith('{'), 'the next event starts on a line of its own');
  t.is(b.log.droppedTail, torn.length);
  const { events, skipped } = readAll(dir);
  t.deepEqual(
    events.map((e) => e.id),
    [first[0]!.id, first[2]!.id, after.id],
  );
  t.is(skipped, 1, 'the corrupt line');
});

test('the log is bounded: segments rotate, the oldest go, the newest events stay in order', async (t) => {
  const dir = path.join(tmpDir(t), 'events');
  const maxBytes = 64 * 1024;
  const { bus, log } = logAt(dir, maxBytes);
  const ids: string[] = [];
  const pad = 'x'.repeat(200);
  for (let i = 0; i < 2000; i++) ids.push(bus.emit('backup.createprogress', `b${i % 7}`, { percent: i % 100, pad }).id);
  await bus.close();
  const segs = listSegments(dir);
  t.true(segs.length >= 2 && segs[0]! > 1, `rotated and the oldest removed: ${segs.join(',')}`);
  const total = segs.reduce((s, n) => s + fs.statSync(path.join(dir, segmentName(n))).size, 0);
  t.true(total <= maxBytes + log.segmentBytes, `${total} bytes on disk for a bound of ${maxBytes}`);
  const { events, skipped } = readAll(dir);
  t.is(skipped, 0);
  t.true(events.length > 100 && events.length < 2000);
  t.deepEqual(
    events.map((e) => e.id),
    ids.slice(ids.length - events.length),
    'what is left is the newest events, in order, with no gap',
  );
});

test('blockgate events: --type, --since, -f json; bad options are refused with exit 2', async (t) => {
  const app = await openApp(t);
  const bus = app.events;
  bus.emit('backup.create.start', 'b1', { status: 'creating' });
  bus.emit('gc.end', 'repo', { removedChunks: 0 });
  bus.emit('backup.create.end', 'b1', { status: 'available' });
  await app.eventLog.close();
  const dataDir = app.config.dataDir;

  const all = await cli(dataDir, ['events']);
  t.is(all.code, 0, all.stderr);
  t.is(all.stdout.trim().split('\n').length, 3);
  t.regex(all.stdout, /backup\.create\.start\s+b1/);

  const only = await cli(dataDir, ['-f', 'json', 'events', '--type', 'backup.*']);
  const types = only.stdout.trim().split('\n').map((l) => (JSON.parse(l) as BlockgateEvent).type);
  t.deepEqual(types, ['backup.create.start', 'backup.create.end']);

  const later = await cli(dataDir, ['events', '--since', new Date(Date.now() + 60_000).toISOString()]);
  t.is(later.code, 0);
  t.is(later.stdout, '');
  const recent = await cli(dataDir, ['events', '--since', '1h', '--type', 'gc.end']);
  t.regex(recent.stdout, /gc\.end/);

  for (const bad of [['--since', 'yesterday'], ['--type', '../x']]) {
    const r = await cli(dataDir, ['events', ...bad]);
    t.is(r.code, 2, bad.join(' '));
    t.regex(r.stderr, /blockgate: error: /);
  }
});

test('blockgate events --follow prints events as another process writes them, until SIGTERM', async (t) => {
  const app = await openApp(t);
  app.events.emit('gc.end', 'repo', { n: 0 });
  const child = spawn(process.execPath, [CLI, '--data-dir', app.config.dataDir, '-f', 'json', 'events', '--follow', '--type', 'verify.*'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => child.kill('SIGKILL'));
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const ids = [app.events.emit('verify.end', 'b1', { status: 'ok' }).id];
  await until(() => out.includes(ids[0]!), 20_000, 'the first event');
  ids.push(app.events.emit('verify.end', 'b2', { status: 'failed' }).id);
  app.events.emit('gc.end', 'repo', { n: 1 }); // filtered out
  await until(() => out.includes(ids[1]!), 20_000, 'the second event');
  child.kill('SIGTERM');
  t.is(await exited, 0);
  t.deepEqual(
    out.trim().split('\n').map((l) => (JSON.parse(l) as BlockgateEvent).id),
    ids,
  );
});

test("the engine's own events land in the log from the CLI: verify.end, prune.end, gc.end", async (t) => {
  const app = await openApp(t);
  const root = path.dirname(app.config.dataDir);
  fs.writeFileSync(path.join(root, 'v.img'), mixedContent(512 * 1024, 64 * 1024));
  const dataDir = app.config.dataDir;
  await app.close();
  t.is((await cli(dataDir, ['volume', 'create', '--name', 'v', '--file', path.join(root, 'v.img')])).code, 0);
  for (let i = 0; i < 2; i++) t.is((await cli(dataDir, ['backup', 'create', 'v'])).code, 0);
  const list = JSON.parse((await cli(dataDir, ['-f', 'json', 'backup', 'list'])).stdout) as { id: string }[];
  t.is((await cli(dataDir, ['backup', 'verify', list[0]!.id])).code, 0);
  t.is((await cli(dataDir, ['backup', 'prune', 'v', '--keep-last', '1'])).code, 0);
  t.is((await cli(dataDir, ['repo', 'gc'])).code, 0);
  const r = await cli(dataDir, ['-f', 'json', 'events']);
  const events = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as BlockgateEvent);
  const verify = events.find((e) => e.type === 'verify.end')!;
  t.is(verify.resource, list[0]!.id);
  t.is(verify.payload.status, 'ok');
  const prune = events.find((e) => e.type === 'prune.end')!;
  t.is(prune.payload.removed, 1);
  const gc = events.find((e) => e.type === 'gc.end')!;
  t.is(gc.payload.liveBackups, 1);
  t.deepEqual(
    events.map((e) => e.type).filter((x) => ['verify.end', 'prune.end', 'gc.end'].includes(x)),
    ['verify.end', 'prune.end', 'gc.end'],
  );
});

test('the daemon logs export.attach and export.detach when an NBD client opens and closes a backup', async (t) => {
  const app = await openApp(t);
  await volumeFrom(app, 'v', mixedContent(256 * 1024, 64 * 1024));
  const b = await backup(app, 'v', { name: 'nightly' });
  const dataDir = app.config.dataDir;
  await app.close();
  const d = await startDaemon(t, dataDir);
  await run('nbdinfo', ['--size', d.uri(b.id)]);
  const events = await until(async () => {
    const r = await cli(dataDir, ['-f', 'json', 'events', '--type', 'export.*']);
    const list = r.stdout.trim() ? r.stdout.trim().split('\n').map((l) => JSON.parse(l) as BlockgateEvent) : [];
    return list.length >= 2 ? list : null;
  }, 20_000, 'attach and detach events');
  t.deepEqual(
    events.map((e) => [e.type, e.resource]),
    [
      ['export.attach', b.id],
      ['export.detach', b.id],
    ],
  );
  t.is(events[0]!.payload.size, 256 * 1024);
});
