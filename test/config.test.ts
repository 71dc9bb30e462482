/**
 * Configuration is read and checked in one place (gateway/config.ts): every key of
 * blockgate.json and every environment variable gets a clear error for a bad value, naming
 * where it came from; good values and the defaults come through typed.
 */
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadConfig } from '../gateway/config.js';
import { cli } from './helpers/core.js';

function dataDir(cfg?: unknown): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'bg-config-'));
  if (cfg !== undefined) fs.writeFileSync(path.join(d, 'blockgate.json'), typeof cfg === 'string' ? cfg : JSON.stringify(cfg));
  return d;
}

function withEnv<T>(env: Record<string, string>, f: () => T): T {
  const old: Record<string, string | undefined> = {};
  for (const k of Object.keys(env)) {
    old[k] = process.env[k];
    process.env[k] = env[k];
  }
  try {
    return f();
  } finally {
    for (const k of Object.keys(env)) {
      if (old[k] === undefined) delete process.env[k];
      else process.env[k] = old[k];
    }
  }
}

test('defaults: typed, with the instant section, log level and no ceph user', (t) => {
  const c = loadConfig(dataDir());
  t.is(c.cacheBytes, 128 * 1024 * 1024);
  t.is(c.logLevel, 'info');
  t.deepEqual(c.instant, { concurrency: 6, rate: 0, syncIntervalMs: 1000, syncBlocks: 256 });
  t.is(c.cephUser, undefined);
});

test('good values from the file and the environment come through, sizes parsed', (t) => {
  const d = dataDir({ cacheBytes: '256M', pipelineDepth: 4, instant: { rate: '10M', syncBlocks: 64 }, logLevel: 'warn' });
  const c = withEnv({ BLOCKGATE_NBD_PORT: '10999', BLOCKGATE_CEPH_USER: 'backup' }, () => loadConfig(d));
  t.is(c.cacheBytes, 256 * 1024 * 1024);
  t.is(c.pipelineDepth, 4);
  t.deepEqual(c.instant, { concurrency: 4, rate: 10 * 1024 * 1024, syncIntervalMs: 1000, syncBlocks: 64 });
  t.is(c.logLevel, 'warn');
  t.is(c.nbd.port, 10999);
  t.is(c.cephUser, 'backup');
  t.is(withEnv({ BLOCKGATE_CACHE_BYTES: '1G' }, () => loadConfig(d)).cacheBytes, 1024 ** 3);
  t.is(withEnv({ BLOCKGATE_CACHE_BYTES: '1000' }, () => loadConfig(d)).cacheBytes, 1000);
});

test('a bad environment value is a clear error naming the variable, never NaN', (t) => {
  const d = dataDir();
  for (const [k, v, re] of [
    ['BLOCKGATE_CACHE_BYTES', 'abc', /environment: BLOCKGATE_CACHE_BYTES/],
    ['BLOCKGATE_CACHE_BYTES', '-5', /BLOCKGATE_CACHE_BYTES/],
    ['BLOCKGATE_NBD_PORT', '70000', /BLOCKGATE_NBD_PORT must be a whole number from 0 to 65535/],
    ['BLOCKGATE_NBD_PORT', '12ab', /BLOCKGATE_NBD_PORT/],
    ['BLOCKGATE_LOG_LEVEL', 'loud', /BLOCKGATE_LOG_LEVEL must be one of fatal, error, warn, info/],
  ] as const) {
    const e = t.throws(() => withEnv({ [k]: v }, () => loadConfig(d)), undefined, `${k}=${v}`);
    t.regex(e!.message, re);
  }
});

test('a bad key of blockgate.json is a clear error naming the file and the key', (t) => {
  for (const [cfg, re] of [
    [{ chunkSize: 1000 }, /blockgate\.json: chunk size 1000 is not a power of two/],
    [{ codec: 'brotli' }, /unknown compression "brotli"/],
    [{ cacheBytes: 'lots' }, /blockgate\.json: cacheBytes/],
    [{ pipelineDepth: 0 }, /pipelineDepth must be a whole number from 1 to 1024/],
    [{ workers: 2.5 }, /workers must be a whole number/],
    [{ instant: { concurency: 2 } }, /unknown key instant\.concurency/],
    [{ instant: { rate: -1 } }, /instant\.rate must be a whole number/],
    [{ instant: 'fast' }, /instant must be an object/],
    [{ repository: { driver: 3 } }, /repository\.driver must be a driver name such as "dir" or "s3"/],
    [{ repository: { driver: 'dir' } }, /repository\.path must be a directory name/],
    [{ logLevel: 3 }, /logLevel must be one of/],
    ['[1,2]', /must hold a JSON object/],
    ['{not json', /cannot read .*blockgate\.json/],
  ] as const) {
    const d = dataDir(cfg);
    const e = t.throws(() => loadConfig(d), undefined, JSON.stringify(cfg));
    t.regex(e!.message, re, JSON.stringify(cfg));
    t.true(e!.message.includes(path.join(d, 'blockgate.json')) || /^cannot read/.test(e!.message), e!.message);
  }
});

test('the CLI reports a bad configuration in one line and changes nothing', async (t) => {
  const d = dataDir({ pipelineDepth: 'deep' });
  const before = fs.readdirSync(d).sort();
  const r = await cli(d, ['volume', 'list']);
  t.not(r.code, 0);
  t.regex(r.stderr, /pipelineDepth must be a whole number/);
  t.false(r.stderr.includes('    at '), 'no stack trace');
  t.deepEqual(fs.readdirSync(d).sort(), before);
});
