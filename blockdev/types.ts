/**
 * The block-device interface: the one shape that the NBD server, the FUSE filesystem,
 * restores and filters all speak. Anything with a size and a read is a block device; the
 * optional members are offered when the device can do them. Offsets and lengths are bytes.
 * nbd/ knows nothing else about what is underneath.
 */
export interface Extent {
  offset: number;
  length: number;
  /** not allocated (reads as zeroes if `zero` is also set) */
  hole: boolean;
  /** reads as zeroes */
  zero: boolean;
}

export interface BlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface ZeroOptions {
  fua?: boolean;
  /** the device may deallocate instead of writing zeroes */
  mayTrim?: boolean;
  /** fail with ENOTSUP rather than fall back to a slow write of zeroes */
  fast?: boolean;
}

/** An error carrying an errno name the NBD server maps to a wire error (EIO, EINVAL, ENOSPC, EPERM, ENOTSUP, EROFS). */
export class BlockDeviceError extends Error {
  constructor(readonly errno: 'EIO' | 'EINVAL' | 'ENOSPC' | 'EPERM' | 'ENOTSUP' | 'EROFS' | 'EOVERFLOW' | 'ESHUTDOWN', message: string) {
    super(message);
    this.name = 'BlockDeviceError';
  }
}

export interface BlockDevice {
  /** size in bytes; fixed for the life of the open device */
  readonly size: number;
  readonly readOnly: boolean;
  /** true if several connections may share the device and see consistent data */
  readonly canMultiConn?: boolean;
  readonly blockSizes?: BlockSizes;
  read(offset: number, length: number): Promise<Buffer>;
  write?(offset: number, data: Buffer, fua?: boolean): Promise<void>;
  flush?(): Promise<void>;
  trim?(offset: number, length: number, fua?: boolean): Promise<void>;
  zero?(offset: number, length: number, opts?: ZeroOptions): Promise<void>;
  /** extents covering at least [offset, offset+1) and at most [offset, offset+length) */
  blockStatus?(offset: number, length: number): Promise<Extent[]>;
  /** hint: bring [offset, offset+length) into a cache */
  cache?(offset: number, length: number): Promise<void>;
  close?(): Promise<void>;
}
