/** /os-quota-sets (show, usage, update, defaults, delete) and /os-services (the service list). */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { QUOTA_DEFAULTS, type Limits } from '../../catalog/quotas.js';
import { sizeGiB } from '../../catalog/records.js';
import { requireAdmin } from './common.js';
import { badRequest, forbidden } from './errors.js';
import type { ApiContext } from './server.js';
import { ts } from './views.js';

const tenantParams = { type: 'object', required: ['tenant'], properties: { tenant: { type: 'string', minLength: 1, maxLength: 255 }, project_id: { type: 'string', maxLength: 255 } } } as const;
const limit = { type: 'integer', minimum: -1, maximum: 2 ** 31 - 1 } as const;
const updateBody = {
  type: 'object',
  required: ['quota_set'],
  additionalProperties: false,
  properties: {
    quota_set: { type: 'object', additionalProperties: false, properties: { tenant_id: { type: 'string', maxLength: 255 }, backups: limit, backup_gigabytes: limit } },
  },
} as const;
const boolQuery = (k: string) => ({ type: 'object', additionalProperties: false, properties: { [k]: { type: 'string', enum: ['True', 'False', 'true', 'false', '1', '0'] } } }) as const;

export function quotaRoutes(r: FastifyInstance, c: ApiContext): void {
  const quotas = c.jobs.quotas;
  const mayRead = (req: FastifyRequest, tenant: string) => {
    if (!req.bg.id.admin && req.bg.id.project !== tenant) throw forbidden(`Policy doesn't allow volume_extension:quotas:show to be performed.`);
  };
  /** the keys Cinder shows; blockgate enforces backups and backup_gigabytes, the rest are unlimited (-1) */
  const quotaSet = (tenant: string, lim: Limits, usage: boolean) => {
    const u = quotas.usage(tenant);
    const vols = c.app.catalog.listVolumes().filter((v) => v.project_id === tenant);
    const snaps = c.jobs.snapshots.list().filter((s) => s.project_id === tenant);
    const other = { volumes: vols.length, snapshots: snaps.length, gigabytes: vols.reduce((s, v) => s + sizeGiB(v.size), 0), per_volume_gigabytes: 0, groups: 0 };
    const line = (n: number) => ({ limit: -1, in_use: n, reserved: 0, allocated: 0 });
    if (!usage) return { id: tenant, ...lim, volumes: -1, snapshots: -1, gigabytes: -1, per_volume_gigabytes: -1, groups: -1 };
    return { id: tenant, backups: { ...u.backups, limit: lim.backups }, backup_gigabytes: { ...u.backup_gigabytes, limit: lim.backup_gigabytes }, ...Object.fromEntries(Object.entries(other).map(([k, n]) => [k, line(n)])) };
  };

  r.get('/os-quota-sets/:tenant', { schema: { params: tenantParams, querystring: boolQuery('usage') } }, async (req) => {
    const tenant = (req.params as { tenant: string }).tenant;
    mayRead(req, tenant);
    const usage = ['True', 'true', '1'].includes((req.query as { usage?: string }).usage ?? '');
    return { quota_set: quotaSet(tenant, quotas.limits(tenant), usage) };
  });
  r.get('/os-quota-sets/:tenant/defaults', { schema: { params: tenantParams } }, async (req) => {
    const tenant = (req.params as { tenant: string }).tenant;
    mayRead(req, tenant);
    return { quota_set: quotaSet(tenant, QUOTA_DEFAULTS, false) };
  });
  r.put('/os-quota-sets/:tenant', { schema: { params: tenantParams, body: updateBody, querystring: boolQuery('skip_validation') } }, async (req) => {
    requireAdmin(req);
    const tenant = (req.params as { tenant: string }).tenant;
    const body = (req.body as { quota_set: Partial<Limits> & { tenant_id?: string } }).quota_set;
    const skip = ['True', 'true', '1'].includes((req.query as { skip_validation?: string }).skip_validation ?? 'True');
    const change: Partial<Limits> = {};
    const u = quotas.usage(tenant);
    for (const k of ['backups', 'backup_gigabytes'] as const) {
      const v = body[k];
      if (v === undefined) continue;
      const used = u[k].in_use + u[k].reserved;
      if (!skip && v !== -1 && v < used) throw badRequest(`Invalid input received: Quota limit ${v} for ${k} must be equal or greater than existing resources. Current usage is ${used} and the limit is ${v}.`);
      change[k] = v;
    }
    return { quota_set: quotaSet(tenant, quotas.setLimits(tenant, change), false) };
  });
  r.delete('/os-quota-sets/:tenant', { schema: { params: tenantParams } }, async (req, reply) => {
    requireAdmin(req);
    quotas.setLimits((req.params as { tenant: string }).tenant, { ...QUOTA_DEFAULTS });
    void reply.code(202);
    return reply.send();
  });
}

export function serviceRoutes(r: FastifyInstance, c: ApiContext): void {
  const query = { type: 'object', additionalProperties: false, properties: { host: { type: 'string', maxLength: 255 }, binary: { type: 'string', maxLength: 64 } } } as const;
  r.get('/os-services', { schema: { querystring: query } }, async (req) => {
    requireAdmin(req);
    const q = req.query as { host?: string; binary?: string };
    const services = c.heartbeat
      .list()
      .filter((s) => (!q.host || s.host === q.host) && (!q.binary || s.binary === q.binary))
      .map((s) => ({ binary: s.binary, host: s.host, zone: s.zone, status: s.disabled ? 'disabled' : 'enabled', state: s.state, updated_at: ts(s.updated_at), disabled_reason: s.disabled_reason, cluster: null, backend_state: s.state }));
    return { services };
  });
}
