/**
 * Who may see and write which NBD export (blockgate.json `nbd.access`). The NBD server knows
 * nothing of this: the daemon hands it `NbdAccess.decide` as its access hook, consulted for
 * NBD_OPT_LIST and before any export is opened.
 *
 * - The unix socket (0600) and a TCP listener on a loopback address are the admin's: every
 *   export, writable ones writable, as ever.
 * - On any other TCP listener (which the daemon serves only with TLS and verified client
 *   certificates) a client sees the exports the rules give its certificate, and nothing else:
 *   an export it may not see does not exist for it. A rule's `identity` is either `CN=name`
 *   (any certificate whose subject common name is exactly that) or a full subject such as
 *   `O=Acme,OU=ops,CN=ops-host-1` (the certificate's subject must have exactly these
 *   attributes, in any order). `exports` are export names where `*` stands for any run of
 *   characters (`db1@*` is every backup of db1, with its `+overlay`; `restore-*` every
 *   instant-restore target). `write: true` lets the client write to writable exports
 *   (`+overlay`, instant-restore targets); otherwise they are served read-only. Several
 *   matching rules add up.
 */
import type { ClientInfo, ExportAccess } from '../../nbd/server.js';
import { partitionExportName } from './registry.js';

export interface NbdAccessRule {
  identity: string;
  exports: string[];
  write: boolean;
}

/** An identity as written in a rule: the CN alone, or a whole subject. */
export type Identity = { cn: string } | { subject: Array<[string, string]> };

/** Parses `CN=x` or `K=v,K=v,...` (`/K=v/K=v` also accepted; `\,` escapes a comma). */
export function parseIdentity(text: string): Identity {
  if (typeof text !== 'string' || text.trim() === '') throw new Error('an identity must be a non-empty string such as "CN=ops-host-1"');
  const t = text.trim();
  const parts = t.startsWith('/') ? t.slice(1).split('/') : t.split(/(?<!\\),/);
  const attrs: Array<[string, string]> = [];
  for (const raw of parts) {
    const p = raw.trim().replace(/\\,/g, ',');
    const eq = p.indexOf('=');
    if (eq <= 0) throw new Error(`identity ${JSON.stringify(text)}: "${p}" is not KEY=value (e.g. "CN=ops-host-1" or "O=Acme,CN=ops-host-1")`);
    const key = p.slice(0, eq).trim();
    const value = p.slice(eq + 1).trim();
    if (!/^[A-Za-z][A-Za-z0-9.-]*$/.test(key)) throw new Error(`identity ${JSON.stringify(text)}: bad attribute name ${JSON.stringify(key)}`);
    if (value === '') throw new Error(`identity ${JSON.stringify(text)}: ${key} has an empty value`);
    attrs.push([key.toUpperCase(), value]);
  }
  if (attrs.length === 1 && attrs[0]![0] === 'CN') return { cn: attrs[0]![1] };
  return { subject: attrs };
}

const canon = (attrs: Array<[string, string]>): string[] => attrs.map(([k, v]) => `${k.toUpperCase()}=${v}`).sort();

export function identityMatches(id: Identity, subject: Array<[string, string]>): boolean {
  if ('cn' in id) return subject.some(([k, v]) => k.toUpperCase() === 'CN' && v === id.cn);
  const a = canon(id.subject);
  const b = canon(subject);
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** An export pattern: `*` is any run of characters, everything else is literal. */
export function exportPattern(p: string): RegExp {
  if (typeof p !== 'string' || p === '') throw new Error('an export pattern must be a non-empty string such as "db1@*"');
  return new RegExp(`^${p.split('*').map((s) => s.replace(/[\\^$.|?+()[\]{}]/g, '\\$&')).join('.*')}$`, 's');
}

/** A rule as written in blockgate.json, checked; `where` names it in errors. */
export function validateRule(raw: unknown, where: string): NbdAccessRule {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${where} must be an object {"identity": "CN=...", "exports": ["..."], "write": false}`);
  const r = raw as Record<string, unknown>;
  for (const k of Object.keys(r)) if (!['identity', 'exports', 'write'].includes(k)) throw new Error(`${where}: unknown key ${JSON.stringify(k)} (identity, exports, write)`);
  if (typeof r.identity !== 'string') throw new Error(`${where}.identity must be a string such as "CN=ops-host-1"`);
  try {
    parseIdentity(r.identity);
  } catch (e) {
    throw new Error(`${where}.identity: ${(e as Error).message}`);
  }
  if (!Array.isArray(r.exports) || r.exports.length === 0 || r.exports.some((x) => typeof x !== 'string' || x === '')) {
    throw new Error(`${where}.exports must be a non-empty list of export names or patterns such as "db1@*"`);
  }
  if (r.write !== undefined && typeof r.write !== 'boolean') throw new Error(`${where}.write must be true or false`);
  return { identity: r.identity, exports: [...(r.exports as string[])], write: r.write === true };
}

export class NbdAccess {
  private readonly rules: Array<{ id: Identity; exports: RegExp[]; write: boolean }>;

  /** `adminTcp`: the TCP listener is on a loopback address (full access there) */
  constructor(rules: NbdAccessRule[], private readonly adminTcp: boolean) {
    this.rules = rules.map((r) => ({ id: parseIdentity(r.identity), exports: r.exports.map(exportPattern), write: r.write }));
  }

  get ruleCount(): number {
    return this.rules.length;
  }

  decide(name: string, client: ClientInfo): ExportAccess {
    // a partition of an export (NAME/partN) is seen by whoever sees NAME, read-only
    const part = partitionExportName(name);
    if (part) return this.decide(part.base, client) === 'none' ? 'none' : 'read';
    if (client.listener.transport === 'unix') return 'write';
    if (this.adminTcp) return 'write';
    const cert = client.certificate;
    if (!client.tls || !cert) return 'none';
    let access: ExportAccess = 'none';
    for (const r of this.rules) {
      if (!identityMatches(r.id, cert.subject)) continue;
      if (!r.exports.some((re) => re.test(name))) continue;
      if (r.write) return 'write';
      access = 'read';
    }
    return access;
  }
}
