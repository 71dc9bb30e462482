/**
 * Encryption at rest for a repository: keys, keyed names, sealed objects.
 *
 * - A repository has one random 256-bit master key. It is stored in the repository config
 *   only wrapped (AES-256-GCM) by a key derived from a passphrase with scrypt (parameters
 *   and salt recorded per wrapped copy; several copies may exist, so a passphrase can be
 *   added, changed or revoked without touching data), or kept in a key file outside the
 *   repository (the config then holds only a check value that recognises it).
 * - From the master key, HKDF-SHA-256 derives the object key (AES-256-GCM) and the name key
 *   (HMAC-SHA-256). Chunk and page names are HMAC-SHA-256 of the plaintext under the name
 *   key: deduplication still works, names reveal nothing (an unkeyed SHA-256 would confirm
 *   a guessed block).
 * - A sealed object is its plain header, then a random 96-bit nonce, the ciphertext and the
 *   16-byte tag; the header and the object's name are the authenticated data, so an object
 *   cannot be moved to another name or have its header changed.
 */
import { createCipheriv, createDecipheriv, createHmac, createHash, hkdfSync, randomBytes, scryptSync, timingSafeEqual } from 'node:crypto';

export interface RepoKeys {
  /** AES-256-GCM key for objects */
  enc: Buffer;
  /** HMAC-SHA-256 key for chunk and page names */
  name: Buffer;
}

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
  salt: string;
}

/** one wrapped copy of the master key */
export interface WrappedKey {
  id: string;
  kdf: 'scrypt';
  params: ScryptParams;
  /** base64 of nonce (12) | ciphertext (32) | tag (16) */
  wrapped: string;
  created_at: string;
  label?: string;
}

export interface EncryptionConfig {
  algorithm: 'aes-256-gcm';
  names: 'hmac-sha256';
  /** passphrase-wrapped copies of the master key (empty when a key file holds it) */
  keys: WrappedKey[];
  /** HMAC of a fixed label under the master key: recognises the right key file */
  check: string;
}

export class KeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeyError';
  }
}

export class ObjectAuthError extends Error {
  constructor(readonly objectName: string) {
    super(`object ${objectName} fails authentication (tampered with, damaged, or moved from another name)`);
    this.name = 'ObjectAuthError';
  }
}

export const NONCE = 12;
export const TAG = 16;
/** bytes a sealed object adds to its plain form */
export const SEAL_OVERHEAD = NONCE + TAG;
const DEFAULT_SCRYPT = { N: 1 << 15, r: 8, p: 1 };
const CHECK_LABEL = 'blockgate key check v1';

export function deriveKeys(master: Buffer): RepoKeys {
  const key = (info: string) => Buffer.from(hkdfSync('sha256', master, Buffer.alloc(0), info, 32));
  return { enc: key('blockgate object encryption v1'), name: key('blockgate object names v1') };
}

export function keyCheck(master: Buffer): string {
  return createHmac('sha256', master).update(CHECK_LABEL).digest('hex');
}

function kek(passphrase: string, p: ScryptParams): Buffer {
  return scryptSync(passphrase, Buffer.from(p.salt, 'base64'), 32, { N: p.N, r: p.r, p: p.p, maxmem: 256 * p.N * p.r + 1024 * 1024 });
}

export function wrapMaster(master: Buffer, passphrase: string, label?: string): WrappedKey {
  if (!passphrase) throw new KeyError('the passphrase is empty');
  const params: ScryptParams = { ...DEFAULT_SCRYPT, salt: randomBytes(16).toString('base64') };
  const nonce = randomBytes(NONCE);
  const c = createCipheriv('aes-256-gcm', kek(passphrase, params), nonce);
  const id = randomBytes(4).toString('hex');
  c.setAAD(Buffer.from(`blockgate master key ${id}`));
  const ct = Buffer.concat([c.update(master), c.final()]);
  return { id, kdf: 'scrypt', params, wrapped: Buffer.concat([nonce, ct, c.getAuthTag()]).toString('base64'), created_at: new Date().toISOString(), ...(label ? { label } : {}) };
}

/** the master key, if `passphrase` opens this wrapped copy */
export function unwrapMaster(w: WrappedKey, passphrase: string): Buffer | null {
  const raw = Buffer.from(w.wrapped, 'base64');
  if (raw.length !== NONCE + 32 + TAG) return null;
  try {
    const d = createDecipheriv('aes-256-gcm', kek(passphrase, w.params), raw.subarray(0, NONCE));
    d.setAAD(Buffer.from(`blockgate master key ${w.id}`));
    d.setAuthTag(raw.subarray(NONCE + 32));
    return Buffer.concat([d.update(raw.subarray(NONCE, NONCE + 32)), d.final()]);
  } catch {
    return null;
  }
}

export function newEncryption(master: Buffer, passphrase: string | null): EncryptionConfig {
  return { algorithm: 'aes-256-gcm', names: 'hmac-sha256', keys: passphrase === null ? [] : [wrapMaster(master, passphrase)], check: keyCheck(master) };
}

/** The master key from a key file (base64 or 32 raw bytes), checked against the config. */
export function masterFromKeyFile(content: Buffer, enc: EncryptionConfig, file: string): Buffer {
  const text = content.toString('utf8').trim();
  const master = content.length === 32 ? content : /^[A-Za-z0-9+/]{43}=$/.test(text) ? Buffer.from(text, 'base64') : null;
  if (!master || master.length !== 32) throw new KeyError(`key file ${file} does not hold a blockgate key (32 bytes, or their base64)`);
  if (!timingSafeEqual(Buffer.from(keyCheck(master), 'hex'), Buffer.from(enc.check, 'hex'))) throw new KeyError(`key file ${file} holds another repository's key`);
  return master;
}

export function masterFromPassphrase(passphrase: string, enc: EncryptionConfig, where: string): Buffer {
  if (!enc.keys.length) throw new KeyError(`repository ${where} is opened with a key file, not a passphrase`);
  for (const w of enc.keys) {
    const m = unwrapMaster(w, passphrase);
    if (m && keyCheck(m) === enc.check) return m;
  }
  throw new KeyError(`wrong passphrase for repository ${where}`);
}

/** The name of a chunk or page: HMAC-SHA-256 under the name key, or SHA-256 without keys. */
export function contentDigest(keys: RepoKeys | null, data: Buffer): string {
  return keys ? createHmac('sha256', keys.name).update(data).digest('hex') : createHash('sha256').update(data).digest('hex');
}

/** Seals `body` under `header` (kept plain, authenticated) for the object `name`. */
export function seal(keys: RepoKeys, name: string, header: Buffer, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(header.length + NONCE + body.length + TAG);
  header.copy(out, 0);
  const nonce = out.subarray(header.length, header.length + NONCE);
  randomBytes(NONCE).copy(nonce);
  const c = createCipheriv('aes-256-gcm', keys.enc, nonce);
  c.setAAD(Buffer.concat([header, Buffer.from(name)]));
  // GCM is a stream mode: update() gives exactly the body's length, final() nothing
  const ct = c.update(body);
  ct.copy(out, header.length + NONCE);
  c.final();
  c.getAuthTag().copy(out, header.length + NONCE + body.length);
  return out;
}

/** Opens what seal() made; throws ObjectAuthError if anything was changed. */
export function unseal(keys: RepoKeys, name: string, object: Buffer, headerLength: number): Buffer {
  if (object.length < headerLength + SEAL_OVERHEAD) throw new ObjectAuthError(name);
  const header = object.subarray(0, headerLength);
  const nonce = object.subarray(headerLength, headerLength + NONCE);
  const tag = object.subarray(object.length - TAG);
  try {
    const d = createDecipheriv('aes-256-gcm', keys.enc, nonce);
    d.setAAD(Buffer.concat([header, Buffer.from(name)]));
    d.setAuthTag(tag);
    const plain = d.update(object.subarray(headerLength + NONCE, object.length - TAG));
    const rest = d.final();
    return rest.length ? Buffer.concat([plain, rest]) : plain;
  } catch {
    throw new ObjectAuthError(name);
  }
}

const BLOB_MAGIC = Buffer.from('BGEN\x01\x00\x00\x00');

/** A whole object (manifest) sealed: magic header, then nonce, ciphertext, tag. */
export function sealBlob(keys: RepoKeys, name: string, data: Buffer): Buffer {
  return seal(keys, name, BLOB_MAGIC, data);
}

export function isSealedBlob(data: Buffer): boolean {
  return data.length >= BLOB_MAGIC.length && data.subarray(0, BLOB_MAGIC.length).equals(BLOB_MAGIC);
}

export function unsealBlob(keys: RepoKeys, name: string, data: Buffer): Buffer {
  if (!isSealedBlob(data)) throw new ObjectAuthError(name);
  return unseal(keys, name, data, BLOB_MAGIC.length);
}
