import { spawn } from 'node:child_process';
import { accessSync, constants as FS } from 'node:fs';

/**
 * How a hypervisor host runs a VDI session's VM: QEMU arguments and the libvirt domain, both pure
 * functions of the session's NBD address, so they are golden-tested; and the KVM probe.
 */
export interface VmSpec {
  /** VM name (libvirt domain name; QEMU -name). */
  name: string;
  host: string;
  port: number;
  /** The export name, secret included. */
  exportName: string;
  memoryMiB: number;
  cpus: number;
  accel: 'kvm' | 'tcg';
  /** VNC display number (`:N` → N), or none: serial console on stdio. */
  vnc: number | null;
  net: 'user' | 'none';
  /**
   * NBD over TLS (the server's nbd.tls): x509 with `dir` holding ca-cert.pem (QEMU's tls-creds-x509
   * layout; a client certificate is optional), or PSK with `dir` holding keys.psk and the identity.
   * Absent or null: plain NBD.
   */
  tls?: VmTls | null;
}

export type VmTls = { kind: 'x509'; dir: string } | { kind: 'psk'; dir: string; username: string };

/** nbd:// or, when the server speaks TLS, nbds:// (the scheme libnbd and `vdi start` read as "use TLS"). */
export const nbdUrl = (s: Pick<VmSpec, 'host' | 'port' | 'exportName'> & { tls?: boolean | VmTls | null }): string =>
  `${s.tls ? 'nbds' : 'nbd'}://${s.host.includes(':') ? `[${s.host}]` : s.host}:${s.port}/${s.exportName}`;

/** QEMU's own NBD client drives the disk: the VM's flushes become NBD_CMD_FLUSH, its exit NBD_CMD_DISC. */
export function qemuArgs(s: VmSpec, extra: string[] = []): string[] {
  const opt = (v: string) => v.replace(/,/g, ',,'); // QEMU option values escape commas by doubling
  const t = s.tls ?? null;
  // QEMU's NBD client sends NBD_OPT_STARTTLS first and verifies the server against server.host.
  const creds = t === null ? [] : ['-object', t.kind === 'x509'
    ? `tls-creds-x509,id=nbdtls0,dir=${opt(t.dir)},endpoint=client`
    : `tls-creds-psk,id=nbdtls0,dir=${opt(t.dir)},username=${opt(t.username)},endpoint=client`];
  return [
    '-name', opt(s.name),
    '-accel', s.accel, '-cpu', s.accel === 'kvm' ? 'host' : 'max',
    '-m', String(s.memoryMiB), '-smp', String(s.cpus),
    '-nodefaults', '-no-user-config',
    ...creds,
    '-blockdev', `driver=nbd,node-name=disk0,server.type=inet,server.host=${opt(s.host)},server.port=${s.port},export=${opt(s.exportName)}${t ? ',tls-creds=nbdtls0' : ''}`,
    '-device', 'virtio-blk-pci,drive=disk0,bootindex=1',
    ...(s.net === 'user' ? ['-nic', 'user,model=virtio-net-pci'] : []),
    ...(s.vnc === null ? ['-display', 'none', '-serial', 'stdio', '-monitor', 'none'] : ['-vga', 'std', '-vnc', `127.0.0.1:${s.vnc}`, '-serial', 'none', '-monitor', 'none']),
    ...extra,
  ];
}

const esc = (v: string) => v.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');

/**
 * A libvirt domain for pools managed by libvirt: the same disk as a network disk of protocol nbd.
 * With TLS, `tls='yes'` on the source: libvirt then takes the client credentials from qemu.conf's
 * nbd_tls_x509_cert_dir (ca-cert.pem there); libvirt has no PSK for NBD disks.
 */
export function libvirtXml(s: VmSpec): string {
  return `<domain type='${s.accel === 'kvm' ? 'kvm' : 'qemu'}'>
  <name>${esc(s.name)}</name>
  <memory unit='MiB'>${s.memoryMiB}</memory>
  <vcpu>${s.cpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <features><acpi/><apic/></features>
  ${s.accel === 'kvm' ? "<cpu mode='host-passthrough'/>" : "<cpu mode='custom'><model fallback='allow'>qemu64</model></cpu>"}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='nbd' name='${esc(s.exportName)}'${s.tls ? " tls='yes'" : ''}>
        <host name='${esc(s.host)}' port='${s.port}'/>
      </source>
      <target dev='vda' bus='virtio'/>
      <boot order='1'/>
    </disk>
${s.net === 'user' ? "    <interface type='user'><model type='virtio'/></interface>\n" : ''}    <serial type='pty'><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
${s.vnc === null ? '' : `    <graphics type='vnc' port='${5900 + s.vnc}' listen='127.0.0.1'/>\n    <video><model type='vga'/></video>\n`}  </devices>
</domain>
`;
}

/**
 * KVM when it works: /dev/kvm must be usable and QEMU must start a `-cpu host` machine with it (some
 * nested hosts expose /dev/kvm that QEMU cannot use: "failed to set MSR"). Otherwise TCG.
 */
export async function kvmWorks(timeoutMs = 1500): Promise<boolean> {
  try {
    accessSync('/dev/kvm', FS.R_OK | FS.W_OK);
  } catch {
    return false;
  }
  return new Promise((resolve) => {
    const q = spawn('qemu-system-x86_64', ['-accel', 'kvm', '-cpu', 'host', '-machine', 'pc', '-nodefaults', '-no-user-config', '-display', 'none', '-S', '-monitor', 'none', '-serial', 'none'], { stdio: 'ignore' });
    const timer = setTimeout(() => { q.kill('SIGKILL'); resolve(true); }, timeoutMs);
    q.once('error', () => { clearTimeout(timer); resolve(false); });
    q.once('exit', () => { clearTimeout(timer); resolve(false); });
  });
}
