/**
 * S3 repository driver: objects of an ObjectStore are S3 objects `<prefix><name>` in one
 * bucket of any S3-compatible endpoint (AWS, Ceph radosgw, MinIO, ...).
 *
 * - Requests are retried with exponential backoff and full jitter on throttling (429,
 *   SlowDown, ...), 5xx, timeouts and connection failures (ECONNRESET, ECONNREFUSED, EPIPE,
 *   "socket hang up"); the SDK's own retries are switched off so attempts do not multiply.
 * - A per-store limiter bounds the requests in flight (`concurrency`), and the HTTP agent
 *   keeps that many connections alive.
 * - Every failure reaches the caller as an S3RepositoryError with a one-line message that
 *   names the endpoint and never the credentials (nor the SDK error with its request, which
 *   carries the signature), or as ObjectNotFoundError for get() of a missing object.
 * - put() sends Content-MD5, so the server rejects a body damaged in transit; get() checks
 *   the length it received.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { DURABLE_BATCH, ObjectNotFoundError, type ObjectInfo, type ObjectStore, type WriteBatch, checkObjectName } from './types.js';
import { ACCESS_CODES, type Classified, S3RepositoryError, classify, retryable } from './s3-errors.js';

export { S3RepositoryError } from './s3-errors.js';

export interface S3StoreOptions {
  bucket: string;
  /** key prefix inside the bucket ("a/b" -> keys "a/b/<name>"); default none */
  prefix?: string;
  /** endpoint URL, e.g. http://127.0.0.1:7480; default: AWS S3 (the appliance passes AWS_ENDPOINT_URL[_S3]: gateway/repo-secrets.ts) */
  endpoint?: string;
  /** default us-east-1 (the appliance passes AWS_REGION or AWS_DEFAULT_REGION) */
  region?: string;
  /** default: the SDK's default chain (the appliance passes AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN) */
  accessKeyId?: string;
  secretAccessKey?: string;
  sessionToken?: string;
  /** path-style URLs (http://host/bucket/key); default true when an endpoint is given */
  forcePathStyle?: boolean;
  /** parallel requests per store (default 8) */
  concurrency?: number;
  /** attempts per operation including the first (default 5) */
  maxAttempts?: number;
  /** backoff base and cap in ms (defaults 100 and 5000): delay = random(0, min(cap, base * 2^attempt)) */
  retryBaseDelayMs?: number;
  retryMaxDelayMs?: number;
  /** ms to establish a TCP connection (default 5000) */
  connectTimeoutMs?: number;
  /** ms a request may sit idle on its socket before it is abandoned and retried (default 60000) */
  requestTimeoutMs?: number;
  /** create the bucket on first use if it does not exist (default false) */
  createBucket?: boolean;
  /** called before each retry (for logging); gets no credentials */
  onRetry?: (info: { operation: string; attempt: number; delayMs: number; reason: string }) => void;
}

/** A counting semaphore. */
class Limiter {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(private readonly max: number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= this.max) await new Promise<void>((r) => this.waiting.push(r));
    else this.active++;
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }
}

const PREFIX_RE = /^[a-z0-9._-]*(\/[a-z0-9._-]*)*$/;

function sanitizeEndpoint(endpoint: string): string {
  try {
    const u = new URL(endpoint);
    u.username = '';
    u.password = '';
    u.search = '';
    u.hash = '';
    return u.toString().replace(/\/$/, '');
  } catch {
    throw new S3RepositoryError(`invalid S3 endpoint URL ${JSON.stringify(endpoint.replace(/\/\/[^@/]*@/, '//'))}`, 'InvalidEndpoint');
  }
}

export class S3Store implements ObjectStore {
  readonly location: string;
  readonly bucket: string;
  /** key prefix, "" or ending in "/" */
  readonly prefix: string;
  /** endpoint as shown in messages (no userinfo) */
  readonly endpointLabel: string;
  private readonly client: S3Client;
  private readonly limiter: Limiter;
  private readonly maxAttempts: number;
  private readonly baseDelay: number;
  private readonly maxDelay: number;
  private readonly secrets: string[];
  private readonly region: string;
  private bucketChecked: Promise<void> | null = null;
  private closed = false;

  constructor(private readonly opts: S3StoreOptions) {
    if (!opts.bucket || !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(opts.bucket)) {
      throw new S3RepositoryError(`invalid S3 bucket name ${JSON.stringify(opts.bucket)}`, 'InvalidBucketName');
    }
    this.bucket = opts.bucket;
    const p = (opts.prefix ?? '').replace(/^\/+|\/+$/g, '');
    if (p && (!PREFIX_RE.test(p) || p.split('/').some((s) => s === '' || s === '.' || s === '..'))) {
      throw new S3RepositoryError(`invalid S3 key prefix ${JSON.stringify(opts.prefix)}`, 'InvalidPrefix');
    }
    this.prefix = p ? `${p}/` : '';
    // the SDK warns on every start that future releases need Node 22; blockgate runs on 20
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    // everything else comes in opts: the appliance fills in the AWS_* variables (gateway/repo-secrets.ts)
    const { endpoint, accessKeyId, secretAccessKey, sessionToken } = opts;
    this.endpointLabel = endpoint ? sanitizeEndpoint(endpoint) : 'AWS S3';
    this.location = `s3://${this.bucket}/${this.prefix}` + (endpoint ? ` at ${this.endpointLabel}` : '');
    const region = (this.region = opts.region ?? 'us-east-1');
    if ((accessKeyId === undefined) !== (secretAccessKey === undefined)) {
      throw new S3RepositoryError(`S3 access key and secret key must be given together for ${this.endpointLabel}`, 'IncompleteCredentials');
    }
    this.secrets = [accessKeyId, secretAccessKey, sessionToken].filter((s): s is string => !!s && s.length >= 4);
    const concurrency = Math.max(1, Math.floor(opts.concurrency ?? 8));
    this.limiter = new Limiter(concurrency);
    this.maxAttempts = Math.max(1, Math.floor(opts.maxAttempts ?? 5));
    this.baseDelay = Math.max(1, opts.retryBaseDelayMs ?? 100);
    this.maxDelay = Math.max(this.baseDelay, opts.retryMaxDelayMs ?? 5000);
    const agentOpts = { keepAlive: true, maxSockets: concurrency, maxFreeSockets: concurrency };
    this.client = new S3Client({
      region,
      ...(endpoint ? { endpoint } : {}),
      forcePathStyle: opts.forcePathStyle ?? !!endpoint,
      ...(accessKeyId && secretAccessKey
        ? { credentials: { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) } }
        : {}),
      // radosgw (16.2) does not understand the flexible checksums newer SDKs send by default
      // (a streaming PutObject fails with MissingContentLength); Content-MD5 is sent instead.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 1, // retries are done here, with our own classification
      requestHandler: {
        connectionTimeout: opts.connectTimeoutMs ?? 5000,
        requestTimeout: opts.requestTimeoutMs ?? 60000,
        httpAgent: new http.Agent(agentOpts),
        httpsAgent: new https.Agent(agentOpts),
      },
      logger: { debug() {}, info() {}, warn() {}, error() {} },
    });
  }

  /** Creates the store and checks (or with createBucket, creates) the bucket. */
  static async open(opts: S3StoreOptions): Promise<S3Store> {
    const s = new S3Store(opts);
    try {
      await s.checkBucket();
    } catch (e) {
      await s.close();
      throw e;
    }
    return s;
  }

  private key(name: string): string {
    try {
      return this.prefix + checkObjectName(name);
    } catch (e) {
      throw new S3RepositoryError((e as Error).message, 'InvalidObjectName');
    }
  }

  /** Verifies once that the bucket exists and the credentials work (memoised on success). */
  checkBucket(): Promise<void> {
    if (!this.bucketChecked) {
      this.bucketChecked = this.doCheckBucket().catch((e: unknown) => {
        this.bucketChecked = null;
        throw e;
      });
    }
    return this.bucketChecked;
  }

  private async doCheckBucket(): Promise<void> {
    try {
      await this.attempt('HeadBucket', () => this.client.send(new HeadBucketCommand({ Bucket: this.bucket })), true);
    } catch (e) {
      if (!(e instanceof S3RepositoryError) || e.code !== 'NoSuchBucket' || !this.opts.createBucket) throw e;
      try {
        await this.attempt('CreateBucket', () => this.client.send(new CreateBucketCommand({ Bucket: this.bucket })), true);
      } catch (c) {
        if (!(c instanceof S3RepositoryError) || (c.code !== 'BucketAlreadyOwnedByYou' && c.code !== 'BucketAlreadyExists')) throw c;
      }
    }
  }

  async put(name: string, data: Buffer): Promise<void> {
    const Key = this.key(name);
    await this.ready();
    const md5 = createHash('md5').update(data).digest('base64');
    await this.attempt(`put ${name}`, () =>
      this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: data, ContentLength: data.length, ContentMD5: md5 })),
    );
  }

  /** every put is durable when S3 answers it */
  batch(): WriteBatch {
    return DURABLE_BATCH;
  }

  get(name: string): Promise<Buffer> {
    return this.fetch(name);
  }

  async getRange(name: string, offset: number, length: number): Promise<Buffer> {
    if (length <= 0) return Buffer.alloc(0);
    try {
      return await this.fetch(name, `bytes=${offset}-${offset + length - 1}`);
    } catch (e) {
      // a range past the end of the object: nothing there
      if (e instanceof S3RepositoryError && e.statusCode === 416) return Buffer.alloc(0);
      throw e;
    }
  }

  private async fetch(name: string, Range?: string): Promise<Buffer> {
    const Key = this.key(name);
    await this.ready();
    return this.attempt(`get ${name}`, async () => {
      let out;
      try {
        out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key, Range }));
      } catch (e) {
        const c = classify(e);
        if (c.kind === 'not-found-key' || (c.kind === 'other' && c.status === 404)) throw new ObjectNotFoundError(name, this.location);
        throw e;
      }
      if (!out.Body) throw Object.assign(new Error('empty response body'), { code: 'ECONNRESET' });
      const bytes = await out.Body.transformToByteArray();
      const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      if (out.ContentLength !== undefined && out.ContentLength !== buf.length) {
        // the connection ended early: retry
        throw Object.assign(new Error(`short read (${buf.length} of ${out.ContentLength} bytes)`), { code: 'ECONNRESET' });
      }
      return buf;
    });
  }

  async has(name: string): Promise<boolean> {
    const Key = this.key(name);
    await this.ready();
    return this.attempt(`has ${name}`, async () => {
      try {
        await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key }));
        return true;
      } catch (e) {
        const c = classify(e);
        // HEAD responses have no body: a missing key is a bare 404 ("NotFound")
        if (c.kind === 'not-found-key' || c.status === 404) return false;
        throw e;
      }
    });
  }

  async delete(name: string): Promise<void> {
    const Key = this.key(name);
    await this.ready();
    await this.attempt(`delete ${name}`, () => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key })));
  }

  /** Names under the folder `prefix` ("" for all; "a/b" and "a/b/" both mean the folder a/b). */
  async *list(prefix: string): AsyncIterable<string> {
    for await (const o of this.listInfo(prefix)) yield o.name;
  }

  async *listInfo(prefix: string): AsyncIterable<ObjectInfo> {
    let p = prefix.replace(/^\/+/, '');
    if (p && !p.endsWith('/')) p += '/';
    if (p && (!PREFIX_RE.test(p) || p.split('/').slice(0, -1).some((s) => s === '' || s === '.' || s === '..'))) {
      throw new S3RepositoryError(`invalid list prefix ${JSON.stringify(prefix)}`, 'InvalidPrefix');
    }
    await this.ready();
    const full = this.prefix + p;
    let token: string | undefined;
    do {
      const page = await this.attempt(`list ${prefix || '/'}`, () =>
        this.client.send(
          new ListObjectsV2Command({ Bucket: this.bucket, Prefix: full || undefined, ContinuationToken: token, MaxKeys: 1000 }),
        ),
      );
      for (const o of page.Contents ?? []) {
        if (o.Key && o.Key.startsWith(this.prefix)) yield { name: o.Key.slice(this.prefix.length), size: o.Size ?? 0, mtimeMs: o.LastModified?.getTime() ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
      if (page.IsTruncated && !token) {
        throw new S3RepositoryError(`listing ${this.location} failed: truncated page without a continuation token`, 'BadListing');
      }
    } while (token);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.client.destroy();
  }

  // ---------------------------------------------------------------- internals

  private async ready(): Promise<void> {
    if (this.closed) throw new S3RepositoryError(`${this.location} is closed`, 'Closed');
    await this.checkBucket();
  }

  private scrub(s: string): string {
    let out = s;
    for (const secret of this.secrets) out = out.split(secret).join('***');
    return out.replace(/\s+/g, ' ').slice(0, 300);
  }

  /** One operation: limited concurrency per attempt, retries with backoff, errors translated. */
  private async attempt<T>(operation: string, fn: () => Promise<T>, bucketLevel = false): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.limiter.run(fn);
      } catch (e) {
        if (e instanceof ObjectNotFoundError || e instanceof S3RepositoryError) throw e;
        const c = classify(e);
        if (!retryable(c) || attempt >= this.maxAttempts || this.closed) throw this.translate(e, c, operation, attempt, bucketLevel);
        const delayMs = Math.round(Math.random() * Math.min(this.maxDelay, this.baseDelay * 2 ** (attempt - 1)));
        this.opts.onRetry?.({ operation, attempt, delayMs, reason: c.status ? `${c.code} (HTTP ${c.status})` : c.code });
        await new Promise((r) => setTimeout(r, delayMs));
      }
    }
  }

  private translate(e: unknown, c: Classified, operation: string, attempts: number, bucketLevel: boolean): S3RepositoryError {
    const ep = this.endpointLabel;
    const after = attempts > 1 ? ` (after ${attempts} attempts)` : '';
    switch (c.kind) {
      case 'no-bucket':
        return new S3RepositoryError(`bucket ${this.bucket} does not exist at ${ep}`, 'NoSuchBucket', c.status);
      case 'access': {
        // HEAD responses carry no body, so the SDK only knows "403" ("Unknown")
        const code = ACCESS_CODES.has(c.code) && c.code !== 'Forbidden' ? c.code : 'AccessDenied';
        return new S3RepositoryError(`access denied: check the access key and secret for ${ep} (${code})`, code, c.status);
      }
      case 'network':
        return new S3RepositoryError(`cannot reach ${ep}: ${c.code}${after}`, c.code, undefined, true);
      case 'throttle':
        return new S3RepositoryError(`${ep} keeps throttling requests (${c.code}) while trying to ${operation}${after}`, c.code, c.status, true);
      case 'transient':
        return new S3RepositoryError(`${ep} failed to ${operation}: ${c.code}${c.status ? ` (HTTP ${c.status})` : ''}${after}`, c.code, c.status, true);
      default: {
        if (bucketLevel && c.status === 404) {
          return new S3RepositoryError(`bucket ${this.bucket} does not exist at ${ep}`, 'NoSuchBucket', 404);
        }
        if (c.status === 301 || c.code === 'PermanentRedirect' || c.code === 'AuthorizationHeaderMalformed') {
          return new S3RepositoryError(`bucket ${this.bucket} is not reachable with region ${JSON.stringify(this.region)} at ${ep} (${c.code}); check the region`, c.code, c.status);
        }
        if (c.code === 'RequestTimeTooSkewed') {
          return new S3RepositoryError(`${ep} refuses requests because this machine's clock is off; fix the clock (NTP)`, c.code, c.status);
        }
        const msg = e instanceof Error && e.message && e.message !== c.code ? `: ${this.scrub(e.message)}` : '';
        return new S3RepositoryError(`S3 request to ${operation} failed at ${ep}: ${c.code}${c.status ? ` (HTTP ${c.status})` : ''}${msg}`, c.code, c.status);
      }
    }
  }
}
