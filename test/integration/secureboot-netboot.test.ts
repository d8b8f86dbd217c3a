// The Secure Boot chain's network side, against real clients: DHCP (full and proxy, in namespaces)
// offers shim to x64 UEFI PXE clients and keeps iPXE for BIOS and for iPXE itself; TFTP hands GRUB its
// generated configs and the boot stage's files (tftp-hpa, curl). The chain itself (OVMF with Secure
// Boot → shim → GRUB → kernel) runs in test/e2e/secureboot.test.ts.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { GRUB_ENTRY } from '../../src/grub/render.js';
import { startTftp, type TftpServer } from '../../src/tftp/server.js';
import { grubFiles, prepareTftpRoot, SECURE_BOOT_FILES } from '../../server/services/netboot.js';
import { clientMsg, MSG, probe, pxeOptions, requireClients, startRunner, type Runner } from '../helpers/dhcp.js';
import { bridge, Netns, plug } from '../helpers/netns.js';
import { tempDir } from '../helpers/server.js';
import { CLIENTS, fetchWith, requireTools } from '../helpers/tftp.js';

const SERVER = '10.233.0.1';
const SCRIPT_URL = `http://${SERVER}:8080/boot/ipxe`;

describe('DHCP offers the Secure Boot chain to x64 UEFI PXE clients (full and proxy)', () => {
  const tmp = tempDir('df-sbdhcp-');
  const made: Netns[] = [];
  let srv: Netns, cl: Netns;
  const runners: Runner[] = [];

  beforeAll(async () => {
    requireClients();
    made.push((srv = new Netns('sbdhcp')), (cl = new Netns('sbdhcpc')));
    bridge(srv, 'br0', `${SERVER}/24`);
    plug(srv, 'br0', cl, 'eth0', '52:54:00:5b:00:01');
  });

  afterAll(async () => {
    for (const r of runners) await r.close();
    for (const n of made) n.delete();
    tmp.cleanup();
  });

  const offerTo = async (xid: number, arch: number, ipxe = false) => {
    const mac = `52:54:00:5b:00:${(0x10 + xid).toString(16)}`;
    const r = await probe(cl, { iface: 'eth0', send: [{ hex: clientMsg({ type: MSG.DISCOVER, mac, xid, options: pxeOptions(arch, ipxe) }) }], untilXid: xid });
    expect(r.arrived, `an answer to arch ${arch}`).toBe(true);
    return r.replies[0]!.msg;
  };

  for (const mode of ['full', 'proxy'] as const) {
    it(`${mode}: arch 7 and 9 get shimx64.efi from us; BIOS and iPXE keep theirs`, async () => {
      const dhcp = mode === 'full'
        ? { mode, interface: 'br0', serverIp: SERVER, pool: { first: '10.233.0.100', last: '10.233.0.150', netmask: '255.255.255.0', leaseSeconds: 600, meta: path.join(tmp.dir, 'meta.sqlite') } }
        : { mode, interface: 'br0', serverIp: SERVER };
      const runner = await startRunner(srv, { dhcp, scriptUrl: SCRIPT_URL, secureBootFile: SECURE_BOOT_FILES.shim });
      runners.push(runner);
      try {
        const base = mode === 'full' ? 1 : 11;
        for (const [i, arch] of [[0, 9], [1, 7]] as const) {
          const m = await offerTo(base + i, arch);
          expect(m).toMatchObject({ siaddr: SERVER, file: 'shimx64.efi', opts: { messageType: MSG.OFFER, bootfile: 'shimx64.efi' } });
          if (mode === 'full') expect(m.yiaddr).toMatch(/^10\.233\.0\.1\d\d$/);
          else expect(m.yiaddr).toBe('0.0.0.0');
        }
        expect((await offerTo(base + 2, 0)).file).toBe('undionly.kpxe');
        expect((await offerTo(base + 3, 9, true)).file).toBe(SCRIPT_URL);
      } finally {
        await runner.close();
        runners.pop();
      }
    });
  }
});

describe('TFTP serves GRUB its generated configs and the boot stage (tftp-hpa, curl)', () => {
  const tmp = tempDir('df-sbtftp-');
  let srv: TftpServer;
  const asked: Array<{ mac: string; ip: string }> = [];
  const root = path.join(tmp.dir, 'root');
  const boot = path.join(tmp.dir, 'boot');
  const kernel = Buffer.alloc(300_000, 7);

  beforeAll(async () => {
    requireTools('tftp', 'atftp', 'curl');
    mkdirSync(root, { recursive: true });
    mkdirSync(boot, { recursive: true });
    writeFileSync(path.join(root, 'grubx64.efi'), 'a GRUB');
    writeFileSync(path.join(boot, 'vmlinuz'), kernel);
    writeFileSync(path.join(boot, 'initrd.img'), 'an initramfs');
    const generated = grubFiles(boot, async (mac, ip) => {
      if (mac.endsWith(':ee')) throw new Error('the metadata database does not answer');
      asked.push({ mac, ip });
      return `echo 'orders for ${mac}'\n`;
    }, () => Buffer.from('the trust initrd'));
    srv = await startTftp({ host: '127.0.0.1', port: 0, root, log: silentLogger, generated });
  });

  afterAll(async () => {
    await srv?.close();
    tmp.cleanup();
  });

  const get = async (c: (typeof CLIENTS)[keyof typeof CLIENTS], remote: string): Promise<Buffer | null> => {
    const local = path.join(tmp.dir, `out-${Math.random().toString(36).slice(2)}`);
    const r = await fetchWith(c, srv.port, remote, local);
    return r.ok ? readFileSync(local) : null;
  };

  it('any grub.cfg under GRUB\'s prefix is the entry config; the per-MAC config asks the server with MAC and address', async () => {
    for (const c of [CLIENTS.hpa, CLIENTS.curl]) {
      expect((await get(c, '/grub/grub.cfg'))?.toString()).toBe(GRUB_ENTRY);
      expect((await get(c, 'grub.cfg'))?.toString()).toBe(GRUB_ENTRY);
    }
    // (tftp-hpa reads a colon in a name as host:file: atftp and curl ask for what GRUB asks.)
    for (const c of [CLIENTS.atftp, CLIENTS.curl]) {
      expect((await get(c, '/deskfuse/grub/52:54:00:5b:00:aa.cfg'))?.toString()).toBe("echo 'orders for 52:54:00:5b:00:aa'\n");
    }
    expect(asked).toEqual([{ mac: '52:54:00:5b:00:aa', ip: '127.0.0.1' }, { mac: '52:54:00:5b:00:aa', ip: '127.0.0.1' }]);
  });

  it('the boot stage comes from the boot directory, everything else from the root, and nothing else is made up', async () => {
    expect((await get(CLIENTS.hpa, 'deskfuse/stage/vmlinuz'))?.equals(kernel)).toBe(true);
    expect((await get(CLIENTS.curl, '/deskfuse/stage/initrd.img'))?.toString()).toBe('an initramfs');
    expect((await get(CLIENTS.hpa, 'deskfuse/stage/trust.cpio'))?.toString()).toBe('the trust initrd');
    expect((await get(CLIENTS.hpa, 'grubx64.efi'))?.toString()).toBe('a GRUB');
    expect(await get(CLIENTS.hpa, 'deskfuse/grub/not-a-mac.cfg')).toBeNull();
    // A server that cannot decide answers an ERROR (GRUB then says so and leaves it to the firmware).
    expect(await get(CLIENTS.curl, 'deskfuse/grub/52:54:00:5b:00:ee.cfg')).toBeNull();
    expect((await get(CLIENTS.hpa, 'grubx64.efi'))?.toString()).toBe('a GRUB');
    expect(await get(CLIENTS.hpa, 'deskfuse/stage/../../boot/vmlinuz')).toBeNull();
    expect(asked).toHaveLength(2);
  });
});

describe('the TFTP root with Secure Boot on', () => {
  const tmp = tempDir('df-sbroot-');
  afterAll(() => tmp.cleanup());

  it('holds byte-exact copies of the signed shim and GRUB under the names shim and DHCP use; a missing one is a coded config error', () => {
    const shim = path.join(tmp.dir, 'shimx64.efi.signed');
    const grub = path.join(tmp.dir, 'grubnetx64.efi.signed');
    writeFileSync(shim, 'signed shim');
    writeFileSync(grub, 'signed grub');
    const root = path.join(tmp.dir, 'tftp');
    const have = prepareTftpRoot(root, silentLogger, { shim, grub });
    expect(have.has('shimx64.efi') && have.has('grubx64.efi')).toBe(true);
    expect(readFileSync(path.join(root, 'shimx64.efi'), 'utf8')).toBe('signed shim');
    expect(readFileSync(path.join(root, 'grubx64.efi'), 'utf8')).toBe('signed grub');
    expect(() => prepareTftpRoot(root, silentLogger, { shim: path.join(tmp.dir, 'nope.efi'), grub }))
      .toThrow(expect.objectContaining({ code: 'DF_ERR_CONFIG', message: expect.stringContaining('netboot.secureBoot.shim') }));
  });
});
