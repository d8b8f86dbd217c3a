import type { Metrics } from '../metrics.js';
import type { StoreUsage } from './gc.js';

/**
 * `/metrics` gauges of the stores' usage, as the last garbage collection (or `store usage`) measured
 * it: a full listing is too much work for a scrape. Nothing is exported before the first one.
 */
export function registerUsageMetrics(metrics: Metrics, last: () => StoreUsage | undefined): void {
  const bytes = metrics.gauge('deskfuse_store_bytes', 'Bytes stored, by kind (as the last garbage collection measured)');
  const objects = metrics.gauge('deskfuse_store_objects', 'Objects stored, by kind (as the last garbage collection measured)');
  const image = metrics.gauge('deskfuse_store_image_bytes', "Bytes an image's versions reference (a chunk shared by two images counts in both)");
  const reclaimable = metrics.gauge('deskfuse_store_reclaimable_bytes', 'Unreferenced bytes older than the grace period (the next two garbage collections free them)');
  metrics.onCollect(() => {
    const u = last();
    if (!u) return;
    for (const [kind, t] of Object.entries(u.kinds)) {
      bytes(t.bytes, { kind });
      objects(t.count, { kind });
    }
    for (const i of u.images) image(i.chunks.bytes + i.blobs.bytes, { image: i.image });
    reclaimable(u.reclaimable.bytes);
  });
}
