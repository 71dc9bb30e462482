/**
 * The S3 repository driver against a real radosgw (tools/ceph/ceph-up.sh, or the endpoint in
 * S3_ENDPOINT/S3_ACCESS_KEY/S3_SECRET_KEY): the ObjectStore contract, clear errors for a
 * missing bucket, bad credentials and an unreachable endpoint, and retries through a proxy
 * that breaks connections.
 */
import ava, { type ExecutionContext } from 'ava';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { S3RepositoryError, S3Store, type S3StoreOptions } from '../drivers/store/s3.js';
import { ObjectNotFoundError } from '../drivers/store/types.js';
import { s3StoreOptions } from '../gateway/repo-secrets.js';
import { cephTest, getS3, rawS3Client, type S3Endpoint } from './helpers/ceph.js';
import { objectStoreContract } from './helpers/store-contract.js';
import { TcpProxy } from './helpers/tcp-proxy.js';

const test = cephTest;
const BUCKET = `blockgate-test-${randomBytes(3).toString('hex')}`;

let s3: S3Endpoint;
let raw: S3Client;

ava.before(async () => {
  s3 = await getS3();
  raw = rawS3Client(s3);
  // creates the test bucket
  const s = await S3Store.open({ ...base(), bucket: BUCKET, createBucket: true });
  await s.close();
});

ava.after.always(async () => {
  raw?.destroy();
});

function base(): Omit<S3StoreOptions, 'bucket'> {
  return { endpoint: s3.endpoint, region: s3.region, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey };
}

/** removes every key under a raw prefix with the SDK directly */
async function wipe(prefix: string): Promise<void> {
  let token: string | undefined;
  do {
    const page = await raw.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix, ContinuationToken: token }));
    const keys = (page.Contents ?? []).map((o) => o.Key!);
    for (let i = 0; i < keys.length; i += 32) {
      await Promise.all(keys.slice(i, i + 32).map((Key) => raw.send(new DeleteObjectCommand({ Bucket: BUCKET, Key }))));
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
}

const uniquePrefix = () => `contract-${randomBytes(5).toString('hex')}`;

objectStoreContract(
  test,
  's3 (radosgw)',
  async () => {
    const prefix = uniquePrefix();
    const store = new S3Store({ ...base(), bucket: BUCKET, prefix, concurrency: 8 });
    return { store, cleanup: () => wipe(`${prefix}/`), secrets: [s3.secretAccessKey, s3.accessKeyId] };
  },
  { manyKeys: 1100 },
);

function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject).listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

function assertClean(t: ExecutionContext, e: Error | undefined, secrets: string[]): void {
  t.truthy(e);
  if (!e) return;
  t.false(e.message.includes('\n'), 'one-line message');
  const everything = `${e.message} ${String(e)} ${JSON.stringify(e)} ${JSON.stringify(Object.entries(e))}`;
  for (const s of secrets) t.false(everything.includes(s), 'no credentials in the error');
}

test('objects land under the key prefix; without a prefix at the bucket root', async (t) => {
  const prefix = uniquePrefix();
  const a = new S3Store({ ...base(), bucket: BUCKET, prefix: `/${prefix}/` });
  t.teardown(() => a.close());
  t.is(a.location, `s3://${BUCKET}/${prefix}/ at ${s3.endpoint.replace(/\/$/, '')}`);
  await a.put('chunks/aa/1', Buffer.from('one'));
  const got = await raw.send(new GetObjectCommand({ Bucket: BUCKET, Key: `${prefix}/chunks/aa/1` }));
  t.is(await got.Body!.transformToString(), 'one');

  const rootName = `${uniquePrefix()}/x`;
  const b = new S3Store({ ...base(), bucket: BUCKET });
  t.teardown(() => b.close());
  await b.put(rootName, Buffer.from('two'));
  const got2 = await raw.send(new GetObjectCommand({ Bucket: BUCKET, Key: rootName }));
  t.is(await got2.Body!.transformToString(), 'two');
  t.true((await collect(b.list(rootName.split('/')[0]!))).includes(rootName));
  t.false((await collect(a.list(''))).includes(rootName), 'a prefixed store sees only its prefix');
  await b.delete(rootName);
  await wipe(`${prefix}/`);
});

async function collect(it: AsyncIterable<string>): Promise<string[]> {
  const out: string[] = [];
  for await (const x of it) out.push(x);
  return out;
}

test('credentials can come from the AWS_* environment variables', async (t) => {
  // the appliance reads them (gateway/repo-secrets.ts) and hands them to the store
  const env = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey };
  const store = new S3Store(s3StoreOptions({ bucket: BUCKET, endpoint: s3.endpoint, region: s3.region, prefix: uniquePrefix() }, env));
  t.teardown(() => store.close());
  await store.put('env/creds', Buffer.from('ok'));
  t.is((await store.get('env/creds')).toString(), 'ok');
  await store.delete('env/creds');
});

test('a missing bucket is reported as such', async (t) => {
  const bucket = `blockgate-missing-${randomBytes(4).toString('hex')}`;
  const e = await t.throwsAsync(S3Store.open({ ...base(), bucket }), { instanceOf: S3RepositoryError });
  t.is(e?.message, `bucket ${bucket} does not exist at ${s3.endpoint.replace(/\/$/, '')}`);
  t.is(e?.code, 'NoSuchBucket');
  assertClean(t, e, [s3.secretAccessKey, s3.accessKeyId]);
  const store = new S3Store({ ...base(), bucket });
  t.teardown(() => store.close());
  for (const op of [() => store.get('x'), () => store.put('x', Buffer.from('x')), () => store.has('x'), () => collect(store.list(''))]) {
    const e2 = await t.throwsAsync(op(), { instanceOf: S3RepositoryError });
    t.regex(e2?.message ?? '', /^bucket blockgate-missing-[0-9a-f]+ does not exist at http:\/\/127\.0\.0\.1:\d+$/);
  }
});

test('wrong credentials give "access denied" without showing them', async (t) => {
  const wrongSecret = `wrong-secret-${randomBytes(8).toString('hex')}`;
  const wrongKey = `WRONGKEY${randomBytes(6).toString('hex').toUpperCase()}`;
  for (const creds of [
    { accessKeyId: s3.accessKeyId, secretAccessKey: wrongSecret },
    { accessKeyId: wrongKey, secretAccessKey: s3.secretAccessKey },
  ]) {
    const store = new S3Store({ ...base(), ...creds, bucket: BUCKET });
    t.teardown(() => store.close());
    t.false(store.location.includes(creds.secretAccessKey) || store.location.includes(creds.accessKeyId));
    for (const op of [() => S3Store.open({ ...base(), ...creds, bucket: BUCKET }), () => store.get('x'), () => store.put('x', Buffer.from('x'))]) {
      const e = await t.throwsAsync(op(), { instanceOf: S3RepositoryError });
      t.true(e?.message.startsWith(`access denied: check the access key and secret for ${s3.endpoint.replace(/\/$/, '')}`), e?.message);
      assertClean(t, e, [wrongSecret, wrongKey, s3.secretAccessKey, s3.accessKeyId]);
    }
  }
});

test('an unreachable endpoint says so, after retrying', async (t) => {
  const port = await closedPort();
  const retries: string[] = [];
  const store = new S3Store({
    ...base(),
    endpoint: `http://127.0.0.1:${port}`,
    bucket: BUCKET,
    maxAttempts: 3,
    retryBaseDelayMs: 5,
    onRetry: (i) => retries.push(i.reason),
  });
  t.teardown(() => store.close());
  const e = await t.throwsAsync(store.get('x'), { instanceOf: S3RepositoryError });
  t.is(e?.message, `cannot reach http://127.0.0.1:${port}: ECONNREFUSED (after 3 attempts)`);
  t.deepEqual(retries, ['ECONNREFUSED', 'ECONNREFUSED']);
  assertClean(t, e, [s3.secretAccessKey, s3.accessKeyId]);
  const e2 = await t.throwsAsync(
    new S3Store({ ...base(), endpoint: 'http://no-such-host.invalid:7480', bucket: BUCKET, maxAttempts: 2 }).has('x'),
    { instanceOf: S3RepositoryError },
  );
  t.regex(e2?.message ?? '', /^cannot reach http:\/\/no-such-host\.invalid:7480: (ENOTFOUND|EAI_AGAIN)/);
});

test('an endpoint URL with user:password shows neither', async (t) => {
  const port = await closedPort();
  const store = new S3Store({ ...base(), endpoint: `http://user:hunter2pass@127.0.0.1:${port}`, bucket: BUCKET, maxAttempts: 1 });
  t.teardown(() => store.close());
  t.false(store.location.includes('hunter2pass'));
  const e = await t.throwsAsync(store.get('x'), { instanceOf: S3RepositoryError });
  assertClean(t, e, ['hunter2pass']);
});

/** resets kept-alive connections and gives the HTTP agent a moment to notice */
async function dropConnections(proxy: TcpProxy): Promise<void> {
  proxy.dropAll();
  await new Promise((r) => setTimeout(r, 100));
}

async function proxied(t: ExecutionContext, opts: Partial<S3StoreOptions> = {}) {
  const proxy = await TcpProxy.forUrl(s3.endpoint);
  const retries: string[] = [];
  const prefix = uniquePrefix();
  const store = new S3Store({
    ...base(),
    endpoint: proxy.url,
    bucket: BUCKET,
    prefix,
    retryBaseDelayMs: 10,
    retryMaxDelayMs: 100,
    onRetry: (i) => retries.push(`${i.operation}: ${i.reason}`),
    ...opts,
  });
  t.teardown(async () => {
    await store.close();
    await proxy.close();
    await wipe(`${prefix}/`);
  });
  await store.checkBucket();
  return { proxy, store, retries };
}

test('operations succeed after dropped connections (reset on connect)', async (t) => {
  const { proxy, store, retries } = await proxied(t);
  const data = randomBytes(300_000);
  await dropConnections(proxy); // no kept-alive connection: every request needs a new one
  proxy.failNext(3, 'reset-on-connect');
  await store.put('r/1', data);
  t.is(proxy.stats.faults, 3);
  t.true(retries.length >= 3, 'one retry per dropped connection (plus any for a kept-alive socket the proxy reset)');
  t.true(retries.every((r) => r === 'put r/1: ECONNRESET'), retries.join('; '));
  await dropConnections(proxy);
  proxy.failNext(2, 'reset-on-connect');
  t.true((await store.get('r/1')).equals(data));
  t.is(proxy.stats.faults, 5);
});

test('operations succeed after connections reset mid-request and mid-response', async (t) => {
  const { proxy, store, retries } = await proxied(t);
  const data = randomBytes(2 << 20);
  proxy.failNext(2, 'reset-on-request');
  await store.put('r/big', data);
  t.is(proxy.pendingFaults, 0);
  proxy.failNext(2, 'cut-response', 5000); // headers and part of the body, then a reset
  t.true((await store.get('r/big')).equals(data), 'a cut response body is fetched again');
  proxy.failNext(1, 'reset-on-request');
  t.true(await store.has('r/big'));
  proxy.failNext(1, 'reset-on-request');
  t.deepEqual(await collect(store.list('r')), ['r/big']);
  proxy.failNext(1, 'reset-on-request');
  await store.delete('r/big');
  t.false(await store.has('r/big'));
  t.true(retries.length >= 7, retries.join('; '));
  t.true(retries.some((r) => r.startsWith('get r/big')));
});

test('throttling (503 SlowDown) is retried', async (t) => {
  const { proxy, store, retries } = await proxied(t);
  proxy.failNext(3, 'respond-503');
  await store.put('slow/1', Buffer.from('patience'));
  t.deepEqual(
    retries.filter((r) => r.includes('SlowDown')),
    ['put slow/1: SlowDown (HTTP 503)', 'put slow/1: SlowDown (HTTP 503)', 'put slow/1: SlowDown (HTTP 503)'],
  );
  t.is((await store.get('slow/1')).toString(), 'patience');
  proxy.failNext(10, 'respond-503');
  const e = await t.throwsAsync(store.get('slow/1'), { instanceOf: S3RepositoryError });
  t.regex(e?.message ?? '', /keeps throttling requests \(SlowDown\) while trying to get slow\/1 \(after 5 attempts\)$/);
  t.true(e?.retryable);
});

test('more failures than attempts: a clear error, and the store still works afterwards', async (t) => {
  const { proxy, store } = await proxied(t, { maxAttempts: 3 });
  await dropConnections(proxy);
  proxy.failNext(5, 'reset-on-connect');
  const e = await t.throwsAsync(store.put('z/1', Buffer.from('x')), { instanceOf: S3RepositoryError });
  t.regex(e?.message ?? '', /^cannot reach http:\/\/127\.0\.0\.1:\d+: ECONNRESET \(after 3 attempts\)$/);
  proxy.failNext(0, 'reset-on-connect');
  await store.put('z/1', Buffer.from('x'));
  t.is((await store.get('z/1')).toString(), 'x');
  await t.throwsAsync(store.get('z/2'), { instanceOf: ObjectNotFoundError });
});

test('the concurrency limit bounds connections', async (t) => {
  const { proxy, store } = await proxied(t, { concurrency: 3 });
  await dropConnections(proxy);
  proxy.stats.maxOpen = 0;
  await Promise.all(Array.from({ length: 30 }, (_, i) => store.put(`c/${i}`, randomBytes(50_000))));
  const got = await Promise.all(Array.from({ length: 30 }, (_, i) => store.get(`c/${i}`)));
  t.is(got.length, 30);
  t.true(proxy.stats.maxOpen <= 3, `at most 3 connections at once, saw ${proxy.stats.maxOpen}`);
  t.true(proxy.stats.maxOpen >= 2, 'requests do run in parallel');
});
