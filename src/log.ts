/** The logger type the library accepts: pino's, or anything shaped like it. Silent by default. */
export interface Logger {
  trace(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  child(bindings: Record<string, unknown>): Logger;
}

const noop = (): void => {};
export const silentLogger: Logger = {
  trace: noop, debug: noop, info: noop, warn: noop, error: noop,
  child: () => silentLogger,
};
