/**
 * Group commit: items handed in while a batch is being written (or in the same event-loop turn) go
 * together into the next call of `write`, in call order; each caller gets its own result once that
 * batch is written, or the batch's error. A storm of small writes (DHCP decisions, boot events) then
 * costs one transaction — one fsync on SQLite — per batch instead of per item. With `isolate`, a
 * failed batch is written again item by item, so one bad item does not fail its neighbours.
 */
export class GroupCommit<I, O> {
  private queue: Array<{ item: I; resolve: (o: O) => void; reject: (err: unknown) => void }> = [];
  private running = false;

  /** `write` gets at most `max` items and resolves to one result per item, in their order. */
  constructor(private readonly write: (items: I[]) => Promise<O[]>, private readonly opts: { max?: number; isolate?: boolean } = {}) {}

  add(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      // setImmediate: after the poll phase, so what arrives in this turn (every datagram read) joins.
      if (this.queue.length === 1 && !this.running) setImmediate(() => void this.flush());
    });
  }

  private async flush(): Promise<void> {
    if (this.running || this.queue.length === 0) return;
    this.running = true;
    const batch = this.queue.splice(0, this.opts.max ?? 256);
    try {
      const out = await this.write(batch.map((b) => b.item));
      batch.forEach((b, i) => b.resolve(out[i]!));
    } catch (err) {
      if (!this.opts.isolate || batch.length === 1) for (const b of batch) b.reject(err);
      else {
        for (const b of batch) await this.write([b.item]).then((o) => b.resolve(o[0]!), b.reject);
      }
    } finally {
      this.running = false;
      if (this.queue.length) setImmediate(() => void this.flush());
    }
  }
}
