/**
 * Option negotiation byte by byte from a raw socket: greeting, ERR_UNSUP/ERR_INVALID/
 * ERR_TOO_BIG, EXPORT_NAME padding, INFO replies, LIST, meta contexts.
 */
import test from 'ava';
import { startServer } from './helpers/nbd-harness.js';
import { RawClient } from './helpers/nbd-rawclient.js';
import { CHUNK, CMD, E, MiB, OPT, REP, client, device, expectClosed, stillServes } from './helpers/nbd-wire.js';

test('greeting is fixed newstyle with NO_ZEROES; unknown options get ERR_UNSUP and negotiation continues', async (t) => {
  const { dev } = device();
  const h = await startServer(t, { a: { device: dev } });
  const c = await client(t, h.port);
  const { handshakeFlags } = await c.greet();
  t.is(handshakeFlags, 3);
  for (const opt of [0x1234, OPT.PEEK, OPT.EXT_HEADERS, 0xffffffff]) {
    const r = await c.option(opt, Buffer.from('some data'));
    t.is(r.length, 1);
    t.is(r[0]!.option, opt >>> 0);
    t.is(r[0]!.type, REP.UNSUP);
  }
  const { size } = await c.go('a');
  t.is(size, 4 * MiB);
});

test('malformed options get ERR_INVALID and the connection stays in negotiation', async (t) => {
  const { dev, data } = device();
  const h = await startServer(t, { a: { device: dev } });
  const c = await client(t, h.port);
  await c.greet();
  const invalid = async (opt: number, payload?: Buffer) => {
    const r = await c.option(opt, payload);
    t.is(r[r.length - 1]!.type, REP.INVALID, `option ${opt}`);
  };
  await invalid(OPT.LIST, Buffer.from('x'));
  await invalid(OPT.STRUCTURED, Buffer.from('x'));
  await invalid(OPT.SET_META, RawClient.metaData('a', ['base:allocation'])); // before structured replies
  const overrun = RawClient.goData('a');
  overrun.writeUInt32BE(1000, 0); // name length beyond the option
  await invalid(OPT.GO, overrun);
  await invalid(OPT.INFO, Buffer.concat([RawClient.goData('a'), Buffer.from('tail')]));
  await invalid(OPT.GO, Buffer.alloc(3));
  const badQuery = RawClient.metaData('a', ['base:allocation']);
  badQuery.writeUInt32BE(999, 9); // query length overruns
  await invalid(OPT.LIST_META, badQuery);
  t.is((await c.option(OPT.STRUCTURED))[0]!.type, REP.ACK);
  await invalid(OPT.STRUCTURED); // twice
  t.is((await c.option(OPT.STARTTLS))[0]!.type, REP.POLICY, 'no TLS configured');
  await c.go('a');
  c.request(CMD.READ, 0, 4096);
  const chunks = await c.readStructured();
  t.is(chunks[0]!.type, CHUNK.DATA);
  t.deepEqual(chunks[0]!.payload.subarray(8), data.subarray(0, 4096));
});

test('oversized option data: ERR_TOO_BIG (data skipped) up to 1 MiB, connection closed beyond', async (t) => {
  const { dev, data } = device();
  const h = await startServer(t, { a: { device: dev } });
  const c = await client(t, h.port);
  await c.greet();
  const r = await c.option(0x42, Buffer.alloc(200 * 1024, 7));
  t.is(r[0]!.type, REP.TOO_BIG);
  const r2 = await c.option(OPT.GO, Buffer.alloc(70 * 1024)); // even a known option
  t.is(r2[0]!.type, REP.TOO_BIG);
  await c.go('a');
  const big = await client(t, h.port);
  await big.greet();
  big.sendOption(OPT.INFO, Buffer.alloc(0), 0xfffffff0); // 4 GiB announced: never allocated, never skipped
  await expectClosed(t, big);
  await stillServes(t, h.port, data);
});

test('EXPORT_NAME: 124 zero bytes unless NO_ZEROES; unknown export closes; empty name uses defaultExport', async (t) => {
  const { dev, data } = device();
  const h = await startServer(t, { a: { device: dev } }, { defaultExport: 'a' });
  const c1 = await client(t, h.port);
  await c1.greet(1); // fixed newstyle, no NO_ZEROES
  c1.sendOption(OPT.EXPORT_NAME, Buffer.from('a'));
  const reply = await c1.reader.read(134);
  t.is(Number(reply.readBigUInt64BE(0)), 4 * MiB);
  t.true(reply.subarray(10).every((b) => b === 0));
  c1.request(CMD.READ, 0, 512, { cookie: 5n });
  const r = await c1.readSimple(512);
  t.is(r.cookie, 5n);
  t.deepEqual(r.data, data.subarray(0, 512));

  const c2 = await client(t, h.port);
  await c2.greet(3);
  c2.sendOption(OPT.EXPORT_NAME, Buffer.alloc(0)); // default export
  const r2 = await c2.reader.read(10);
  t.is(Number(r2.readBigUInt64BE(0)), 4 * MiB);
  c2.request(CMD.READ, 512, 512, { cookie: 6n });
  t.deepEqual((await c2.readSimple(512)).data, data.subarray(512, 1024));

  const c3 = await client(t, h.port);
  await c3.greet();
  c3.sendOption(OPT.EXPORT_NAME, Buffer.from('missing'));
  await expectClosed(t, c3);
});

test('INFO replies: export, block size always; name and description on request; LIST; meta context queries', async (t) => {
  const { dev } = device(4 * MiB, { blockSizes: { minimum: 512, preferred: 65536, maximum: MiB } });
  const h = await startServer(t, { a: { device: dev, description: 'the A disk' } }, { defaultExport: 'a' });
  const c = await client(t, h.port);
  await c.greet();
  const r = await c.option(OPT.INFO, RawClient.goData('', [1, 2, 3]));
  t.is(r[r.length - 1]!.type, REP.ACK);
  const infos = new Map(r.filter((x) => x.type === REP.INFO).map((x) => [x.data.readUInt16BE(0), x.data.subarray(2)]));
  t.is(Number(infos.get(0)!.readBigUInt64BE(0)), 4 * MiB);
  t.is(infos.get(1)!.toString(), 'a', 'canonical name of the default export');
  t.is(infos.get(2)!.toString(), 'the A disk');
  const bs = infos.get(3)!;
  t.deepEqual([bs.readUInt32BE(0), bs.readUInt32BE(4), bs.readUInt32BE(8)], [512, 65536, MiB]);
  const list = await c.option(OPT.LIST);
  t.is(list.length, 2);
  t.is(list[0]!.type, REP.SERVER);
  const nameLen = list[0]!.data.readUInt32BE(0);
  t.is(list[0]!.data.subarray(4, 4 + nameLen).toString(), 'a');
  t.is(list[0]!.data.subarray(4 + nameLen).toString(), 'the A disk');
  const metaNames = async (opt: number, queries: string[]) =>
    (await c.option(opt, RawClient.metaData('a', queries))).filter((x) => x.type === REP.META).map((x) => x.data.subarray(4).toString());
  t.deepEqual(await metaNames(OPT.LIST_META, []), ['base:allocation']);
  t.deepEqual(await metaNames(OPT.LIST_META, ['base:']), ['base:allocation']);
  t.deepEqual(await metaNames(OPT.LIST_META, ['qemu:dirty-bitmap:x', 'other:thing']), []);
  t.is((await c.option(OPT.STRUCTURED))[0]!.type, REP.ACK);
  t.deepEqual(await metaNames(OPT.SET_META, ['base:allocation', 'x-unknown:y']), ['base:allocation']);
  // unaligned requests violate the advertised minimum block size
  await c.go('a');
  c.request(CMD.READ, 100, 512);
  const chunks = await c.readStructured();
  t.is(chunks[0]!.type, CHUNK.ERROR);
  t.is(chunks[0]!.payload.readUInt32BE(0), E.EINVAL);
  c.request(CMD.BLOCK_STATUS, 0, 4 * MiB, { cookie: 2n });
  const bs2 = await c.readStructured();
  t.is(bs2[0]!.type, CHUNK.BLOCK_STATUS);
});

test('meta context chosen for another export, or none, makes BLOCK_STATUS fail with EINVAL', async (t) => {
  const { dev } = device();
  const h = await startServer(t, { a: { device: dev }, b: { device: dev } });
  const c = await client(t, h.port);
  await c.greet();
  t.is((await c.option(OPT.STRUCTURED))[0]!.type, REP.ACK);
  await c.option(OPT.SET_META, RawClient.metaData('b', ['base:allocation']));
  await c.go('a');
  c.request(CMD.BLOCK_STATUS, 0, 4096);
  const r = await c.readStructured();
  t.is(r[0]!.type, CHUNK.ERROR);
  t.is(r[0]!.payload.readUInt32BE(0), E.EINVAL);
});
