import { canonicalJson } from './canonical.js';
import type { TrustFile } from './trust.js';

/**
 * The trust initrd: a tiny uncompressed cpio archive ("newc", the format the kernel unpacks into its
 * rootfs: Documentation/driver-api/early-userspace/buffer-format.rst) holding etc/deskfuse/trust.json.
 * iPXE loads it after the boot stage's initramfs; the kernel unpacks both in order, so it lays the
 * server's current keys over whatever the build embedded, and a key made or rotated after the build
 * reaches endpoints without rebuilding the initramfs.
 *
 *   entry:  "070701" + 13 fields of 8 hex digits (ino mode uid gid nlink mtime filesize devmajor
 *           devminor rdevmajor rdevminor namesize check) + name + NUL, padded to 4; data, padded to 4
 *   end:    an entry named "TRAILER!!!"
 *
 * Deterministic (mtime 0, owner root, inode numbers from 1): the same keys make the same bytes, so
 * its URL can be named by its hash like the stage files'.
 */
export interface CpioEntry {
  name: string;
  /** 0o040000 | perms: a directory; 0o100000 | perms: a regular file. */
  mode: number;
  data?: Buffer;
}

const pad4 = (n: number) => (4 - (n % 4)) % 4;
const hex8 = (n: number) => n.toString(16).padStart(8, '0');

export function newcArchive(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const add = (ino: number, e: CpioEntry) => {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(`${e.name}\0`, 'utf8');
    const isDir = (e.mode & 0o170000) === 0o040000;
    const fields = [ino, e.mode, 0, 0, isDir ? 2 : 1, 0, data.length, 0, 0, 0, 0, name.length, 0];
    const head = Buffer.from(`070701${fields.map(hex8).join('')}`, 'ascii');
    parts.push(head, name, Buffer.alloc(pad4(head.length + name.length)), data, Buffer.alloc(pad4(data.length)));
  };
  entries.forEach((e, i) => add(i + 1, e));
  add(0, { name: 'TRAILER!!!', mode: 0 });
  return Buffer.concat(parts);
}

export function trustInitrd(trust: TrustFile): Buffer {
  return newcArchive([
    { name: 'etc', mode: 0o040755 },
    { name: 'etc/deskfuse', mode: 0o040755 },
    { name: 'etc/deskfuse/trust.json', mode: 0o100644, data: Buffer.from(`${canonicalJson(trust)}\n`) },
  ]);
}
