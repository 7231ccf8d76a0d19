// The error browser of report/index.html (inlined by models/html_report.py). Data comes from the
// JSON block #mmer-data: {runs: [{name, classes, cells[true][pred] = [ids], speech, text, fused}],
// utterances: {id: {label, fold, speaker, text, audio}}, probs: {run: {id: [p per class]}}}.
// Every value from the data is set as text or attribute, never parsed as HTML.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("mmer-data").textContent);
  const matrices = document.getElementById("matrices");
  const list = document.getElementById("cell-list");

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function matrix(run, r) {
    const box = el("div", { class: "matrix" });
    box.append(el("h3", {}, run.name));
    const table = el("table", { class: "cm", "data-run": run.name });
    const head = el("tr");
    head.append(el("th", {}, "true \\ predicted"));
    run.classes.forEach((c) => head.append(el("th", {}, c)));
    table.append(el("thead"), el("tbody"));
    table.tHead.append(head);
    run.cells.forEach((row, i) => {
      const total = row.reduce((s, ids) => s + ids.length, 0) || 1;
      const tr = el("tr");
      tr.append(el("th", {}, run.classes[i]));
      row.forEach((ids, j) => {
        const td = el("td", { "data-true": i, "data-pred": j, title: `${ids.length} of ${total}` },
                      ids.length);
        const share = ids.length / total;
        td.style.background = `rgba(44, 110, 180, ${(0.85 * share).toFixed(3)})`;
        if (share > 0.5) td.style.color = "white";
        if (i === j) td.classList.add("diag");
        if (ids.length) {
          td.classList.add("hit");
          td.tabIndex = 0;
          td.setAttribute("role", "button");
          td.addEventListener("click", () => show(r, i, j, td));
          td.addEventListener("keydown", (e) => { if (e.key === "Enter") show(r, i, j, td); });
        }
        tr.append(td);
      });
      table.tBodies[0].append(tr);
    });
    box.append(table);
    return box;
  }

  function probCell(run, source, uid, truth) {
    const td = el("td", { class: "probs" });
    const name = run[source];
    const p = name && data.probs[name] ? data.probs[name][uid] : undefined;
    if (!p) { td.append(el("span", { class: "muted" }, "–")); return td; }
    const top = p.indexOf(Math.max(...p));
    p.forEach((v, c) => {
      const line = el("div", {}, `${run.classes[c]} ${v.toFixed(2)}`);
      line.style.setProperty("--w", `${(100 * v).toFixed(1)}%`);
      if (c === top) line.classList.add("top");
      if (c === truth) line.classList.add("truth");
      td.append(line);
    });
    return td;
  }

  function show(r, i, j, td) {
    const run = data.runs[r];
    const ids = run.cells[i][j];
    document.querySelectorAll("table.cm td.chosen").forEach((c) => c.classList.remove("chosen"));
    td.classList.add("chosen");
    const sources = ["speech", "text", "fused"].filter((s) => run[s]);
    const h = el("h3", {}, `${run.name}: true ${run.classes[i]}, predicted ${run.classes[j]} ` +
                           `(${ids.length} utterance${ids.length === 1 ? "" : "s"})`);
    const table = el("table", { id: "utterances", "data-run": run.name, "data-true": i, "data-pred": j });
    const head = el("tr");
    ["id", "fold", "audio", "transcript"].forEach((c) => head.append(el("th", {}, c)));
    sources.forEach((s) => head.append(el("th", {}, `${s} (${run[s]})`)));
    table.append(el("thead"), el("tbody"));
    table.tHead.append(head);
    ids.forEach((uid) => {
      const u = data.utterances[uid] || {};
      const tr = el("tr", { "data-id": uid });
      tr.append(el("td", {}, uid), el("td", {}, u.fold));
      const cell = el("td");
      if (u.audio) cell.append(el("audio", { controls: "", preload: "none", src: u.audio }));
      else cell.append(el("span", { class: "muted" }, "not copied"));
      tr.append(cell, el("td", {}, u.text || "–"));
      sources.forEach((s) => tr.append(probCell(run, s, uid, i)));
      table.tBodies[0].append(tr);
    });
    list.replaceChildren(h, table);
    h.scrollIntoView({ block: "nearest" });
  }

  data.runs.forEach((run, r) => matrices.append(matrix(run, r)));
})();
