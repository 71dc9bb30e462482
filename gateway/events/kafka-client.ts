/**
 * node-rdkafka, loaded on first use (a data dir with no `kafka` in its config never loads the
 * native module), and the client settings every blockgate client shares.
 */
import type * as RdKafka from 'node-rdkafka';

export type Rd = typeof RdKafka;
let loaded: Rd | undefined;

export async function rdkafka(): Promise<Rd> {
  if (!loaded) {
    const m = (await import('node-rdkafka')) as unknown as Rd & { default?: Rd };
    loaded = m.default ?? m;
  }
  return loaded;
}

/** settings of every client: where the brokers are, quick reconnects, quiet logs */
export function baseConfig(brokers: string, clientId: string): Record<string, string | number | boolean> {
  return {
    'bootstrap.servers': brokers,
    'client.id': clientId,
    'socket.keepalive.enable': true,
    'reconnect.backoff.ms': 100,
    'reconnect.backoff.max.ms': 1000,
    'topic.metadata.refresh.interval.ms': 10_000,
    'log.connection.close': false,
    log_level: 3,
  };
}

/** librdkafka error code of a thrown or reported error */
export function errCode(e: unknown): number | undefined {
  const c = (e as { code?: unknown })?.code;
  return typeof c === 'number' ? c : undefined;
}

/** librdkafka's ERR__QUEUE_FULL: the producer's local queue is full (poll, then retry) */
export const ERR_QUEUE_FULL = -184;
