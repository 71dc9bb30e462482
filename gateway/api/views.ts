/**
 * The JSON the API returns, in Cinder's shapes (field sets of real Cinder at 3.70; fields that
 * need a newer microversion only from it). Every list item of a kind comes from one
 * serializer, so all items have the same keys (cinderclient's tables need that).
 */
import type { SnapshotRecord } from '../../catalog/snapshots.js';
import type { BackupRecord, VolumeRecord } from '../../catalog/records.js';
import type { Microversion } from './microversion.js';
import { atLeast } from './microversion.js';

export interface LinkBase {
  /** scheme://host:port of the request, and its project prefix */
  origin: string;
  project: string;
}

function links(l: LinkBase, kind: string, id: string) {
  return [
    { rel: 'self', href: `${l.origin}/v3/${l.project}/${kind}/${id}` },
    { rel: 'bookmark', href: `${l.origin}/${l.project}/${kind}/${id}` },
  ];
}

/** Cinder's timestamps: no zone letter, microseconds */
export function ts(iso: string | null | undefined): string | null {
  if (!iso) return null;
  return iso.replace(/Z$/, '').replace(/\.(\d{3})$/, '.$1000');
}

export const backupSummary = (b: BackupRecord, l: LinkBase) => ({ id: b.id, name: b.name, links: links(l, 'backups', b.id) });

export function backupDetail(b: BackupRecord, l: LinkBase, v: Microversion, hasDependents: boolean) {
  return {
    id: b.id,
    status: b.status,
    size: b.size,
    object_count: b.object_count,
    availability_zone: b.availability_zone,
    container: b.container,
    created_at: ts(b.created_at),
    updated_at: ts(b.updated_at),
    name: b.name,
    description: b.description || null,
    fail_reason: b.fail_reason,
    volume_id: b.volume_id,
    links: links(l, 'backups', b.id),
    is_incremental: b.is_incremental,
    has_dependent_backups: hasDependents,
    snapshot_id: b.snapshot_id,
    data_timestamp: ts(b.data_timestamp),
    ...(atLeast(v, 18) ? { 'os-backup-project-attr:project_id': b.project_id } : {}),
    ...(atLeast(v, 43) ? { metadata: b.metadata ?? {} } : {}),
    ...(atLeast(v, 56) ? { user_id: b.user_id } : {}),
    ...(atLeast(v, 64) ? { encryption_key_id: null } : {}),
  };
}

export function volumeDetail(x: VolumeRecord, l: LinkBase, host: string) {
  return {
    id: x.id,
    status: x.status,
    size: Math.ceil(x.size / 1024 ** 3),
    availability_zone: 'nova',
    created_at: ts(x.created_at),
    updated_at: ts(x.updated_at),
    attachments: [] as unknown[],
    name: x.name,
    description: x.description ?? null,
    volume_type: x.driver === 'rbd' ? 'rbd' : '__DEFAULT__',
    snapshot_id: null,
    source_volid: null,
    metadata: {},
    links: links(l, 'volumes', x.id),
    user_id: x.user_id,
    bootable: 'false',
    encrypted: false,
    replication_status: null,
    consistencygroup_id: null,
    multiattach: false,
    'os-vol-tenant-attr:tenant_id': x.project_id,
    'os-vol-host-attr:host': `${host}@${x.driver}#${x.driver}`,
    group_id: null,
    provider_id: null,
    service_uuid: null,
    shared_targets: false,
    cluster_name: null,
    consumes_quota: true,
    migration_status: null,
  };
}

export const volumeSummary = (x: VolumeRecord, l: LinkBase) => ({ id: x.id, name: x.name, links: links(l, 'volumes', x.id) });

export function snapshotDetail(s: SnapshotRecord) {
  return {
    id: s.id,
    status: s.status,
    size: s.size,
    volume_id: s.volume_id,
    name: s.name,
    description: s.description,
    created_at: ts(s.created_at),
    updated_at: ts(s.updated_at),
    metadata: s.metadata,
    'os-extended-snapshot-attributes:project_id': s.project_id,
    'os-extended-snapshot-attributes:progress': s.status === 'available' ? '100%' : '0%',
    group_snapshot_id: null,
    user_id: s.user_id,
    consumes_quota: true,
  };
}

export const snapshotSummary = (s: SnapshotRecord) => ({ id: s.id, status: s.status, size: s.size, volume_id: s.volume_id, name: s.name, description: s.description, created_at: ts(s.created_at), metadata: s.metadata });
