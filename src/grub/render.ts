import type { BootDecision } from '../endpoint/decide.js';
import { dfError } from '../errors.js';

/**
 * GRUB configs for the UEFI Secure Boot chain (shim → Debian's signed GRUB → signed kernel), rendered
 * by pure functions. GRUB is the Secure Boot counterpart of iPXE: the firmware trusts shim (Microsoft's
 * signature), shim trusts GRUB and the kernel (Debian's), and GRUB reads these configs from our TFTP
 * server. Debian's signed network GRUB has no HTTP client built in (and loads no modules under Secure
 * Boot), so everything comes by TFTP (server/services/netboot.ts).
 *
 *   grub.cfg (GRUB_ENTRY): the same for every endpoint; GRUB's embedded config sources it from its
 *     prefix. It asks for this endpoint's config by MAC (GRUB's own ${net_default_mac}).
 *   <GRUB_DIR>/<mac>.cfg (grubScript): this boot's decision, like the iPXE script of /boot/ipxe.
 */

/** TFTP directory of the per-endpoint configs and of the boot stage's files. */
export const GRUB_DIR = 'deskfuse/grub';
/** The boot stage's files, and the trust initrd (the server's version-signing keys, src/sign/trust-initrd.ts). */
export const GRUB_STAGE = { kernel: 'deskfuse/stage/vmlinuz', initrd: 'deskfuse/stage/initrd.img', trust: 'deskfuse/stage/trust.cpio' } as const;

/** The config GRUB's prefix holds: chains to the per-endpoint one. */
export const GRUB_ENTRY = [
  '# deskfuse: this endpoint\'s orders, by the MAC GRUB booted from',
  'set timeout=0',
  `configfile /${GRUB_DIR}/\${net_default_mac}.cfg`,
  '',
].join('\n');

export interface GrubContext {
  /** The server's public base URL (deskfuse.server= for the boot stage). */
  base: string;
  /** With TLS on: the HTTPS base the boot stage's agent talks to, and the CA it pins (server/tls.ts). */
  agentBase?: string;
  caFingerprint?: string;
  mac: string;
  /** Endpoint name, for the admin command a waiting screen shows. */
  endpoint: string;
  token?: string;
  /** Extra kernel parameters (consoles). */
  kernelArgs: string;
  retrySeconds: number;
}

/** A GRUB single-quoted word: GRUB has no escape inside single quotes, so a quote or line break is refused. */
function word(s: string, what: string): string {
  if (/['\r\n]/.test(s)) throw dfError('DF_ERR_INTERNAL', `GRUB config value ${what} holds a quote or a line break`, { what });
  return `'${s}'`;
}

/** The config for one boot decision. */
export function grubScript(d: BootDecision, c: GrubContext): string {
  const say = (text: string) => `echo ${word(`deskfuse: ${text}`, 'message')}`;
  const again = [`sleep ${c.retrySeconds}`, `configfile /${GRUB_DIR}/${c.mac}.cfg`];
  switch (d.kind) {
    case 'pending':
    case 'unassigned': {
      const command = d.kind === 'pending' ? (d.reprovision ? `reprovision ${c.endpoint}` : `approve ${c.endpoint} --desktop NAME`) : `assign ${c.endpoint} --desktop NAME`;
      return [say(`${d.reason} (${c.mac})`), say(`an admin runs: deskfuse endpoint ${command}`), ...again, ''].join('\n');
    }
    case 'agent': {
      if (!c.token) throw dfError('DF_ERR_INTERNAL', 'an agent boot needs a boot token');
      const args = [...c.kernelArgs.split(/\s+/).filter(Boolean), `deskfuse.server=${c.agentBase ?? c.base}`,
        ...(c.caFingerprint ? [`deskfuse.ca=sha256:${c.caFingerprint.replace(/:/g, '').toLowerCase()}`] : []), `deskfuse.token=${c.token}`, `deskfuse.mac=${c.mac}`, `deskfuse.action=${d.action}`];
      const message = d.action === 'commit-poweroff' ? 'committing this disk, then powering off' : d.action === 'local' ? 'starting the local disk' : `syncing this disk (${d.reason})`;
      // `linux` asks shim to verify the kernel (shim_lock): an unsigned one is refused, `boot` then has
      // nothing to start, and `exit 1` returns to the firmware, which moves on to its next boot option.
      return [
        say(message),
        `linux /${GRUB_STAGE.kernel} ${args.map((a) => word(a, 'kernel argument')).join(' ')}`,
        // GRUB places each initrd at a 4-byte boundary, where the kernel looks for the next cpio archive.
        `initrd /${GRUB_STAGE.initrd} /${GRUB_STAGE.trust}`,
        'boot',
        say('the boot stage did not start; leaving it to the firmware'),
        'exit 1',
        '',
      ].join('\n');
    }
    case 'local':
    case 'disabled':
      // GRUB cannot boot a UEFI disk by itself here: back to the firmware's next boot option.
      return [say(d.kind === 'disabled' ? `${d.reason}; booting the local disk` : `booting the local disk (${d.reason})`), 'exit 1', ''].join('\n');
  }
}
