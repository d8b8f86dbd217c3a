import { closeSync, openSync, readSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { areaSize } from '../../src/agent/state-area.js';
import { makeDisk, prng } from '../helpers/disk.js';
import { cli, ROOT, startInProcess, tempDir } from '../helpers/server.js';

const MAC = '52:54:00:aa:bb:31';
const AGENT = path.join(ROOT, 'dist/initramfs/agent/main.js');
const SIZE = 4 * 1024 * 1024;

/**
 * The boot stage with TLS on: iPXE's script comes over plain HTTP (curl, as the firmware would) and
 * puts the https base URL and the CA's fingerprint on the kernel command line; the boot-stage agent
 * run on that command line pins the CA, trades its token and syncs over HTTPS. A command line whose
 * fingerprint is not the server's sends nothing: the one-time token is still unspent afterwards.
 */
describe('boot-stage agent over HTTPS, pinned by the kernel command line', () => {
  let tmp: ReturnType<typeof tempDir>;
  let srv: Awaited<ReturnType<typeof startInProcess>>;
  let image: Buffer;
  let disk: string;

  beforeAll(async () => {
    tmp = tempDir('df-tlsboot-');
    srv = await startInProcess(path.join(tmp.dir, 'data'), { tls: true });
    const img = path.join(tmp.dir, 'os.img');
    image = prng(7)(SIZE);
    makeDisk(img, SIZE, [{ at: 0, data: image }]);
    const env = { DESKFUSE_SERVER: srv.httpsUrl!, DESKFUSE_TOKEN: srv.token, DESKFUSE_CA: path.join(tmp.dir, 'data', 'tls', 'ca.crt') };
    expect((await cli(['image', 'create', 'os', '--from', img], env)).code).toBe(0);
    expect((await cli(['desktop', 'create', 'alice', '--image', 'os'], env)).code).toBe(0);
    expect((await cli(['endpoint', 'add', MAC, '--desktop', 'alice', '--name', 'tls-pc'], env)).code).toBe(0);
    disk = path.join(tmp.dir, 'endpoint.disk');
    makeDisk(disk, SIZE + areaSize({ virtualSize: SIZE, chunkSize: 64 * 1024 }) + 1024 * 1024, []);
  });
  afterAll(async () => {
    await srv?.close();
    tmp?.cleanup();
  });

  const cmdline = async (): Promise<string> => {
    const script = (await execa('curl', ['-sS', '--fail', `${srv.url}/boot/ipxe?mac=${MAC}&platform=pcbios`])).stdout;
    return /initrd=initrd\.img (.*) \|\| goto fallback/.exec(script)![1]!;
  };
  const run = (line: string, session: string) => execa(process.execPath, [AGENT], {
    reject: false, timeout: 60_000,
    env: { DESKFUSE_CMDLINE: `${line} deskfuse.disk=${disk}`, DESKFUSE_SESSION_FILE: session, DESKFUSE_BOOT_STAGE: '' },
  });

  it('the script names the https URL and the CA; a wrong pin sends nothing; the right one syncs', async () => {
    const line = await cmdline();
    const fp = srv.appliance.tls!.caFingerprint.replace(/:/g, '').toLowerCase();
    expect(line).toContain(`deskfuse.server=${srv.httpsUrl}`);
    expect(line).toContain(`deskfuse.ca=sha256:${fp}`);
    expect(line).not.toContain(srv.url);

    const wrong = line.replace(fp, `${fp[0] === '0' ? '1' : '0'}${fp.slice(1)}`);
    const refused = await run(wrong, path.join(tmp.dir, 'refused-session.json'));
    expect(refused.stdout).toContain('DF_ERR_TLS_PIN');
    expect(refused.stdout).not.toContain('@@MARK SESSION');
    expect(refused.exitCode).not.toBe(0);

    // The same one-time token still opens the session: the refused run never reached the server.
    const ok = await run(line, path.join(tmp.dir, 'session.json'));
    expect(ok.stdout).not.toContain('DF_ERR_BOOT_TOKEN_USED');
    expect(ok.stdout).toMatch(/@@MARK SESSION .*endpoint=tls-pc desktop=alice action=sync/);
    expect(ok.stdout).toMatch(/@@MARK SYNCED .*version=1 /);
    const got = Buffer.alloc(SIZE);
    const fd = openSync(disk, 'r');
    readSync(fd, got, 0, SIZE, 0);
    closeSync(fd);
    expect(got.equals(image)).toBe(true);
  });
});
