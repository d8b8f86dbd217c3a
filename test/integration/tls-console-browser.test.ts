import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium } from '../helpers/browser.js';
import { startInProcess, tempDir } from '../helpers/server.js';

/**
 * The console in a real browser over HTTPS: Chromium trusts the server's private CA the way a user's
 * browser would (imported into its NSS store with certutil; no flag that ignores certificate errors),
 * signs in, and holds a Secure session cookie. A browser without the CA refuses the page.
 */
describe('console over HTTPS in Chromium', () => {
  let tmp: ReturnType<typeof tempDir>;
  let srv: Awaited<ReturnType<typeof startInProcess>>;
  const browsers: Browser[] = [];

  beforeAll(async () => {
    tmp = tempDir('df-tlsweb-');
    srv = await startInProcess(path.join(tmp.dir, 'data'), { tls: true });
  });
  afterAll(async () => {
    for (const b of browsers) await b.close();
    await srv?.close();
    tmp?.cleanup();
  });

  /** A HOME whose NSS database trusts `ca` (if given) to identify web servers. */
  const home = async (name: string, ca?: string): Promise<string> => {
    const h = path.join(tmp.dir, name);
    const db = path.join(h, '.pki', 'nssdb');
    mkdirSync(db, { recursive: true });
    await execa('certutil', ['-d', `sql:${db}`, '-N', '--empty-password']);
    if (ca) await execa('certutil', ['-d', `sql:${db}`, '-A', '-t', 'C,,', '-n', 'deskfuse private CA', '-i', ca]);
    return h;
  };

  it('signs in over HTTPS with the private CA trusted; the session cookie is Secure', async () => {
    const browser = await launchChromium({ home: await home('trusting', path.join(tmp.dir, 'data', 'tls', 'ca.crt')) });
    browsers.push(browser);
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${srv.httpsUrl}/`);
    await expect.poll(() => page.url()).toContain('/login');
    await page.getByLabel('Admin token').fill(srv.token);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.waitForURL(/\/endpoints$/);
    expect(page.url().startsWith(`${srv.httpsUrl}/`)).toBe(true);
    const session = (await context.cookies()).find((c) => c.name === 'deskfuse_session')!;
    expect(session).toMatchObject({ secure: true, httpOnly: true, sameSite: 'Strict' });
  });

  it('without the CA the browser refuses the server', async () => {
    const browser = await launchChromium({ home: await home('plain') });
    browsers.push(browser);
    const page = await (await browser.newContext()).newPage();
    await expect(page.goto(`${srv.httpsUrl}/login`)).rejects.toThrow(/ERR_CERT_AUTHORITY_INVALID/);
  });
});
