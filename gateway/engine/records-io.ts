/**
 * Record export and import, as in Cinder: `export` gives `backup_service` (the driver) and
 * `backup_url` (base64 of a JSON record with Cinder's fields, plus the repository id, the
 * manifest's object name and the SHA-256 of the manifest). `import` of that pair on an
 * appliance attached to the same repository (or a copy of it) re-creates the backup as
 * `available` from its manifest: an incremental on its own, since every map is complete.
 *
 * A record is checked before anything changes: the service, base64, JSON, every required
 * field, the repository, the manifest's presence and digest, and that the record says what
 * the manifest says (a tampered field is refused). An id that exists and is not deleted is
 * refused; a deleted one is revived (Cinder's rule). Exit codes: 2 malformed, 4 conflict.
 */
import { createHash } from 'node:crypto';
import { ConflictError } from '../../catalog/catalog.js';
import { decodeManifest } from '../../catalog/manifest.js';
import type { BackupRecord, VolumeRecord } from '../../catalog/records.js';
import type { Appliance } from '../appliance.js';
import { type Adoption, adoptedRecord, chunkEntries, commitAdoption, fetchPages, manifestChunks, volumeFor } from './adopt.js';

/** a malformed or tampered record (the CLI's exit code 2) */
export class RecordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RecordError';
  }
}

export interface ExportedRecord {
  backup_service: string;
  backup_url: string;
}

/** the fields the record repeats from the manifest; import refuses a record that disagrees */
const CHECKED = ['id', 'volume_id', 'parent_id', 'is_incremental', 'snapshot_id', 'size', 'size_bytes', 'object_count', 'project_id', 'user_id', 'created_at', 'data_timestamp', 'chunk_size', 'codec'] as const;

export function serviceName(app: Appliance): string {
  return `blockgate.${app.config.repository.driver}`;
}

export async function exportRecord(app: Appliance, ref: string): Promise<ExportedRecord> {
  const b = app.catalog.backupRecord(ref);
  if (b.status !== 'available') throw new ConflictError(`backup ${b.id} is ${b.status}; only an available backup can be exported`);
  const manifest = await app.repo.findManifest(b.id);
  if (!manifest) throw new ConflictError(`backup ${b.id} has no manifest in the repository (deleted by another appliance?)`);
  const service = serviceName(app);
  const record = {
    id: b.id,
    display_name: b.name,
    display_description: b.description,
    volume_id: b.volume_id,
    snapshot_id: b.snapshot_id,
    parent_id: b.parent_id,
    is_incremental: b.is_incremental,
    size: b.size,
    size_bytes: b.size_bytes,
    object_count: b.object_count,
    container: b.container,
    service,
    project_id: b.project_id,
    user_id: b.user_id,
    availability_zone: b.availability_zone,
    created_at: b.created_at,
    updated_at: b.updated_at,
    data_timestamp: b.data_timestamp,
    status: b.status,
    chunk_size: b.chunk_size,
    codec: b.codec,
    repository_id: app.repo.config.id,
    manifest: `manifests/${b.id}.json`,
    manifest_sha256: createHash('sha256').update(manifest).digest('hex'),
    service_metadata: { volume_name: b.volume_name, format: 1 },
  };
  return { backup_service: service, backup_url: Buffer.from(JSON.stringify(record)).toString('base64') };
}

type RawRecord = Record<string, unknown>;

/** Decodes and checks the shape of an exported record; throws RecordError (exit 2). */
export function parseRecord(service: string, url: string): RawRecord {
  if (!/^blockgate\.[a-z0-9]+$/.test(service)) throw new RecordError(`backup service ${JSON.stringify(service.slice(0, 80))} is not a blockgate service (blockgate.dir, blockgate.s3)`);
  const text = url.trim();
  if (!text || text.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(text)) throw new RecordError('backup_url is not base64 (truncated or damaged?)');
  let rec: unknown;
  try {
    rec = JSON.parse(Buffer.from(text, 'base64').toString('utf8'));
  } catch {
    throw new RecordError('backup_url does not hold a JSON record (truncated or damaged?)');
  }
  if (typeof rec !== 'object' || rec === null || Array.isArray(rec)) throw new RecordError('backup_url does not hold a JSON object');
  const r = rec as RawRecord;
  const missing = ['id', 'volume_id', 'repository_id', 'manifest', 'manifest_sha256', ...CHECKED].filter((k) => !(k in r));
  if (missing.length) throw new RecordError(`the record is incomplete (truncated?): no ${missing.join(', ')}`);
  if (typeof r.id !== 'string' || !/^[0-9a-f-]{36}$/.test(r.id)) throw new RecordError('the record has no valid backup id');
  if (r.manifest !== `manifests/${r.id}.json`) {
    const named = typeof r.manifest === 'string' ? JSON.stringify(r.manifest.slice(0, 80)) : `a JSON ${r.manifest === null ? 'null' : Array.isArray(r.manifest) ? 'array' : typeof r.manifest}`;
    throw new RecordError(`the record names manifest ${named}, not the one of backup ${r.id}`);
  }
  if (typeof r.manifest_sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(r.manifest_sha256)) throw new RecordError('the record has no valid manifest digest');
  if (typeof r.repository_id !== 'string') throw new RecordError('the record names no repository');
  if (r.service !== undefined && r.service !== service) throw new RecordError(`the record says service ${JSON.stringify(r.service)}, but ${JSON.stringify(service)} was given`);
  return r;
}

export async function importRecord(app: Appliance, service: string, url: string): Promise<BackupRecord> {
  const { catalog, repo } = app;
  const r = parseRecord(service, url);
  const id = r.id as string;
  if (r.repository_id !== repo.config.id) {
    throw new ConflictError(`the record belongs to repository ${String(r.repository_id).slice(0, 40)}; this appliance uses repository ${repo.config.id} (${repo.store.location})`);
  }
  const existing = catalog.backups.get(id);
  if (existing && existing.status !== 'deleted') throw new ConflictError(`backup ${id} already exists here (${existing.status})`);
  const data = await repo.findManifest(id);
  if (!data) throw new ConflictError(`backup ${id} has no manifest in the repository: its data is not there (deleted, or another repository)`);
  if (createHash('sha256').update(data).digest('hex') !== r.manifest_sha256) throw new RecordError(`the manifest of backup ${id} does not match the record's digest (record tampered with, or the backup changed)`);
  const { manifest, root } = decodeManifest(data, id);
  if (manifest.repository_id !== repo.config.id) throw new ConflictError(`the manifest of backup ${id} names repository ${manifest.repository_id}, not this one`);
  const mb = manifest.backup as unknown as RawRecord;
  for (const k of CHECKED) {
    if (JSON.stringify(mb[k] ?? null) !== JSON.stringify(r[k] ?? null)) throw new RecordError(`the record's ${k} does not match the backup's manifest (record tampered with?)`);
  }
  const pages = await fetchPages(app, [manifest]);
  const page = (d: string) => pages.get(d) ?? catalog.pages.get(d)!;
  const chunks = await chunkEntries(app, manifestChunks(manifest, page));
  const volumes = new Map<string, VolumeRecord>();
  const vol = volumeFor(app, manifest, volumes);
  const rec = adoptedRecord(manifest, vol, existing ? 'revived by a record import' : 'imported from an exported record');
  const adoption: Adoption = { records: [rec], roots: new Map([[id, root]]), volumes, pages, chunks };
  await commitAdoption(app, adoption, () => {
    const now = catalog.backups.get(id);
    if (now && now.status !== 'deleted') throw new ConflictError(`backup ${id} already exists here (${now.status})`);
  });
  return catalog.backups.get(id)!;
}
