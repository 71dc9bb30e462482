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
import { DEFAULT_CHUNK, checkChunkSize, decodeChunk, encodeChunk, objectName } from './chunk.js';
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
  /** create an encrypted repository: its master key wrapped by the passphrase, or written to a new key file */
  encrypt?: { passphrase?: string; keyFile?: string };
}

const DIGEST_RE = /^[0-9a-f]{64}$/;
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
    };
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

  putChunk(digest: string, object: Buffer, opts?: PutOptions): Promise<void> {
    return this.store.put(objectName('chunks', digest), object, opts);
  }
  getChunk(digest: string): Promise<Buffer> {
    return this.store.get(objectName('chunks', digest));
  }
  /** the local file of a chunk object, when the store has one */
  chunkPath(digest: string): string | undefined {
    return this.store.localPath?.(objectName('chunks', digest));
  }

  /** reads a chunk object into `into`; returns its length */
  async getChunkInto(digest: string, into: Buffer): Promise<number> {
    const name = objectName('chunks', digest);
    if (this.store.getInto) return this.store.getInto(name, into);
    const obj = await this.store.get(name);
    if (obj.length > into.length) throw new Error(`chunk object ${digest} is larger than a chunk can be`);
    obj.copy(into);
    return obj.length;
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
    return this.store.get(objectName('pages', digest));
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
