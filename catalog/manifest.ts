/**
 * Backup manifests: what the repository keeps of each backup so a catalog can be rebuilt
 * from the repository alone, or a record imported elsewhere. A manifest is JSON: the backup
 * record (without its process owner or catalog-only state), the volume it came from (id,
 * name, driver, size, path), and the map root as a list of page digests; the pages
 * themselves are objects in the repository. docs/REPOSITORY.md describes the format.
 */
import { pageEntriesFor, rootDigests, rootFromDigests } from './blockmap.js';
import type { BackupRecord, VolumeRecord } from './records.js';

export const MANIFEST_KIND = 'blockgate-backup-manifest';
export const MANIFEST_FORMAT = 1;

export interface Manifest {
  kind: typeof MANIFEST_KIND;
  format: number;
  repository_id: string;
  backup: Omit<BackupRecord, 'owner'>;
  volume: Pick<VolumeRecord, 'id' | 'name' | 'driver' | 'size'> & { path?: string };
  map: { chunk_count: number; pages: string[] };
  /** the writer lease (leases/<token>.json) held while the backup was committed */
  writer?: string;
}

export function encodeManifest(repoId: string, b: BackupRecord, v: VolumeRecord, root: Buffer, writer?: string): Buffer {
  const { owner: _owner, verified_at: _va, verify_state: _vs, verify_failures: _vf, ...backup } = b;
  const m: Manifest = {
    kind: MANIFEST_KIND,
    format: MANIFEST_FORMAT,
    repository_id: repoId,
    backup: { ...backup, status: 'available' },
    volume: { id: v.id, name: v.name, driver: v.driver, size: v.size, path: v.path },
    map: { chunk_count: Math.ceil(b.size_bytes / b.chunk_size), pages: rootDigests(root) },
    ...(writer ? { writer } : {}),
  };
  return Buffer.from(JSON.stringify(m));
}

export function decodeManifest(data: Buffer, where: string): { manifest: Manifest; root: Buffer } {
  let m: Manifest;
  try {
    m = JSON.parse(data.toString('utf8')) as Manifest;
  } catch (e) {
    throw new Error(`manifest ${where} is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof m !== 'object' || m === null) throw new Error(`manifest ${where} is not a JSON object`);
  if (m.kind !== MANIFEST_KIND || m.format !== MANIFEST_FORMAT) throw new Error(`manifest ${where} is not a blockgate manifest of format ${MANIFEST_FORMAT}`);
  if (!Array.isArray(m.map?.pages) || !m.map.pages.every((d) => typeof d === 'string' && /^[0-9a-f]{64}$/.test(d))) throw new Error(`manifest ${where} has a malformed map`);
  if (!Number.isSafeInteger(m.map.chunk_count) || m.map.chunk_count < 0) throw new Error(`manifest ${where}: map has no valid chunk count`);
  const b = m.backup as Partial<BackupRecord> | undefined;
  if (typeof b !== 'object' || b === null || typeof b.id !== 'string' || !/^[0-9a-f-]{36}$/.test(b.id)) throw new Error(`manifest ${where} has no valid backup record`);
  const entries = pageEntriesFor(Number.isSafeInteger(b.chunk_size) ? b.chunk_size! : 0);
  if (Math.ceil(m.map.chunk_count / entries) !== m.map.pages.length) throw new Error(`manifest ${where}: map has ${m.map.pages.length} pages for ${m.map.chunk_count} chunks`);
  if (!Number.isSafeInteger(b.size_bytes) || !Number.isSafeInteger(b.chunk_size) || (b.chunk_size ?? 0) <= 0 || Math.ceil((b.size_bytes ?? 0) / (b.chunk_size ?? 1)) !== m.map.chunk_count) {
    throw new Error(`manifest ${where}: its record's size and chunk size do not match its map`);
  }
  if (typeof m.volume !== 'object' || m.volume === null || typeof m.volume.id !== 'string' || typeof m.volume.name !== 'string') throw new Error(`manifest ${where} has no valid volume`);
  if (typeof m.repository_id !== 'string') throw new Error(`manifest ${where} names no repository`);
  return { manifest: m, root: rootFromDigests(m.map.pages) };
}
