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
 * random pause. A claim whose node stopped renewing it (heartbeat older than the node timeout)
 * is a lost node's: the job is then ended by whoever finds it (the caller decides how).
 */
import { randomBytes } from 'node:crypto';
import type { ObjectStore } from '../../drivers/store/types.js';

export interface Claim {
  node: string;
  token: string;
  heartbeat: number;
}

export interface Outcome {
  status: 'done' | 'error' | 'cancelled';
  node: string;
  fail_reason: string | null;
  at: string;
}

export type ClaimResult = { won: true; claim: Claim } | { won: false; done: Outcome } | { won: false; busy: Claim } | { won: false; lost: Claim[] };

const prefix = (jobId: string) => `jobs/${jobId}/`;
const JOB_ID_RE = /^[0-9a-f-]{36}$/;

export class JobClaims {
  constructor(
    private readonly store: ObjectStore,
    private readonly node: string,
    private readonly timeoutMs: number,
  ) {}

  async outcome(jobId: string): Promise<Outcome | null> {
    try {
      return JSON.parse((await this.store.get(`${prefix(jobId)}done.json`)).toString()) as Outcome;
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
      const mine: Claim = { node: this.node, token: randomBytes(12).toString('hex'), heartbeat: Date.now() };
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
      const live = others.filter((c) => Date.now() - c.heartbeat < this.timeoutMs);
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
