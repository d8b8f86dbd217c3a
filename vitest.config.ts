import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'server/**/*.test.ts', 'cli/**/*.test.ts', 'test/**/*.test.ts', 'initramfs/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // PostgreSQL and Ceph RGW shared by the run: started on first use, stopped at its end (test/helpers/engines.ts)
    globalSetup: ['test/helpers/engines-setup.ts'],
    pool: 'forks',
    // Two cores: integration tests spawn servers and qemu-img; keep parallelism modest.
    maxWorkers: 2,
    fileParallelism: true,
  },
});
