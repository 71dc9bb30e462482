/**
 * /backups: create (a job), list and detail (all_tenants, sort, limit, marker, offset,
 * with_count, next links), show, update (3.9+), delete (a job), restore (a job; or, with the
 * `instant: true` extension, an instant-restore session served over NBD at once), the admin
 * actions os-reset_status and os-force_delete, export_record and import_record.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { parseRecord, exportRecord, importRecord } from '../engine/records-io.js';
import type { BackupRecord } from '../../catalog/records.js';
import { LIST_QUERY, idParams, oneAction, listScope, metadataSchema, nullableString, page, projectParams, requireAdmin, visibleBackup, visibleVolume } from './common.js';
import { ApiError, badRequest, notFound } from './errors.js';
import { atLeast } from './microversion.js';
import type { ApiContext } from './server.js';
import { backupDetail, backupSummary } from './views.js';

const createBody = {
  type: 'object',
  required: ['backup'],
  additionalProperties: false,
  properties: {
    backup: {
      type: 'object',
      required: ['volume_id'],
      additionalProperties: false,
      properties: {
        volume_id: { type: 'string', minLength: 1, maxLength: 255 },
        container: nullableString(),
        name: nullableString(),
        description: nullableString(),
        incremental: { type: 'boolean' },
        force: { type: 'boolean' },
        snapshot_id: nullableString(),
        metadata: { anyOf: [metadataSchema, { type: 'null' }] },
        availability_zone: nullableString(),
      },
    },
  },
} as const;

const updateBody = {
  type: 'object',
  required: ['backup'],
  additionalProperties: false,
  properties: {
    backup: { type: 'object', additionalProperties: false, properties: { name: nullableString(), description: nullableString(), metadata: metadataSchema } },
  },
} as const;

const restoreBody = {
  type: 'object',
  required: ['restore'],
  additionalProperties: false,
  properties: {
    restore: {
      type: ['object', 'null'],
      additionalProperties: false,
      properties: { volume_id: nullableString(), name: nullableString(128), instant: { type: 'boolean' } },
    },
  },
} as const;

const actionBody = oneAction({
  'os-reset_status': { type: 'object', required: ['status'], additionalProperties: false, properties: { status: { type: 'string', enum: ['available', 'error'] } } },
  'os-force_delete': { type: ['null', 'object'], additionalProperties: false, properties: {} },
} as const);

const importBody = {
  type: 'object',
  required: ['backup-record'],
  additionalProperties: false,
  properties: {
    'backup-record': {
      type: 'object',
      required: ['backup_service', 'backup_url'],
      additionalProperties: false,
      properties: { backup_service: { type: 'string', minLength: 1, maxLength: 255 }, backup_url: { type: 'string', minLength: 1, maxLength: 1024 * 1024 } },
    },
  },
} as const;

const listQuery = { type: 'object', additionalProperties: false, properties: { ...LIST_QUERY, volume_id: { type: 'string', maxLength: 255 } } } as const;

const BACKUP_SORT = { id: 'id', name: 'name', display_name: 'name', status: 'status', size: 'size', created_at: 'created_at', updated_at: 'updated_at', data_timestamp: 'data_timestamp', availability_zone: 'availability_zone', volume_id: 'volume_id' };

export function backupRoutes(r: FastifyInstance, c: ApiContext): void {
  const { catalog } = c.app;
  const id = (req: FastifyRequest) => (req.params as { id: string }).id;
  const dependents = (all = catalog.listBackups()) => new Set(all.filter((b) => b.status !== 'deleted' && b.parent_id).map((b) => b.parent_id!));
  const detail = (req: FastifyRequest, b: BackupRecord, deps = dependents()) => backupDetail(b, req.bg.links, req.bg.v, deps.has(b.id));

  r.post('/backups', { schema: { body: createBody, params: projectParams } }, async (req, reply) => {
    const b = (req.body as { backup: Record<string, unknown> }).backup;
    const v = visibleVolume(c, req, b.volume_id as string);
    if (b.snapshot_id) {
      const s = c.jobs.snapshots.find(b.snapshot_id as string);
      if (!s || (!req.bg.id.admin && s.project_id !== req.bg.id.project)) throw notFound(`Snapshot ${String(b.snapshot_id)} could not be found.`);
    }
    const out = await c.jobs.submitBackup({
      volumeId: v.id,
      name: b.name as string | null,
      description: b.description as string | null,
      incremental: b.incremental === true,
      force: b.force === true,
      snapshotId: (b.snapshot_id as string | null) ?? null,
      metadata: (b.metadata as Record<string, string> | null) ?? {},
      userId: req.bg.id.user,
    });
    void reply.code(202);
    return { backup: backupSummary(out.backup, req.bg.links) };
  });

  const list = (full: boolean) => async (req: FastifyRequest) => {
    const q = req.query as Record<string, string | undefined>;
    const scope = listScope(req, q);
    // one read of the records serves the rows and the dependents (of any project) both
    const all = catalog.listBackups();
    let rows = all.filter((b) => b.status !== 'deleted' && scope(b.project_id));
    if (q.name !== undefined) rows = rows.filter((b) => b.name === q.name);
    if (q.status !== undefined) rows = rows.filter((b) => b.status === q.status);
    if (q.volume_id !== undefined) rows = rows.filter((b) => b.volume_id === q.volume_id);
    const p = page(rows as never as (Record<string, unknown> & { id: string })[], q, BACKUP_SORT, req, 'backups');
    const deps = full ? dependents(all) : new Set<string>();
    const items = (p.items as never as BackupRecord[]).map((b) => (full ? detail(req, b, deps) : backupSummary(b, req.bg.links)));
    return { backups: items, ...(p.links ? { backups_links: p.links } : {}), ...(q.with_count !== undefined ? { count: p.count } : {}) };
  };
  r.get('/backups', { schema: { querystring: listQuery, params: projectParams } }, list(false));
  r.get('/backups/detail', { schema: { querystring: listQuery, params: projectParams } }, list(true));

  r.get('/backups/:id', { schema: { params: idParams } }, async (req) => ({ backup: detail(req, visibleBackup(c, req, id(req))) }));

  r.put('/backups/:id', { schema: { params: idParams, body: updateBody } }, async (req) => {
    if (!atLeast(req.bg.v, 9)) throw notFound('The resource could not be found.');
    const b = visibleBackup(c, req, id(req));
    const u = (req.body as { backup: { name?: string | null; description?: string | null; metadata?: Record<string, string> } }).backup;
    if (u.metadata && !atLeast(req.bg.v, 43)) throw badRequest('Invalid input received: metadata needs microversion 3.43 or later');
    let out!: BackupRecord;
    catalog.env.transactionSync(() => {
      const cur = catalog.backups.get(b.id)!;
      out = { ...cur, ...(u.name !== undefined ? { name: u.name ?? cur.name } : {}), ...(u.description !== undefined ? { description: u.description ?? '' } : {}), ...(u.metadata ? { metadata: u.metadata } : {}), updated_at: new Date().toISOString() };
      catalog.putBackup(out);
    });
    c.app.events.emit('backup.update', out.id, { backup_id: out.id, volume_id: out.volume_id, project_id: out.project_id, status: out.status, size: out.size, fail_reason: out.fail_reason });
    return { backup: backupSummary(out, req.bg.links) };
  });

  r.delete('/backups/:id', { schema: { params: idParams } }, async (req, reply) => {
    const b = visibleBackup(c, req, id(req));
    c.jobs.submitDelete(b.id);
    void reply.code(202);
    return reply.send();
  });

  r.post('/backups/:id/action', { schema: { params: idParams, body: actionBody } }, async (req, reply) => {
    const b = visibleBackup(c, req, id(req));
    requireAdmin(req);
    const body = req.body as Record<string, { status: 'available' | 'error' } | null>;
    if ('os-reset_status' in body) await c.jobs.resetStatus(b.id, body['os-reset_status']!.status);
    else await c.jobs.forceDelete(b.id);
    void reply.code(202);
    return reply.send();
  });

  r.post('/backups/:id/restore', { schema: { params: idParams, body: restoreBody } }, async (req, reply) => {
    const b = visibleBackup(c, req, id(req));
    const o = (req.body as { restore: { volume_id?: string | null; name?: string | null; instant?: boolean } | null }).restore ?? {};
    if (o.volume_id) visibleVolume(c, req, o.volume_id);
    if (o.volume_id && o.name) throw badRequest('Invalid input received: give volume_id (an existing volume) or name (a new one), not both');
    if (o.instant) {
      const mgr = c.instant();
      if (!mgr) throw new ApiError(503, 'instant restore is not available: another daemon owns the sessions of this data directory');
      const s = await mgr.start({ backup: b.id, ...(o.volume_id ? { volume: o.volume_id } : { name: o.name ?? `restore_backup_${b.id}` }) });
      void reply.code(202);
      return { restore: { backup_id: b.id, volume_id: s.volume_id, volume_name: s.volume_name, instant: { session_id: s.id, export_name: s.export_name, uri: s.uri, unix_uri: s.unix_uri } } };
    }
    if (o.volume_id) {
      const t = visibleVolume(c, req, o.volume_id);
      if (t.status !== 'available') throw badRequest(`Invalid volume: Volume to be restored to must be available, but the current status is "${t.status}".`);
      const size = await c.app.volumeDriver(t).size();
      if (size < b.size_bytes) throw badRequest(`Invalid volume: volume size ${Math.ceil(size / 1024 ** 3)}GB cannot be smaller than the backup size ${b.size}GB. (${size} < ${b.size_bytes} bytes)`);
    }
    const out = await c.jobs.submitRestore({ backupId: b.id, volumeId: o.volume_id ?? null, name: o.name ?? `restore_backup_${b.id}`, userId: req.bg.id.user });
    void reply.code(202);
    return { restore: { backup_id: b.id, volume_id: out.target.id, volume_name: out.target.name } };
  });

  r.get('/backups/:id/export_record', { schema: { params: idParams } }, async (req) => {
    const b = visibleBackup(c, req, id(req));
    requireAdmin(req);
    const rec = await exportRecord(c.app, b.id);
    return { 'backup-record': { backup_service: rec.backup_service, backup_url: rec.backup_url } };
  });

  r.post('/backups/import_record', { schema: { body: importBody, params: projectParams } }, async (req, reply) => {
    requireAdmin(req);
    const rec = (req.body as { 'backup-record': { backup_service: string; backup_url: string } })['backup-record'];
    const raw = parseRecord(rec.backup_service, rec.backup_url);
    const project = typeof raw.project_id === 'string' ? raw.project_id : req.bg.id.project;
    const res = c.jobs.quotas.reserve(project, typeof raw.size === 'number' ? raw.size : 0);
    try {
      const out = await importRecord(c.app, rec.backup_service, rec.backup_url);
      void reply.code(201);
      return { backup: backupSummary(out, req.bg.links) };
    } finally {
      c.jobs.quotas.end(res.id);
    }
  });
}
