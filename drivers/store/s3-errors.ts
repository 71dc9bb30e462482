/**
 * S3 failures: which are worth retrying (throttling, 5xx, timeouts, connection resets) and
 * which are the user's to fix (no bucket, wrong keys), each as an S3RepositoryError with a
 * message fit for the user: no stack, no secrets.
 */

/** A repository failure with a message fit for the user (no stack needed, no secrets). */
export class S3RepositoryError extends Error {
  constructor(
    message: string,
    /** S3 error code ("NoSuchBucket", "AccessDenied") or network code ("ECONNREFUSED") */
    readonly code: string,
    readonly statusCode?: number,
    readonly retryable = false,
  ) {
    super(message);
    this.name = 'S3RepositoryError';
  }
}

const THROTTLE_CODES = new Set([
  'SlowDown', 'Throttling', 'ThrottlingException', 'ThrottledException', 'RequestThrottled',
  'RequestThrottledException', 'TooManyRequests', 'TooManyRequestsException', 'RequestLimitExceeded',
  'ProvisionedThroughputExceededException', 'BandwidthLimitExceeded', 'EC2ThrottledException',
]);
const TRANSIENT_CODES = new Set([
  'RequestTimeout', 'RequestTimeoutException', 'TimeoutError', 'InternalError', 'ServiceUnavailable',
  'PriorRequestNotComplete', 'OperationAborted',
]);
const NETWORK_CODES = new Set([
  'ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED', 'EHOSTUNREACH', 'ENETUNREACH',
  'ENETDOWN', 'EAI_AGAIN', 'ENOTFOUND', 'ERR_STREAM_PREMATURE_CLOSE', 'UND_ERR_SOCKET',
]);
/** network failures not worth retrying (a misspelled host will not start resolving) */
const PERMANENT_NETWORK_CODES = new Set(['ENOTFOUND']);
export const ACCESS_CODES = new Set([
  'AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'InvalidToken', 'ExpiredToken',
  'TokenRefreshRequired', 'Forbidden', 'AllAccessDisabled', 'InvalidSecurity',
]);

export interface Classified {
  kind: 'not-found-key' | 'no-bucket' | 'access' | 'network' | 'throttle' | 'transient' | 'other';
  code: string;
  status?: number;
}

function errCode(e: unknown): string | undefined {
  if (!e || typeof e !== 'object') return undefined;
  const o = e as { code?: unknown; errno?: unknown; errors?: unknown; cause?: unknown; Code?: unknown };
  if (typeof o.code === 'string' && o.code) return o.code;
  if (typeof o.Code === 'string' && o.Code) return o.Code;
  if (Array.isArray(o.errors)) {
    for (const x of o.errors) {
      const c = errCode(x);
      if (c) return c;
    }
  }
  if (o.cause) return errCode(o.cause);
  return undefined;
}

export function classify(e: unknown): Classified {
  const any = e as { name?: string; message?: string; $metadata?: { httpStatusCode?: number }; $fault?: string } | undefined;
  const status = any?.$metadata?.httpStatusCode;
  const name = typeof any?.name === 'string' ? any.name : '';
  const code = errCode(e) ?? name ?? 'Error';
  const msg = typeof any?.message === 'string' ? any.message : '';
  if (code === 'NoSuchBucket' || name === 'NoSuchBucket') return { kind: 'no-bucket', code: 'NoSuchBucket', status };
  if (code === 'NoSuchKey' || name === 'NoSuchKey') return { kind: 'not-found-key', code: 'NoSuchKey', status };
  if (ACCESS_CODES.has(code) || ACCESS_CODES.has(name)) return { kind: 'access', code: ACCESS_CODES.has(code) ? code : name, status };
  if (THROTTLE_CODES.has(code) || THROTTLE_CODES.has(name) || status === 429) return { kind: 'throttle', code, status };
  if (status !== undefined && status >= 500) return { kind: 'transient', code, status };
  // (the SDK names connection errors "TimeoutError"; their code tells what happened)
  if (status === undefined && NETWORK_CODES.has(code)) return { kind: 'network', code };
  if (TRANSIENT_CODES.has(code) || TRANSIENT_CODES.has(name)) return { kind: 'transient', code, status };
  if (status === undefined) {
    if (/socket hang up/i.test(msg)) return { kind: 'network', code: 'ECONNRESET' };
    if (/ECONN|EPIPE|ETIMEDOUT|premature close|aborted/i.test(msg)) {
      const m = /E[A-Z_]{3,}/.exec(msg);
      return { kind: 'network', code: m ? m[0] : 'ECONNRESET' };
    }
  }
  if (status === 403) return { kind: 'access', code, status };
  return { kind: 'other', code, status };
}

export function retryable(c: Classified): boolean {
  if (c.kind === 'throttle' || c.kind === 'transient') return true;
  if (c.kind === 'network') return !PERMANENT_NETWORK_CODES.has(c.code);
  return false;
}
