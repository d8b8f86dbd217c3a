import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, tempDir } from '../helpers/server.js';

/** Issue 14 point 8: a server that cannot listen says where and what to change, and creates nothing. */
describe('deskfuse server start-up', () => {
  let tmp: ReturnType<typeof tempDir>;
  let squatter: Server;
  let port: number;

  beforeAll(async () => {
    tmp = tempDir('df-start-');
    // Another program holds a loopback port.
    squatter = createServer();
    await new Promise<void>((r) => squatter.listen(0, '127.0.0.1', r));
    port = (squatter.address() as { port: number }).port;
  });
  afterAll(async () => {
    await new Promise((r) => squatter.close(r));
    tmp.cleanup();
  });

  it('refuses an HTTP port in use with DF_ERR_LISTEN naming it, and creates no data dir and no token', async () => {
    const data = path.join(tmp.dir, 'fresh');
    const r = await cli(['server', '--data', data, '--listen', `127.0.0.1:${port}`, '--nbd-listen', 'off', '--log-level', 'silent']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('DF_ERR_LISTEN');
    expect(r.stderr).toContain(`HTTP cannot listen on 127.0.0.1:${port}`);
    expect(r.stderr).toContain('already in use');
    expect(r.stderr).toContain('--listen HOST:PORT');
    expect(r.stdout).not.toContain('shown once');
    expect(existsSync(data)).toBe(false);
  });

  it('leaves an existing data dir as it was (no database, no admin.token)', async () => {
    const data = path.join(tmp.dir, 'kept');
    mkdirSync(data);
    writeFileSync(path.join(data, 'note'), 'x');
    const r = await cli(['server', '--data', data, '--listen', `127.0.0.1:${port}`, '--nbd-listen', 'off', '--log-level', 'silent']);
    expect(r.code).toBe(1);
    expect(readdirSync(data)).toEqual(['note']);
  });

  it('refuses an NBD port in use naming the port and suggesting --nbd-listen off, and creates nothing', async () => {
    const data = path.join(tmp.dir, 'nbd');
    const r = await cli(['server', '--data', data, '--listen', '127.0.0.1:0', '--nbd-listen', `127.0.0.1:${port}`, '--log-level', 'silent']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('DF_ERR_LISTEN');
    expect(r.stderr).toContain(`NBD cannot listen on 127.0.0.1:${port}`);
    expect(r.stderr).toContain('--nbd-listen off');
    expect(r.stdout).not.toContain('shown once');
    expect(existsSync(data)).toBe(false);
    expect(readdirSync(tmp.dir)).not.toContain('nbd');
  });

  it('a second server on the default NBD port 10809 is told to give --nbd-listen off', async () => {
    // Hold 10809 ourselves if it is free (if another test holds it, it is in use all the same).
    const holder = createServer();
    await new Promise<void>((r) => holder.once('error', () => r()).listen(10809, '127.0.0.1', () => r()));
    try {
      const data = path.join(tmp.dir, 'second');
      const r = await cli(['server', '--data', data, '--listen', '127.0.0.1:0', '--log-level', 'silent']);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('DF_ERR_LISTEN: NBD cannot listen on 127.0.0.1:10809: the address is already in use');
      expect(r.stderr).toContain('give --nbd-listen off');
      expect(existsSync(data)).toBe(false);
    } finally {
      await new Promise((r) => (holder.listening ? holder.close(r) : r(undefined)));
    }
  });
});
