/**
 * A repository: an object store plus its config object, with the naming of the three kinds
 * of objects in it (chunks, block-map pages, backup manifests). The config is written at
 * creation and records the format version, chunk size, codec, repository id and, for an
 * encrypted repository, the wrapped copies of its master key (drivers/crypto.ts); it is
 * rewritten only to add or remove a wrapped key. In an encrypted repository every chunk,
 * page and manifest is sealed, and chunks and pages are named by a keyed digest.
 */
import fs from 'node:fs';
import { randomBytes, randomUUID } from 'node:crypto';
import { DEFAULT_CHUNK, type ObjectKind, checkChunkSize, decodeChunk, encodeChunk, objectName } from './chunk.js';
import { INDEX_PROBE, type PackEntry, checkPackSize, packIdOf, packObjectName, parsePackTail } from './pack.js';
import {
  type EncryptionConfig,
  KeyError,
  type RepoKeys,
  contentDigest,
  deriveKeys,
  isSealedBlob,
  masterFromKeyFile,
  masterFromPassphrase,
  newEncryption,
  sealBlob,
  unsealBlob,
  wrapMaster,
} from './crypto.js';
import { type CodecName, parseCodec } from './codec.js';
import { ObjectNotFoundError, type ObjectStore, type PutOptions, type WriteBatch } from './store/types.js';

export const REPO_FORMAT = 1;

export interface RepoConfig {
  format: number;
  id: string;
  chunkSize: number;
  codec: CodecName;
  createdAt: string;
  encryption?: EncryptionConfig;
  /**
   * packed repository: chunks and map pages are blobs in pack objects of about this many
   * bytes (drivers/pack.ts); absent or 0: every chunk and page is its own object (format of
   * the 4 MiB-chunk repositories, still read and written as it is)
   */
  packSize?: number;
}

/** where a blob lives in a packed repository (kept by the catalog's chunk index) */
export interface BlobLocation {
  pack: string;
  offset: number;
  length: number;
  /** plaintext length (chunks) */
  plain?: number;
}
/** finds a chunk's or page's pack location; null: a loose object */
export type BlobLocator = (kind: ObjectKind, digest: string) => BlobLocation | null | undefined;

export class BlobNotIndexedError extends Error {
  readonly code = 'ENOENT';
  constructor(kind: ObjectKind, digest: string) {
    super(`${kind === 'chunks' ? 'chunk' : 'map page'} ${digest} is in no pack this catalog knows (rebuild the catalog if it was lost)`);
    this.name = 'ObjectNotFoundError';
  }
}

/** where an encrypted repository's key comes from (never stored in the repository) */
export interface RepoSecrets {
  passphrase?: string | null;
  keyFile?: string | null;
  /** the appliance expects an encrypted repository (refuses to open a plain one by mistake) */
  expectEncrypted?: boolean;
}

export interface RepoCreateOptions {
  chunkSize?: number;
  codec?: CodecName;
  /** a packed repository with packs of this size (0 or absent: one object per chunk) */
  packSize?: number;
  /** create an encrypted repository: its master key wrapped by the passphrase, or written to a new key file */
  encrypt?: { passphrase?: string; keyFile?: string };
}

const DIGEST_RE = /^[0-9a-f]{64}$/;
const RETIRED = 'gc/retired.json';

/** a pack taken out of the index by a repack at `at` (ms), deleted by a later GC */
export interface RetiredPack {
  pack: string;
  at: number;
}
const ID_RE = /^[0-9a-f-]{36}$/;

function unlock(config: RepoConfig, where: string, secrets: RepoSecrets): RepoKeys | null {
  const enc = config.encryption;
  if (!enc) {
    if (secrets.expectEncrypted) throw new KeyError(`repository ${where} is not encrypted, but this appliance expects an encrypted one`);
    return null;
  }
  if (secrets.keyFile) {
    let content: Buffer;
    try {
      content = fs.readFileSync(secrets.keyFile);
    } catch (e) {
      throw new KeyError(`cannot read key file ${secrets.keyFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    return deriveKeys(masterFromKeyFile(content, enc, secrets.keyFile));
  }
  if (secrets.passphrase) return deriveKeys(masterFromPassphrase(secrets.passphrase, enc, where));
  throw new KeyError(`repository ${where} is encrypted: give its passphrase (BLOCKGATE_PASSPHRASE, or passphraseFile in blockgate.json) or its key file (keyFile)`);
}

export class Repository {
  private constructor(
    readonly store: ObjectStore,
    readonly config: RepoConfig,
    /** the object and name keys of an encrypted repository, else null */
    readonly keys: RepoKeys | null,
    private readonly master: Buffer | null = null,
  ) {}

  static async open(store: ObjectStore, secrets: RepoSecrets = {}): Promise<Repository> {
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
    if (config.packSize) checkPackSize(config.packSize);
    parseCodec(config.codec);
    return new Repository(store, config, unlock(config, store.location, secrets));
  }

  static async create(store: ObjectStore, opts: RepoCreateOptions = {}): Promise<Repository> {
    if (await store.has('config')) throw new Error(`a repository already exists at ${store.location}`);
    const config: RepoConfig = {
      format: REPO_FORMAT,
      id: randomUUID(),
      chunkSize: checkChunkSize(opts.chunkSize ?? DEFAULT_CHUNK),
      codec: opts.codec ?? 'zstd',
      createdAt: new Date().toISOString(),
      ...(opts.packSize ? { packSize: checkPackSize(opts.packSize) } : {}),
    };
    if (!config.packSize && config.chunkSize < 64 * 1024) throw new Error(`chunk size ${config.chunkSize} needs a packed repository (--pack-size): one object per chunk takes 64K and more`);
    if (config.packSize && config.chunkSize * 4 > config.packSize) throw new Error(`pack size ${config.packSize} must hold at least 4 chunks of ${config.chunkSize}`);
    let master: Buffer | null = null;
    if (opts.encrypt) {
      const { passphrase, keyFile } = opts.encrypt;
      if (!passphrase && !keyFile) throw new KeyError('an encrypted repository needs a passphrase or a key file');
      master = randomBytes(32);
      config.encryption = newEncryption(master, passphrase ?? null);
      // the key file is made first: a repository is never left with a key nobody has
      if (keyFile) fs.writeFileSync(keyFile, master.toString('base64') + '\n', { mode: 0o600, flag: 'wx' });
    }
    await store.put('config', Buffer.from(JSON.stringify(config, null, 2)));
    return new Repository(store, config, master ? deriveKeys(master) : null, master);
  }

  /** adds a wrapped copy of the master key under another passphrase; returns its id */
  async addKey(current: RepoSecrets, passphrase: string, label?: string): Promise<string> {
    const enc = this.config.encryption;
    if (!enc) throw new KeyError(`repository ${this.store.location} is not encrypted`);
    const master = this.master ?? (current.keyFile ? masterFromKeyFile(fs.readFileSync(current.keyFile), enc, current.keyFile) : masterFromPassphrase(current.passphrase ?? '', enc, this.store.location));
    const w = wrapMaster(master, passphrase, label);
    enc.keys.push(w);
    await this.store.put('config', Buffer.from(JSON.stringify(this.config, null, 2)));
    return w.id;
  }

  /** removes a wrapped copy; the last way in (with no key file) is never removed */
  async removeKey(id: string): Promise<void> {
    const enc = this.config.encryption;
    if (!enc) throw new KeyError(`repository ${this.store.location} is not encrypted`);
    const at = enc.keys.findIndex((k) => k.id === id);
    if (at < 0) throw new KeyError(`repository ${this.store.location} has no key ${JSON.stringify(id)}`);
    if (enc.keys.length === 1) throw new KeyError('this is the repository\'s last passphrase: add another before removing it');
    enc.keys.splice(at, 1);
    await this.store.put('config', Buffer.from(JSON.stringify(this.config, null, 2)));
  }

  /** the name of a chunk or page with this content */
  digest(data: Buffer): string {
    return contentDigest(this.keys, data);
  }

  /** a map page as its stored object (compressed, sealed when encrypted) */
  encodePage(page: Buffer, digest: string): Buffer {
    return encodeChunk(page, this.config.codec, this.keys ? { keys: this.keys, kind: 'pages', digest } : undefined).object;
  }

  /** a stored page object back to its entries, verified */
  decodePage(object: Buffer, digest: string): Buffer {
    return decodeChunk(object, digest, this.keys ? { keys: this.keys, kind: 'pages' } : null);
  }

  static async openOrCreate(store: ObjectStore, opts: RepoCreateOptions = {}, secrets: RepoSecrets = {}): Promise<Repository> {
    return (await store.has('config')) ? Repository.open(store, secrets) : Repository.create(store, opts);
  }

  get chunkSize(): number {
    return this.config.chunkSize;
  }

  /** chunks and pages go into packs (config.packSize) */
  get packed(): boolean {
    return !!this.config.packSize;
  }

  /** set by the appliance: where its catalog says each packed blob is */
  locator: BlobLocator | null = null;
  /** set by the appliance: re-reads the pack indexes when a pack a location names is gone (a repack elsewhere) */
  relocator: (() => Promise<void>) | null = null;
  private relocating: Promise<void> | null = null;

  /** re-reads where blobs are (one at a time, merged); false when there is no way to */
  async relocate(): Promise<boolean> {
    if (!this.relocator) return false;
    this.relocating ??= this.relocator().finally(() => {
      this.relocating = null;
    });
    await this.relocating;
    return true;
  }

  /** a blob's pack location; null for a loose object */
  locate(kind: ObjectKind, digest: string): BlobLocation | null {
    return this.locator?.(kind, digest) ?? null;
  }

  /** the stored object of a blob: a range of its pack, or a loose object */
  private async getBlob(kind: ObjectKind, digest: string): Promise<Buffer> {
    const loc = this.locate(kind, digest);
    if (!loc) {
      try {
        return await this.store.get(objectName(kind, digest));
      } catch (e) {
        if (e instanceof ObjectNotFoundError && this.packed) throw new BlobNotIndexedError(kind, digest);
        throw e;
      }
    }
    try {
      // a short read (a truncated pack) is left to the decoder, which reports the block corrupt
      return await this.store.getRange(packObjectName(loc.pack), loc.offset, loc.length);
    } catch (e) {
      if (!(e instanceof ObjectNotFoundError) || !(await this.relocate())) throw e;
      const again = this.locate(kind, digest);
      if (!again || again.pack === loc.pack) throw e;
      return this.store.getRange(packObjectName(again.pack), again.offset, again.length);
    }
  }

  putChunk(digest: string, object: Buffer, opts?: PutOptions): Promise<void> {
    return this.store.put(objectName('chunks', digest), object, opts);
  }
  getChunk(digest: string): Promise<Buffer> {
    return this.getBlob('chunks', digest);
  }
  /** the local file holding a chunk object (and where in it), when the store has files */
  chunkFile(digest: string): { path: string; offset: number; length: number } | undefined {
    if (!this.store.localPath) return undefined;
    const loc = this.locate('chunks', digest);
    if (loc) return { path: this.store.localPath(packObjectName(loc.pack)), offset: loc.offset, length: loc.length };
    if (this.packed) return undefined; // not indexed: getChunk says so
    return { path: this.store.localPath(objectName('chunks', digest)), offset: 0, length: -1 };
  }

  /** reads a chunk object into `into`; returns its length */
  async getChunkInto(digest: string, into: Buffer): Promise<number> {
    const loc = this.locate('chunks', digest);
    if (!loc && this.store.getInto && !this.packed) return this.store.getInto(objectName('chunks', digest), into);
    const obj = await this.getBlob('chunks', digest);
    if (obj.length > into.length) throw new Error(`chunk object ${digest} is larger than a chunk can be`);
    obj.copy(into);
    return obj.length;
  }

  // ---- packs (drivers/pack.ts)

  putPack(id: string, data: Buffer, opts?: PutOptions): Promise<void> {
    return this.store.put(packObjectName(id), data, opts);
  }
  deletePack(id: string): Promise<void> {
    return this.store.delete(packObjectName(id));
  }
  /** the local file of a pack, when the store has files */
  packFile(id: string): string | undefined {
    return this.store.localPath?.(packObjectName(id));
  }
  /** reads `length` bytes of a pack from `offset` */
  readPack(id: string, offset: number, length: number): Promise<Buffer> {
    return this.store.getRange(packObjectName(id), offset, length);
  }
  async *listPacks(): AsyncIterable<{ id: string; size: number; mtimeMs: number }> {
    for await (const o of this.store.listInfo('packs/')) {
      const id = packIdOf(o.name);
      if (id) yield { id, size: o.size, mtimeMs: o.mtimeMs };
    }
  }
  /**
   * Packs a GC repacked: their live blobs are in newer packs and no index names them, but a
   * reader that looked up a location before the switch may still read them; a later GC deletes
   * them once they have been retired longer than the retire window (gateway/engine/repack.ts).
   * Written only under the GC lock.
   */
  async readRetired(): Promise<RetiredPack[]> {
    let raw: Buffer;
    try {
      raw = await this.store.get(RETIRED);
    } catch (e) {
      if (e instanceof ObjectNotFoundError) return [];
      throw e;
    }
    const plain = this.keys ? unsealBlob(this.keys, RETIRED, raw) : raw;
    const list = JSON.parse(plain.toString('utf8')) as RetiredPack[];
    if (!Array.isArray(list)) throw new Error(`${RETIRED} is not a list`);
    return list.filter((r) => typeof r?.pack === 'string' && /^[0-9a-f]{64}$/.test(r.pack) && Number.isFinite(r.at));
  }
  async writeRetired(list: RetiredPack[]): Promise<void> {
    const plain = Buffer.from(JSON.stringify(list));
    await this.store.put(RETIRED, this.keys ? sealBlob(this.keys, RETIRED, plain) : plain);
  }

  /** a pack's index, read from its end (one ranged read when the index is under 64 KiB) */
  async readPackIndex(id: string, size: number): Promise<PackEntry[]> {
    let from = Math.max(0, size - INDEX_PROBE);
    for (let tries = 0; tries < 2; tries++) {
      const tail = await this.readPack(id, from, size - from);
      const r = parsePackTail(tail, from, id, this.keys);
      if ('entries' in r) return r.entries;
      from = r.need;
    }
    throw new Error(`pack ${id}: its index could not be read`);
  }
  deleteChunk(digest: string): Promise<void> {
    return this.store.delete(objectName('chunks', digest));
  }
  async *listChunks(): AsyncIterable<string> {
    for await (const name of this.store.list('chunks/')) {
      const d = name.slice(name.lastIndexOf('/') + 1);
      if (DIGEST_RE.test(d)) yield d;
    }
  }

  putPage(digest: string, object: Buffer, opts?: PutOptions): Promise<void> {
    return this.store.put(objectName('pages', digest), object, opts);
  }

  /** a batch of chunk and page puts made durable by one sync() */
  batch(): WriteBatch {
    return this.store.batch();
  }
  getPage(digest: string): Promise<Buffer> {
    return this.getBlob('pages', digest);
  }
  deletePage(digest: string): Promise<void> {
    return this.store.delete(objectName('pages', digest));
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
    const name = this.manifestName(backupId);
    return this.store.put(name, this.keys ? sealBlob(this.keys, name, data) : data);
  }
  /** a manifest's JSON (opened and authenticated in an encrypted repository) */
  async getManifest(backupId: string): Promise<Buffer> {
    const name = this.manifestName(backupId);
    const raw = await this.store.get(name);
    if (this.keys) return unsealBlob(this.keys, name, raw);
    if (isSealedBlob(raw)) throw new KeyError(`manifest ${name} is encrypted, but this repository has no key`);
    return raw;
  }
  /** a manifest's JSON, or undefined when there is none (committed by nobody, or deleted); other failures throw */
  async findManifest(backupId: string): Promise<Buffer | undefined> {
    try {
      return await this.getManifest(backupId);
    } catch (e) {
      if ((e as { code?: string }).code === 'ENOENT') return undefined;
      throw e;
    }
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
