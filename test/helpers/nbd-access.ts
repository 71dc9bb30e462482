/**
 * More client certificates for NBD access tests: a leaf signed by the CA of makeCerts (in
 * BASE/pki) with any subject, written as a libnbd tls-certificates directory
 * (ca-cert.pem, client-cert.pem, client-key.pem); its PEMs are returned for raw clients.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runOk } from './nbd-harness.js';

export interface ClientCert {
  dir: string;
  cert: Buffer;
  key: Buffer;
}

/** `subject` as openssl -subj: "/CN=ops-host-1" or "/O=Acme/CN=auditor" */
export async function clientCert(base: string, name: string, subject: string): Promise<ClientCert> {
  const dir = join(base, `client-${name}`);
  const pki = join(base, 'pki');
  await runOk('mkdir', ['-p', dir]);
  await runOk('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', subject,
    '-CA', join(pki, 'ca-cert.pem'), '-CAkey', join(pki, 'ca-key.pem'),
    '-keyout', join(dir, 'client-key.pem'), '-out', join(dir, 'client-cert.pem'),
    '-addext', 'basicConstraints=critical,CA:FALSE',
    '-addext', 'keyUsage=critical,digitalSignature,keyEncipherment', '-addext', 'extendedKeyUsage=clientAuth',
  ]);
  await runOk('cp', [join(pki, 'ca-cert.pem'), join(dir, 'ca-cert.pem')]);
  return { dir, cert: await readFile(join(dir, 'client-cert.pem')), key: await readFile(join(dir, 'client-key.pem')) };
}

/** the daemon child's peak and current resident set, bytes (/proc/PID/status VmHWM, VmRSS) */
export async function rss(pid: number): Promise<{ hwm: number; rss: number }> {
  const s = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN) * 1024;
  return { hwm: kb('VmHWM'), rss: kb('VmRSS') };
}
