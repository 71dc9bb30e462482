/**
 * The Cinder v3 API of the appliance (fastify): version discovery at `/` and `/v3/`, every
 * resource route under both `/v3/...` and `/v3/{project_id}/...`, microversions 3.0-3.70,
 * JSON-schema validation of every body and query (no coercion, no extra keys), errors in
 * Cinder's shape. Served by `blockgate serve` beside NBD (default 127.0.0.1:8776, TLS with
 * --api-tls-cert/--api-tls-key). noauth is refused off loopback; so are tokens without TLS.
 */
import fs from 'node:fs';
import { randomUUID } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import type { Appliance } from '../appliance.js';
import { isLoopbackHost } from '../daemon.js';
import type { InstantRestores } from '../instant/sessions.js';
import type { JobService } from '../jobs/service.js';
import { type AuthConfig, type Identity, identify } from './auth.js';
import { ApiError, faultBody, toApiError, validationMessage } from './errors.js';
import { type Microversion, parseMicroversion, versionString, versionsDoc } from './microversion.js';
import { backupRoutes } from './routes-backups.js';
import { quotaRoutes, serviceRoutes } from './routes-admin.js';
import { snapshotRoutes } from './routes-snapshots.js';
import { volumeRoutes } from './routes-volumes.js';
import type { Heartbeat } from './heartbeat.js';
import type { LinkBase } from './views.js';

export interface ApiOptions {
  host: string;
  port: number;
  tls?: { cert: string; key: string };
  auth: AuthConfig;
}

/** what the route modules share */
export interface ApiContext {
  app: Appliance;
  jobs: JobService;
  heartbeat: Heartbeat;
  /** the instant-restore sessions of the daemon, when it has them */
  instant: () => InstantRestores | undefined;
  /** the service host name (service list, volume host attribute) */
  host: string;
  /** an unexpected (500) error, for the daemon's log */
  onError?: (e: Error) => void;
}

export interface RequestContext {
  id: Identity;
  v: Microversion;
  links: LinkBase;
}

declare module 'fastify' {
  interface FastifyRequest {
    bg: RequestContext;
  }
}

/** noauth off loopback, or tokens in clear off loopback: refused at start */
export class InsecureApiError extends Error {}

export async function checkApiListen(o: ApiOptions): Promise<void> {
  if (await isLoopbackHost(o.host)) return;
  if (o.auth.mode === 'noauth') {
    throw new InsecureApiError(`refusing to serve the API on ${JSON.stringify(o.host || '*')} with auth.mode noauth: anyone who reaches it could act as any project. Listen on 127.0.0.1, or set auth.mode "tokens" in blockgate.json (blockgate token add) with --api-tls-cert/--api-tls-key.`);
  }
  if (!o.tls) throw new InsecureApiError(`refusing to serve the API on ${JSON.stringify(o.host || '*')} without TLS: tokens would cross the network in clear. Give --api-tls-cert and --api-tls-key.`);
}

export function buildApi(ctx: ApiContext, o: ApiOptions): FastifyInstance {
  const server = Fastify({
    logger: false,
    bodyLimit: 1024 * 1024,
    ...(o.tls ? { https: { cert: fs.readFileSync(o.tls.cert), key: fs.readFileSync(o.tls.key) } } : {}),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false, verbose: true } },
    routerOptions: { ignoreTrailingSlash: true },
  } as Parameters<typeof Fastify>[0]) as unknown as FastifyInstance;

  // an empty JSON body is no body (DELETE, GET with a content type); anything else must parse
  server.removeContentTypeParser('application/json');
  server.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    if (body === '') return done(null, undefined);
    try {
      done(null, JSON.parse(body as string));
    } catch (e) {
      done(new ApiError(400, `Malformed request body: ${(e as Error).message}`), undefined);
    }
  });

  server.addHook('onRequest', async (req, reply) => {
    reply.header('x-openstack-request-id', `req-${randomUUID()}`);
    const v = parseMicroversion(req.headers['openstack-api-version']);
    reply.header('OpenStack-API-Version', `volume ${versionString(v)}`);
    reply.header('Vary', 'OpenStack-API-Version');
    req.bg = { v, id: { user: '', project: '', admin: false }, links: { origin: origin(req, !!o.tls), project: '' } };
  });

  server.setErrorHandler((err, _req, reply) => {
    const e = err as Error & { validation?: unknown[]; validationContext?: string };
    const api = e.validation ? new ApiError(400, validationMessage(e.validationContext ?? 'body', e.validation as never)) : toApiError(err);
    if (api.status >= 500) ctx.onError?.(err as Error);
    void reply.code(api.status).type('application/json').send(faultBody(api.status, api.message, api.retryAfter));
  });
  server.setNotFoundHandler((_req, reply) => {
    void reply.code(404).type('application/json').send(faultBody(404, 'The resource could not be found.'));
  });

  const discovery = (req: FastifyRequest) => versionsDoc(origin(req, !!o.tls));
  server.get('/', async (req, reply) => reply.code(300).send(discovery(req)));
  server.get('/v3', async (req) => discovery(req));

  for (const prefix of ['/v3', '/v3/:project_id']) {
    void server.register(
      async (r) => {
        r.addHook('preValidation', async (req) => {
          const pathProject = (req.params as { project_id?: string }).project_id;
          const id = identify(o.auth, req.headers, pathProject);
          req.bg.id = id;
          req.bg.links.project = id.project;
        });
        volumeRoutes(r, ctx);
        backupRoutes(r, ctx);
        snapshotRoutes(r, ctx);
        quotaRoutes(r, ctx);
        serviceRoutes(r, ctx);
      },
      { prefix },
    );
  }
  return server;
}

function origin(req: FastifyRequest, tls: boolean): string {
  const host = req.headers.host ?? '127.0.0.1';
  return `${tls ? 'https' : 'http'}://${host}`;
}

