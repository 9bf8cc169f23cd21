// Building the page from data without ever parsing data as markup: every value is set as text
// (textContent, text nodes, setAttribute), never through an HTML parser. Everything from the ledger is hostile.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "href" && !isSafeHref(String(value))) continue;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  return el;
}

/** Only in-page links and relative API paths: a value from the ledger can never become a javascript: URL. */
function isSafeHref(href) {
  return href.startsWith("#") || href.startsWith("/") && !href.startsWith("//");
}

/** An HTML element: h("a", {href: "#/runs"}, "Runs"). Children are nodes or text. */
export function h(tag, attrs, ...children) {
  return append(setAttrs(document.createElement(tag), attrs), children);
}

/** An SVG element, the same way. */
export function s(tag, attrs, ...children) {
  return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** A coloured status pill; the colour comes from the class, the text is the status itself. */
export function badge(status, extra, tone) {
  const shade = tone ?? status;
  const known = /^[a-z_]+$/.test(String(shade)) ? String(shade) : "unknown";
  return h("span", {class: ["badge", `st-${known}`, extra]}, String(status ?? "—"));
}

/** An empty state: what is not there, and what to do about it. */
export function empty(title, hint) {
  return h("div", {class: "empty"}, h("strong", {}, title), hint ? h("p", {}, hint) : null);
}

/** An error box with the API's stable code and its message. */
export function errorBox(err, what) {
  const code = err && err.code ? err.code : "error";
  const message = err && err.message ? err.message : String(err);
  return h("div", {class: "error-box", role: "alert"},
    h("strong", {}, what ? `${what} failed` : "Something failed"), " ",
    h("code", {}, code), h("p", {}, message));
}

/** A small "loading" line, replaced when the data arrives. */
export function loading(what) {
  return h("p", {class: "muted loading"}, `Loading ${what}…`);
}

/** A card: a titled panel. */
export function card(title, body, opts = {}) {
  return h("section", {class: ["card", opts.wide && "wide", opts.class], "data-card": opts.id},
    h("header", {}, h("h2", {}, title), opts.aside || null),
    h("div", {class: "card-body"}, body));
}

/** A table from rows: columns = [{label, cell(row) -> node|text, class}]. */
export function table(columns, rows, opts = {}) {
  return h("table", {class: ["grid", opts.class]},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {class: c.class}, c.label)))),
    h("tbody", {}, rows.map((row) => h("tr", {class: opts.rowClass ? opts.rowClass(row) : null,
      "data-id": opts.rowId ? opts.rowId(row) : null},
    columns.map((c) => h("td", {class: c.class}, c.cell(row)))))));
}

/** A link to a run's page, showing its short id (the full id in the tooltip). */
export function runLink(runId) {
  if (!runId) return "—";
  return h("a", {href: `#/runs/${encodeURIComponent(runId)}`, class: "mono", title: runId}, shortId(runId));
}

export function shortId(id) {
  const text = String(id ?? "");
  return text.length > 13 ? `${text.slice(0, 8)}…` : text;
}

/** JSON as indented text (shown in a <pre>, never parsed as markup). */
export function pretty(value) {
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

/** A modal dialog with a title and a body; closes on Esc, the close button or a click outside. */
export function dialog(title, body) {
  const box = h("dialog", {class: "modal"},
    h("header", {}, h("h2", {}, title),
      h("button", {type: "button", class: "icon", "aria-label": "Close", onclick: () => box.close()}, "×")),
    h("div", {class: "modal-body"}, body));
  box.addEventListener("click", (e) => { if (e.target === box) box.close(); });
  box.addEventListener("close", () => box.remove());
  document.body.append(box);
  box.showModal();
  return box;
}

/** What a non-admin key sees instead of an admin-only page or card. */
export function adminOnly(what, me) {
  return h("div", {class: "notice"}, h("strong", {}, `${what} needs an admin key.`),
    h("p", {}, `This key acts for tenant “${me.tenant}” and sees only that tenant's runs. `,
      "Ask an operator for an admin key to see the whole fleet."));
}
