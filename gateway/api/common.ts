/**
 * What the route modules share: visibility (a member sees its own project only; another
 * project's id is 404, as in Cinder), admin checks, list queries (all_tenants, sort, limit,
 * marker, offset, with_count) with next links, and schema pieces.
 */
import type { FastifyRequest } from 'fastify';
import type { BackupRecord, VolumeRecord } from '../../catalog/records.js';
import type { ApiContext } from './server.js';
import { badRequest, forbidden, notFound } from './errors.js';

export const MAX_LIMIT = 1000;

export const uuidish = { type: 'string', minLength: 1, maxLength: 255 } as const;
export const idParams = { type: 'object', properties: { id: uuidish, project_id: uuidish }, required: ['id'] } as const;
export const projectParams = { type: 'object', properties: { project_id: uuidish } } as const;
export const nullableString = (max = 255) => ({ type: ['string', 'null'], maxLength: max }) as const;
export const metadataSchema = { type: 'object', maxProperties: 64, additionalProperties: { type: 'string', maxLength: 255 }, propertyNames: { maxLength: 255 } } as const;

/** an action body: exactly one of the named actions */
export const oneAction = <P extends Record<string, unknown>>(properties: P) => ({ type: 'object', minProperties: 1, maxProperties: 1, additionalProperties: false, properties }) as const;

/** query keys every list takes; values arrive as strings (nothing is coerced) */
export const LIST_QUERY = {
  all_tenants: { type: 'string', maxLength: 10 },
  sort: { type: 'string', maxLength: 200 },
  sort_key: { type: 'string', maxLength: 50 },
  sort_dir: { type: 'string', enum: ['asc', 'desc'] },
  limit: { type: 'string', pattern: '^[0-9]{1,9}$' },
  marker: { type: 'string', maxLength: 255 },
  offset: { type: 'string', pattern: '^[0-9]{1,9}$' },
  with_count: { type: 'string', maxLength: 10 },
  name: { type: 'string', maxLength: 255 },
  status: { type: 'string', maxLength: 64 },
  project_id: { type: 'string', maxLength: 255 },
} as const;

export function truthy(v: string | undefined): boolean {
  if (v === undefined) return false;
  const s = v.toLowerCase();
  if (['1', 'true', 'yes', 'on', 't', 'y'].includes(s)) return true;
  if (['0', 'false', 'no', 'off', 'f', 'n', ''].includes(s)) return false;
  throw badRequest(`Invalid value '${v}' for a boolean: use True or False`);
}

export function requireAdmin(req: FastifyRequest): void {
  if (!req.bg.id.admin) throw forbidden();
}

export function canSee(req: FastifyRequest, project: string): boolean {
  return req.bg.id.admin || req.bg.id.project === project;
}

export function visibleVolume(c: ApiContext, req: FastifyRequest, id: string): VolumeRecord {
  const v = c.app.catalog.volumes.get(id);
  if (!v || !canSee(req, v.project_id)) throw notFound(`Volume ${id} could not be found.`);
  return v;
}

export function visibleBackup(c: ApiContext, req: FastifyRequest, id: string): BackupRecord {
  const b = c.app.catalog.backups.get(id);
  if (!b || b.status === 'deleted' || !canSee(req, b.project_id)) throw notFound(`Backup ${id} could not be found.`);
  return b;
}

/** the projects a list shows: an admin's all_tenants=1 shows every project, otherwise the caller's own */
export function listScope(req: FastifyRequest, q: Record<string, string | undefined>): (project: string) => boolean {
  const all = truthy(q.all_tenants) && req.bg.id.admin;
  const only = req.bg.id.admin && q.project_id ? q.project_id : undefined;
  if (only) return (p) => p === only;
  return all ? () => true : (p) => p === req.bg.id.project;
}

type Row = Record<string, unknown> & { id: string };

/**
 * Sorts (Cinder's `sort=key[:dir],...` or sort_key/sort_dir; default created_at desc, id desc),
 * pages (marker, offset, limit up to MAX_LIMIT) and counts. `keys` maps API sort keys to row fields.
 */
export function page<T extends Row>(rows: T[], q: Record<string, string | undefined>, keys: Record<string, string>, req: FastifyRequest, collection: string): { items: T[]; links?: { rel: string; href: string }[]; count: number } {
  const spec: [string, 1 | -1][] = [];
  const add = (k: string, d: string | undefined) => {
    const field = keys[k];
    if (!field) throw badRequest(`Invalid sort key: ${k} (sortable: ${Object.keys(keys).join(', ')})`);
    if (d !== undefined && d !== 'asc' && d !== 'desc') throw badRequest(`Invalid sort direction: ${d}`);
    spec.push([field, d === 'asc' ? 1 : -1]);
  };
  if (q.sort) for (const part of q.sort.split(',')) {
    const [k, d] = part.trim().split(':') as [string, string | undefined];
    add(k, d);
  }
  else if (q.sort_key) add(q.sort_key, q.sort_dir);
  if (!spec.some(([f]) => f === 'created_at')) spec.push(['created_at', -1]);
  spec.push(['id', -1]);
  const sorted = [...rows].sort((a, b) => {
    for (const [f, d] of spec) {
      const x = a[f] as string | number | null;
      const y = b[f] as string | number | null;
      if (x === y) continue;
      if (x === null || x === undefined) return -d;
      if (y === null || y === undefined) return d;
      return (x < y ? -1 : 1) * d;
    }
    return 0;
  });
  let start = 0;
  if (q.marker) {
    const at = sorted.findIndex((r) => r.id === q.marker);
    if (at < 0) throw badRequest(`Marker ${q.marker} could not be found.`);
    start = at + 1;
  }
  if (q.offset) start += Number(q.offset);
  const limit = q.limit !== undefined ? Math.min(Number(q.limit), MAX_LIMIT) : MAX_LIMIT;
  const items = sorted.slice(start, start + limit);
  const more = start + limit < sorted.length;
  let links: { rel: string; href: string }[] | undefined;
  if (more && items.length) {
    const url = new URL(req.url, req.bg.links.origin);
    url.searchParams.delete('offset');
    url.searchParams.set('marker', items.at(-1)!.id);
    url.searchParams.set('limit', String(limit));
    links = [{ rel: 'next', href: url.toString() }];
  }
  void collection;
  return { items, links, count: sorted.length };
}
