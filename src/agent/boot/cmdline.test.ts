import { describe, expect, it } from 'vitest';
import { bootParams, parseCmdline } from './cmdline.js';

describe('boot stage command line', () => {
  const line = 'initrd=initrd.img console=tty0 console=ttyS0,115200 quiet deskfuse.server=http://10.91.0.1:8080 deskfuse.token=dfb_abcdefghijklmnopqrstuvwxyz012345 deskfuse.mac=52:54:00:12:34:56 deskfuse.action=commit-poweroff "x=a b"\n';
  it('parses what ipxe/agent.ipxe writes', () => {
    const a = parseCmdline(line);
    expect(a.quiet).toBe('');
    expect(a.x).toBe('a b');
    expect(bootParams(a)).toEqual({ server: 'http://10.91.0.1:8080', token: 'dfb_abcdefghijklmnopqrstuvwxyz012345', mac: '52:54:00:12:34:56', action: 'commit-poweroff', debug: false });
  });
  it('takes several servers, comma-separated (the agent fails over across them)', () => {
    const a = parseCmdline('deskfuse.server=http://10.91.0.1:8080/,http://10.91.0.2:8080 deskfuse.token=dfb_abcdefghijklmnopqrstuvwxyz012345 deskfuse.mac=52:54:00:12:34:56');
    expect(bootParams(a).server).toBe('http://10.91.0.1:8080,http://10.91.0.2:8080');
    expect(() => bootParams({ ...a, 'deskfuse.server': 'http://10.91.0.1:8080,10.91.0.2' })).toThrow(/deskfuse.server: expected/);
  });
  it('deskfuse.ca=sha256:HEX: the CA the agent pins (normalized); anything else is a problem', () => {
    const a = parseCmdline(`deskfuse.server=https://10.91.0.1:8443 deskfuse.ca=sha256:${'0f1e'.repeat(16)} deskfuse.token=dfb_abcdefghijklmnopqrstuvwxyz012345 deskfuse.mac=52:54:00:12:34:56`);
    expect(bootParams(a)).toMatchObject({ server: 'https://10.91.0.1:8443', ca: Array(16).fill('0F:1E').join(':') });
    expect(bootParams({ ...a, 'deskfuse.ca': undefined as unknown as string }).ca).toBeUndefined();
    expect(() => bootParams({ ...a, 'deskfuse.ca': 'sha256:abc' })).toThrow(/deskfuse.ca: expected sha256:/);
  });
  it('reports every problem at once', () => {
    try {
      bootParams(parseCmdline('deskfuse.server=ftp://x deskfuse.mac=zz deskfuse.action=dance'));
      throw new Error('expected a throw');
    } catch (err) {
      expect((err as { code: string }).code).toBe('DF_ERR_USAGE');
      expect((err as { fields: { problems: string[] } }).fields.problems).toHaveLength(4);
    }
  });
});
