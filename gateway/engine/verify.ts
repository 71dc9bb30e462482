/**
 * Verify: checks that the repository still holds everything a backup names (Benji's scrub
 * and deep-scrub, Proxmox Backup Server's verify).
 *
 * - quick: every map page is read from the repository and checked against its digest
 *   (pages are 1/512 of the entries, so this costs little), and every chunk the map names
 *   must exist with the stored size the chunk index records;
 * - full (default): every chunk is read back, decoded and its SHA-256 checked, and its
 *   plaintext length must be the block's length.
 *
 * Reads run in parallel with a fixed number in flight; the map is walked page by page, so
 * memory is `concurrency` chunks plus one page, whatever the volume size. Each distinct
 * chunk (and page) is checked once per run: a bounded cache of results is shared by every
 * backup of an `--all` run, and concurrent checks of one digest are merged.
 *
 * Verify only reads the repository. In the catalog it changes two things: the backup's
 * verify fields (one transaction at the end), and the chunk index, from which a chunk
 * found corrupt or missing is removed at once, so no backup deduplicates onto it again:
 * the next backup that meets that data writes the chunk anew (the index, not the object,
 * decides whether a chunk is written). Removing it at once, not at the end, means a verify
 * killed half-way has still taken every bad chunk it saw out of the index.
 *
 * In quick mode a chunk without an index entry fails: its size cannot be checked, and the
 * usual reason is that an earlier verify took it out as bad (a full verify reads it).
 *
 * Only corrupt, missing or wrongly-sized objects are failures of the backup. Any other
 * error (repository unreachable, permission denied) ends the verify with that error and
 * records nothing, so an outage never marks good backups failed.
 *
 * While a backup is verified it holds a reader lease, so it cannot be deleted (and GC
 * cannot sweep its data) under the verify.
 */
import fs from 'node:fs/promises';
import { ConflictError } from '../../catalog/catalog.js';
import { pageEntriesFor, rootDigests } from '../../catalog/blockmap.js';
import { type BackupRecord, type VerifyFailure, now } from '../../catalog/records.js';
import { CHUNK_HEADER, DIGEST_BYTES, objectName } from '../../drivers/chunk.js';
import { packObjectName } from '../../drivers/pack.js';
import type { Appliance } from '../appliance.js';
import { RepoChunkReader } from '../read/chunk-reader.js';
import { type ChunkResult, VerifyCache, checkStoredSize, drain, isDataError, storedSize } from './verify-checks.js';

export interface VerifyOptions {
  quick?: boolean;
  /** chunk reads in flight (default 6) */
  concurrency?: number;
  /** failures kept on the record (default 1000); all are counted */
  maxFailures?: number;
  /** bytes of the volume covered so far, of the total (for a progress bar) */
  onProgress?: (done: number, total: number) => void;
  /** results shared across backups of one run */
  cache?: VerifyCache;
}

export interface BackupVerifyResult {
  id: string;
  name: string;
  volume_name: string;
  verify_state: 'ok' | 'failed';
  verified_at: string;
  /** blocks that failed, all of them counted */
  failed_blocks: number;
  /** the first failures (bounded), sorted by block */
  failures: VerifyFailure[];
}

export interface VerifySummary {
  mode: 'quick' | 'full';
  backups_checked: number;
  backups_ok: number;
  backups_failed: number;
  /** distinct chunks checked in this run (each once) */
  chunks_checked: number;
  pages_checked: number;
  /** stored bytes read from the repository (full mode; pages included) */
  bytes_read: number;
  /** failed blocks over all backups */
  failures: number;
  /** chunks found bad and taken out of the chunk index (count, and the first of them) */
  bad_chunks: number;
  bad_chunk_digests: string[];
  backups: BackupVerifyResult[];
}

const DEFAULT_CONCURRENCY = 6;
const DEFAULT_MAX_FAILURES = 1000;

/** A backup that can be verified: it has a committed map. */
function checkVerifiable(b: BackupRecord): void {
  if (b.status !== 'available' && b.status !== 'restoring') {
    throw new ConflictError(`backup ${b.id} is ${b.status}; only an available backup can be verified`);
  }
}

export async function verifyBackup(app: Appliance, ref: string, opts: VerifyOptions = {}): Promise<BackupVerifyResult> {
  const { catalog } = app;
  const first = catalog.backupRecord(ref);
  checkVerifiable(first);
  const id = first.id;
  // the lease is added with a check of the state in one transaction: a delete after it sees the lease and refuses
  const lease = catalog.addReaderLease(id, 'verify');
  try {
    const b = catalog.backupRecord(id);
    checkVerifiable(b);
    return await verifyHeld(app, b, opts);
  } finally {
    catalog.removeReaderLease(lease);
  }
}

async function verifyHeld(app: Appliance, b: BackupRecord, opts: VerifyOptions): Promise<BackupVerifyResult> {
  const { catalog, repo, pool } = app;
  const root = catalog.mapRoot(b.id);
  const cache = opts.cache ?? new VerifyCache();
  const maxFailures = opts.maxFailures ?? DEFAULT_MAX_FAILURES;
  const reader = new RepoChunkReader(repo, pool);
  const PAGE_ENTRIES = pageEntriesFor(b.chunk_size);
  const chunkCount = Math.ceil(b.size_bytes / b.chunk_size);
  const blockLength = (i: number) => Math.min(b.chunk_size, b.size_bytes - i * b.chunk_size);
  const failures: VerifyFailure[] = [];
  let failedBlocks = 0;
  const fail = (block: number, chunk: string, error: string) => {
    failedBlocks++;
    if (failures.length < maxFailures) failures.push({ block, offset: block * b.chunk_size, chunk, error });
  };
  const checkChunk = (d: string): Promise<ChunkResult> =>
    cache.get(`c:${d}`, async () => {
      cache.chunksChecked++;
      const r = await inspectChunk(d);
      // a bad chunk leaves the index at once: nothing deduplicates onto it any more
      if (r.error && r.indexed) {
        catalog.chunks.removeSync(d);
        cache.badChunks++;
        if (cache.badList.length < maxFailures) cache.badList.push(d);
      }
      // and no change-source incremental carries it over from its parent's map
      if (r.error) catalog.markCorrupt(d);
      return r;
    });

  /** plaintexts read ahead for a page's blocks (packed repositories), taken by inspectChunk */
  const prefetched = new Map<string, Promise<Buffer | Error>>();
  /** a pack's size in the repository (null: missing), asked once per pack in a run */
  const packSize = (id: string): Promise<number | null> => {
    let p = cache.packSizes.get(id);
    if (!p) {
      p = storedSize(repo.store, packObjectName(id), catalog.packs.get(id)?.s);
      cache.packSizes.set(id, p);
    }
    return p;
  };

  const inspectChunk = async (d: string): Promise<ChunkResult & { indexed: boolean }> => {
    const info = catalog.chunk(d);
    const indexed = !!info;
    if (opts.quick && info?.p) {
      // a packed blob: its pack must be there and hold the blob's range
      const size = await packSize(info.p);
      const error = size === null ? `chunk ${d}: its pack ${info.p} is missing from the repository` : size < (info.o ?? 0) + info.s ? `chunk ${d}: its pack ${info.p} is ${size} bytes, shorter than the blob's end (${(info.o ?? 0) + info.s})` : null;
      return { error, n: error ? -1 : info.n, indexed };
    }
    if (opts.quick) {
      const error = await checkStoredSize(repo.store, objectName('chunks', d), d, info?.s);
      return { error, n: error ? -1 : info!.n, indexed };
    }
    try {
      const pre = prefetched.get(d);
      prefetched.delete(d);
      const got = pre ? await pre : await reader.read(d);
      if (got instanceof Error) throw got;
      const plain = got;
      cache.bytesRead += info?.s ?? plain.length + CHUNK_HEADER;
      return { error: null, n: plain.length, indexed };
    } catch (e) {
      if (!isDataError(e)) throw e;
      return { error: (e as Error).message, n: -1, indexed };
    }
  };

  /** the page's entries, checked against its digest in the repository; the catalog's copy if that fails */
  const loadPage = async (p: number, pd: string): Promise<Buffer | null> => {
    const r = await cache.get(`p:${pd}`, async () => {
      cache.pagesChecked++;
      try {
        const object = await repo.getPage(pd);
        cache.bytesRead += object.length;
        const plain = repo.decodePage(object, pd);
        return { error: null, n: plain.length };
      } catch (e) {
        if (!isDataError(e)) throw e;
        return { error: `map page ${pd}: ${(e as Error).message.replace(/^chunk \S+ /, '')}`, n: -1 };
      }
    });
    if (r.error) fail(p * PAGE_ENTRIES, pd, r.error);
    const page = catalog.pages.get(pd) ?? (r.error ? null : repo.decodePage(await repo.getPage(pd), pd));
    if (!page) fail(p * PAGE_ENTRIES, pd, `map page ${pd} is in neither the repository nor the catalog; its blocks cannot be checked`);
    return page ?? null;
  };

  // map entries, page by page: only one page is held at a time
  async function* entries(): AsyncGenerator<{ block: number; digest: string }> {
    const pages = rootDigests(root);
    for (let p = 0; p < pages.length; p++) {
      const page = await loadPage(p, pages[p]!);
      opts.onProgress?.(Math.min(b.size_bytes, p * PAGE_ENTRIES * b.chunk_size), b.size_bytes);
      if (!page) continue;
      const last = Math.min(chunkCount, (p + 1) * PAGE_ENTRIES);
      const todo: { block: number; digest: string }[] = [];
      for (let i = p * PAGE_ENTRIES; i < last; i++) {
        const off = (i - p * PAGE_ENTRIES) * DIGEST_BYTES;
        const e = page.subarray(off, off + DIGEST_BYTES);
        if (e.every((x) => x === 0)) continue;
        todo.push({ block: i, digest: e.toString('hex') });
      }
      // a packed repository: the page's blocks not checked yet are read together (neighbours in a pack: one range read)
      if (repo.packed && !opts.quick) {
        const want = [...new Set(todo.map((x) => x.digest))].filter((d) => !cache.has(`c:${d}`) && !prefetched.has(d));
        if (want.length > 1) {
          const job = reader.readMany(want);
          want.forEach((d, k) => {
            const one = job.then((r) => r[k]!);
            one.catch(() => undefined);
            prefetched.set(d, one);
          });
        }
      }
      yield* todo;
    }
  }

  await drain(entries(), Math.max(1, opts.concurrency ?? DEFAULT_CONCURRENCY), async ({ block, digest }) => {
    const r = await checkChunk(digest);
    if (r.error) {
      fail(block, digest, r.error);
    } else if (r.n >= 0 && r.n !== blockLength(block)) {
      fail(block, digest, `chunk ${digest} holds ${r.n} bytes; block ${block} is ${blockLength(block)} bytes long`);
    }
  });
  opts.onProgress?.(b.size_bytes, b.size_bytes);

  failures.sort((x, y) => x.block - y.block);
  const result: BackupVerifyResult = {
    id: b.id,
    name: b.name,
    volume_name: b.volume_name,
    verify_state: failedBlocks ? 'failed' : 'ok',
    verified_at: now(),
    failed_blocks: failedBlocks,
    failures,
  };
  catalog.env.transactionSync(() => {
    const cur = catalog.backups.get(b.id);
    if (!cur) return;
    catalog.backups.putSync(b.id, { ...cur, verified_at: result.verified_at, verify_state: result.verify_state, verify_failures: failures, updated_at: result.verified_at });
  });
  return app.events.tap('verify.end', result.id, result, { backup_id: result.id, volume_name: result.volume_name, status: result.verify_state, failed_blocks: result.failed_blocks, quick: !!opts.quick });
}

/** Verifies the given backups (default: every available one), sharing one result cache. */
export async function verifyBackups(app: Appliance, refs: string[] | 'all', opts: VerifyOptions = {}): Promise<VerifySummary> {
  const targets = refs === 'all' ? app.catalog.listBackups().filter((b) => b.status === 'available').map((b) => b.id) : refs.map((r) => app.catalog.backupRecord(r).id);
  if (refs !== 'all') for (const id of targets) checkVerifiable(app.catalog.backupRecord(id));
  const cache = opts.cache ?? new VerifyCache();
  const results: BackupVerifyResult[] = [];
  for (const id of targets) {
    const b = app.catalog.backups.get(id);
    // a backup deleted since the list was taken is skipped, not failed
    if (refs === 'all' && (!b || b.status !== 'available')) continue;
    results.push(await verifyBackup(app, id, { ...opts, cache }));
  }
  const failed = results.filter((r) => r.verify_state === 'failed');
  return {
    mode: opts.quick ? 'quick' : 'full',
    backups_checked: results.length,
    backups_ok: results.length - failed.length,
    backups_failed: failed.length,
    chunks_checked: cache.chunksChecked,
    pages_checked: cache.pagesChecked,
    bytes_read: cache.bytesRead,
    failures: results.reduce((s, r) => s + r.failed_blocks, 0),
    bad_chunks: cache.badChunks,
    bad_chunk_digests: cache.badList,
    backups: results,
  };
}
