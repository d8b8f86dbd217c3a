import { promises as fsp, statfsSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';

/**
 * A thin-provisioned block device that runs out of space under its user, the way a thin LVM volume,
 * a SAN LUN or a sparse VM disk on a full datastore does: a loop device over a sparse file on a small
 * tmpfs (the "pool"). Writes land in the page cache and succeed; when the pool is full, their
 * writeback fails and fdatasync reports it (ENOSPC, then EIO once a file system on it gives up).
 * device-mapper's `error` target would do the same, but this kernel has no device-mapper.
 * Needs root (mount, losetup).
 */
export interface ThinDisk {
  /** The loop device (/dev/loopN). */
  device: string;
  /** Where the ext4 on it is mounted, when asked for. */
  mountpoint: string | null;
  /** Fill the pool: from now on, writes that need new space in the backing file fail. */
  fill(): Promise<void>;
  /** Give the pool its space back. */
  unfill(): Promise<void>;
  close(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** umount, retried while the mount is busy (a loaded machine), then lazily so a temp dir can always go. */
export async function unmount(where: string): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const r = await execa('umount', [where], { reject: false });
    if (r.exitCode === 0 || /not mounted|no mount point/i.test(r.stderr)) return;
    await sleep(200);
  }
  await execa('umount', ['-l', where], { reject: false });
}

export async function thinDisk(dir: string, o: { poolBytes: number; deviceBytes: number; mountExt4At?: string }): Promise<ThinDisk> {
  const pool = path.join(dir, 'pool');
  await fsp.mkdir(pool, { recursive: true });
  await execa('mount', ['-t', 'tmpfs', '-o', `size=${o.poolBytes}`, 'tmpfs', pool]);
  const backing = path.join(pool, 'disk.img');
  const filler = path.join(pool, 'filler');
  let device = '';
  let mountpoint: string | null = null;
  const close = async () => {
    if (mountpoint) await unmount(mountpoint);
    if (device) {
      await execa('losetup', ['-d', device], { reject: false });
      // The kernel lets go of the backing file asynchronously; the pool stays busy until it has.
      for (let i = 0; i < 100 && (await execa('losetup', ['-j', backing], { reject: false })).stdout.trim() !== ''; i++) await sleep(100);
    }
    await unmount(pool);
  };
  try {
    await fsp.writeFile(backing, '');
    await fsp.truncate(backing, o.deviceBytes);
    device = (await execa('losetup', ['-f', '--show', backing])).stdout.trim();
    if (o.mountExt4At) {
      await execa('mkfs.ext4', ['-q', '-F', device]);
      await fsp.mkdir(o.mountExt4At, { recursive: true });
      await execa('mount', [device, o.mountExt4At]);
      mountpoint = o.mountExt4At;
    }
  } catch (err) {
    await close();
    throw err;
  }
  return {
    device, mountpoint,
    fill: async () => {
      const s = statfsSync(pool);
      await fsp.writeFile(filler, Buffer.alloc(s.bavail * s.bsize)).catch((err) => { if (err.code !== 'ENOSPC') throw err; });
    },
    unfill: () => fsp.rm(filler, { force: true }),
    close,
  };
}
