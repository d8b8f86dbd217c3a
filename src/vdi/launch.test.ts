import { describe, expect, it } from 'vitest';
import { libvirtXml, nbdUrl, qemuArgs, type VmSpec } from './launch.js';

const spec: VmSpec = {
  name: 'deskfuse-alice-0123456789', host: '10.0.0.1', port: 10809, exportName: 'session/0123456789:dfv_S3cr-t_x',
  memoryMiB: 2048, cpus: 2, accel: 'tcg', vnc: null, net: 'user',
};

describe('VM launch', () => {
  it('QEMU drives the session export with its own NBD client, boots from it, serial on stdio', () => {
    expect(qemuArgs(spec, ['-no-reboot'])).toEqual([
      '-name', 'deskfuse-alice-0123456789', '-accel', 'tcg', '-cpu', 'max', '-m', '2048', '-smp', '2', '-nodefaults', '-no-user-config',
      '-blockdev', 'driver=nbd,node-name=disk0,server.type=inet,server.host=10.0.0.1,server.port=10809,export=session/0123456789:dfv_S3cr-t_x',
      '-device', 'virtio-blk-pci,drive=disk0,bootindex=1', '-nic', 'user,model=virtio-net-pci',
      '-display', 'none', '-serial', 'stdio', '-monitor', 'none', '-no-reboot',
    ]);
  });

  it('KVM uses the host CPU; VNC replaces the serial console; QEMU option commas are doubled', () => {
    const a = qemuArgs({ ...spec, accel: 'kvm', vnc: 3, net: 'none', name: 'a,b' });
    expect(a.slice(0, 6)).toEqual(['-name', 'a,,b', '-accel', 'kvm', '-cpu', 'host']);
    expect(a).toContain('-vnc');
    expect(a[a.indexOf('-vnc') + 1]).toBe('127.0.0.1:3'); // no password: reach it through an SSH tunnel
    expect(a).not.toContain('-nic');
  });

  it('TLS: the credentials object and tls-creds on the NBD blockdev (x509 or PSK)', () => {
    const x = qemuArgs({ ...spec, tls: { kind: 'x509', dir: '/etc/deskfuse/nbd,ca' } });
    expect(x.slice(x.indexOf('-object'), x.indexOf('-object') + 4)).toEqual([
      '-object', 'tls-creds-x509,id=nbdtls0,dir=/etc/deskfuse/nbd,,ca,endpoint=client',
      '-blockdev', 'driver=nbd,node-name=disk0,server.type=inet,server.host=10.0.0.1,server.port=10809,export=session/0123456789:dfv_S3cr-t_x,tls-creds=nbdtls0',
    ]);
    const p = qemuArgs({ ...spec, tls: { kind: 'psk', dir: '/etc/deskfuse/psk', username: 'hv1' } });
    expect(p[p.indexOf('-object') + 1]).toBe('tls-creds-psk,id=nbdtls0,dir=/etc/deskfuse/psk,username=hv1,endpoint=client');
    expect(p[p.indexOf('-blockdev') + 1]).toMatch(/,tls-creds=nbdtls0$/);
    expect(qemuArgs(spec)).not.toContain('-object');
  });

  it('nbd URLs bracket IPv6 hosts; nbds:// with TLS', () => {
    expect(nbdUrl({ ...spec, tls: true })).toBe('nbds://10.0.0.1:10809/session/0123456789:dfv_S3cr-t_x');
    expect(nbdUrl(spec)).toBe('nbd://10.0.0.1:10809/session/0123456789:dfv_S3cr-t_x');
    expect(nbdUrl({ ...spec, host: 'fd00::1' })).toBe('nbd://[fd00::1]:10809/session/0123456789:dfv_S3cr-t_x');
  });

  it('renders the libvirt domain (golden)', async () => {
    await expect(libvirtXml({ ...spec, vnc: 1 })).toMatchFileSnapshot('../../test/fixtures/vdi/domain-tcg-vnc.xml');
    await expect(libvirtXml({ ...spec, accel: 'kvm', net: 'none', name: 'x<&>"\'' })).toMatchFileSnapshot('../../test/fixtures/vdi/domain-kvm.xml');
    await expect(libvirtXml({ ...spec, tls: { kind: 'x509', dir: '/etc/pki/libvirt-nbd' } })).toMatchFileSnapshot('../../test/fixtures/vdi/domain-tls.xml');
  });
});
