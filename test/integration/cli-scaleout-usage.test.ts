import { describe, expect, it } from 'vitest';
import { cli, tempDir } from '../helpers/server.js';

/**
 * What an admin types first with the scale-out options: help on every new command, a typo, bad URLs
 * (no engine needed: each is refused before anything is opened, and no secret is echoed).
 */
describe('scale-out options on the command line', () => {
  it('server --help names --meta, --store and --server-name; store --help and store help exit 0; a typo exits 2', async () => {
    const s = await cli(['server', '--help']);
    expect(s.code).toBe(0);
    expect(s.stdout).toContain('--meta sqlite|postgres://');
    expect(s.stdout).toContain('--store s3://BUCKET/PREFIX');
    expect(s.stdout).toContain('--server-name NAME');
    for (const args of [['store', '--help'], ['store', 'help'], ['store', 'verify', '--help']]) {
      const h = await cli(args);
      expect(h.code, args.join(' ')).toBe(0);
      expect(h.stdout).toContain('deskfuse store verify [--data DIR] [--meta URL] [--store URL]');
    }
    for (const [args, says] of [[['store', 'verfy'], 'unknown store command "verfy"'], [['store', 'gcc'], 'unknown store command "gcc"'], [['store'], 'missing store command']] as const) {
      const typo = await cli([...args]);
      expect(typo.code).toBe(2);
      expect(typo.stderr).toContain(`DF_ERR_USAGE: ${says}`);
      expect(typo.stderr).toContain('deskfuse store gc [--dry-run]');
    }
  });

  it('a bad --meta or --store URL is a coded configuration error naming it, never echoing a password', async () => {
    const t = tempDir('df-usage-');
    try {
      const meta = await cli(['store', 'verify', '--data', t.dir, '--meta', 'mysql://u:hunter2secret@h/db']);
      expect(meta.code).toBe(1);
      expect(meta.stderr).toContain('DF_ERR_CONFIG');
      expect(meta.stderr).toContain('meta: expected "sqlite" or postgres://');
      expect(meta.stderr).not.toContain('hunter2secret');
      const store = await cli(['store', 'verify', '--data', t.dir, '--store', 's3://bucket/p?endpoint=http://127.0.0.1:1'], { AWS_ACCESS_KEY_ID: 'k' });
      expect(store.code).toBe(1);
      expect(store.stderr).toContain('DF_ERR_CONFIG');
      expect(store.stderr).toContain('AWS_SECRET_ACCESS_KEY');
    } finally {
      t.cleanup();
    }
  });
});
