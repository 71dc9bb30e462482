/** The part of npm `fuse-native` (CommonJS, no types of its own) that blockgate uses. */
declare module 'fuse-native' {
  type Cb<T extends unknown[] = []> = (code: number, ...rest: T) => void;
  export interface FuseOps {
    init?(cb: Cb): void;
    getattr?(path: string, cb: Cb<[unknown?]>): void;
    fgetattr?(path: string, fd: number, cb: Cb<[unknown?]>): void;
    readdir?(path: string, cb: Cb<[string[]?]>): void;
    readlink?(path: string, cb: Cb<[string?]>): void;
    open?(path: string, flags: number, cb: Cb<[number?]>): void;
    opendir?(path: string, flags: number, cb: Cb<[number?]>): void;
    release?(path: string, fd: number, cb: Cb): void;
    releasedir?(path: string, fd: number, cb: Cb): void;
    read?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytesOrErrno: number) => void): void;
    write?(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (bytesOrErrno: number) => void): void;
    statfs?(path: string, cb: Cb<[unknown?]>): void;
    access?(path: string, mode: number, cb: Cb): void;
    flush?(path: string, fd: number, cb: Cb): void;
    fsync?(path: string, fd: number, datasync: boolean, cb: Cb): void;
    fsyncdir?(path: string, fd: number, datasync: boolean, cb: Cb): void;
    truncate?(path: string, size: number, cb: Cb): void;
    ftruncate?(path: string, fd: number, size: number, cb: Cb): void;
    utimens?(path: string, atime: number, mtime: number, cb: Cb): void;
    chown?(path: string, uid: number, gid: number, cb: Cb): void;
    chmod?(path: string, mode: number, cb: Cb): void;
    mknod?(path: string, mode: number, dev: number, cb: Cb): void;
    setxattr?(path: string, name: string, value: Buffer, position: number, flags: number, cb: Cb): void;
    removexattr?(path: string, name: string, cb: Cb): void;
    create?(path: string, mode: number, cb: Cb<[number?]>): void;
    unlink?(path: string, cb: Cb): void;
    rename?(src: string, dest: string, cb: Cb): void;
    link?(src: string, dest: string, cb: Cb): void;
    symlink?(src: string, dest: string, cb: Cb): void;
    mkdir?(path: string, mode: number, cb: Cb): void;
    rmdir?(path: string, cb: Cb): void;
  }
  export interface FuseOptions {
    force?: boolean;
    mkdir?: boolean;
    timeout?: number | false | Record<string, number | false>;
    debug?: boolean;
    allowOther?: boolean;
    allowRoot?: boolean;
    autoUnmount?: boolean;
    defaultPermissions?: boolean;
    fsname?: string;
    subtype?: string;
    kernelCache?: boolean;
    autoCache?: boolean;
    maxRead?: number;
    entryTimeout?: number;
    attrTimeout?: number;
  }
  export default class Fuse {
    constructor(mnt: string, ops: FuseOps, opts?: FuseOptions);
    readonly mnt: string;
    mount(cb: (err: Error | null) => void): void;
    unmount(cb: (err: Error | null) => void): void;
    protected _fuseOptions(): string;
    static unmount(mnt: string, cb: (err: Error | null) => void): void;
  }
}
