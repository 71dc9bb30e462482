/**
 * X.509 material for NBD TLS tests, made with `openssl req -x509`: a CA, a server
 * certificate for localhost/127.0.0.1 and a client certificate, written with the file names
 * libnbd (tls-certificates=DIR) and qemu (tls-creds-x509 dir=DIR) look for.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runOk } from './nbd-harness.js';

export interface TestCerts {
  /** directory with ca-cert.pem, client-cert.pem, client-key.pem (client side) */
  clientDir: string;
  /** directory with only ca-cert.pem (a client without a certificate) */
  anonDir: string;
  /** directory whose CA did not sign the server certificate */
  wrongCaDir: string;
  key: Buffer;
  cert: Buffer;
  ca: Buffer;
  /** a client certificate signed by the CA */
  clientCert: Buffer;
  clientKey: Buffer;
  /** a client certificate signed by another CA */
  rogueCert: Buffer;
  rogueKey: Buffer;
}

const days = ['-days', '2'];
const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

async function ca(dir: string, name: string): Promise<void> {
  await runOk('openssl', [
    'req', '-x509', ...ec, ...days, '-subj', `/CN=${name}`,
    '-keyout', join(dir, `${name}-key.pem`), '-out', join(dir, `${name}-cert.pem`),
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

async function leaf(dir: string, caName: string, name: string, cn: string, exts: string[]): Promise<void> {
  await runOk('openssl', [
    'req', '-x509', ...ec, ...days, '-subj', `/CN=${cn}`,
    '-CA', join(dir, `${caName}-cert.pem`), '-CAkey', join(dir, `${caName}-key.pem`),
    '-keyout', join(dir, `${name}-key.pem`), '-out', join(dir, `${name}-cert.pem`),
    '-addext', 'basicConstraints=critical,CA:FALSE',
    ...exts.flatMap((e) => ['-addext', e]),
  ]);
}

export async function makeCerts(base: string): Promise<TestCerts> {
  const clientDir = join(base, 'client');
  const anonDir = join(base, 'anon');
  const wrongCaDir = join(base, 'wrong');
  const work = join(base, 'pki');
  await runOk('mkdir', ['-p', clientDir, anonDir, wrongCaDir, work]);
  await ca(work, 'ca');
  await ca(work, 'otherca');
  await leaf(work, 'ca', 'server', 'localhost', [
    'subjectAltName=DNS:localhost,IP:127.0.0.1',
    'keyUsage=critical,digitalSignature,keyEncipherment',
    'extendedKeyUsage=serverAuth',
  ]);
  await leaf(work, 'ca', 'client', 'nbd-test-client', ['keyUsage=critical,digitalSignature,keyEncipherment', 'extendedKeyUsage=clientAuth']);
  await leaf(work, 'otherca', 'rogue', 'nbd-rogue-client', ['keyUsage=critical,digitalSignature,keyEncipherment', 'extendedKeyUsage=clientAuth']);
  for (const [src, dst] of [
    ['ca-cert.pem', join(clientDir, 'ca-cert.pem')],
    ['client-cert.pem', join(clientDir, 'client-cert.pem')],
    ['client-key.pem', join(clientDir, 'client-key.pem')],
    ['ca-cert.pem', join(anonDir, 'ca-cert.pem')],
    ['otherca-cert.pem', join(wrongCaDir, 'ca-cert.pem')],
  ] as const) {
    await runOk('cp', [join(work, src), dst]);
  }
  return {
    clientDir,
    anonDir,
    wrongCaDir,
    key: await readFile(join(work, 'server-key.pem')),
    cert: await readFile(join(work, 'server-cert.pem')),
    ca: await readFile(join(work, 'ca-cert.pem')),
    clientCert: await readFile(join(work, 'client-cert.pem')),
    clientKey: await readFile(join(work, 'client-key.pem')),
    rogueCert: await readFile(join(work, 'rogue-cert.pem')),
    rogueKey: await readFile(join(work, 'rogue-key.pem')),
  };
}
