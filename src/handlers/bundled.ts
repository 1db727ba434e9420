// Handlers compiled into the binary (the repository's handlers/ at build time). The build's
// generated entry fills this before main.ts runs; from the sources it stays empty.
export interface BundledHandler {
  /** The file's path in the repository, e.g. handlers/orders.ts. */
  file: string;
  exported: unknown;
}

let bundled: BundledHandler[] = [];

export function setBundledHandlers(list: BundledHandler[]): void {
  bundled = list;
}

export function bundledHandlers(): BundledHandler[] {
  return bundled;
}
