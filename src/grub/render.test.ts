import { describe, expect, it } from 'vitest';
import type { BootDecision } from '../endpoint/decide.js';
import { GRUB_ENTRY, grubScript, type GrubContext } from './render.js';

const ctx: GrubContext = { base: 'http://10.0.0.1:8080', mac: '52:54:00:5b:00:01', endpoint: 'desk-1', token: 'tok123456', kernelArgs: 'console=tty0 console=ttyS0,115200 quiet', retrySeconds: 5 };

describe('GRUB configs of the Secure Boot chain', () => {
  it('the entry config asks for the per-MAC one with GRUB\'s own variable', () => {
    expect(GRUB_ENTRY).toContain('configfile /deskfuse/grub/${net_default_mac}.cfg');
  });

  it('an agent decision boots the boot stage by TFTP with the same kernel parameters as the iPXE script, then falls back to the firmware', () => {
    const d: BootDecision = { kind: 'agent', action: 'sync', reason: 'first boot: provision the disk', handoff: 'kexec' };
    expect(grubScript(d, ctx)).toBe([
      "echo 'deskfuse: syncing this disk (first boot: provision the disk)'",
      "linux /deskfuse/stage/vmlinuz 'console=tty0' 'console=ttyS0,115200' 'quiet' 'deskfuse.server=http://10.0.0.1:8080' 'deskfuse.token=tok123456' 'deskfuse.mac=52:54:00:5b:00:01' 'deskfuse.action=sync'",
      'initrd /deskfuse/stage/initrd.img /deskfuse/stage/trust.cpio',
      'boot',
      "echo 'deskfuse: the boot stage did not start; leaving it to the firmware'",
      'exit 1',
      '',
    ].join('\n'));
  });

  it('with TLS on, the boot stage talks HTTPS and pins the CA, as from the iPXE script', () => {
    const d: BootDecision = { kind: 'agent', action: 'sync', reason: 'behind', handoff: 'kexec' };
    const fp = Array(32).fill('AB').join(':');
    const line = grubScript(d, { ...ctx, agentBase: 'https://10.0.0.1:8443', caFingerprint: fp }).split('\n')[1]!;
    expect(line).toContain(`'deskfuse.server=https://10.0.0.1:8443' 'deskfuse.ca=sha256:${'ab'.repeat(32)}' 'deskfuse.token=tok123456'`);
  });

  it('a waiting endpoint asks again after retrySeconds; a local boot goes back to the firmware', () => {
    const wait = grubScript({ kind: 'pending', reason: 'waiting for an admin to approve this endpoint' }, ctx);
    expect(wait).toContain("echo 'deskfuse: an admin runs: deskfuse endpoint approve desk-1 --desktop NAME'");
    expect(wait).toContain('sleep 5\nconfigfile /deskfuse/grub/52:54:00:5b:00:01.cfg');
    expect(grubScript({ kind: 'local', reason: 'up to date', local: 'exit' }, ctx)).toMatch(/^echo 'deskfuse: booting the local disk \(up to date\)'\nexit 1\n$/);
  });

  it('a value GRUB could read as more than one word (a quote) is refused, as is an agent boot without a token', () => {
    const d: BootDecision = { kind: 'agent', action: 'sync', reason: "it's new", handoff: 'kexec' };
    expect(() => grubScript(d, ctx)).toThrow(expect.objectContaining({ code: 'DF_ERR_INTERNAL' }));
    const { token: _t, ...noToken } = ctx;
    expect(() => grubScript({ ...d, reason: 'new' }, noToken)).toThrow(/boot token/);
  });
});
