/**
 * `blockgate backup export|import` (Cinder's export-record / import-record) and
 * `blockgate catalog rebuild` (the catalog from the repository alone).
 */
import type { Command } from 'commander';
import { RecordError, exportRecord, importRecord } from '../../gateway/engine/records-io.js';
import { rebuildCatalog } from '../../gateway/engine/rebuild.js';
import { type Globals, withApp } from './commands.js';
import { UsageError, printRecord, progressBar } from './output.js';

export function recordCommands(program: Command, g: () => Globals): void {
  const bk = program.commands.find((c) => c.name() === 'backup');
  if (!bk) throw new Error('the backup command group is missing');
  bk.command('export <backup>')
    .description("export a backup's record (Cinder's backup-export): backup_service and backup_url, for import on another appliance")
    .action((ref: string) => withApp(g(), async (app) => printRecord(g().format, await exportRecord(app, ref))));
  bk.command('import <backup_service> <backup_url>')
    .description('import an exported record (Cinder\'s backup-import): the backup becomes available here, as long as the repository holds its data')
    .action((service: string, url: string) =>
      withApp(g(), async (app) => {
        const rec = await importRecord(app, service, url).catch((e: unknown) => {
          throw e instanceof RecordError ? new UsageError(e.message) : e;
        });
        printRecord(g().format, app.catalog.view(rec));
      }),
    );
  const cat = program.command('catalog').description('the LMDB catalog, an index of the repository');
  cat
    .command('rebuild')
    .description('recreate the catalog (volumes, backups, maps, chunk index) from the repository alone, or add what a live one lacks')
    .action(() =>
      withApp(g(), async (app) => {
        const bar = progressBar('rebuild');
        try {
          printRecord(g().format, await rebuildCatalog(app, { onProgress: bar.update }));
        } finally {
          bar.stop();
        }
      }),
    );
}
