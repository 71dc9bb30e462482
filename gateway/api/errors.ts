/**
 * Errors in Cinder's shape: `{"<faultName>": {"message": "...", "code": N}}` with Cinder's
 * fault names per status (cinder/api/openstack/wsgi.py), which cinderclient reads
 * (`body[first_key].message`). Engine errors map to their Cinder status here, in one place.
 */
import { ConflictError, NotFoundError } from '../../catalog/catalog.js';
import { QuotaExceededError } from '../../catalog/quotas.js';
import { RecordError } from '../engine/records-io.js';
import { InvalidRequestError } from '../jobs/service.js';
import { QueueFullError } from '../jobs/queue.js';
import { SnapshotUnsupportedError } from '../jobs/snapshots.js';
import { InvalidNameError } from '../names.js';

const FAULT_NAMES: Record<number, string> = {
  400: 'badRequest',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'itemNotFound',
  405: 'badMethod',
  409: 'conflictingRequest',
  413: 'overLimit',
  415: 'badMediaType',
  429: 'overLimit',
  501: 'notImplemented',
  503: 'serviceUnavailable',
};

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly retryAfter?: number,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export const badRequest = (m: string) => new ApiError(400, m);
export const notFound = (m: string) => new ApiError(404, m);
export const forbidden = (m = 'Policy does not allow this operation to be performed.') => new ApiError(403, m);
export const conflict = (m: string) => new ApiError(409, m);

export function faultBody(status: number, message: string, retryAfter?: number): Record<string, Record<string, unknown>> {
  const name = FAULT_NAMES[status] ?? 'computeFault';
  return { [name]: { message, code: status, ...(status === 413 || status === 429 ? { retryAfter: String(retryAfter ?? 0) } : {}) } };
}

/** the status and message for anything a handler threw */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  const err = e as Error & { statusCode?: number; code?: string; validation?: unknown };
  if (e instanceof NotFoundError) return new ApiError(404, cinderNotFound(err.message));
  if (e instanceof QuotaExceededError) return new ApiError(413, err.message, 0);
  if (e instanceof QueueFullError) return new ApiError(413, err.message, 5);
  if (e instanceof InvalidRequestError || e instanceof InvalidNameError || e instanceof RecordError || e instanceof SnapshotUnsupportedError) return new ApiError(400, err.message);
  if (e instanceof ConflictError) return new ApiError(400, `Invalid input received: ${err.message}`);
  // fastify's own: content type, JSON syntax, body size
  if (typeof err?.code === 'string' && err.code.startsWith('FST_ERR_CTP')) {
    if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new ApiError(415, 'Unsupported Content-Type: send application/json');
    if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new ApiError(413, 'Request body too large', 0);
    return new ApiError(400, `Malformed request body: ${err.message}`);
  }
  if (typeof err?.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) return new ApiError(err.statusCode, err.message);
  return new ApiError(500, `The server has either erred or is incapable of performing the requested operation: ${err?.message ?? String(e)}`);
}

/** `volume "x" not found` → Cinder's `Volume x could not be found.` */
function cinderNotFound(message: string): string {
  const m = /^(\w[\w -]*) "(.*)" not found$/.exec(message);
  if (!m) return message;
  const what = m[1]!.charAt(0).toUpperCase() + m[1]!.slice(1);
  return `${what} ${m[2]} could not be found.`;
}

interface AjvError {
  keyword: string;
  instancePath: string;
  params: Record<string, unknown>;
  message?: string;
  data?: unknown;
}

/** a JSON-schema failure as Cinder's validator words it */
export function validationMessage(part: string, errors: AjvError[]): string {
  const e = errors[0];
  if (!e) return 'Invalid input received.';
  const field = e.instancePath.split('/').filter(Boolean).at(-1) ?? part;
  switch (e.keyword) {
    case 'additionalProperties':
      return `Invalid input for field/attribute ${field}. Value: ${short(e.data)}. Additional properties are not allowed ('${String(e.params.additionalProperty)}' was unexpected)`;
    case 'required':
      return `Invalid input for field/attribute ${field}. Value: ${short(e.data)}. '${String(e.params.missingProperty)}' is a required property`;
    case 'type':
      return `Invalid input for field/attribute ${field}. Value: ${short(e.data)}. ${short(e.data)} is not of type '${String(e.params.type)}'`;
    default:
      return `Invalid input for field/attribute ${field}. Value: ${short(e.data)}. ${e.message ?? 'is not valid'}`;
  }
}

function short(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}
