import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';

/**
 * Debian's Chromium driven by playwright-core (no browser download: `scripts/setup-deps.sh` installs
 * the `chromium` package). Missing, it fails with the command that installs it, never a skip.
 */
export const CHROMIUM = process.env.DESKFUSE_CHROMIUM ?? '/usr/bin/chromium';

export async function launchChromium(opts: { home?: string } = {}): Promise<Browser> {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install it with \`bash scripts/setup-deps.sh\` (Debian's chromium package), or set DESKFUSE_CHROMIUM`);
  // As root (CI, these machines) Chromium needs --no-sandbox. `home`: its HOME, whose .pki/nssdb holds the CAs it trusts beyond the system's.
  return chromium.launch({
    executablePath: CHROMIUM, args: process.getuid?.() === 0 ? ['--no-sandbox'] : [], timeout: 60_000,
    ...(opts.home ? { env: { ...process.env, HOME: opts.home } as Record<string, string> } : {}),
  });
}
