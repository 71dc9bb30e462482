/**
 * What an export offers, derived only from which optional members its block device has:
 * transmission flags and size constraints. Used by the handshake (INFO/GO/EXPORT_NAME)
 * and by the request checks in the transmission phase, so both always agree.
 */
import type { BlockDevice } from '../blockdev/types.js';
import { TF } from './protocol.js';

export interface ExportCaps {
  size: number;
  flags: number;
  writable: boolean;
  minBlock: number;
  preferredBlock: number;
  maxPayload: number;
}

/** largest export size we describe: 2^63 - 1 does not fit a JS number; 2^53 is plenty */
const MAX_EXPORT_SIZE = Number.MAX_SAFE_INTEGER;

const isPow2 = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

/** Throws if the device does not describe a usable export. */
/** `readOnly`: serve a writable device read-only (the client may not write to it). */
export function exportCaps(dev: BlockDevice, structured: boolean, maxRequestBytes: number, readOnly = false): ExportCaps {
  const size = dev.size;
  if (!Number.isSafeInteger(size) || size < 0 || size > MAX_EXPORT_SIZE) {
    throw new Error(`device reports an invalid size: ${String(size)}`);
  }
  if (typeof dev.read !== 'function') throw new Error('device has no read()');
  const writable = !readOnly && !dev.readOnly && typeof dev.write === 'function';
  let flags = TF.HAS_FLAGS;
  if (!writable) flags |= TF.READ_ONLY;
  if (typeof dev.flush === 'function') flags |= TF.SEND_FLUSH;
  // FUA is passed down to write/trim/zero; a device with a volatile cache has flush()
  if (writable && typeof dev.flush === 'function') flags |= TF.SEND_FUA;
  if (writable && typeof dev.trim === 'function') flags |= TF.SEND_TRIM;
  // WRITE_ZEROES: native with zero(), else emulated with writes; FAST_ZERO then fails fast with ENOTSUP
  if (writable) flags |= TF.SEND_WRITE_ZEROES | TF.SEND_FAST_ZERO;
  if (structured) flags |= TF.SEND_DF;
  if (dev.canMultiConn) flags |= TF.CAN_MULTI_CONN;
  if (typeof dev.cache === 'function') flags |= TF.SEND_CACHE;

  let min = 1;
  let preferred = 4096;
  let max = maxRequestBytes;
  const bs = dev.blockSizes;
  if (bs) {
    if (isPow2(bs.minimum) && bs.minimum <= 65536) min = bs.minimum;
    if (isPow2(bs.preferred) && bs.preferred >= Math.max(min, 512)) preferred = bs.preferred;
    else preferred = Math.max(preferred, min);
    if (Number.isInteger(bs.maximum) && bs.maximum > 0) max = Math.min(max, bs.maximum);
  }
  if (preferred > max) {
    let p = Math.max(min, 512);
    while (p * 2 <= max) p *= 2;
    preferred = p;
  }
  if (max < preferred) max = preferred;
  // the maximum payload must be a multiple of the minimum block so aligned requests fit
  max -= max % min;
  return { size, flags, writable, minBlock: min, preferredBlock: preferred, maxPayload: max };
}
