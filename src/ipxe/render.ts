import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BootDecision } from '../endpoint/decide.js';
import { dfError } from '../errors.js';

/**
 * iPXE scripts, rendered from the templates in `ipxe/` by pure functions. `{{name}}` is replaced by
 * a value; `${...}` is left for iPXE to expand (its settings: `${netX/mac}`, `${platform}`, …).
 * Values must not contain line breaks or `${` (a value is never code).
 */
export const TEMPLATE_NAMES = ['chain', 'agent', 'local-sanboot', 'local-exit', 'wait'] as const;
export type TemplateName = (typeof TEMPLATE_NAMES)[number];
export type Templates = Readonly<Record<TemplateName, string>>;

export function templatesDir(): string {
  const here = path.dirname(fileURLToPath(import.meta.url));
  // src/ipxe → ../../ipxe; dist/src/ipxe → ../../../ipxe
  const dir = [path.resolve(here, '../../ipxe'), path.resolve(here, '../../../ipxe')].find((d) => existsSync(path.join(d, 'agent.ipxe')));
  if (!dir) throw dfError('DF_ERR_CONFIG', `the iPXE templates (ipxe/*.ipxe) are missing next to ${here}`);
  return dir;
}

export function loadTemplates(dir = templatesDir()): Templates {
  return Object.fromEntries(TEMPLATE_NAMES.map((n) => [n, readFileSync(path.join(dir, `${n}.ipxe`), 'utf8')])) as Record<TemplateName, string>;
}

export function render(template: string, vars: Readonly<Record<string, string | number>>): string {
  return template.replace(/\{\{([a-zA-Z]+)\}\}/g, (_m, name: string) => {
    const v = vars[name];
    if (v === undefined) throw dfError('DF_ERR_INTERNAL', `iPXE template variable {{${name}}} has no value`);
    const s = String(v);
    if (/[\r\n]/.test(s) || s.includes('${')) throw dfError('DF_ERR_INTERNAL', `iPXE template variable {{${name}}} holds a line break or "\${"`);
    return s;
  });
}

export interface ScriptContext {
  /** The server's public base URL, e.g. http://10.0.0.1:8080 */
  base: string;
  mac: string;
  /** Endpoint id, for the admin command the wait screen shows. */
  endpoint: string;
  /** This request's own URL (the wait screen asks it again). */
  self: string;
  /**
   * With TLS on: the https base URL the boot stage's agent uses (`deskfuse.server=`) and the CA
   * fingerprint it pins (`deskfuse.ca=sha256:…`); the script and boot stage files stay on `base`.
   */
  agentBase?: string;
  caFingerprint?: string;
  /** The one-time boot token (agent decisions). */
  token?: string;
  /**
   * URL paths of the boot stage's files (default the plain /boot/vmlinuz, /boot/initrd.img): the
   * server names them by content hash, so an HTTP cache at a site may keep them.
   */
  kernel?: string;
  initrd?: string;
  /** URL path of the trust initrd (the server's version-signing keys, src/sign/trust-initrd.ts). */
  trust?: string;
  /** Extra kernel parameters (consoles). */
  kernelArgs: string;
  firmware: 'bios' | 'uefi';
  retrySeconds: number;
}

/** The first answer to an iPXE that did not say who it is. */
export function chainScript(t: Templates, base: string): string {
  return render(t.chain, { base });
}

/** The script for one boot decision. */
export function bootScript(t: Templates, d: BootDecision, c: ScriptContext): string {
  const common = { base: c.base, mac: c.mac, reason: d.reason };
  switch (d.kind) {
    case 'pending':
      return render(t.wait, { ...common, retry: c.retrySeconds, self: c.self, command: d.reprovision ? `reprovision ${c.endpoint}` : `approve ${c.endpoint} --desktop NAME` });
    case 'unassigned':
      return render(t.wait, { ...common, retry: c.retrySeconds, self: c.self, command: `assign ${c.endpoint} --desktop NAME` });
    case 'agent': {
      if (!c.token) throw dfError('DF_ERR_INTERNAL', 'an agent boot needs a boot token');
      const ca = c.caFingerprint ? `deskfuse.ca=sha256:${c.caFingerprint.replace(/:/g, '').toLowerCase()}` : '';
      const cmdline = [c.kernelArgs, `deskfuse.server=${c.agentBase ?? c.base}`, ca, `deskfuse.token=${c.token}`, `deskfuse.mac=${c.mac}`, `deskfuse.action=${d.action}`].filter(Boolean).join(' ');
      const message = d.action === 'commit-poweroff' ? 'committing this disk, then powering off' : d.action === 'local' ? 'starting the local disk' : `syncing this disk (${d.reason})`;
      // UEFI iPXE cannot boot the local disk itself: `exit 1` at least moves on to the next boot option.
      const fallback = c.firmware === 'uefi' ? 'exit 1' : 'sanboot --no-describe --drive 0x80 || exit';
      return render(t.agent, { ...common, message, cmdline, fallback, kernel: c.kernel ?? '/boot/vmlinuz', initrd: c.initrd ?? '/boot/initrd.img', trust: c.trust ?? '/boot/trust.cpio' });
    }
    case 'local':
    case 'disabled': {
      const message = d.kind === 'disabled' ? `${d.reason}; booting the local disk` : `booting the local disk (${d.reason})`;
      // UEFI: plain `exit` opens the firmware's setup (pxe-e2e-findings §6); `exit 1` moves on to the next option.
      if (d.local === 'exit') return render(t['local-exit'], { ...common, message, exit: c.firmware === 'uefi' ? 'exit 1' : 'exit' });
      return render(t['local-sanboot'], { ...common, message });
    }
  }
}
