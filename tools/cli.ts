#!/usr/bin/env node
/** The `blockgate` command line. */
import { Command, CommanderError, Option } from 'commander';
import { defaultDataDir } from '../gateway/config.js';
import { type Globals, backupCommands, repoCommands, volumeCommands } from './cli/commands.js';
import { jobCommands } from './cli/jobs.js';
import { exitCodeFor } from './cli/output.js';
import { extraCommands } from './cli/extra.js';
import { recordCommands } from './cli/records.js';
import { repoKeyCommands } from './cli/repo-keys.js';
import { tokenCommands } from './cli/tokens.js';
import { eventsCommands } from './cli/events.js';
import { nodeCommands } from './cli/nodes.js';

// belt and braces: whatever a module creates without an explicit mode is private too
process.umask(0o077);

const program = new Command();
program
  .name('blockgate')
  .description('backup gateway for block volumes: deduplicated backups you can attach, browse and restore instantly')
  .option('--data-dir <dir>', 'data directory (env BLOCKGATE_DATA_DIR, default ./blockgate-data)')
  .addOption(new Option('-f, --format <format>', 'output format').choices(['table', 'json']).default('table'))
  .showHelpAfterError()
  .exitOverride();

const globals = (): Globals => {
  const o = program.opts<{ dataDir?: string; format: 'table' | 'json' }>();
  return { dataDir: o.dataDir ?? defaultDataDir(), format: o.format };
};
volumeCommands(program, globals);
backupCommands(program, globals);
repoCommands(program, globals);
jobCommands(program, globals);
extraCommands(program, globals);
recordCommands(program, globals);
repoKeyCommands(program, globals);
tokenCommands(program, globals);
eventsCommands(program, globals);
nodeCommands(program, globals);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) process.exit(e.exitCode === 0 ? 0 : 2);
  process.stderr.write(`blockgate: error: ${e instanceof Error ? e.message : String(e)}\n`);
  if (process.env.BLOCKGATE_DEBUG && e instanceof Error) process.stderr.write(`${e.stack}\n`);
  process.exit(exitCodeFor(e));
}
