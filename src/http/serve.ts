// Serves a Hono app under Bun or Deno and reports the bound address (port 0 picks a free one).
import type { Hono } from "hono";

export interface HttpServer {
  address: string;
  close(): Promise<void>;
}

declare const Deno: {
  serve(opts: { hostname: string; port: number; onListen?: () => void }, handler: (req: Request) => Response | Promise<Response>): {
    addr: { hostname: string; port: number };
    shutdown(): Promise<void>;
  };
} | undefined;

export function parseHostPort(value: string): { host: string; port: number } | undefined {
  const m = /^(\[[^\]]+\]|[^:]*):(\d{1,5})$/.exec(value);
  if (!m) return undefined;
  const port = Number(m[2]);
  if (port > 65535) return undefined;
  return { host: m[1] || "0.0.0.0", port };
}

export function serve(app: Hono, host: string, port: number): HttpServer {
  if (typeof Bun !== "undefined") {
    const server = Bun.serve({ hostname: host, port, fetch: app.fetch, idleTimeout: 30 });
    return { address: `${host}:${server.port}`, close: async () => void (await server.stop(true)) };
  }
  if (typeof Deno !== "undefined") {
    const server = Deno.serve({ hostname: host, port, onListen: () => {} }, app.fetch);
    return { address: `${host}:${server.addr.port}`, close: () => server.shutdown() };
  }
  throw new Error("kexo runs under Bun or Deno");
}
