/**
 * The appliance service inside `blockgate serve`: the job module (recovered, then started),
 * the service heartbeat, the Cinder API listener, and the control-socket routes the CLI uses
 * to hand its jobs to the daemon (`/jobs`). Stopped in reverse order.
 */
import path from 'node:path';
import { ConflictError } from '../../catalog/catalog.js';
import { QuotaExceededError } from '../../catalog/quotas.js';
import { CONFIG_FILE } from '../config.js';
import type { Daemon } from '../daemon.js';
import { controlRoutes, instantOf } from '../instant/daemon.js';
import { BadRequestError } from '../instant/control.js';
import { JobService } from '../jobs/service.js';
import { installClusterJobs } from '../nodes/node.js';
import { validateAuth } from './auth.js';
import { Heartbeat } from './heartbeat.js';
import { buildApi, checkApiListen, type ApiOptions } from './server.js';

export interface ApiSection {
  host?: string;
  port?: number;
  tls?: { cert: string; key: string };
  workers?: number;
  maxQueued?: number;
  serviceDownSeconds?: number;
}

export interface ServiceOptions {
  host: string;
  port: number;
  /** the port was asked for (option or config): failing to bind it is fatal; the default 8776 in use only disables the API */
  portExplicit: boolean;
  tls?: { cert: string; key: string };
  workers: number;
  maxQueued: number;
}

export const DEFAULT_API_PORT = 8776;

/** `api` in blockgate.json, checked */
export function apiSection(raw: unknown, dataDir: string): ApiSection {
  const where = path.join(dataDir, CONFIG_FILE);
  if (raw === undefined) return {};
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) throw new Error(`${where}: api must be an object`);
  const r = raw as Record<string, unknown>;
  const keys = ['host', 'port', 'tls', 'workers', 'maxQueued', 'serviceDownSeconds'];
  for (const k of Object.keys(r)) if (!keys.includes(k)) throw new Error(`${where}: unknown key api.${k} (${keys.join(', ')})`);
  const int = (k: string, min: number, max: number) => {
    const v = r[k];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new Error(`${where}: api.${k} must be a whole number from ${min} to ${max}`);
    return v;
  };
  if (r.host !== undefined && typeof r.host !== 'string') throw new Error(`${where}: api.host must be a string`);
  let tls: ApiSection['tls'];
  if (r.tls !== undefined) {
    const t = r.tls as Record<string, unknown>;
    if (!t || typeof t.cert !== 'string' || typeof t.key !== 'string') throw new Error(`${where}: api.tls must be {"cert": FILE, "key": FILE}`);
    tls = { cert: path.resolve(dataDir, t.cert), key: path.resolve(dataDir, t.key) };
  }
  return { host: r.host as string | undefined, port: int('port', 0, 65535), tls, workers: int('workers', 1, 64), maxQueued: int('maxQueued', 1, 100000), serviceDownSeconds: int('serviceDownSeconds', 1, 86400) };
}

export async function startService(d: Daemon, o: ServiceOptions): Promise<{ port: number; jobs: JobService; stop(): Promise<void> }> {
  const app = d.app;
  const cfg = app.config as unknown as { auth?: unknown; api?: unknown };
  const auth = validateAuth(cfg.auth, path.join(app.config.dataDir, CONFIG_FILE));
  const apiOpts: ApiOptions = { host: o.host, port: o.port, tls: o.tls, auth };
  await checkApiListen(apiOpts);
  const section = apiSection(cfg.api, app.config.dataDir);
  const jobs = new JobService(app, { workers: o.workers, maxQueued: o.maxQueued }, (job, e) => d.log.warn({ event: 'job-failed', job: job.id, kind: job.kind, backup: job.backup_id, error: e.message }, `${job.kind} job ${job.id} failed: ${e.message}`));
  await installClusterJobs(d, jobs, (job, e) => d.log.warn({ event: 'job-failed', job: job.id, kind: job.kind, backup: job.backup_id, error: e.message }, `${job.kind} job ${job.id} failed: ${e.message}`));
  const recovered = jobs.start();
  if (recovered.resumed.length || recovered.failed.length) d.log.info({ event: 'jobs-recovered', ...recovered }, `jobs of a previous run: ${recovered.resumed.length} resumed, ${recovered.failed.length} ended`);
  const heartbeat = new Heartbeat(app.catalog.env, app.events.node, (section.serviceDownSeconds ?? 60) * 1000);
  heartbeat.start();
  controlRoutes.set('jobs', (method, parts, body) => controlJobs(jobs, method, parts, body));

  const server = buildApi({ app, jobs, heartbeat, instant: () => instantOf.get(d), host: app.events.node, onError: (e) => d.log.error({ event: 'api-error', error: e.message }, e.message) }, apiOpts);
  let port = 0;
  try {
    await server.listen({ host: o.host, port: o.port });
    const addr = server.server.address();
    port = typeof addr === 'object' && addr ? addr.port : o.port;
    d.log.info({ event: 'api-listening', host: o.host, port, tls: !!o.tls, auth: auth.mode, workers: o.workers }, `serving the Cinder v3 API on ${o.tls ? 'https' : 'http'}://${o.host}:${port}/v3 (auth ${auth.mode}, ${o.workers} job workers)`);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE' || o.portExplicit) {
      await server.close().catch(() => undefined);
      heartbeat.stop();
      await jobs.stop();
      controlRoutes.delete('jobs');
      throw e;
    }
    d.log.warn({ event: 'api-disabled', port: o.port }, `port ${o.port} is in use: the Cinder API is not served (give --api-port); jobs still run for the CLI`);
  }
  return {
    port,
    jobs,
    async stop() {
      controlRoutes.delete('jobs');
      await server.close().catch(() => undefined);
      heartbeat.stop();
      await jobs.stop();
    },
  };
}

/** the CLI's requests through the control socket: POST /jobs/backup, POST /jobs/restore, GET /jobs/<id> */
async function controlJobs(jobs: JobService, method: string, parts: string[], body: Record<string, unknown>): Promise<unknown> {
  const { catalog } = jobs.app;
  const str = (k: string) => (typeof body[k] === 'string' && body[k] ? (body[k] as string) : undefined);
  try {
    if (method === 'POST' && parts[0] === 'backup') {
      const v = catalog.volume(str('volume') ?? '');
      const out = await jobs.submitBackup({ volumeId: v.id, name: str('name'), description: str('description'), incremental: body.incremental === true, force: body.force === true, snapshotId: str('snapshotId') ?? null, userId: 'admin', skipQuota: true });
      return { job: out.job, backup: catalog.view(out.backup) };
    }
    if (method === 'POST' && parts[0] === 'restore') {
      const b = catalog.backupRecord(str('backup') ?? '');
      const target = str('volume') ? catalog.volume(str('volume')!).id : null;
      const out = await jobs.submitRestore({ backupId: b.id, volumeId: target, name: str('name'), userId: 'admin' });
      return { job: out.job, backup: catalog.view(out.backup), target: out.target };
    }
    if (method === 'GET' && parts[0] && !parts[1]) {
      const job = jobs.store.get(parts[0]);
      if (!job) throw new BadRequestError(`no job ${parts[0]}`);
      return { job, backup: catalog.backups.get(job.backup_id) ? catalog.view(catalog.backups.get(job.backup_id)!) : null, target: job.volume_id ? (catalog.volumes.get(job.volume_id) ?? null) : null };
    }
    if (method === 'GET' && !parts[0]) return jobs.store.list();
  } catch (e) {
    if (e instanceof QuotaExceededError) throw new ConflictError(e.message);
    throw e;
  }
  throw new BadRequestError(`unknown request ${method} /jobs/${parts.join('/')}`);
}
