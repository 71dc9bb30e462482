/**
 * Who is asking: `auth` in blockgate.json.
 *
 *   "auth": { "mode": "noauth", "admins": ["admin"] }                       (the default)
 *   "auth": { "mode": "tokens", "tokens": [ { "hash": "sha256:<hex>", "user": "alice",
 *                                             "project": "p1", "role": "member" } ] }
 *
 * noauth (loopback only; the server refuses it on any other address): the identity is what
 * cinderclient's noauth plugin sends — `X-User-Id`/`X-Project-Id`, or `X-Auth-Token: user:project`;
 * with no identity at all (keystoneauth's `none`: `X-Auth-Token: notused`) it is the user
 * `admin` in the project of the URL (or `default`). A user named in `admins` is an admin.
 * tokens: `X-Auth-Token` is looked up by its SHA-256 (tokens are stored only as hashes;
 * `blockgate token add` makes one); anything else is 401.
 *
 * A member sees and acts on its own project only; an admin acts on any project and lists all
 * of them with all_tenants.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { ApiError, badRequest } from './errors.js';

export type Role = 'member' | 'admin';

export interface TokenEntry {
  hash: string;
  user: string;
  project: string;
  role: Role;
  label?: string;
  created_at?: string;
}

export interface AuthConfig {
  mode: 'noauth' | 'tokens';
  admins: string[];
  tokens: TokenEntry[];
}

export interface Identity {
  user: string;
  project: string;
  admin: boolean;
}

const ID_RE = /^[A-Za-z0-9_.@-]{1,64}$/;

export function validateAuth(raw: unknown, where: string): AuthConfig {
  const out: AuthConfig = { mode: 'noauth', admins: ['admin'], tokens: [] };
  if (raw === undefined) return out;
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${where}: auth must be an object`);
  const r = raw as Record<string, unknown>;
  for (const k of Object.keys(r)) if (!['mode', 'admins', 'tokens'].includes(k)) throw new Error(`${where}: unknown key auth.${k} (mode, admins, tokens)`);
  if (r.mode !== undefined) {
    if (r.mode !== 'noauth' && r.mode !== 'tokens') throw new Error(`${where}: auth.mode must be "noauth" or "tokens"`);
    out.mode = r.mode;
  }
  if (r.admins !== undefined) {
    if (!Array.isArray(r.admins) || !r.admins.every((a) => typeof a === 'string' && ID_RE.test(a))) throw new Error(`${where}: auth.admins must be a list of user ids`);
    out.admins = r.admins as string[];
  }
  if (r.tokens !== undefined) {
    if (!Array.isArray(r.tokens)) throw new Error(`${where}: auth.tokens must be a list`);
    out.tokens = r.tokens.map((t, i) => {
      const x = t as Record<string, unknown>;
      if (!x || typeof x !== 'object') throw new Error(`${where}: auth.tokens[${i}] must be an object`);
      if (typeof x.hash !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(x.hash)) throw new Error(`${where}: auth.tokens[${i}].hash must be "sha256:<64 hex>" (tokens are stored only as hashes; use blockgate token add)`);
      for (const k of ['user', 'project'] as const) if (typeof x[k] !== 'string' || !ID_RE.test(x[k] as string)) throw new Error(`${where}: auth.tokens[${i}].${k} must be an id of letters, digits, '_', '.', '@', '-'`);
      if (x.role !== 'member' && x.role !== 'admin') throw new Error(`${where}: auth.tokens[${i}].role must be "member" or "admin"`);
      return { hash: x.hash, user: x.user as string, project: x.project as string, role: x.role, ...(typeof x.label === 'string' ? { label: x.label } : {}), ...(typeof x.created_at === 'string' ? { created_at: x.created_at } : {}) };
    });
  }
  return out;
}

export function tokenHash(token: string): string {
  return `sha256:${createHash('sha256').update(token, 'utf8').digest('hex')}`;
}

function header(h: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v[0] : v;
}

/** the caller of a request; `pathProject` is the project id of a /v3/{project_id}/... URL */
export function identify(cfg: AuthConfig, headers: Record<string, string | string[] | undefined>, pathProject: string | undefined): Identity {
  const token = header(headers, 'x-auth-token');
  let id: Identity;
  if (cfg.mode === 'tokens') {
    if (!token) throw new ApiError(401, 'Authentication required: send X-Auth-Token');
    const h = Buffer.from(tokenHash(token));
    const hit = cfg.tokens.find((t) => t.hash.length === h.length && timingSafeEqual(Buffer.from(t.hash), h));
    if (!hit) throw new ApiError(401, 'The request you have made requires authentication (unknown token).');
    id = { user: hit.user, project: hit.project, admin: hit.role === 'admin' };
  } else {
    let user = header(headers, 'x-user-id') || undefined;
    let project = header(headers, 'x-project-id') || header(headers, 'x-tenant-id') || undefined;
    if (token && token.includes(':')) {
      const [u, p] = token.split(':', 2) as [string, string];
      user ??= u || undefined;
      project ??= p || undefined;
    }
    if (!project) project = pathProject ?? 'default';
    if (!user) user = 'admin';
    for (const [k, v] of [['user', user], ['project', project]] as const) if (!ID_RE.test(v)) throw badRequest(`Invalid ${k} id ${JSON.stringify(v.slice(0, 70))}`);
    id = { user, project, admin: cfg.admins.includes(user) };
  }
  if (pathProject !== undefined && pathProject !== id.project) {
    throw badRequest(`Malformed request url: URL's project_id '${pathProject}' doesn't match Context's project_id '${id.project}'`);
  }
  return id;
}
