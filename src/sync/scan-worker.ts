import { parentPort, workerData } from 'node:worker_threads';
import { scanRange, type ScanRangeArgs } from './scan-core.js';

/** Worker thread entry: scan one range and post the result back (buffers transferred, not copied). */
const r = scanRange(workerData as ScanRangeArgs);
parentPort!.postMessage(r, [r.ids.buffer as ArrayBuffer, r.changed.buffer as ArrayBuffer, r.hints.buffer as ArrayBuffer]);
