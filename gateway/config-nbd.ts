/**
 * The `nbd` section of blockgate.json: where the daemon listens, TLS, access rules and bounds;
 * its type and checks (read by gateway/config.ts, the one place that reads the file and the
 * environment).
 */
import path from 'node:path';
import { type NbdAccessRule, validateRule } from './exports/access.js';
import { inFile, wholeNumber } from './config-values.js';

/** `nbd` in blockgate.json: where the daemon listens, TLS, who sees what, and its bounds. */
export interface NbdConfig {
  host: string;
  port: number;
  /** unix socket path ('' for none) */
  socket: string;
  /** x509 for NBD TLS (paths, relative to the data dir); `ca` verifies client certificates */
  tls?: { cert: string; key: string; ca?: string; required?: boolean };
  /** client certificate identity -> exports it may list, open and (write) write; see gateway/exports/access.ts */
  access: NbdAccessRule[];
  /** open NBD connections over all listeners; more are refused */
  maxConnections: number;
  /** requests served concurrently per connection */
  maxInFlightRequests: number;
  /** payload bytes (reads until sent, writes, CACHE windows) held per connection */
  maxInFlightBytes: number;
  /** the same over all connections together */
  maxTotalInFlightBytes: number;
}

const NBD_KEYS = ['host', 'port', 'socket', 'tls', 'access', 'maxConnections', 'maxInFlightRequests', 'maxInFlightBytes', 'maxTotalInFlightBytes'];

/** The `nbd` section over its defaults, every field checked; errors name the file and the field. */
export function validateNbd(raw: unknown, base: NbdConfig, dataDir: string, where: string): NbdConfig {
  if (raw === undefined) return base;
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${where}: nbd must be an object`);
  const r = raw as Record<string, unknown>;
  for (const k of Object.keys(r)) if (!NBD_KEYS.includes(k)) throw new Error(`${where}: unknown key nbd.${k} (known: ${NBD_KEYS.join(', ')})`);
  const out: NbdConfig = { ...base, access: [...base.access] };
  const str = (k: string): string | undefined => {
    const v = r[k];
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw new Error(`${where}: nbd.${k} must be a string`);
    return v;
  };
  const int = (k: string, min: number, max: number, size = false): number | undefined => {
    const v = r[k];
    return v === undefined ? undefined : inFile(where, () => wholeNumber(v, `nbd.${k}`, min, max, size));
  };
  out.host = str('host') ?? out.host;
  out.socket = str('socket') ?? out.socket;
  out.port = int('port', 0, 65535) ?? out.port;
  out.maxConnections = int('maxConnections', 1, 65536) ?? out.maxConnections;
  out.maxInFlightRequests = int('maxInFlightRequests', 1, 1024) ?? out.maxInFlightRequests;
  out.maxInFlightBytes = int('maxInFlightBytes', 1024 * 1024, 2 ** 40, true) ?? out.maxInFlightBytes;
  out.maxTotalInFlightBytes = int('maxTotalInFlightBytes', out.maxInFlightBytes, 2 ** 42, true) ?? Math.max(out.maxTotalInFlightBytes, out.maxInFlightBytes);
  if (r.tls !== undefined) {
    const t = r.tls as Record<string, unknown>;
    if (!t || typeof t !== 'object' || Array.isArray(t)) throw new Error(`${where}: nbd.tls must be an object {"cert": FILE, "key": FILE, "ca": FILE, "required": true}`);
    for (const k of Object.keys(t)) if (!['cert', 'key', 'ca', 'required'].includes(k)) throw new Error(`${where}: unknown key nbd.tls.${k} (cert, key, ca, required)`);
    for (const k of ['cert', 'key', 'ca']) if (t[k] !== undefined && (typeof t[k] !== 'string' || t[k] === '')) throw new Error(`${where}: nbd.tls.${k} must be a file name`);
    if (typeof t.cert !== 'string' || typeof t.key !== 'string') throw new Error(`${where}: nbd.tls needs cert and key`);
    if (t.required !== undefined && typeof t.required !== 'boolean') throw new Error(`${where}: nbd.tls.required must be true or false`);
    const abs = (f: string) => path.resolve(dataDir, f);
    out.tls = { cert: abs(t.cert), key: abs(t.key), ...(typeof t.ca === 'string' ? { ca: abs(t.ca) } : {}), ...(t.required !== undefined ? { required: t.required as boolean } : {}) };
  }
  if (r.access !== undefined) {
    if (!Array.isArray(r.access)) throw new Error(`${where}: nbd.access must be a list of {"identity": "CN=...", "exports": ["db1@*"], "write": false}`);
    try {
      out.access = r.access.map((x, i) => validateRule(x, `nbd.access[${i}]`));
    } catch (e) {
      throw new Error(`${where}: ${(e as Error).message}`);
    }
  }
  return out;
}
