/** /snapshots: create (an RBD snapshot, or a reflink copy of a file volume), list, detail, show, delete. */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { SnapshotRecord } from '../../catalog/snapshots.js';
import { createSnapshot, deleteSnapshot } from '../jobs/snapshots.js';
import { LIST_QUERY, canSee, idParams, listScope, metadataSchema, nullableString, page, projectParams, visibleVolume } from './common.js';
import { badRequest, notFound } from './errors.js';
import type { ApiContext } from './server.js';
import { snapshotDetail, snapshotSummary } from './views.js';

const createBody = {
  type: 'object',
  required: ['snapshot'],
  additionalProperties: false,
  properties: {
    snapshot: {
      type: 'object',
      required: ['volume_id'],
      additionalProperties: false,
      properties: {
        volume_id: { type: 'string', minLength: 1, maxLength: 255 },
        name: nullableString(),
        description: nullableString(),
        display_name: nullableString(),
        display_description: nullableString(),
        metadata: { anyOf: [metadataSchema, { type: 'null' }] },
        force: { type: ['boolean', 'null'] },
      },
    },
  },
} as const;

const listQuery = { type: 'object', additionalProperties: false, properties: { ...LIST_QUERY, volume_id: { type: 'string', maxLength: 255 } } } as const;
const SNAP_SORT = { id: 'id', name: 'name', display_name: 'name', status: 'status', size: 'size', created_at: 'created_at', updated_at: 'updated_at', volume_id: 'volume_id' };

export function snapshotRoutes(r: FastifyInstance, c: ApiContext): void {
  const store = c.jobs.snapshots;
  const visible = (req: FastifyRequest, id: string): SnapshotRecord => {
    const s = store.find(id);
    if (!s || !canSee(req, s.project_id)) throw notFound(`Snapshot ${id} could not be found.`);
    return s;
  };

  r.post('/snapshots', { schema: { body: createBody, params: projectParams } }, async (req, reply) => {
    const b = (req.body as { snapshot: Record<string, unknown> }).snapshot;
    const v = visibleVolume(c, req, b.volume_id as string);
    if (v.status === 'in-use' && b.force !== true) throw badRequest(`Invalid volume: Volume ${v.id} status must be available, but current status is: in-use.`);
    c.app.events.emit('snapshot.create.start', v.id, { volume_id: v.id, project_id: v.project_id, user_id: req.bg.id.user });
    try {
      const s = await createSnapshot(c.app, v, {
        name: (b.name ?? b.display_name ?? null) as string | null,
        description: (b.description ?? b.display_description ?? null) as string | null,
        metadata: (b.metadata as Record<string, string> | null) ?? {},
        projectId: v.project_id,
        userId: req.bg.id.user,
      });
      c.app.events.emit('snapshot.create.end', s.id, { snapshot_id: s.id, volume_id: v.id, project_id: s.project_id, status: s.status, size: s.size });
      void reply.code(202);
      return { snapshot: snapshotDetail(s) };
    } catch (e) {
      c.app.events.emit('snapshot.create.error', v.id, { volume_id: v.id, project_id: v.project_id, fail_reason: (e as Error).message });
      throw e;
    }
  });

  const list = (full: boolean) => async (req: FastifyRequest) => {
    const q = req.query as Record<string, string | undefined>;
    const scope = listScope(req, q);
    let rows = store.list().filter((s) => scope(s.project_id));
    if (q.name !== undefined) rows = rows.filter((s) => s.name === q.name);
    if (q.status !== undefined) rows = rows.filter((s) => s.status === q.status);
    if (q.volume_id !== undefined) rows = rows.filter((s) => s.volume_id === q.volume_id);
    const p = page(rows as never as (Record<string, unknown> & { id: string })[], q, SNAP_SORT, req, 'snapshots');
    const items = (p.items as never as SnapshotRecord[]).map((s) => (full ? snapshotDetail(s) : snapshotSummary(s)));
    return { snapshots: items, ...(p.links ? { snapshots_links: p.links } : {}), ...(q.with_count !== undefined ? { count: p.count } : {}) };
  };
  r.get('/snapshots', { schema: { querystring: listQuery, params: projectParams } }, list(false));
  r.get('/snapshots/detail', { schema: { querystring: listQuery, params: projectParams } }, list(true));
  r.get('/snapshots/:id', { schema: { params: idParams } }, async (req) => ({ snapshot: snapshotDetail(visible(req, (req.params as { id: string }).id)) }));

  r.delete('/snapshots/:id', { schema: { params: idParams } }, async (req, reply) => {
    const s = visible(req, (req.params as { id: string }).id);
    const using = c.app.catalog.listBackups(s.volume_id).find((b) => b.snapshot_id === s.id && b.status === 'creating');
    if (using) throw badRequest(`Invalid snapshot: backup ${using.id} is being made from it.`);
    c.app.events.emit('snapshot.delete.start', s.id, { snapshot_id: s.id, volume_id: s.volume_id, project_id: s.project_id, status: 'deleting' });
    await deleteSnapshot(c.app, s);
    c.app.events.emit('snapshot.delete.end', s.id, { snapshot_id: s.id, volume_id: s.volume_id, project_id: s.project_id, status: 'deleted' });
    void reply.code(202);
    return reply.send();
  });
}
