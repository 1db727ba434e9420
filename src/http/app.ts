// The Hono app: liveness, readiness and status. It only reads what the worker reports.
import { Hono } from "hono";
import type { ConsumerStatus } from "../kafka/consumer.ts";

export interface HealthSource {
  /** Alive: the event loop turns and no consumer loop is stalled past its TTL. */
  live(): { ok: boolean; reason?: string };
  /** Ready: journal open and every handler's consumer joined, not draining, not blocked. */
  ready(): { ok: boolean; reasons: string[] };
  status(): { handlers: ConsumerStatus[]; inflight?: number; lastError?: string };
  metrics?(): Promise<{ contentType: string; body: string }>;
}

export function createApp(src: HealthSource): Hono {
  const app = new Hono();
  app.get("/healthz", (c) => {
    const l = src.live();
    return c.json(l.ok ? { status: "ok" } : { status: "stalled", reason: l.reason }, l.ok ? 200 : 503);
  });
  app.get("/readyz", (c) => {
    const r = src.ready();
    return c.json(r.ok ? { status: "ready" } : { status: "not ready", reasons: r.reasons }, r.ok ? 200 : 503);
  });
  app.get("/status", (c) => c.json(src.status()));
  app.get("/metrics", async (c) => {
    if (!src.metrics) return c.text("metrics are not enabled\n", 404);
    const m = await src.metrics();
    return c.body(m.body, 200, { "content-type": m.contentType });
  });
  return app;
}
