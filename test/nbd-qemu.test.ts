/**
 * NBD server against QEMU's NBD client (qemu-img, qemu-io): structured replies,
 * base:allocation, GO with block sizes, writes with FUA, write-zeroes (incl. fast zero),
 * discard, flush; over TCP and a unix socket.
 */
import test from 'ava';
import { join } from 'node:path';
import { MemDevice } from './helpers/nbd-devices.js';
import { makeImage, run, runOk, sha256, sha256File, startServer, tempDir, writeImage } from './helpers/nbd-harness.js';

const SIZE = 24 * 1024 * 1024 + 4096; // not a multiple of 1 MiB
const MiB = 1024 * 1024;

function loaded(seed: number, opts: ConstructorParameters<typeof MemDevice>[1] = {}): { dev: MemDevice; data: Buffer } {
  const { data } = makeImage(SIZE, seed);
  const dev = new MemDevice(SIZE, opts);
  dev.load(data);
  return { dev, data };
}

test('qemu-img info reports the export size as a raw image', async (t) => {
  const { dev } = loaded(1);
  const h = await startServer(t, { disk: { device: dev } });
  const info = JSON.parse(await runOk('qemu-img', ['info', '--output=json', h.uri('disk')]));
  t.is(info['virtual-size'], SIZE);
  t.is(info.format, 'raw');
});

test('qemu-img compare: the served image equals its source file, and a changed byte is detected', async (t) => {
  const dir = await tempDir(t);
  const { dev, data } = loaded(2);
  const src = join(dir, 'src.raw');
  await writeImage(src, data);
  const h = await startServer(t, { disk: { device: dev } });
  const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, h.uri('disk')]);
  t.is(same.code, 0, same.stdout + same.stderr);
  t.regex(same.stdout, /Images are identical/);
  // flip one byte inside a hole of the device: compare must now see a difference there
  const at = 1 * MiB + 123;
  const before = (await dev.read(at, 1))[0]!;
  await dev.write!(at, Buffer.from([before ^ 0xff]));
  const differ = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, h.uri('disk')]);
  t.is(differ.code, 1, differ.stdout + differ.stderr);
  t.regex(differ.stdout, new RegExp(`Content mismatch at offset ${at - (at % 512)}|Content mismatch at offset ${at}`));
});

test('qemu-img convert from the export to a file gives the same bytes (sha256)', async (t) => {
  const dir = await tempDir(t);
  const { dev, data } = loaded(3);
  const h = await startServer(t, { disk: { device: dev } });
  const out = join(dir, 'out.raw');
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', h.uri('disk'), out]);
  t.is(await sha256File(out), sha256(data));
  // the reads used block status: the device was asked for allocation
  t.true(dev.counters.blockStatus > 0);
});

test('qemu-img convert into a writable export writes data and zeroes (device bytes equal source)', async (t) => {
  const dir = await tempDir(t);
  const { data } = makeImage(SIZE, 4);
  const src = join(dir, 'src.raw');
  await writeImage(src, data);
  // target starts full of garbage, so holes of the source must be zeroed explicitly
  const dev = new MemDevice(SIZE);
  dev.load(Buffer.alloc(SIZE, 0x5c));
  const h = await startServer(t, { target: { device: dev } });
  await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, h.uri('target')]);
  t.is(sha256(await dev.snapshot()), sha256(data));
  t.true(dev.counters.writes > 0);
  t.true(dev.counters.zeroes > 0, 'source holes were written with WRITE_ZEROES');
});

test('qemu-io: write/read patterns, FUA, write-zeroes (fast and allocating), discard and flush', async (t) => {
  const dev = new MemDevice(8 * MiB);
  const h = await startServer(t, { rw: { device: dev } });
  const r = await run('qemu-io', [
    '-f', 'raw',
    '-c', 'write -P 0xab 0 64k',
    '-c', 'read -P 0xab 0 64k',
    '-c', 'write -f -P 0xcd 1M 128k',
    '-c', 'read -P 0xcd 1M 128k',
    '-c', 'write -P 0x11 2M 1M',
    '-c', 'write -z 2M 64k',
    '-c', 'read -P 0 2M 64k',
    '-c', 'read -P 0x11 2112k 960k',
    '-c', 'write -z -n 3M 1M',
    '-c', 'read -P 0 3M 1M',
    '-c', 'write -P 0x22 4M 1M',
    '-c', 'discard 4M 1M',
    '-c', 'flush',
    '-c', 'write -P 0x33 5M 4097',
    '-c', 'read -P 0x33 5M 4097',
    h.uri('rw'),
  ]);
  t.is(r.code, 0, r.stderr);
  t.notRegex(r.stdout + r.stderr, /fail|error/i);
  const snap = await dev.snapshot();
  t.true(snap.subarray(0, 65536).every((b) => b === 0xab));
  t.true(snap.subarray(MiB, MiB + 131072).every((b) => b === 0xcd));
  t.true(snap.subarray(2 * MiB, 2 * MiB + 65536).every((b) => b === 0));
  t.true(snap.subarray(2 * MiB + 65536, 3 * MiB).every((b) => b === 0x11));
  t.true(snap.subarray(5 * MiB, 5 * MiB + 4097).every((b) => b === 0x33));
  t.true(dev.counters.fuaWrites >= 1, 'FUA reached the device');
  t.true(dev.counters.zeroes >= 2);
  t.true(dev.counters.fastZeroes >= 1, 'write -z -n sent NBD_CMD_FLAG_FAST_ZERO');
  t.true(dev.counters.noHoleZeroes >= 1, 'write -z without -u sent NBD_CMD_FLAG_NO_HOLE');
  t.true(dev.counters.trims >= 1, 'discard sent NBD_CMD_TRIM');
  t.true(dev.counters.flushes >= 1);
  // after trim, that whole range is a hole on this device
  t.false(dev.pages.has(4 * MiB / dev.pageSize));
});

test('qemu-io over a unix socket, and a read-only export opens read-only and verifies', async (t) => {
  const dir = await tempDir(t);
  const { dev, data } = loaded(5, { readOnly: true });
  const h = await startServer(t, { ro: { device: dev } });
  const sock = join(dir, 'nbd.sock');
  await h.server.listenUnix(sock);
  const uri = `nbd+unix:///ro?socket=${sock}`;
  const first = data[0]!;
  const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read -P ${first} 0 1`, '-c', 'read 0 1M', uri]);
  t.is(r.code, 0, r.stderr);
  t.notRegex(r.stdout, /fail/i);
  // opening read-write is refused by qemu because the export says READ_ONLY
  const rw = await run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', uri]);
  t.not(rw.code, 0);
  t.regex(rw.stderr, /read-only|Permission denied/i);
  t.is(sha256(await dev.snapshot()), sha256(data), 'nothing was written');
  const dir2 = join(dir, 'out.raw');
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, dir2]);
  t.is(await sha256File(dir2), sha256(data));
});
