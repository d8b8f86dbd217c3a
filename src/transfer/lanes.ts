/**
 * `fn` over `items`, `lanes` at a time in order of the list. The first failure stops every lane from
 * taking more; all lanes settle (none still running when this returns), then that failure is thrown.
 */
export async function inLanes<T>(items: readonly T[], lanes: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const lane = async () => {
    while (!failed && next < items.length) {
      try {
        await fn(items[next++]!);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  const done = await Promise.allSettled(Array.from({ length: Math.min(lanes, items.length) }, lane));
  for (const d of done) if (d.status === 'rejected') throw d.reason;
}
