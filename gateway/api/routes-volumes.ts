/**
 * /volumes: managed sparse file volumes of N GiB (create, list, detail, show, delete), a
 * volume from a backup (`backup_id`, what `backup-restore --volume-type` sends at 3.47+), and
 * the admin's os-reset_status (e.g. to mark a volume in-use).
 */
import { randomUUID } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { GiB, type VolumeStatus } from '../../catalog/records.js';
import { createVolume, deleteVolume } from '../engine/volumes.js';
import { endBackingUp } from '../jobs/handlers.js';
import { LIST_QUERY, oneAction, idParams, listScope, metadataSchema, nullableString, page, projectParams, requireAdmin, visibleBackup, visibleVolume } from './common.js';
import { badRequest, conflict } from './errors.js';
import type { ApiContext } from './server.js';
import { volumeDetail, volumeSummary } from './views.js';

export const MAX_VOLUME_GIB = 65536;

const createBody = {
  type: 'object',
  required: ['volume'],
  additionalProperties: false,
  properties: {
    volume: {
      type: 'object',
      required: ['size'],
      additionalProperties: false,
      properties: {
        size: { type: 'integer', minimum: 1, maximum: MAX_VOLUME_GIB },
        name: nullableString(),
        description: nullableString(),
        display_name: nullableString(),
        display_description: nullableString(),
        volume_type: nullableString(),
        availability_zone: nullableString(),
        metadata: { anyOf: [metadataSchema, { type: 'null' }] },
        snapshot_id: nullableString(),
        source_volid: nullableString(),
        imageRef: nullableString(),
        consistencygroup_id: nullableString(),
        group_id: nullableString(),
        backup_id: nullableString(),
        multiattach: { type: 'boolean' },
      },
    },
    'OS-SCH-HNT:scheduler_hints': { type: ['object', 'null'] },
  },
} as const;

const listQuery = { type: 'object', additionalProperties: false, properties: { ...LIST_QUERY } } as const;

const actionBody = oneAction({
  'os-reset_status': {
    type: 'object',
    required: ['status'],
    additionalProperties: false,
    properties: { status: { type: 'string', enum: ['available', 'in-use', 'error', 'error_restoring'] }, attach_status: { type: 'string' }, migration_status: { type: ['string', 'null'] } },
  },
} as const);

const VOLUME_SORT = { id: 'id', name: 'name', display_name: 'name', status: 'status', size: 'size', created_at: 'created_at', updated_at: 'updated_at', availability_zone: 'id', bootable: 'id' };

export function volumeRoutes(r: FastifyInstance, c: ApiContext): void {
  const { catalog } = c.app;

  r.post('/volumes', { schema: { body: createBody, params: projectParams } }, async (req, reply) => {
    const b = (req.body as { volume: Record<string, unknown> }).volume;
    for (const k of ['snapshot_id', 'source_volid', 'imageRef', 'consistencygroup_id', 'group_id'] as const) {
      if (b[k] !== null && b[k] !== undefined) throw badRequest(`Invalid input received: creating a volume from ${k} is not supported by blockgate (only a new empty volume, or one from backup_id)`);
    }
    const name = (b.name ?? b.display_name ?? null) as string | null;
    const id = req.bg.id;
    if (b.backup_id) {
      const bk = visibleBackup(c, req, b.backup_id as string);
      if (Number(b.size) * GiB < bk.size_bytes) throw badRequest(`Invalid input received: volume size ${String(b.size)}GB cannot be smaller than the backup size ${bk.size}GB.`);
      const out = await c.jobs.submitRestore({ backupId: bk.id, name: name ?? `restore_backup_${bk.id}`, userId: id.user });
      void reply.code(202);
      return { volume: volumeDetail(catalog.volume(out.target.id), req.bg.links, c.host) };
    }
    const volName = name ?? `volume-${randomUUID()}`;
    if (catalog.volumeNames.get(volName) !== undefined) throw conflict(`A volume named ${volName} already exists (blockgate volume names are unique: they name its file).`);
    c.app.events.emit('volume.create.start', volName, { project_id: id.project, user_id: id.user, size: Number(b.size) });
    const v = await createVolume(c.app, { name: volName, size: Number(b.size) * GiB, projectId: id.project, userId: id.user });
    const out = b.description || b.display_description ? catalog.updateVolume(v.id, () => ({ description: (b.description ?? b.display_description) as string })) : v;
    c.app.events.emit('volume.create.end', v.id, { volume_id: v.id, project_id: v.project_id, user_id: v.user_id, status: v.status, size: b.size as number });
    void reply.code(202);
    return { volume: volumeDetail(out, req.bg.links, c.host) };
  });

  const list = (detail: boolean) => async (req: import('fastify').FastifyRequest) => {
    const q = req.query as Record<string, string | undefined>;
    const scope = listScope(req, q);
    let rows = catalog.listVolumes().filter((v) => scope(v.project_id));
    if (q.name !== undefined) rows = rows.filter((v) => v.name === q.name);
    if (q.status !== undefined) rows = rows.filter((v) => v.status === q.status);
    const p = page(rows as never as (Record<string, unknown> & { id: string })[], q, VOLUME_SORT, req, 'volumes');
    const items = (p.items as never as typeof rows).map((v) => (detail ? volumeDetail(v, req.bg.links, c.host) : volumeSummary(v, req.bg.links)));
    return { volumes: items, ...(p.links ? { volumes_links: p.links } : {}), ...(q.with_count !== undefined ? { count: p.count } : {}) };
  };
  r.get('/volumes', { schema: { querystring: listQuery, params: projectParams } }, list(false));
  r.get('/volumes/detail', { schema: { querystring: listQuery, params: projectParams } }, list(true));

  r.get('/volumes/:id', { schema: { params: idParams } }, async (req) => {
    const v = visibleVolume(c, req, (req.params as { id: string }).id);
    return { volume: volumeDetail(v, req.bg.links, c.host) };
  });

  r.delete('/volumes/:id', { schema: { params: idParams } }, async (req, reply) => {
    endBackingUp(c.app, visibleVolume(c, req, (req.params as { id: string }).id).id, '');
    const v = visibleVolume(c, req, (req.params as { id: string }).id);
    const allowed: VolumeStatus[] = ['available', 'error', 'error_restoring'];
    if (!allowed.includes(v.status)) throw badRequest(`Invalid volume: Volume status must be available or error or error_restoring or error_extending or error_managing and must not be migrating, attached, belong to a group, have snapshots, awaiting a transfer, or be disassociated from snapshots after volume transfer.`);
    if (c.jobs.snapshots.ofVolume(v.id).length) throw badRequest('Invalid volume: Volume still has 1 dependent snapshots.');
    c.app.events.emit('volume.delete.start', v.id, { volume_id: v.id, project_id: v.project_id, status: 'deleting' });
    await deleteVolume(c.app, v.id);
    c.app.events.emit('volume.delete.end', v.id, { volume_id: v.id, project_id: v.project_id, status: 'deleted' });
    void reply.code(202);
    return reply.send();
  });

  r.post('/volumes/:id/action', { schema: { params: idParams, body: actionBody } }, async (req, reply) => {
    const v = visibleVolume(c, req, (req.params as { id: string }).id);
    requireAdmin(req);
    const status = (req.body as { 'os-reset_status': { status: VolumeStatus } })['os-reset_status'].status;
    if (v.status === 'backing-up' || v.status === 'restoring-backup') throw badRequest(`Invalid volume: volume ${v.id} is ${v.status}; reset its backup instead`);
    catalog.updateVolume(v.id, () => ({ status, status_reason: null }));
    void reply.code(202);
    return reply.send();
  });

}
