import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll } from 'vitest';
import { FsChunkStore } from './fs-store.js';
import { CONTRACT_MAX, storeContract } from './store-contract.js';

// The store contract on the local filesystem store (the S3 store runs it in test/integration/s3-store.test.ts).
const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((d) => fsp.rm(d, { recursive: true, force: true })));
});

storeContract('FsChunkStore', async () => {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'deskfuse-store-contract-'));
  dirs.push(dir);
  const root = path.join(dir, 'chunks');
  const store = await FsChunkStore.open(root, CONTRACT_MAX);
  return {
    store,
    overwrite: (id, bytes) => fsp.writeFile(store.pathOf(id), bytes),
    another: () => FsChunkStore.open(root, CONTRACT_MAX),
  };
});
