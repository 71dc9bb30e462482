/**
 * The names of RBD volumes and snapshots, checked before any `rbd` runs (no paths, spaces,
 * '@' or namespaces, exactly one '/'), Cinder's backup snapshot naming, the cluster options
 * (ceph.conf, user) and the driver's error.
 */
import path from 'node:path';

export interface RbdOptions {
  /** ceph.conf of the cluster (default: CEPH_CONF, else Ceph's own search) */
  conf?: string | null;
  /** ceph user id without "client." (default: Ceph's; the appliance passes config.cephUser, from BLOCKGATE_CEPH_USER) */
  user?: string | null;
}

export interface RbdSpec {
  pool: string;
  image: string;
}

/** An `rbd` command or an RBD image that failed; the message is one line, fit for users. */
export class RbdError extends Error {
  constructor(
    message: string,
    /** errno rbd reported, when it did (2 = no such image or snapshot) */
    readonly errno?: number,
  ) {
    super(message);
    this.name = 'RbdError';
  }
}

const SEGMENT = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
export const SNAP_RE = /^[A-Za-z0-9_][A-Za-z0-9._:-]{0,254}$/;
const USER_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/;

/** Parses and checks "POOL/IMAGE". */
export function parseRbdSpec(spec: string): RbdSpec {
  const bad = (why: string): never => {
    throw new RbdError(`invalid RBD image ${JSON.stringify(spec)}: ${why}; expected POOL/IMAGE made of letters, digits, '.', '_' and '-' (e.g. volumes/db1)`);
  };
  if (typeof spec !== 'string' || spec.length === 0) bad('empty');
  const parts = spec.split('/');
  if (parts.length !== 2) bad(parts.length < 2 ? 'no pool' : 'more than one "/" (namespaces and paths are not accepted)');
  const [pool, image] = parts as [string, string];
  for (const [what, s] of [['pool', pool], ['image', image]] as const) {
    if (!s) bad(`empty ${what} name`);
    if (s.includes('..')) bad(`"..", in the ${what} name`);
    if (s.includes('@')) bad(`"@" in the ${what} name (snapshots are not volumes)`);
    if (!SEGMENT.test(s)) bad(`the ${what} name ${JSON.stringify(s)} has characters outside [A-Za-z0-9._-] or is too long`);
  }
  return { pool, image };
}

export function checkSnapName(name: string): string {
  if (!SNAP_RE.test(name) || name.includes('..')) throw new RbdError(`invalid RBD snapshot name ${JSON.stringify(name)}`);
  return name;
}

/** `backup.<backup-id>.snap.<unix seconds with ms>`, Cinder's naming. */
export function backupSnapName(backupId: string, at = Date.now()): string {
  return checkSnapName(`backup.${backupId}.snap.${(at / 1000).toFixed(3)}`);
}

export const BACKUP_SNAP_RE = /^backup\.([0-9A-Za-z-]+)\.snap\.(\d+(?:\.\d+)?)$/;

/** conf and user checked; conf made absolute, user without "client." */
export function resolveOptions(o: RbdOptions = {}): { conf?: string; user?: string } {
  const conf = o.conf || undefined;
  const user = o.user || undefined;
  if (conf !== undefined && (conf.includes('\0') || conf.startsWith('-'))) throw new RbdError(`invalid ceph.conf path ${JSON.stringify(conf)}`);
  if (user !== undefined && !USER_RE.test(user.replace(/^client\./, ''))) throw new RbdError(`invalid ceph user ${JSON.stringify(user)}`);
  return { ...(conf ? { conf: path.resolve(conf) } : {}), ...(user ? { user: user.replace(/^client\./, '') } : {}) };
}

