/** Commands added by the serving features (serve, export, mount, restore sessions). */
import type { Command } from 'commander';
import type { Globals } from './commands.js';

export function extraCommands(_program: Command, _g: () => Globals): void {}
