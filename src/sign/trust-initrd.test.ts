import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { newSigningKey, rawPublicKey } from './ed25519.js';
import { parseTrustFile, trustFileOf } from './trust.js';
import { trustInitrd } from './trust-initrd.js';

describe('the trust initrd (newc cpio)', () => {
  it('GNU cpio lists and unpacks it to etc/deskfuse/trust.json, which parses back to the keys', () => {
    const keys = [rawPublicKey(newSigningKey()), rawPublicKey(newSigningKey())];
    const cpio = trustInitrd(trustFileOf(keys));
    expect(cpio.length % 4).toBe(0);
    expect(trustInitrd(trustFileOf(keys)).equals(cpio)).toBe(true); // deterministic
    const dir = mkdtempSync(path.join(tmpdir(), 'df-cpio-'));
    try {
      expect(execFileSync('cpio', ['-t', '--quiet'], { input: cpio, encoding: 'utf8' }).trim().split('\n')).toEqual(['etc', 'etc/deskfuse', 'etc/deskfuse/trust.json']);
      execFileSync('cpio', ['-i', '-d', '--quiet', '--no-absolute-filenames'], { input: cpio, cwd: dir });
      const file = path.join(dir, 'etc/deskfuse/trust.json');
      expect(statSync(file).mode & 0o777).toBe(0o644);
      expect(parseTrustFile(readFileSync(file, 'utf8'), file).map((k) => k.toString('hex'))).toEqual(keys.map((k) => k.toString('hex')));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
