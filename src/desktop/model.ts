/** The desktop domain: desktops and their leases (src/meta/sql-desktops.ts). */
export type DesktopMode = 'persistent' | 'restore';

export interface DesktopRow {
  name: string;
  image: string;
  mode: DesktopMode;
  /** The image ref the desktop was made from; a restore desktop syncs to its head. */
  follows: string;
  createdAt: string;
}

/** The last lease of a desktop. `holder` null = released or broken (the row keeps the fencing counter). */
export interface LeaseRow {
  desktop: string;
  holder: string | null;
  fencing: number;
  since: string;
  expiresAt: string;
}

export type LeaseAcquireOutcome =
  | { kind: 'acquired' | 'renewed'; lease: LeaseRow }
  | { kind: 'taken-over'; lease: LeaseRow; previous: LeaseRow }
  | { kind: 'held'; lease: LeaseRow };

export type LeaseReleaseOutcome = { released: true } | { released: false; current: LeaseRow | undefined };

export type DesktopCreateOutcome =
  | { kind: 'created'; desktop: DesktopRow }
  | { kind: 'exists'; desktop: DesktopRow }
  | { kind: 'ref-exists'; head: number | null };


export interface DesktopRepo {
  /** Insert a desktop; with `ref`, create its ref (compare-and-swap from nothing) in the same transaction. */
  createDesktop(row: DesktopRow, ref?: { name: string; version: number; reason: string; author: string }): Promise<DesktopCreateOutcome>;
  getDesktop(name: string): Promise<DesktopRow | undefined>;
  listDesktops(): Promise<DesktopRow[]>;
  getLease(desktop: string): Promise<LeaseRow | undefined>;
  /**
   * One transaction: a free, released or expired (at `at`) lease → new lease with the next fencing;
   * the same holder → renewed (same fencing, new expiry); another holder → `held`, unless `force`
   * (taken over with the next fencing). Fencing numbers only grow, across releases too.
   */
  acquireLease(desktop: string, holder: string, at: string, expiresAt: string, force: boolean): Promise<LeaseAcquireOutcome>;
  /** Release when `fencing` is the desktop's last lease (idempotent once released). */
  releaseLease(desktop: string, fencing: number): Promise<LeaseReleaseOutcome>;
  /** Clear the holder; returns the lease that was held (expired or not), if any. */
  breakLease(desktop: string): Promise<LeaseRow | undefined>;
}
