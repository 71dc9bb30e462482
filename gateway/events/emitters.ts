/**
 * blockgate's own events from the daemon's parts that know nothing of events: NBD attach and
 * detach (the export registry's log), and instant-restore sessions (start, periodic progress,
 * end). The engine emits the rest itself (gc.end, verify.end, prune.end); the job module
 * emits Cinder's backup.* / snapshot.* / volume.* notifications.
 */
import type { SessionView } from '../instant/views.js';
import type { EventBus, EventType } from './bus.js';

/** a registry log callback that also emits export.attach / export.detach */
export function exportEvents(bus: EventBus, log: (event: string, fields: Record<string, unknown>) => void): (event: string, fields: Record<string, unknown>) => void {
  return (event, fields) => {
    log(event, fields);
    if (event !== 'attach' && event !== 'detach') return;
    const name = String(fields.export ?? '');
    bus.emit(event === 'attach' ? 'export.attach' : 'export.detach', name, { export: name, ...(event === 'attach' ? { size: fields.size as number, read_only: fields.readOnly } : {}) });
  };
}

const INSTANT: Record<string, { type: EventType; status?: string }> = {
  'instant-restore-started': { type: 'instant.start', status: 'running' },
  'instant-restore-resumed': { type: 'instant.start', status: 'running' },
  'instant-restore-completed': { type: 'instant.end', status: 'completed' },
  'instant-restore-failed': { type: 'instant.end', status: 'failed' },
  'instant-restore-cancelled': { type: 'instant.end', status: 'cancelled' },
};

/** a session manager log callback that also emits instant.start / instant.end */
export function instantEvents(bus: EventBus, log: (event: string, fields: Record<string, unknown>) => void): (event: string, fields: Record<string, unknown>) => void {
  return (event, fields) => {
    log(event, fields);
    const m = INSTANT[event];
    if (!m) return;
    const { session, ...rest } = fields;
    bus.emit(m.type, String(session ?? ''), { status: m.status, ...rest });
  };
}

/** every `everyMs`, an instant.progress event per hydrating session; returns the stop function */
export function instantProgress(bus: EventBus, views: () => SessionView[], everyMs = 2000): () => void {
  const timer = setInterval(() => {
    let list: SessionView[];
    try {
      list = views();
    } catch {
      return;
    }
    for (const v of list) {
      if (v.status !== 'running' || !v.blocks_total) continue;
      bus.emit('instant.progress', v.id, { backup_id: v.backup_id, volume_id: v.volume_id, export: v.export_name, status: v.status, percent: v.percent, blocks_owned: v.blocks_owned, blocks_total: v.blocks_total });
    }
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
