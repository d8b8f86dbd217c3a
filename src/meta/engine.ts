// Placeholder until the PostgreSQL engine lands (h/engines replaces this file).
import { dfError } from '../errors.js';
import type { SqlEngine } from './sql.js';
import { SqliteEngine } from './sqlite-engine.js';

export async function openEngine(spec: string): Promise<SqlEngine> {
  if (spec.startsWith('postgres://') || spec.startsWith('postgresql://')) throw dfError('DF_ERR_CONFIG', 'PostgreSQL is not available yet');
  return new SqliteEngine(spec.startsWith('sqlite:') ? spec.slice('sqlite:'.length) : spec);
}
