/** `blockgate serve` (the daemon) and `blockgate export list`. */
import type { Command } from 'commander';
import { Appliance } from '../../gateway/appliance.js';
import { loadConfig } from '../../gateway/config.js';
import { checkName } from '../../gateway/names.js';
import { Daemon, InsecureListenError, makeLogger, nbdUris } from '../../gateway/daemon.js';
import { DEFAULT_API_PORT, apiSection, startService } from '../../gateway/api/install.js';
import { InsecureApiError } from '../../gateway/api/server.js';
import { BackupExports, OVERLAY_SUFFIX, type OverlaySaveRequest, overlaySaveKey } from '../../gateway/exports/backups.js';
import { ConflictError, NotFoundError } from '../../catalog/catalog.js';
import { SessionStore } from '../../catalog/sessions.js';
import { installInstantRestore } from '../../gateway/instant/daemon.js';
import { installNode } from '../../gateway/nodes/node.js';
import { type Globals, withApp } from './context.js';
import { UsageError, printRecord, printRows } from './output.js';

export function serveCommands(program: Command, g: () => Globals): void {
  program
    .command('serve')
    .description('run the appliance daemon: every backup attachable over NBD (TCP and unix socket)')
    .option('--nbd-host <host>', 'address to listen on')
    .option('--nbd-port <port>', 'TCP port (default 10809)')
    .option('--nbd-socket <path>', 'unix socket path ("" for none)')
    .option('--tls-cert <file>', 'x509 certificate (PEM) for NBD TLS')
    .option('--tls-key <file>', 'private key (PEM) for NBD TLS')
    .option('--tls-ca <file>', 'CA to verify client certificates')
    .option('--tls-required', 'refuse clients that do not start TLS')
    .option('--node <name>', 'this node\'s name in a cluster of nodes sharing the repository and Kafka (default: node in blockgate.json, or the host name)')
    .option('--api-host <host>', 'address of the Cinder v3 API (default 127.0.0.1)')
    .option('--api-port <port>', `TCP port of the API (default ${DEFAULT_API_PORT}; 0 = any free port)`)
    .option('--api-tls-cert <file>', 'x509 certificate (PEM): serve the API over HTTPS')
    .option('--api-tls-key <file>', 'its private key (PEM)')
    .option('--workers <n>', 'backups, restores and deletes run at once (Cinder backup_max_operations; default 2)')
    .action(async (o: { node?: string; nbdHost?: string; nbdPort?: string; nbdSocket?: string; tlsCert?: string; tlsKey?: string; tlsCa?: string; tlsRequired?: boolean; apiHost?: string; apiPort?: string; apiTlsCert?: string; apiTlsKey?: string; workers?: string }) => {
      const cfg = loadConfig(g().dataDir);
      if (o.node !== undefined) cfg.node = checkName('node', o.node);
      const log = makeLogger(cfg.logLevel);
      const api = apiSection((cfg as unknown as { api?: unknown }).api, cfg.dataDir);
      if (!!o.apiTlsCert !== !!o.apiTlsKey) throw new UsageError('--api-tls-cert and --api-tls-key go together');
      const int = (v: string | undefined, what: string, min: number, max: number) => {
        if (v === undefined) return undefined;
        const n = Number(v);
        if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`${what} must be a whole number from ${min} to ${max}`);
        return n;
      };
      const apiPort = int(o.apiPort, '--api-port', 0, 65535) ?? api.port;
      const service = {
        host: o.apiHost ?? api.host ?? '127.0.0.1',
        port: apiPort ?? DEFAULT_API_PORT,
        portExplicit: apiPort !== undefined,
        tls: o.apiTlsCert && o.apiTlsKey ? { cert: o.apiTlsCert, key: o.apiTlsKey } : api.tls,
        workers: int(o.workers, '--workers', 1, 64) ?? api.workers ?? 2,
        maxQueued: api.maxQueued ?? 64,
      };
      if ((o.tlsCert && !o.tlsKey) || (!o.tlsCert && o.tlsKey)) throw new UsageError('--tls-cert and --tls-key go together');
      // options override nbd.tls of blockgate.json
      const fileTls = cfg.nbd.tls;
      const tls = o.tlsCert && o.tlsKey ? { cert: o.tlsCert, key: o.tlsKey, ca: o.tlsCa ?? fileTls?.ca, required: o.tlsRequired ?? fileTls?.required } : fileTls ? { ...fileTls, ...(o.tlsCa ? { ca: o.tlsCa } : {}), ...(o.tlsRequired ? { required: true } : {}) } : undefined;
      if (!tls && (o.tlsCa || o.tlsRequired)) throw new UsageError('--tls-ca and --tls-required need --tls-cert and --tls-key (or nbd.tls in blockgate.json)');
      const app = await Appliance.open(cfg);
      app.shipEvents((level, fields, msg) => log[level](fields, msg));
      const daemon = new Daemon(
        app,
        {
          host: o.nbdHost ?? cfg.nbd.host,
          port: o.nbdPort !== undefined ? Number(o.nbdPort) : cfg.nbd.port,
          socket: o.nbdSocket ?? cfg.nbd.socket,
          tls,
        },
        log,
      );
      try {
        await daemon.preflight();
      } catch (e) {
        await app.close();
        throw e instanceof InsecureListenError ? new UsageError(e.message) : e;
      }
      // signals are caught before the daemon says it listens, so an early SIGTERM still stops it cleanly
      const stopped = new Promise<void>((resolve) => {
        const stop = (sig: string) => {
          log.info({ event: 'signal', signal: sig }, `received ${sig}`);
          resolve();
        };
        process.once('SIGINT', () => stop('SIGINT'));
        process.once('SIGTERM', () => stop('SIGTERM'));
      });
      // the daemon's features, registered explicitly
      await installInstantRestore(daemon);
      await installNode(daemon);
      await daemon.start();
      let svc: Awaited<ReturnType<typeof startService>>;
      try {
        svc = await startService(daemon, service);
      } catch (e) {
        await daemon.stop();
        await app.close();
        throw e instanceof InsecureApiError ? new UsageError(e.message) : e;
      }
      await stopped;
      await svc.stop();
      await daemon.stop();
      await app.close();
      log.info({ event: 'stopped' }, 'stopped');
    });

  const exp = program.command('export').description('NBD exports');
  exp
    .command('save <export>')
    .description('keep the writes of an attached +overlay export: saved as a new backup of the volume when its last client disconnects')
    .requiredOption('--name <name>', 'name of the new backup')
    .option('--description <text>')
    .action((name: string, o: { name: string; description?: string }) =>
      withApp(g(), async (app) => {
        const src = new BackupExports(app, { read: () => Promise.reject(new Error('not for reading')) });
        const b = name.endsWith(OVERLAY_SUFFIX) ? src.resolve(name.slice(0, -OVERLAY_SUFFIX.length)) : undefined;
        if (!b) throw new NotFoundError('overlay export', name);
        const attached = app.catalog.readerLeases(b.id).find((l) => l.startsWith(`nbd-overlay:${b.id}:`));
        if (!attached) {
          throw new ConflictError(`${name} is not attached: its writes live only while a client is connected (attach, write, then save before disconnecting)`);
        }
        // bound to the overlay attached now: a later overlay of the same backup never picks it up
        const req: OverlaySaveRequest = { name: o.name, description: o.description ?? '', requested_at: new Date().toISOString(), overlay: attached.split(' ')[0] };
        app.catalog.meta.putSync(overlaySaveKey(b.id), req);
        printRecord(g().format, { export: name, backup: b.id, saved_as: o.name, when: 'the last client disconnects' });
      }),
    );
  exp
    .command('list')
    .description('every export with its nbd:// and nbd+unix:// URIs')
    .action(() =>
      withApp(g(), async (app) => {
        const src = new BackupExports(app, { read: () => Promise.reject(new Error('listing only')) });
        const { host, port, socket } = app.config.nbd;
        const rows = src.list().map((e) => {
          const b = src.resolve(e.name.replace(/\+overlay$/, ''))!;
          const u = nbdUris(host, port, socket, e.name);
          return { name: e.name, backup: b.id, writable: e.name.endsWith('+overlay'), uri: u.tcp, unix_uri: u.unix };
        });
        // instant-restore targets the daemon serves
        for (const s of new SessionStore(app.catalog.env).list().filter((x) => x.attached)) {
          const u = nbdUris(host, port, socket, s.export_name);
          rows.push({ name: s.export_name, backup: s.backup_id, writable: true, uri: u.tcp, unix_uri: u.unix });
        }
        printRows(g().format, rows, ['name', 'backup', 'writable', 'uri', 'unix_uri']);
      }),
    );
}
