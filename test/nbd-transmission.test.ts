/**
 * The transmission phase byte by byte from a raw socket: malformed and oversized requests,
 * error mapping, out-of-order replies, structured chunks, in-flight bounds, shutdown.
 */
import test from 'ava';
import { BlockDeviceError } from '../blockdev/types.js';
import { startServer, waitIdle } from './helpers/nbd-harness.js';
import { RawClient } from './helpers/nbd-rawclient.js';
import { CHUNK, CMD, E, MiB, client, device, expectClosed, stillServes } from './helpers/nbd-wire.js';

test('bad client flags, bad option magic, bad request magic and truncation close only that connection', async (t) => {
  const { dev, data } = device();
  const h = await startServer(t, { a: { device: dev } });
  const flags = await client(t, h.port);
  await flags.greet(0x80);
  await expectClosed(t, flags);
  const magic = await client(t, h.port);
  await magic.greet();
  magic.write(Buffer.alloc(16, 0x41));
  await expectClosed(t, magic);
  const req = await client(t, h.port);
  await req.greet();
  await req.go('a');
  req.request(CMD.READ, 0, 512, { magic: 0x12345678 });
  await expectClosed(t, req);
  const trunc = await client(t, h.port);
  await trunc.greet();
  await trunc.go('a');
  trunc.write(Buffer.from([0x25, 0x60, 0x95, 0x13, 0, 0, 0, 0])); // 8 of 28 header bytes
  await new Promise((r) => setTimeout(r, 50));
  trunc.destroy();
  const truncWrite = await client(t, h.port);
  await truncWrite.greet();
  await truncWrite.go('a');
  truncWrite.request(CMD.WRITE, 0, 65536, { payload: Buffer.alloc(1000) }); // payload cut short
  await new Promise((r) => setTimeout(r, 50));
  truncWrite.destroy();
  await stillServes(t, h.port, data);
  await waitIdle(h);
  t.is(h.provider.opens, h.provider.releases);
  t.true(h.logs.some((l) => l.event === 'protocol-error' && /truncated/.test(String(l.fields['reason']))));
  t.deepEqual(await dev.read(0, 65536), data.subarray(0, 65536), 'truncated write changed nothing');
});

test('unknown commands and flags, zero-length and past-the-end requests: errors, connection stays up', async (t) => {
  const { dev, data } = device();
  const h = await startServer(t, { a: { device: dev } });
  const c = await client(t, h.port);
  await c.greet();
  await c.go('a');
  const expectErr = async (type: number, off: number, len: number, flags: number, errno: number) => {
    c.request(type, off, len, { flags, cookie: 7n });
    const r = await c.readSimple();
    t.is(r.cookie, 7n);
    t.is(r.error, errno, `cmd ${type} flags ${flags}`);
  };
  await expectErr(99, 0, 512, 0, E.EINVAL); // unknown command
  await expectErr(CMD.READ, 0, 512, 0x40, E.EINVAL); // unknown flag
  await expectErr(CMD.READ, 0, 512, 4, E.EINVAL); // DF without structured replies
  await expectErr(CMD.BLOCK_STATUS, 0, 512, 0, E.EINVAL); // no meta context
  await expectErr(CMD.READ, 4 * MiB - 512, 1024, 0, E.EINVAL);
  await expectErr(CMD.READ, 2 ** 52, 512, 0, E.EINVAL);
  await expectErr(CMD.TRIM, 4 * MiB, 1, 0, E.EINVAL);
  await expectErr(CMD.WRITE_ZEROES, 4 * MiB - 1, 2, 0, E.ENOSPC);
  await expectErr(CMD.READ, 0, 33 * MiB, 0, E.EINVAL); // over the 32 MiB maximum
  c.request(CMD.READ, 0, 0, { cookie: 8n });
  t.like(await c.readSimple(), { error: 0, cookie: 8n });
  c.request(CMD.WRITE, 0, 0, { cookie: 9n });
  t.like(await c.readSimple(), { error: 0, cookie: 9n });
  c.request(CMD.TRIM, 8 * MiB, 0, { cookie: 10n }); // zero-length trim beyond end
  t.is((await c.readSimple()).error, E.EINVAL);
  c.request(CMD.CACHE, 0, MiB, { cookie: 11n });
  t.is((await c.readSimple()).error, 0);
  c.request(CMD.READ, 0, 4096, { cookie: 12n });
  t.deepEqual((await c.readSimple(4096)).data, data.subarray(0, 4096));
  c.request(CMD.DISC, 0, 0);
  await expectClosed(t, c);
});

test('WRITE over the maximum: a small overrun is read, discarded and refused; a huge one closes', async (t) => {
  const { dev, data } = device();
  const h = await startServer(t, { a: { device: dev } }, { maxRequestBytes: 64 * 1024 });
  const c = await client(t, h.port);
  await c.greet();
  await c.go('a');
  c.request(CMD.WRITE, 0, 100 * 1024, { cookie: 1n, payload: Buffer.alloc(100 * 1024, 0xaa) });
  c.request(CMD.READ, 0, 4096, { cookie: 2n });
  const r1 = await c.readSimple();
  t.like(r1, { cookie: 1n, error: E.EINVAL });
  const r2 = await c.readSimple(4096);
  t.is(r2.cookie, 2n);
  t.deepEqual(r2.data, data.subarray(0, 4096), 'the refused payload was not written nor parsed as requests');
  const huge = await client(t, h.port);
  await huge.greet();
  await huge.go('a');
  huge.request(CMD.WRITE, 0, 0xfffffff0);
  await expectClosed(t, huge);
  await stillServes(t, h.port, data);
});

test('replies are sent as requests complete (out of order) and never interleave', async (t) => {
  const { dev, data } = device();
  dev.beforeRead = (off) => new Promise((r) => setTimeout(r, off === 0 ? 300 : 0));
  const h = await startServer(t, { a: { device: dev } });
  const c = await client(t, h.port);
  await c.greet();
  await c.go('a');
  c.request(CMD.READ, 0, 65536, { cookie: 1n });
  for (let i = 1; i <= 40; i++) c.request(CMD.READ, i * 65536, 65536 - i * 100, { cookie: BigInt(i + 1) });
  const order: bigint[] = [];
  const lengths = new Map<bigint, number>([[1n, 65536]]);
  for (let i = 1; i <= 40; i++) lengths.set(BigInt(i + 1), 65536 - i * 100);
  for (let i = 0; i < 41; i++) {
    const head = await c.reader.read(16);
    t.is(head.readUInt32BE(0), 0x67446698);
    const cookie = head.readBigUInt64BE(8);
    const len = lengths.get(cookie)!;
    const body = await c.reader.read(len);
    const k = Number(cookie) - 1;
    t.true(body.equals(data.subarray(k * 65536, k * 65536 + len)), `cookie ${cookie}`);
    order.push(cookie);
  }
  t.is(order[order.length - 1], 1n, 'the slow first read was answered last');
  t.is(new Set(order).size, 41);
});

test('structured reads: holes as OFFSET_HOLE, data as OFFSET_DATA, one chunk with DF', async (t) => {
  const { dev, data } = device();
  const h = await startServer(t, { a: { device: dev } });
  const c = await client(t, h.port);
  await c.greet();
  await c.go('a', { structured: true, meta: true });
  // [512 KiB data][1 MiB hole][512 KiB data]
  const off = MiB / 2;
  const len = 2 * MiB;
  c.request(CMD.READ, off, len, { cookie: 3n });
  const chunks = await c.readStructured();
  const got = Buffer.alloc(len, 0xff);
  let holes = 0;
  for (const ch of chunks) {
    t.is(ch.cookie, 3n);
    const o = Number(ch.payload.readBigUInt64BE(0));
    if (ch.type === CHUNK.DATA) ch.payload.subarray(8).copy(got, o - off);
    else if (ch.type === CHUNK.HOLE) {
      const l = ch.payload.readUInt32BE(8);
      got.fill(0, o - off, o - off + l);
      holes += l;
    } else t.fail(`unexpected chunk ${ch.type}`);
  }
  t.is(holes, MiB);
  t.is(chunks.filter((ch) => ch.flags & 1).length, 1);
  t.true(got.equals(data.subarray(off, off + len)));
  c.request(CMD.READ, off, len, { cookie: 4n, flags: 4 });
  const df = await c.readStructured();
  t.is(df.length, 1);
  t.is(df[0]!.type, CHUNK.DATA);
  t.true(df[0]!.payload.subarray(8).equals(data.subarray(off, off + len)));
  c.request(CMD.READ, MiB, MiB, { cookie: 5n }); // all hole
  const hole = await c.readStructured();
  t.is(hole.length, 1);
  t.is(hole[0]!.type, CHUNK.HOLE);
  t.is(hole[0]!.payload.readUInt32BE(8), MiB);
  c.request(CMD.READ, 0, 0, { cookie: 6n });
  t.like((await c.readStructured())[0]!, { type: CHUNK.NONE, flags: 1 });
  c.request(CMD.BLOCK_STATUS, 0, 4 * MiB, { cookie: 7n, flags: 8 });
  const one = await c.readStructured();
  t.is(one[0]!.payload.length, 4 + 8, 'REQ_ONE: exactly one descriptor');
  t.is(one[0]!.payload.readUInt32BE(4), MiB);
});

test('device failures map to NBD errors (errno of BlockDeviceError, EIO otherwise) with messages', async (t) => {
  const { dev } = device();
  dev.beforeRead = (off) => {
    if (off === 0) throw new BlockDeviceError('EOVERFLOW', 'too much');
    if (off === 8192) throw new Error('disk on fire');
  };
  dev.write = async () => {
    throw new BlockDeviceError('ENOSPC', 'repository full');
  };
  dev.flush = async () => {
    throw Object.assign(new Error('quota'), { code: 'EDQUOT' });
  };
  const h = await startServer(t, { a: { device: dev } });
  const s = await client(t, h.port);
  await s.greet();
  await s.go('a');
  s.request(CMD.READ, 0, 512);
  t.is((await s.readSimple()).error, E.EOVERFLOW);
  s.request(CMD.READ, 8192, 512);
  t.is((await s.readSimple()).error, E.EIO);
  s.request(CMD.WRITE, 0, 512, { payload: Buffer.alloc(512) });
  t.is((await s.readSimple()).error, E.ENOSPC);
  s.request(CMD.FLUSH, 0, 0);
  t.is((await s.readSimple()).error, E.ENOSPC);
  const c = await client(t, h.port);
  await c.greet();
  await c.go('a', { structured: true });
  c.request(CMD.READ, 8192, 512, { flags: 4 });
  const e = (await c.readStructured())[0]!;
  t.is(e.type, CHUNK.ERROR);
  t.is(e.payload.readUInt32BE(0), E.EIO);
  t.is(e.payload.subarray(6, 6 + e.payload.readUInt16BE(4)).toString(), 'disk on fire');
  t.true(h.logs.some((l) => l.event === 'request-error'));
});

test('in-flight requests per connection are bounded and the socket is backpressured', async (t) => {
  const { dev, data } = device();
  let active = 0;
  let peak = 0;
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  dev.beforeRead = async () => {
    active++;
    peak = Math.max(peak, active);
    await gate;
    active--;
  };
  const h = await startServer(t, { a: { device: dev } }, { maxInFlight: 16 });
  const c = await client(t, h.port);
  await c.greet();
  await c.go('a');
  const N = 300;
  for (let i = 0; i < N; i++) c.request(CMD.READ, i * 4096, 4096, { cookie: BigInt(i) });
  await new Promise((r) => setTimeout(r, 300));
  t.is(peak, 16, 'no more than maxInFlight device calls at once');
  open();
  const seen = new Set<bigint>();
  for (let i = 0; i < N; i++) {
    const head = await c.reader.read(16);
    const cookie = head.readBigUInt64BE(8);
    const body = await c.reader.read(4096);
    t.true(body.equals(data.subarray(Number(cookie) * 4096, Number(cookie) * 4096 + 4096)));
    seen.add(cookie);
  }
  t.is(seen.size, N);
  t.is(peak, 16);
});

test('close() answers in-flight requests, ends every connection and releases every device', async (t) => {
  const { dev, data } = device();
  let open!: () => void;
  const gate = new Promise<void>((r) => (open = r));
  dev.beforeRead = (off) => (off === 0 ? gate : undefined);
  const h = await startServer(t, { a: { device: dev } });
  const busy = await client(t, h.port);
  await busy.greet();
  await busy.go('a');
  busy.request(CMD.READ, 0, 4096, { cookie: 1n });
  const idle = await client(t, h.port);
  await idle.greet(); // still negotiating
  await new Promise((r) => setTimeout(r, 50));
  t.is(h.server.connections(), 2);
  const closing = h.server.close();
  setTimeout(open, 200);
  const r = await busy.readSimple(4096);
  t.is(r.error, 0);
  t.deepEqual(r.data, data.subarray(0, 4096));
  await closing;
  await expectClosed(t, busy);
  await expectClosed(t, idle);
  t.is(h.server.connections(), 0);
  t.is(h.provider.opens, h.provider.releases);
  const late = await RawClient.connect(h.port).then(
    () => 'connected',
    () => 'refused',
  );
  t.is(late, 'refused');
});

test('a client that does not read its replies stops being read (output backpressure), then gets everything', async (t) => {
  const { dev, data } = device(8 * MiB);
  const h = await startServer(t, { a: { device: dev } });
  const c = await client(t, h.port);
  await c.greet();
  await c.go('a');
  c.reader.socket.pause(); // stop reading replies
  const N = 2000; // 2000 x 64 KiB = 125 MiB of replies
  for (let i = 0; i < N; i++) c.request(CMD.READ, (i % 128) * 65536, 65536, { cookie: BigInt(i) });
  await new Promise((r) => setTimeout(r, 700));
  const served = dev.counters.reads;
  t.log(`device reads while the client was not reading: ${served} of ${N}`);
  t.true(served < N / 2, `server kept reading requests: ${served} device reads`);
  c.reader.socket.resume();
  for (let i = 0; i < N; i++) {
    const head = await c.reader.read(16);
    const k = Number(head.readBigUInt64BE(8)) % 128;
    const body = await c.reader.read(65536);
    if (!body.equals(data.subarray(k * 65536, k * 65536 + 65536))) t.fail(`reply ${i} has wrong data`);
  }
  t.is(dev.counters.reads, N);
});
