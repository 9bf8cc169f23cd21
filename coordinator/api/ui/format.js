// Numbers a person reads: units always shown, never more digits than they can use.

const isNum = (v) => typeof v === "number" && Number.isFinite(v);

export function usd(value) {
  if (!isNum(value)) return "—";
  if (value === 0) return "$0";
  if (Math.abs(value) < 0.01) return `$${value.toFixed(4)}`;
  return `$${value.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2})}`;
}

export function count(value) {
  return isNum(value) ? Math.round(value).toLocaleString("en-US") : "—";
}

export function tokens(value) {
  return isNum(value) ? `${count(value)} tokens` : "—";
}

export function percent(ratio, digits = 1) {
  return isNum(ratio) ? `${(ratio * 100).toFixed(digits)} %` : "—";
}

/** Milliseconds as "840 ms", "2.4 s", "3 min 5 s". */
export function ms(value) {
  if (!isNum(value)) return "—";
  if (value < 1000) return `${Math.round(value)} ms`;
  return seconds(value / 1000);
}

/** Seconds as "2.4 s", "3 min 5 s", "2 h 10 min", "3 d 4 h". */
export function seconds(value) {
  if (!isNum(value)) return "—";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 60) return `${value < 10 ? value.toFixed(1) : Math.round(value)} s`;
  if (value < 3600) return `${Math.floor(value / 60)} min ${Math.floor(value % 60)} s`;
  if (value < 86400) return `${Math.floor(value / 3600)} h ${Math.floor((value % 3600) / 60)} min`;
  return `${Math.floor(value / 86400)} d ${Math.floor((value % 86400) / 3600)} h`;
}

/** An epoch time as "3 min 5 s ago" (or "in …" for a future one). */
export function ago(epochS) {
  if (!isNum(epochS)) return "—";
  const delta = Date.now() / 1000 - epochS;
  if (Math.abs(delta) < 1) return "just now";
  return delta >= 0 ? `${seconds(delta)} ago` : `in ${seconds(-delta)}`;
}

/** An epoch time as local "2026-12-02 08:31:05". */
export function when(epochS) {
  if (!isNum(epochS)) return "—";
  const d = new Date(epochS * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** The ISO time of an epoch, for tooltips. */
export function iso(epochS) {
  return isNum(epochS) ? new Date(epochS * 1000).toISOString() : "";
}

/** How long a run took, or has run so far. */
export function took(run) {
  if (!isNum(run.created_at)) return "—";
  if (isNum(run.ended_at)) return seconds(run.ended_at - run.created_at);
  return `${seconds(Date.now() / 1000 - run.created_at)} so far`;
}

/** Bytes as "812 B", "14.2 KiB", "1.0 MiB". */
export function bytes(value) {
  if (!isNum(value)) return "—";
  if (value < 1024) return `${value} B`;
  if (value < 1024 * 1024) return `${(value / 1024).toFixed(1)} KiB`;
  return `${(value / 1024 / 1024).toFixed(1)} MiB`;
}
