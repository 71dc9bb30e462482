/** Volumes on Ceph RBD: registering an image (creating it first when a size is given). */
import { ConflictError } from '../../catalog/catalog.js';
import type { VolumeRecord } from '../../catalog/records.js';
import { RbdError, RbdVolume, parseRbdSpec } from '../../drivers/volume/rbd.js';
import type { Appliance } from '../appliance.js';

export interface RbdVolumeOptions {
  /** POOL/IMAGE */
  rbd: string;
  /** create the image with this size (`rbd create`); absent: the image must exist */
  size?: number;
  cephConf?: string;
  cephUser?: string;
}

/** Registers an RBD image as a volume (creating it first when a size is given). */
export async function createRbdVolume(app: Appliance, name: string, opts: RbdVolumeOptions, ids: { project_id: string; user_id: string }): Promise<VolumeRecord> {
  const { pool, image } = parseRbdSpec(opts.rbd);
  const spec = `${pool}/${image}`;
  const vol = new RbdVolume(spec, { conf: opts.cephConf, user: opts.cephUser ?? app.config.cephUser });
  let size: number;
  let created = false;
  if (opts.size !== undefined) {
    if (await vol.exists()) throw new ConflictError(`RBD image ${spec} already exists; leave out --size to register it as it is`);
    await RbdVolume.create(spec, opts.size, vol.options);
    created = true;
    size = opts.size;
  } else {
    try {
      size = await vol.size();
    } catch (e) {
      if (e instanceof RbdError && e.errno === 2) throw new RbdError(`RBD image ${spec} does not exist; create it, or give --size to let blockgate create it`, 2);
      throw e;
    }
  }
  try {
    // blockgate never removes an RBD image with its volume: managed stays false
    return app.catalog.addVolume({
      name,
      driver: 'rbd',
      path: spec,
      size,
      status: 'available',
      managed: false,
      ...ids,
      ceph_conf: vol.options.conf ?? null,
      ceph_user: vol.options.user ?? null,
    });
  } catch (e) {
    if (created) await vol.remove().catch(() => undefined);
    throw e;
  }
}
