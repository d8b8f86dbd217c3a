import { parentPort, workerData } from 'node:worker_threads';
import { scanRange, type ScanRangeArgs } from './scan-core.js';

/** Worker thread entry: scan one range and post the result back (ids and fingerprints went into the shared arrays; the rest transferred, not copied). */
const r = scanRange(workerData as ScanRangeArgs);
parentPort!.postMessage({ ...r, ids: new Uint8Array(0), fingerprints: new Uint8Array(0) }, [r.changed.buffer as ArrayBuffer, r.hints.buffer as ArrayBuffer]);
