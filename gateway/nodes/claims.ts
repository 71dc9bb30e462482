/**
 * Who runs a cluster job, decided in the shared repository (the one place every node reaches
 * with read-after-write consistency), so that no job ever runs twice even when Kafka delivers
 * its message twice (a producer retry, a rebalance, a node that was slow rather than dead):
 *
 *   jobs/<job-id>/claim-<token>.json   a node's claim: {node, token, heartbeat}, renewed while it runs
 *   jobs/<job-id>/done.json            the outcome: {status, node, fail_reason, at}; the job never runs again
 *
 * To claim, a node writes its claim, then lists the job's claims. It runs the job only if its
 * own is the only one. Two nodes cannot both win: each wrote before it listed, so whichever
 * listed second saw the other's claim. When both see both, both withdraw and retry after a
 * random pause. A claim is a lost node's only when both hold: it was not renewed for the node
 * timeout, and its node is known dead (no heartbeat on the nodes topic for the node timeout, or
 * a heartbeat from a new instance of it: a restart). A node that is merely slow to renew (a
 * loaded machine, a slow repository) but still heartbeats keeps its job. A lost node's job is
 * ended by whoever finds it (the caller decides how), at the latest by its submitting node,
 * which looks at every job it forwarded each time its catalog follows the repository.
 *
 *   jobs/<job-id>/cancel.json          a request to cancel (a force-delete on another node): the
 *                                      node running the job sees it when it renews its claim
 */
import { randomBytes } from 'node:crypto';
import type { ObjectStore } from '../../drivers/store/types.js';

export interface Claim {
  node: string;
  token: string;
  heartbeat: number;
  /** the claiming process (its heartbeats' pid and start); a restarted node is a new instance */
  instance?: string;
}

/** is this node (that instance of it, when given) alive now, by its heartbeats */
export type Liveness = (node: string, instance?: string) => boolean;

export interface CancelRequest {
  reason: string;
  /** a force-delete: the backup ends deleted (not error) */
  delete?: boolean;
  node: string;
  at: string;
}

export interface Outcome {
  status: 'done' | 'error' | 'cancelled';
  node: string;
  fail_reason: string | null;
  at: string;
  /** the backup's status where it ran (`deleted`: cancelled by a force-delete) */
  backup_status?: string;
}

export type ClaimResult = { won: true; claim: Claim } | { won: false; done: Outcome } | { won: false; busy: Claim } | { won: false; lost: Claim[] };

const prefix = (jobId: string) => `jobs/${jobId}/`;
const JOB_ID_RE = /^[0-9a-f-]{36}$/;

export class JobClaims {
  constructor(
    private readonly store: ObjectStore,
    private readonly node: string,
    private readonly timeoutMs: number,
    private readonly instance?: string,
    private readonly alive: Liveness = () => false,
  ) {}

  /** how often a running job's claim is renewed: well within the timeout */
  get renewMs(): number {
    return Math.max(100, Math.min(1000, Math.floor(this.timeoutMs / 3)));
  }

  /** a claim is lost: not renewed for the node timeout, and its node (that instance of it) is not alive */
  private lost(c: Claim): boolean {
    return Date.now() - c.heartbeat >= this.timeoutMs && !this.alive(c.node, c.instance);
  }

  outcome(jobId: string): Promise<Outcome | null> {
    return this.readJson<Outcome>(`${prefix(jobId)}done.json`);
  }

  /**
   * The claims of a job that nobody runs any more: every claim on it is lost (none when it has
   * none, or when any is live). The job may then be ended by the caller.
   */
  async lostClaims(jobId: string): Promise<Claim[]> {
    const all = await this.claims(jobId);
    return all.length && all.every((c) => this.lost(c)) ? all : [];
  }

  async requestCancel(jobId: string, reason: string, del = false): Promise<void> {
    const r: CancelRequest = { reason, ...(del ? { delete: true } : {}), node: this.node, at: new Date().toISOString() };
    await this.store.put(`${prefix(jobId)}cancel.json`, Buffer.from(JSON.stringify(r)));
  }

  async cancelRequest(jobId: string): Promise<CancelRequest | null> {
    return this.readJson<CancelRequest>(`${prefix(jobId)}cancel.json`);
  }

  private async readJson<T>(name: string): Promise<T | null> {
    try {
      return JSON.parse((await this.store.get(name)).toString()) as T;
    } catch (e) {
      if ((e as { code?: string }).code === 'ENOENT' || /not ?found|NoSuchKey/i.test((e as Error).message)) return null;
      throw e;
    }
  }

  private async claims(jobId: string): Promise<Claim[]> {
    const out: Claim[] = [];
    for await (const name of this.store.list(prefix(jobId))) {
      if (!/\/claim-[0-9a-f]+\.json$/.test(name)) continue;
      try {
        out.push(JSON.parse((await this.store.get(name)).toString()) as Claim);
      } catch {
        /* withdrawn meanwhile */
      }
    }
    return out;
  }

  private put(jobId: string, c: Claim): Promise<void> {
    return this.store.put(`${prefix(jobId)}claim-${c.token}.json`, Buffer.from(JSON.stringify(c)));
  }

  async claim(jobId: string, attempts = 8): Promise<ClaimResult> {
    if (!JOB_ID_RE.test(jobId)) throw new Error(`not a job id: ${JSON.stringify(jobId)}`);
    for (let i = 0; i < attempts; i++) {
      const done = await this.outcome(jobId);
      if (done) return { won: false, done };
      const mine: Claim = { node: this.node, token: randomBytes(12).toString('hex'), heartbeat: Date.now(), ...(this.instance ? { instance: this.instance } : {}) };
      await this.put(jobId, mine);
      const others = (await this.claims(jobId)).filter((c) => c.token !== mine.token);
      if (!others.length) {
        // a node may have finished it between our outcome check and our claim
        if (await this.outcome(jobId)) {
          await this.release(jobId, mine);
          continue;
        }
        return { won: true, claim: mine };
      }
      await this.release(jobId, mine);
      const live = others.filter((c) => !this.lost(c));
      if (!live.length) return { won: false, lost: others };
      // someone else holds it (or is claiming it right now): back off, look again
      if (i === attempts - 1) return { won: false, busy: live[0]! };
      await new Promise((r) => setTimeout(r, 100 + Math.random() * 400));
    }
    const done = await this.outcome(jobId);
    if (done) return { won: false, done };
    const c = (await this.claims(jobId))[0];
    return c ? { won: false, busy: c } : { won: false, lost: [] };
  }

  /** keeps a won claim alive */
  renew(jobId: string, c: Claim): Promise<void> {
    c.heartbeat = Date.now();
    return this.put(jobId, c);
  }

  async release(jobId: string, c: Claim): Promise<void> {
    await this.store.delete(`${prefix(jobId)}claim-${c.token}.json`).catch(() => undefined);
  }

  /** records the outcome (the job never runs again) and withdraws the given claims */
  async finish(jobId: string, o: Omit<Outcome, 'at' | 'node'>, claims: Claim[] = []): Promise<Outcome> {
    const out: Outcome = { ...o, node: this.node, at: new Date().toISOString() };
    await this.store.put(`${prefix(jobId)}done.json`, Buffer.from(JSON.stringify(out)));
    for (const c of claims) await this.release(jobId, c);
    return out;
  }
}
