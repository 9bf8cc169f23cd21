// Live updates: GET /api/stream (server-sent events) read with fetch() and a stream reader, because EventSource
// cannot send the Authorization header. Reconnects with backoff and resumes from the last frame's id: the server's
// low mark (every event up to it was told). Resuming tells again the events above it that were already told (ids
// commit out of order on PostgreSQL, so the server re-reads above the mark): they are dropped here by event id.

import {authHeaders} from "./api.js";

const MAX_BACKOFF_MS = 30000;
const MAX_TOLD = 20000;

export class Live {
  /** onState(state, detail): state is "connecting", "live" or "offline"; onRefused(): the key was refused. */
  constructor({onState, onRefused}) {
    this.onState = onState || (() => {});
    this.onRefused = onRefused || (() => {});
    this.handlers = new Map();
    this.params = null;
    this.lastId = null;
    this.told = new Map();  // "kind:event id" -> event id, for the frames told above lastId
    this.controller = null;
    this.backoffMs = 1000;
    this.timer = null;
  }

  /** Listen to one kind of frame (trace, approval, run, hello); returns the function that stops listening. */
  on(kind, handler) {
    if (!this.handlers.has(kind)) this.handlers.set(kind, new Set());
    this.handlers.get(kind).add(handler);
    return () => this.handlers.get(kind).delete(handler);
  }

  /** Watch everything the key may see ({}), or one run ({run_id, after_id}). Reopens only when the scope changes
   * (after close(), always: a new key's stream never goes on with the old one's). */
  open(params = {}) {
    const wanted = JSON.stringify(params);
    if (this.params === wanted && this.controller) return;
    this.close();
    this.params = wanted;
    this.lastId = params.after_id ?? null;
    this.told.clear();
    this.backoffMs = 1000;
    this.connect();
  }

  close() {
    clearTimeout(this.timer);
    if (this.controller) this.controller.abort();
    this.controller = null;
    this.params = null;
  }

  /** Whether the frame of event `eventId` was told already (then it is dropped), and remember it. */
  toldBefore(kind, eventId) {
    if (typeof eventId !== "number") return false;
    const key = `${kind}:${eventId}`;
    if (this.told.has(key)) return true;
    this.told.set(key, eventId);
    return false;
  }

  /** Forget what the server can no longer tell again: every event up to the low mark. */
  moveMark(id) {
    this.lastId = id;
    for (const [key, eventId] of this.told) {
      if (eventId <= id) this.told.delete(key);
    }
    while (this.told.size > MAX_TOLD) this.told.delete(this.told.keys().next().value);
  }

  emit(kind, data) {
    for (const handler of this.handlers.get(kind) || []) {
      try {
        handler(data);
      } catch (err) {
        console.error("live handler failed", err);
      }
    }
  }

  async connect() {
    const controller = new AbortController();
    this.controller = controller;
    const params = JSON.parse(this.params || "{}");
    const url = new URL("/api/stream", window.location.origin);
    if (params.run_id) url.searchParams.set("run_id", params.run_id);
    const headers = {Accept: "text/event-stream", ...authHeaders()};
    if (this.lastId !== null) headers["Last-Event-ID"] = String(this.lastId);
    this.onState("connecting");
    try {
      const answer = await fetch(url, {headers, signal: controller.signal, cache: "no-store"});
      if (answer.status === 401) {
        this.onRefused();
        return;
      }
      if (!answer.ok || !answer.body) throw new Error(`HTTP ${answer.status}`);
      await this.read(answer.body, controller);
      if (controller.signal.aborted) return;
      this.onState("offline", "the stream ended");
    } catch (err) {
      if (controller.signal.aborted) return;
      this.onState("offline", err.message);
    }
    if (this.controller !== controller) return;
    this.timer = setTimeout(() => { if (this.controller === controller) this.connect(); }, this.backoffMs);
    this.backoffMs = Math.min(MAX_BACKOFF_MS, this.backoffMs * 2);
  }

  async read(body, controller) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    while (!controller.signal.aborted) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        this.dispatch(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  }

  dispatch(block) {
    let kind = "message";
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") kind = value;
      else if (field === "id") id = value;
      else if (field === "data") data.push(value);
    }
    let payload = null;
    try {
      payload = data.length ? JSON.parse(data.join("\n")) : null;
    } catch {
      return;
    }
    const eventId = kind === "trace" ? payload && payload.id : kind === "approval" ? payload && payload.event_id : null;
    const again = this.toldBefore(kind, eventId);
    if (id !== null && /^\d+$/.test(id)) this.moveMark(Number(id));
    if (again) return;
    if (kind === "hello") {
      this.backoffMs = 1000;
      this.onState("live");
    } else if (kind === "error") {
      this.onState("offline", payload && payload.code);
      if (payload && String(payload.code).startsWith("auth.")) this.onRefused();
    }
    this.emit(kind, payload);
  }
}
