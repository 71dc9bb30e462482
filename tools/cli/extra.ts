/** Commands added by the serving features (serve, export, mount, restore sessions). */
import type { Command } from 'commander';
import type { Globals } from './commands.js';
import { serveCommands } from './serve.js';
import { repoCreateCommand } from './repo.js';
import { mountCommands } from './mount.js';
import { instantCommands } from './instant.js';
import { maintainCommands } from './maintain.js';

export function extraCommands(program: Command, g: () => Globals): void {
  serveCommands(program, g);
  repoCreateCommand(program, g);
  mountCommands(program, g);
  instantCommands(program, g);
  maintainCommands(program, g);
}
