/**
 * STARTTLS with x509 certificates (made by openssl in the test): libnbd (nbdinfo/nbdcopy
 * nbds://...?tls-certificates=DIR), qemu-img (tls-creds-x509), optional and required TLS,
 * client-certificate verification, and the raw STARTTLS exchange.
 */
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemDevice } from './helpers/nbd-devices.js';
import { makeImage, run, runOk, sha256, startServer, writeImage } from './helpers/nbd-harness.js';
import { RawClient } from './helpers/nbd-rawclient.js';
import { makeCerts, type TestCerts } from './helpers/nbd-tls.js';

const MiB = 1024 * 1024;
const SIZE = 6 * MiB;
let base = '';
let certs: TestCerts;

test.before(async () => {
  base = await mkdtemp(join(tmpdir(), 'nbd-tls-'));
  certs = await makeCerts(base);
});
test.after.always(async () => {
  if (base) await rm(base, { recursive: true, force: true });
});

function loaded(seed: number) {
  const { data } = makeImage(SIZE, seed);
  const dev = new MemDevice(SIZE);
  dev.load(data);
  return { dev, data };
}

const tlsUri = (port: number, name: string, dir: string) => `nbds://127.0.0.1:${port}/${name}?tls-certificates=${dir}`;

test('nbdinfo and nbdcopy over nbds:// (STARTTLS, x509): TLS negotiated, bytes intact; plain still allowed when optional', async (t) => {
  const { dev, data } = loaded(1);
  const h = await startServer(t, { disk: { device: dev } }, { tls: { key: certs.key, cert: certs.cert } });
  const info = JSON.parse(await runOk('nbdinfo', ['--json', tlsUri(h.port, 'disk', certs.anonDir)]));
  t.is(info.TLS, true);
  t.is(info.exports[0]['export-size'], SIZE);
  const out = await runOk('bash', ['-c', `nbdcopy '${tlsUri(h.port, 'disk', certs.anonDir)}' - | sha256sum`]);
  t.is(out.split(' ')[0], sha256(data));
  const plain = JSON.parse(await runOk('nbdinfo', ['--json', h.uri('disk')]));
  t.is(plain.TLS, false);
  // a client that does not trust our CA refuses the server
  const wrong = await run('nbdinfo', [tlsUri(h.port, 'disk', certs.wrongCaDir)]);
  t.not(wrong.code, 0);
  t.regex(wrong.stderr, /certificate|verif/i);
  t.true(h.logs.some((l) => l.event === 'tls'));
});

test('TLS required: plain clients get ERR_TLS_REQD (EXPORT_NAME is dropped), TLS clients are served', async (t) => {
  const { dev, data } = loaded(2);
  const h = await startServer(t, { disk: { device: dev } }, { tls: { key: certs.key, cert: certs.cert, required: true } });
  const plain = await run('nbdinfo', [h.uri('disk')]);
  t.not(plain.code, 0, 'nbdinfo without TLS is refused');
  const list = await runOk('nbdinfo', ['--list', tlsUri(h.port, '', certs.anonDir)]);
  t.regex(list, /export="disk"/);

  const c = await RawClient.connect(h.port);
  t.teardown(() => c.destroy());
  await c.greet();
  for (const opt of [3 /* LIST */, 7 /* GO */, 8 /* STRUCTURED */, 0x999 /* unknown */]) {
    const r = await c.option(opt, opt === 7 ? RawClient.goData('disk') : undefined);
    t.is(r[0]!.type, 0x80000005, `option ${opt} -> ERR_TLS_REQD`);
  }
  t.is((await c.option(5))[0]!.type, 1, 'STARTTLS acknowledged');
  await c.startTls({ ca: certs.ca });
  t.is((await c.option(5))[0]!.type, 0x80000003, 'second STARTTLS is invalid');
  await c.go('disk');
  c.request(0, MiB, 65536, { cookie: 4n });
  const r = await c.readSimple(65536);
  t.true(r.data.equals(data.subarray(MiB, MiB + 65536)));

  const e = await RawClient.connect(h.port);
  t.teardown(() => e.destroy());
  await e.greet();
  e.sendOption(1, Buffer.from('disk')); // EXPORT_NAME cannot be refused politely: connection dropped
  const closed = await Promise.race([e.closed.then(() => true), new Promise((r) => setTimeout(() => r(false), 3000))]);
  t.true(closed);
});

test('options negotiated before STARTTLS are forgotten after it', async (t) => {
  const { dev, data } = loaded(3);
  const h = await startServer(t, { disk: { device: dev } }, { tls: { key: certs.key, cert: certs.cert } });
  const c = await RawClient.connect(h.port);
  t.teardown(() => c.destroy());
  await c.greet();
  t.is((await c.option(8))[0]!.type, 1); // structured replies in clear
  t.is((await c.option(5))[0]!.type, 1);
  await c.startTls({ ca: certs.ca });
  await c.go('disk'); // no structured replies renegotiated
  c.request(0, 0, 4096, { cookie: 1n });
  const r = await c.readSimple(4096); // a simple reply, not a structured chunk
  t.true(r.data.equals(data.subarray(0, 4096)));
});

test('client certificates are required and verified when a CA is configured', async (t) => {
  const { dev, data } = loaded(4);
  const h = await startServer(t, { disk: { device: dev } }, { tls: { key: certs.key, cert: certs.cert, ca: certs.ca, required: true } });
  const ok = await runOk('bash', ['-c', `nbdcopy '${tlsUri(h.port, 'disk', certs.clientDir)}' - | sha256sum`]);
  t.is(ok.split(' ')[0], sha256(data));
  const anon = await run('nbdinfo', [tlsUri(h.port, 'disk', certs.anonDir)]);
  t.not(anon.code, 0, 'no client certificate: refused');
  // a certificate from another CA (libnbd would not even offer it, so use a raw TLS client)
  const c = await RawClient.connect(h.port);
  t.teardown(() => c.destroy());
  await c.greet();
  t.is((await c.option(5))[0]!.type, 1);
  const outcome = await c
    .startTls({ ca: certs.ca, cert: certs.rogueCert, key: certs.rogueKey })
    .then(() => c.option(3))
    .then(
      () => 'served',
      () => 'refused',
    );
  t.is(outcome, 'refused');
  const good = await RawClient.connect(h.port);
  t.teardown(() => good.destroy());
  await good.greet();
  await good.option(5);
  await good.startTls({ ca: certs.ca, cert: certs.clientCert, key: certs.clientKey });
  const list = await good.option(3);
  t.is(list[0]!.type, 2);
  t.true(h.logs.some((l) => l.event === 'connection-error' && /certificate/i.test(String(l.fields['error']))));
});

test('qemu-img compare over TLS (tls-creds-x509) against the source image', async (t) => {
  const { dev, data } = loaded(5);
  const src = join(base, 'src-qemu.raw');
  await writeImage(src, data);
  t.teardown(() => rm(src, { force: true }));
  const h = await startServer(t, { disk: { device: dev } }, { tls: { key: certs.key, cert: certs.cert, ca: certs.ca, required: true } });
  const r = await run('qemu-img', [
    'compare',
    '--object', `tls-creds-x509,id=tls0,dir=${certs.clientDir},endpoint=client`,
    '--image-opts',
    `driver=nbd,host=127.0.0.1,port=${h.port},export=disk,tls-creds=tls0,tls-hostname=localhost`,
    `driver=raw,file.driver=file,file.filename=${src}`,
  ]);
  t.is(r.code, 0, r.stderr + r.stdout);
  t.regex(r.stdout, /Images are identical/);
});
