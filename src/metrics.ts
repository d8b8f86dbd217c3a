/**
 * A small Prometheus registry (text exposition format 0.0.4): counters and gauges with labels.
 * Enough for /metrics without a dependency.
 */
type Labels = Record<string, string | number>;

interface Family {
  help: string;
  type: 'counter' | 'gauge';
  values: Map<string, number>;
}

const labelKey = (l: Labels | undefined): string =>
  l ? Object.keys(l).sort().map((k) => `${k}="${String(l[k]).replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`).join(',') : '';

export class Metrics {
  private readonly families = new Map<string, Family>();
  private readonly collectors: Array<() => void | Promise<void>> = [];

  private family(name: string, type: Family['type'], help: string): Family {
    let f = this.families.get(name);
    if (!f) this.families.set(name, (f = { help, type, values: new Map() }));
    return f;
  }

  counter(name: string, help: string): (n?: number, labels?: Labels) => void {
    const f = this.family(name, 'counter', help);
    return (n = 1, labels) => {
      const k = labelKey(labels);
      f.values.set(k, (f.values.get(k) ?? 0) + n);
    };
  }

  gauge(name: string, help: string): (v: number, labels?: Labels) => void {
    const f = this.family(name, 'gauge', help);
    return (v, labels) => void f.values.set(labelKey(labels), v);
  }

  /**
   * A counter whose value is kept elsewhere (a client's own tally): the setter takes the running
   * total, called from an `onCollect` hook. The caller keeps it monotonic.
   */
  counterTotal(name: string, help: string): (total: number, labels?: Labels) => void {
    const f = this.family(name, 'counter', help);
    return (total, labels) => void f.values.set(labelKey(labels), total);
  }

  /**
   * A family's current values (labels as rendered, e.g. `method="GET",status="200"`) without running
   * the collectors: for a console's glance, which must not reset what a scrape measures since the last one.
   */
  peek(name: string): Array<{ labels: string; value: number }> {
    return [...(this.families.get(name)?.values ?? [])].map(([labels, value]) => ({ labels, value }));
  }

  /** Run before each scrape (for gauges read from elsewhere). */
  onCollect(fn: () => void | Promise<void>): void {
    this.collectors.push(fn);
  }

  async render(): Promise<string> {
    for (const c of this.collectors) await c();
    const out: string[] = [];
    for (const [name, f] of this.families) {
      out.push(`# HELP ${name} ${f.help}`, `# TYPE ${name} ${f.type}`);
      if (f.values.size === 0 && f.type === 'counter') out.push(`${name} 0`);
      for (const [k, v] of f.values) out.push(k ? `${name}{${k}} ${v}` : `${name} ${v}`);
    }
    return out.join('\n') + '\n';
  }
}
