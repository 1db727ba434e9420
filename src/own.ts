/**
 * `obj[key] = value`, also for the key "__proto__", which an assignment takes as the object's
 * prototype instead of a key (a Kafka header may be named anything: it vanished).
 */
export function setOwn<T>(obj: Record<string, T>, key: string, value: T): void {
  if (key === "__proto__") Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  else obj[key] = value;
}
