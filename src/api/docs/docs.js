// Renders /openapi.json as a page: operations grouped by tag, with their parameters, body and
// answers. Built with DOM nodes and textContent only (no HTML from the document is parsed).
"use strict";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

async function main() {
  const api = await (await fetch("/openapi.json")).json();
  const root = document.getElementById("api");
  root.replaceChildren(el("p", api.info.description));
  const byTag = new Map();
  for (const [path, item] of Object.entries(api.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push([method, path, op]);
    }
  }
  for (const [tag, ops] of byTag) {
    const section = el("section");
    section.append(el("h2", tag));
    for (const [method, path, op] of ops) {
      const d = el("details");
      d.append(el("summary", `${method.toUpperCase()} ${path} — ${op.summary}`));
      if (op.description) d.append(el("p", op.description));
      const table = el("table");
      for (const p of op.parameters || []) {
        const tr = el("tr");
        tr.append(el("td", `${p.name} (${p.in})`), el("td", p.description || ""));
        table.append(tr);
      }
      if (op.requestBody) {
        const tr = el("tr");
        tr.append(el("td", "JSON body"), el("td", op.requestBody.description || ""));
        table.append(tr);
      }
      for (const [status, r] of Object.entries(op.responses || {})) {
        const tr = el("tr");
        tr.append(el("td", status), el("td", r.description));
        table.append(tr);
      }
      d.append(table);
      section.append(d);
    }
    root.append(section);
  }
}

main().catch((e) => {
  document.getElementById("api").textContent = `Could not load /openapi.json: ${e}`;
});
