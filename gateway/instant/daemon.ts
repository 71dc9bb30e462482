/**
 * Instant restore inside the daemon: the session manager as an export source, the sessions
 * of a previous run resumed before the daemon listens, the control socket for the CLI, and
 * a clean stop (copies stopped, owned blocks committed, targets closed; the sessions
 * resume at the next start).
 */
import { type Daemon, nbdUris } from '../daemon.js';
import { instantEvents, instantProgress } from '../events/emitters.js';
import { parseSize } from '../size.js';
import { BadRequestError, ControlServer, controlSocketPath } from './control.js';
import { InstantRestores, type StartRequest } from './sessions.js';

/** the session manager of each daemon (the REST API's instant restores use it) */
export const instantOf = new WeakMap<Daemon, InstantRestores>();

/** more control-socket routes by first path segment (the job module's /jobs): method, the rest of the path, body */
export const controlRoutes = new Map<string, (method: string, parts: string[], body: Record<string, unknown>) => Promise<unknown>>();

export async function installInstantRestore(d: Daemon): Promise<InstantRestores> {
  const log = instantEvents(d.app.events, (event: string, fields: Record<string, unknown>) => {
    if (event.startsWith('hydrate-copy') || event === 'hydrate-sync-failed') d.log.warn({ event, ...fields }, event);
    else d.log.info({ event, ...fields }, event);
  });
  const uris = (name: string) => nbdUris(d.opts.host, d.port || d.opts.port, d.opts.socket, name);
  const mgr = new InstantRestores(d.app, d.chunks, uris, log);
  instantOf.set(d, mgr);
  d.registry.addSource(mgr);
  const control = await ControlServer.listen(d.app.config.dataDir, (method, parts, body) => handle(mgr, d, method, parts, body));
  if (!control) {
    d.log.warn({ event: 'instant-restore-disabled', socket: controlSocketPath(d.app.config.dataDir) }, 'another blockgate daemon runs for this data directory: it owns the instant-restore sessions');
    return mgr;
  }
  await mgr.resumeAll();
  const stopProgress = instantProgress(d.app.events, () => mgr.views());
  d.onStop(async () => {
    stopProgress();
    await control.close();
    await mgr.stopAll();
  });
  return mgr;
}

async function handle(mgr: InstantRestores, d: Daemon, method: string, parts: string[], body: Record<string, unknown>): Promise<unknown> {
  // the NBD listener is up before any answer carries its port
  for (let i = 0; i < 500 && !d.port; i++) await new Promise((r) => setTimeout(r, 10));
  const [root, ref, action] = parts;
  if (root === 'ping' && method === 'GET') return { pid: process.pid, dataDir: d.app.config.dataDir, port: d.port };
  const extra = root ? controlRoutes.get(root) : undefined;
  if (extra) return extra(method, parts.slice(1), body);
  if (root !== 'restores') throw new BadRequestError(`unknown route /${parts.join('/')}`);
  if (method === 'GET' && !ref) return mgr.views();
  if (method === 'GET' && ref && !action) return mgr.view(ref);
  if (method === 'POST' && !ref) return mgr.start(startRequest(body));
  if (method === 'POST' && ref && action === 'cancel') return mgr.cancel(ref);
  if (method === 'POST' && ref && action === 'detach') return mgr.detach(ref);
  if (method === 'POST' && ref && action === 'throttle') return mgr.throttle(ref, { rate: optRate(body.rate), concurrency: optInt(body.concurrency, 'concurrency') });
  throw new BadRequestError(`unknown request ${method} /${parts.join('/')}`);
}

function optString(v: unknown, what: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string' || !v) throw new BadRequestError(`${what} must be a non-empty string`);
  return v;
}

function optInt(v: unknown, what: string): number | undefined {
  if (v === undefined || v === null) return undefined;
  const n = typeof v === 'string' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 256) throw new BadRequestError(`${what} must be an integer from 1 to 256`);
  return n;
}

/** bytes/s: a number, or a size such as "50M"; 0 = unlimited */
function optRate(v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'number' && Number.isFinite(v) && v >= 0) return v;
  if (typeof v === 'string') {
    try {
      return parseSize(v);
    } catch (e) {
      throw new BadRequestError(`rate: ${(e as Error).message}`);
    }
  }
  throw new BadRequestError('rate must be bytes per second (0 = unlimited)');
}

function startRequest(body: Record<string, unknown>): StartRequest {
  const backup = optString(body.backup, 'backup');
  if (!backup) throw new BadRequestError('backup is required');
  return {
    backup,
    volume: optString(body.volume, 'volume'),
    name: optString(body.name, 'name'),
    detachOnComplete: body.detachOnComplete === true,
    concurrency: optInt(body.concurrency, 'concurrency'),
    rate: optRate(body.rate),
  };
}
