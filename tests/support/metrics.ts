// A running worker's kexo_messages_total, read from its /metrics.

/** kexo_messages_total summed by outcome (processed, deduplicated, …), of one handler or all. */
export async function outcomes(address: string, handler?: string): Promise<Record<string, number>> {
  const text = await fetch(`http://${address}/metrics`).then((r) => r.text());
  const out: Record<string, number> = {};
  for (const l of text.split("\n")) {
    if (!l.startsWith("kexo_messages_total{") || (handler !== undefined && !l.includes(`handler="${handler}"`))) continue;
    const outcome = /outcome="([a-z_]+)"/.exec(l)![1]!;
    out[outcome] = (out[outcome] ?? 0) + Number(l.split(" ").pop());
  }
  return out;
}
