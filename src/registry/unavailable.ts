// The one registry failure that is nobody's fault but the registry's: kept apart from registry.ts
// so the executor can recognise it without loading the registry client (≈ 70 ms of imports).

/** The registry could not be asked (down, 5xx, 401/403); the message waits, it is not at fault. */
export class RegistryUnavailableError extends Error {
  constructor(message: string, opts?: { cause?: unknown }) {
    super(message, opts);
    this.name = "RegistryUnavailableError";
  }
}
