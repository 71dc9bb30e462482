/**
 * NBD server against libnbd clients: nbdinfo (--list, --map, --json), nbdcopy (multi-conn,
 * extents) and python libnbd (test/fixtures/nbd/probe.py) probing every option and command.
 */
import test from 'ava';
import { join } from 'node:path';
import { MemDevice } from './helpers/nbd-devices.js';
import { makeImage, run, runOk, runPython, sha256, sha256File, startServer, tempDir, waitIdle, writeImage } from './helpers/nbd-harness.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

function loaded(seed: number, size = SIZE, opts: ConstructorParameters<typeof MemDevice>[1] = {}) {
  const img = makeImage(size, seed);
  const dev = new MemDevice(size, opts);
  dev.load(img.data);
  return { dev, ...img };
}

/** expected base:allocation map of a makeImage layout: [offset, length, flags] merged */
function expectedMap(size: number, holes: Array<[number, number]>): Array<[number, number, number]> {
  const out: Array<[number, number, number]> = [];
  let pos = 0;
  const push = (o: number, l: number, f: number) => {
    const last = out[out.length - 1];
    if (last && last[2] === f) last[1] += l;
    else out.push([o, l, f]);
  };
  for (const [o, l] of holes) {
    if (o > pos) push(pos, o - pos, 0);
    push(o, l, 3);
    pos = o + l;
  }
  if (pos < size) push(pos, size - pos, 0);
  return out;
}

test('nbdinfo --list and --json list every export with its description and flags', async (t) => {
  const a = loaded(1);
  const ro = loaded(2, 4 * MiB, { readOnly: true });
  const h = await startServer(t, { alpha: { device: a.dev, description: 'first disk' }, 'beta ro': { device: ro.dev } });
  const list = JSON.parse(await runOk('nbdinfo', ['--list', '--json', `nbd://${h.host}:${h.port}`]));
  const byName = new Map<string, Record<string, unknown>>(list.exports.map((e: Record<string, unknown>) => [e['export-name'], e]));
  t.deepEqual([...byName.keys()].sort(), ['alpha', 'beta ro']);
  t.is(byName.get('alpha')!['description'], 'first disk');
  t.is(byName.get('alpha')!['export-size'], SIZE);
  t.is(byName.get('alpha')!['is_read_only'], false);
  t.is(byName.get('beta ro')!['export-size'], 4 * MiB);
  t.is(byName.get('beta ro')!['is_read_only'], true);
  t.is(byName.get('beta ro')!['can_trim'], false);
  t.is(list.structured, true);
  const text = await runOk('nbdinfo', ['--list', `nbd://${h.host}:${h.port}`]);
  t.regex(text, /export="alpha":\n\tdescription: first disk/);
  // every device opened for INFO was released again
  await waitIdle(h);
  t.is(h.provider.opens, h.provider.releases);
});

test('nbdinfo --map reports the holes and data of a sparse device', async (t) => {
  const a = loaded(3);
  const h = await startServer(t, { disk: { device: a.dev } });
  const map = JSON.parse(await runOk('nbdinfo', ['--map', '--json', h.uri('disk')])) as Array<{ offset: number; length: number; type: number }>;
  const got = map.map((e) => [e.offset, e.length, e.type]);
  t.deepEqual(got, expectedMap(SIZE, a.holes));
  t.true(got.some((e) => e[2] === 3) && got.some((e) => e[2] === 0), 'both holes and data present');
  const total = JSON.parse(await runOk('nbdinfo', ['--map', '--totals', '--json', h.uri('disk')])) as Array<{ size: number; type: number }>;
  const holeBytes = a.holes.reduce((s, [, l]) => s + l, 0);
  t.is(total.find((e) => e.type === 3)?.size, holeBytes);
});

test('nbdcopy from the export: same sha256 as the source (multi-conn, extents)', async (t) => {
  const dir = await tempDir(t);
  const a = loaded(4);
  const h = await startServer(t, { disk: { device: a.dev } });
  const out = join(dir, 'copy.raw');
  await runOk('nbdcopy', ['--connections=4', '--requests=32', h.uri('disk'), out]);
  t.is(await sha256File(out), sha256(a.data));
  t.true(a.dev.counters.blockStatus > 0, 'nbdcopy used block status to skip holes');
  const piped = await runOk('bash', ['-c', `nbdcopy '${h.uri('disk')}' - | sha256sum`]);
  t.is(piped.split(' ')[0], sha256(a.data));
  await runOk('nbdcopy', [h.uri('disk'), 'null:']);
});

test('nbdcopy into a writable export over 4 connections: device bytes equal the source', async (t) => {
  const dir = await tempDir(t);
  const { data } = makeImage(SIZE, 5);
  const src = join(dir, 'src.raw');
  await writeImage(src, data);
  const dev = new MemDevice(SIZE);
  dev.load(Buffer.alloc(SIZE, 0xee));
  const h = await startServer(t, { disk: { device: dev } });
  await runOk('nbdcopy', ['--connections=4', '--flush', src, h.uri('disk')]);
  t.is(sha256(await dev.snapshot()), sha256(data));
  t.true(dev.counters.flushes > 0);
});

test('libnbd options: LIST, INFO (name, description, block size), unknown export, LIST_META_CONTEXT, GO, ABORT', async (t) => {
  const a = loaded(6);
  const ro = loaded(7, 4 * MiB, { readOnly: true, withTrim: false });
  const h = await startServer(t, { a: { device: a.dev, description: 'disk a' }, ro: { device: ro.dev } }, { maxRequestBytes: 4 * MiB });
  type Info = Record<string, unknown>;
  const r = await runPython<{
    list: string[][];
    info: Record<string, Info>;
    info_unknown_err: number;
    meta_contexts: string[];
    go_size: number;
    structured: boolean;
    can_meta: boolean;
    hash: string;
    aborted: boolean;
    go_unknown_err: number;
    go_retry_size: number;
  }>('probe.py', ['options', `nbd://${h.host}:${h.port}`, 'a', 'ro']);
  t.deepEqual(r.list, [['a', 'disk a'], ['ro', '']]);
  t.like(r.info['a']!, { size: SIZE, read_only: false, description: 'disk a', canonical: 'a', can_flush: true, can_fua: true, can_trim: true, can_zero: true, can_fast_zero: true, can_df: true, can_multi_conn: true, can_cache: true, block_min: 1, block_max: 4 * MiB });
  t.like(r.info['ro']!, { size: 4 * MiB, read_only: true, description: null, can_fua: false, can_trim: false, can_zero: false, can_fast_zero: false });
  t.is(r.info_unknown_err, 2, 'NBD_REP_ERR_UNKNOWN (libnbd reports ENOENT)');
  t.deepEqual(r.meta_contexts, ['base:allocation']);
  t.is(r.go_size, SIZE);
  t.true(r.structured);
  t.true(r.can_meta);
  t.is(r.hash, sha256(a.data));
  t.true(r.aborted);
  t.is(r.go_unknown_err, 2);
  t.is(r.go_retry_size, SIZE);
  // INFO opens and releases at once; the finished GO connections were released too
  await waitIdle(h);
  t.true(h.provider.opens >= 4);
  t.is(h.provider.opens, h.provider.releases);
});

test('reads with structured replies on and off (simple replies, as the kernel client uses)', async (t) => {
  const a = loaded(8);
  const h = await startServer(t, { a: { device: a.dev } });
  const on = await runPython<Record<string, unknown>>('probe.py', ['read', h.uri('a'), 'on']);
  const off = await runPython<Record<string, unknown>>('probe.py', ['read', h.uri('a'), 'off']);
  const want = sha256(a.data);
  t.like(on, { structured: true, can_meta: true, can_df: true, hash: want, hash_odd: want, hash_df: want });
  t.like(off, { structured: false, can_meta: false, can_df: false, hash: want, hash_odd: want });
});

test('block status with and without REQ_ONE matches the device layout', async (t) => {
  const a = loaded(9);
  const h = await startServer(t, { a: { device: a.dev } });
  const r = await runPython<{ size: number; full: number[][]; calls: number; req_one: number[][] }>('probe.py', ['extents', h.uri('a')]);
  const want = expectedMap(SIZE, a.holes);
  t.deepEqual(r.full, want);
  t.is(r.calls, 1, 'one request describes the whole export');
  // with REQ_ONE each reply holds exactly one extent, and walking them gives the same map
  t.true(r.req_one.every((e) => e[1] === 1));
  t.deepEqual(
    r.req_one.map((e) => [e[0], e[2], e[3]]),
    want,
  );
});

test('errors: past-the-end and oversized requests fail cleanly and the connection keeps working', async (t) => {
  const a = loaded(10);
  const h = await startServer(t, { a: { device: a.dev } }, { maxRequestBytes: MiB });
  const r = await runPython<Record<string, unknown>>('probe.py', ['errors', h.uri('a')]);
  const want = sha256(a.data);
  t.like(r, {
    max: MiB,
    read_past_end: 22,
    read_beyond: 22,
    hash_after_past_end: want,
    read_oversized: 22,
    write_oversized: 22,
    write_past_end: 28, // ENOSPC for writes beyond the end, as the NBD spec asks
    trim_past_end: 22,
    zero_past_end: 28,
    status_past_end: 22,
    hash_after_all: want,
  });
  t.is(sha256(await a.dev.snapshot()), want, 'no failed request changed the device');
});

test('writes: WRITE, FUA, FLUSH, TRIM, WRITE_ZEROES (NO_HOLE, FAST_ZERO), CACHE on a writable device', async (t) => {
  const a = loaded(11);
  const h = await startServer(t, { a: { device: a.dev } });
  const r = await runPython<Record<string, unknown>>('probe.py', ['writes', h.uri('a')]);
  t.like(r, {
    readback_plain: true,
    readback_fua: true,
    readback_unaligned: true,
    zero_reads_zero: true,
    zero_nohole_reads_zero: true,
    fast_zero_err: null,
    trim_reads_zero: true,
  });
  t.is(r['hash'], sha256(await a.dev.snapshot()), 'what the client read is what the device holds');
  const c = a.dev.counters;
  t.true(c.fuaWrites >= 1);
  t.true(c.flushes >= 2);
  t.true(c.trims >= 1);
  t.true(c.noHoleZeroes >= 1);
  t.true(c.fastZeroes >= 1);
  t.true(c.caches >= 1);
});

test('WRITE_ZEROES is emulated with writes on a device without zero(); FAST_ZERO then fails with ENOTSUP', async (t) => {
  const a = loaded(12, SIZE, { withZero: false });
  const h = await startServer(t, { a: { device: a.dev } });
  const r = await runPython<Record<string, unknown>>('probe.py', ['writes', h.uri('a')]);
  t.like(r, { can_zero: true, can_fast_zero: true, zero_reads_zero: true, zero_nohole_reads_zero: true, fast_zero_err: 95 });
  t.is(r['hash'], sha256(await a.dev.snapshot()));
  t.is(a.dev.counters.zeroes, 0);
});

test('a read-only export refuses WRITE, TRIM and WRITE_ZEROES with EPERM and stays readable', async (t) => {
  const ro = loaded(13, 4 * MiB, { readOnly: true });
  const h = await startServer(t, { ro: { device: ro.dev } });
  const r = await runPython<Record<string, unknown>>('probe.py', ['readonly', h.uri('ro')]);
  t.like(r, { read_only: true, write_err: 1, trim_err: 1, zero_err: 1, hash: sha256(ro.data) });
  t.is(sha256(await ro.dev.snapshot()), sha256(ro.data));
});

test('4 concurrent connections to one shared device see consistent data', async (t) => {
  const a = loaded(14);
  const h = await startServer(t, { a: { device: a.dev } });
  const r = await runPython<{ can_multi_conn: boolean; hashes: string[]; cross_visible: boolean }>('probe.py', ['multiconn', h.uri('a'), '4']);
  t.true(r.can_multi_conn);
  t.is(r.hashes.length, 4);
  t.is(new Set(r.hashes).size, 1);
  // each connection wrote its own quarter with a fill byte before everyone read everything
  const want = Buffer.concat([0, 1, 2, 3].map((i) => Buffer.alloc(SIZE / 4, (i * 37 + 11) & 0xff)));
  t.is(r.hashes[0], sha256(want));
  t.true(r.cross_visible);
});

test('64 pipelined reads on one connection each get their own data', async (t) => {
  const a = loaded(15);
  const delays = [3, 0, 7, 1, 0, 5];
  let n = 0;
  a.dev.beforeRead = () => new Promise((r) => setTimeout(r, delays[n++ % delays.length])); // completes out of order
  const h = await startServer(t, { a: { device: a.dev } });
  const r = await runPython<{ peak_in_flight: number; hash: string; direct: string; bytes: number }>('probe.py', ['pipeline', h.uri('a')]);
  t.is(r.peak_in_flight, 64);
  t.is(r.hash, sha256(a.data.subarray(0, r.bytes)));
  t.is(r.direct, r.hash);
});

test('empty export name selects defaultExport (nbdinfo with no name), unix socket with nbd+unix', async (t) => {
  const dir = await tempDir(t);
  const a = loaded(16, 2 * MiB);
  const h = await startServer(t, { main: { device: a.dev } }, { defaultExport: 'main' });
  const info = JSON.parse(await runOk('nbdinfo', ['--json', `nbd://${h.host}:${h.port}`]));
  t.is(info.exports[0]['export-size'], 2 * MiB);
  const sock = join(dir, 's.sock');
  await h.server.listenUnix(sock);
  const hash = await runOk('bash', ['-c', `nbdcopy 'nbd+unix:///main?socket=${sock}' - | sha256sum`]);
  t.is(hash.split(' ')[0], sha256(a.data));
  const unknown = await run('nbdinfo', [`nbd+unix:///nope?socket=${sock}`]);
  t.not(unknown.code, 0);
  t.regex(unknown.stderr, /No such file|unknown export|ENOENT|not/i);
});

test('nbdsh (with the system python first on PATH) reads the export and sees its capabilities', async (t) => {
  const a = loaded(17, 4 * MiB);
  const h = await startServer(t, { a: { device: a.dev } });
  // /usr/bin/nbdsh runs `python3 -mnbd`: the pyenv python has no nbd module, the system one does
  const env = { ...process.env, PATH: `/usr/bin:/bin:${process.env['PATH'] ?? ''}` };
  const out = await runOk('/usr/bin/nbdsh', [
    '-u', h.uri('a'),
    '-c', 'import hashlib',
    '-c', 'print(h.get_size(), h.can_multi_conn(), h.get_structured_replies_negotiated())',
    '-c', 'print(hashlib.sha256(h.pread(h.get_size(), 0)).hexdigest())',
  ], { env });
  const [caps, hash] = out.trim().split('\n');
  t.is(caps, `${4 * MiB} True True`);
  t.is(hash, sha256(a.data));
});
