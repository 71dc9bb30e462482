/**
 * A repository: an object store plus its config object, with the naming of the three kinds
 * of objects in it (chunks, block-map pages, backup manifests). The config is written once
 * at creation and records the format version, chunk size, codec and repository id.
 */
import { randomUUID } from 'node:crypto';
import { DEFAULT_CHUNK, checkChunkSize } from './chunk.js';
import { type CodecName, parseCodec } from './codec.js';
import { ObjectNotFoundError, type ObjectStore, type PutOptions, type WriteBatch } from './store/types.js';

export const REPO_FORMAT = 1;

export interface RepoConfig {
  format: number;
  id: string;
  chunkSize: number;
  codec: CodecName;
  createdAt: string;
}

export interface RepoCreateOptions {
  chunkSize?: number;
  codec?: CodecName;
}

const DIGEST_RE = /^[0-9a-f]{64}$/;
const ID_RE = /^[0-9a-f-]{36}$/;

function fanout(kind: string, digest: string): string {
  if (!DIGEST_RE.test(digest)) throw new Error(`invalid digest ${JSON.stringify(digest)}`);
  return `${kind}/${digest.slice(0, 2)}/${digest}`;
}

export class Repository {
  private constructor(readonly store: ObjectStore, readonly config: RepoConfig) {}

  static async open(store: ObjectStore): Promise<Repository> {
    let raw: Buffer;
    try {
      raw = await store.get('config');
    } catch (e) {
      if (e instanceof ObjectNotFoundError) throw new Error(`no blockgate repository at ${store.location} (run "blockgate repo create")`);
      throw e;
    }
    const config = JSON.parse(raw.toString('utf8')) as RepoConfig;
    if (config.format !== REPO_FORMAT) throw new Error(`repository ${store.location} has format ${config.format}; this blockgate reads format ${REPO_FORMAT}`);
    checkChunkSize(config.chunkSize);
    parseCodec(config.codec);
    return new Repository(store, config);
  }

  static async create(store: ObjectStore, opts: RepoCreateOptions = {}): Promise<Repository> {
    if (await store.has('config')) throw new Error(`a repository already exists at ${store.location}`);
    const config: RepoConfig = {
      format: REPO_FORMAT,
      id: randomUUID(),
      chunkSize: checkChunkSize(opts.chunkSize ?? DEFAULT_CHUNK),
      codec: opts.codec ?? 'zstd',
      createdAt: new Date().toISOString(),
    };
    await store.put('config', Buffer.from(JSON.stringify(config, null, 2)));
    return new Repository(store, config);
  }

  static async openOrCreate(store: ObjectStore, opts: RepoCreateOptions = {}): Promise<Repository> {
    return (await store.has('config')) ? Repository.open(store) : Repository.create(store, opts);
  }

  get chunkSize(): number {
    return this.config.chunkSize;
  }

  putChunk(digest: string, object: Buffer, opts?: PutOptions): Promise<void> {
    return this.store.put(fanout('chunks', digest), object, opts);
  }
  getChunk(digest: string): Promise<Buffer> {
    return this.store.get(fanout('chunks', digest));
  }
  /** the local file of a chunk object, when the store has one */
  chunkPath(digest: string): string | undefined {
    return this.store.localPath?.(fanout('chunks', digest));
  }

  /** reads a chunk object into `into`; returns its length */
  async getChunkInto(digest: string, into: Buffer): Promise<number> {
    const name = fanout('chunks', digest);
    if (this.store.getInto) return this.store.getInto(name, into);
    const obj = await this.store.get(name);
    if (obj.length > into.length) throw new Error(`chunk object ${digest} is larger than a chunk can be`);
    obj.copy(into);
    return obj.length;
  }
  deleteChunk(digest: string): Promise<void> {
    return this.store.delete(fanout('chunks', digest));
  }
  async *listChunks(): AsyncIterable<string> {
    for await (const name of this.store.list('chunks/')) {
      const d = name.slice(name.lastIndexOf('/') + 1);
      if (DIGEST_RE.test(d)) yield d;
    }
  }

  putPage(digest: string, object: Buffer, opts?: PutOptions): Promise<void> {
    return this.store.put(fanout('pages', digest), object, opts);
  }

  /** a batch of chunk and page puts made durable by one sync() */
  batch(): WriteBatch {
    return this.store.batch();
  }
  getPage(digest: string): Promise<Buffer> {
    return this.store.get(fanout('pages', digest));
  }
  deletePage(digest: string): Promise<void> {
    return this.store.delete(fanout('pages', digest));
  }
  async *listPages(): AsyncIterable<string> {
    for await (const name of this.store.list('pages/')) {
      const d = name.slice(name.lastIndexOf('/') + 1);
      if (DIGEST_RE.test(d)) yield d;
    }
  }

  private manifestName(backupId: string): string {
    if (!ID_RE.test(backupId)) throw new Error(`invalid backup id ${JSON.stringify(backupId)}`);
    return `manifests/${backupId}.json`;
  }
  putManifest(backupId: string, data: Buffer): Promise<void> {
    return this.store.put(this.manifestName(backupId), data);
  }
  getManifest(backupId: string): Promise<Buffer> {
    return this.store.get(this.manifestName(backupId));
  }
  deleteManifest(backupId: string): Promise<void> {
    return this.store.delete(this.manifestName(backupId));
  }
  async *listManifests(): AsyncIterable<string> {
    for await (const name of this.store.list('manifests/')) {
      const m = /^manifests\/([0-9a-f-]{36})\.json$/.exec(name);
      if (m) yield m[1]!;
    }
  }
}
