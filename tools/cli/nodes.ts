/**
 * `blockgate service list`: every node with up/down from the heartbeats, as this data dir's
 * daemon last saw them (Cinder's `openstack volume service list` for the backup service).
 */
import os from 'node:os';
import type { Command } from 'commander';
import { loadConfig } from '../../gateway/config.js';
import { readServiceList } from '../../gateway/nodes/heartbeat.js';
import type { Globals } from './commands.js';
import { printRows } from './output.js';

export function nodeCommands(program: Command, g: () => Globals): void {
  const svc = program.command('service').description('the nodes of this appliance (several daemons sharing one repository and Kafka)');
  svc
    .command('list')
    .description('every node with up/down from its heartbeats (as the daemon of this data dir sees them)')
    .action(() => {
      const cfg = loadConfig(g().dataDir);
      const rows = readServiceList(cfg.dataDir, cfg.node ?? os.hostname()).map((r) => ({ binary: 'blockgate-backup', ...r }));
      printRows(g().format, rows, ['binary', 'node', 'host', 'status', 'last_heartbeat', 'running', 'workers']);
    });
}
