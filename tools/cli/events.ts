/**
 * `blockgate events [--follow] [--since T] [--type backup.*] [-f json]`: the embedded event
 * log of the data dir, oldest first; `--follow` keeps printing new events as they are written
 * (by the daemon or any CLI process) until interrupted. `-f json` prints one JSON event per
 * line, as they are stored and shipped to Kafka.
 */
import path from 'node:path';
import type { Command } from 'commander';
import { loadConfig } from '../../gateway/config.js';
import type { BlockgateEvent } from '../../gateway/events/bus.js';
import { EVENTS_DIR } from '../../gateway/events/log.js';
import { LogTail, typeMatcher } from '../../gateway/events/tail.js';
import type { Globals } from './commands.js';
import { UsageError } from './output.js';

/** an ISO time, or an age such as 30s, 10m, 2h, 7d */
export function parseSince(s: string, now = Date.now()): number {
  const m = /^(\d+)\s*([smhd])$/.exec(s.trim());
  if (m) return now - Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 's' | 'm' | 'h' | 'd'];
  const t = Date.parse(s);
  if (!/^\d{4}-\d\d-\d\d/.test(s.trim()) || Number.isNaN(t)) throw new UsageError(`--since ${JSON.stringify(s)}: give a time (2026-12-01T10:00:00Z) or an age (30s, 10m, 2h, 7d)`);
  return t;
}

function summary(e: BlockgateEvent): string {
  const p = e.payload ?? {};
  const parts: string[] = [];
  for (const k of ['status', 'percent', 'volume_id', 'export', 'fail_reason', 'error']) {
    const v = (p as Record<string, unknown>)[k];
    if (v !== undefined && v !== null && v !== '') parts.push(`${k}=${typeof v === 'object' ? JSON.stringify(v) : String(v)}`);
  }
  return parts.join(' ');
}

export function eventsCommands(program: Command, g: () => Globals): void {
  program
    .command('events')
    .description('the event log: what the appliance did (Cinder notification names plus export, instant, gc, verify events)')
    .option('--follow', 'keep printing new events until interrupted')
    .option('--since <time>', 'only events from then on: a time (ISO 8601) or an age (30s, 10m, 2h, 7d)')
    .option('--type <patterns>', 'only these types, * as a wildcard, several separated by commas (backup.*,gc.end)')
    .action(async (o: { follow?: boolean; since?: string; type?: string }) => {
      const since = o.since !== undefined ? parseSince(o.since) : undefined;
      if (o.type !== undefined && !/^[A-Za-z0-9._*,\s-]+$/.test(o.type)) throw new UsageError(`--type ${JSON.stringify(o.type)}: event types are letters, digits, '.', '_' and '-' with * as a wildcard`);
      const match = typeMatcher(o.type);
      const json = g().format === 'json';
      const dir = path.join(loadConfig(g().dataDir).dataDir, EVENTS_DIR);
      const tail = new LogTail(dir, 'start');
      const print = (e: BlockgateEvent) => {
        if (!match(e.type) || (since !== undefined && Date.parse(e.time) < since)) return;
        process.stdout.write(json ? `${JSON.stringify(e)}\n` : `${e.time}  ${e.type.padEnd(24)} ${e.resource.padEnd(36)} ${e.node.padEnd(12)} ${summary(e)}\n`);
      };
      const drain = () => {
        for (let items = tail.read(); items.length; items = tail.read()) for (const { event } of items) print(event);
      };
      drain();
      if (!o.follow) {
        tail.close();
        return;
      }
      await new Promise<void>((resolve) => {
        const timer = setInterval(drain, 200);
        const stop = () => {
          clearInterval(timer);
          tail.close();
          resolve();
        };
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
        process.stdout.once('error', stop); // a closed pipe (| head)
      });
    });
}
