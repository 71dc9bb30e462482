/** The submitting node's side of a forwarded job (gateway/nodes/jobs.ts): settled from the repository. */
import type { Appliance } from '../appliance.js';
import { decodeManifest } from '../../catalog/manifest.js';
import { writerLive } from '../../drivers/coordination.js';
import { type Adoption, adoptedRecord, commitAdoption, manifestIndex } from '../engine/adopt.js';
import { backupPayload, endBackingUp } from '../jobs/handlers.js';
import type { JobService } from '../jobs/service.js';
import type { JobClaims, Outcome } from './claims.js';
import type { ClusterJobQueue, ClusterQueueOptions } from './jobs.js';

/**
 * The submitting node settles a forwarded job from the repository: the backup committed
 * elsewhere (its manifest) becomes `available` here with its map; an outcome without a
 * manifest ends it `error` (or cancelled) with the outcome's fail_reason. Job, quota and the
 * volume's `backing-up` are settled as the handlers do. Returns the jobs settled.
 */
export async function settleForwarded(app: Appliance, jobs: JobService, q: ClusterJobQueue, claims: JobClaims, log: ClusterQueueOptions['log']): Promise<number> {
  const { catalog } = app;
  let n = 0;
  for (const job of jobs.store.active()) {
    if (!job.params?.cluster || job.params.origin || job.kind !== 'backup') continue;
    if (q.runsHere(job.id)) continue;
    const b = catalog.backups.get(job.backup_id);
    // a repository that cannot answer throws: the follower's next sync tries again (never read as not committed)
    let manifest = await app.repo.findManifest(job.backup_id);
    // a manifest whose writer still holds its lease is not settled yet (its writer may still
    // remove it: a GC epoch changed under it), as a catalog rebuild leaves it: the next round takes it
    if (manifest && b?.status === 'creating') {
      const { manifest: m } = decodeManifest(manifest, job.backup_id);
      if (m.writer && (await writerLive(app.repo.store, m.writer))) continue;
    }
    let outcome: Outcome | null = manifest ? null : await claims.outcome(job.id);
    // the running node records its outcome after its manifest: read the manifest again, so one
    // written between the first read and the outcome is not missed (a backup committed there
    // would be ended `error` here, or a force-deleted one keep its manifest and stay available there)
    if (!manifest && outcome) manifest = await app.repo.findManifest(job.backup_id);
    let lostHere = false;
    if (!manifest && !outcome) {
      // claimed by a node that died (its claim expired and its heartbeats stopped): ended here, at once
      const lost = await claims.lostClaims(job.id);
      if (!lost.length) continue;
      const nodes = [...new Set(lost.map((c) => c.node))].join(', ');
      const reason = `node ${nodes} was lost while it ran this backup`;
      outcome = await claims.finish(job.id, { status: 'error', fail_reason: reason }, lost);
      lostHere = true;
      log('warn', { event: 'job-lost-node', job: job.id, backup: job.backup_id, node: nodes }, reason);
    }
    if (b && b.status === 'deleting') {
      // force-deleted here while it ran elsewhere: stopped there, or committed before it saw the request (then deleted now)
      if (manifest) await app.repo.deleteManifest(b.id);
      const reason = 'cancelled by delete --force';
      const out = catalog.transition(b.id, ['deleting'], 'deleted', { owner: null, fail_reason: reason });
      catalog.maps.remove(b.id);
      catalog.unregisterWriter(b.id);
      // the node that stopped it said so already
      if (outcome?.backup_status !== 'deleted') app.events.emit('backup.delete.end', b.id, backupPayload(out));
      q.end(job.id, 'cancelled', reason);
      log('info', { event: 'forwarded-settled', job: job.id, backup: b.id, status: 'deleted', committed: !!manifest }, `backup ${b.id}, force-deleted while it ran on another node, is deleted${manifest ? ' (it had committed: its manifest is removed)' : ''}`);
    } else if (manifest && b && b.status !== 'available') {
      const { manifest: m, root } = decodeManifest(manifest, job.backup_id);
      const t0 = Date.now();
      // its pages and its chunks' index entries, so backups here deduplicate onto them
      const { pages, chunks } = await manifestIndex(app, m);
      const vol = catalog.volumes.get(m.volume.id) ?? catalog.volumes.get(b.volume_id)!;
      const rec = adoptedRecord(m, vol, 'committed by another node of the cluster');
      const a: Adoption = { records: [rec], roots: new Map([[rec.id, root]]), volumes: new Map(), pages, chunks };
      await commitAdoption(app, a);
      catalog.unregisterWriter(b.id);
      q.end(job.id, 'done', null);
      log('info', { event: 'forwarded-settled', job: job.id, backup: b.id, status: 'available', ms: Date.now() - t0 }, `backup ${b.id}, run by another node, is available`);
    } else if (!manifest && outcome && b && b.status === 'creating') {
      log('info', { event: 'forwarded-settled', job: job.id, backup: b.id, status: outcome.status, node: outcome.node }, `backup ${b.id} ended ${outcome.status} on node ${outcome.node}: ${outcome.fail_reason ?? ''}`);
      const out = catalog.transition(b.id, ['creating'], 'error', { owner: null, fail_reason: outcome.fail_reason ?? `ended ${outcome.status} on node ${outcome.node}` });
      catalog.unregisterWriter(b.id);
      if (lostHere) app.events.emit('backup.create.error', b.id, backupPayload(out));
      q.end(job.id, outcome.status === 'cancelled' ? 'cancelled' : 'error', outcome.fail_reason);
    } else {
      q.end(job.id, manifest ? 'done' : 'error', outcome?.fail_reason ?? null);
    }
    jobs.quotas.end(job.reservation);
    endBackingUp(app, job.volume_id ?? '', job.backup_id);
    n++;
  }
  return n;
}

