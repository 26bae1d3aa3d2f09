// The Tollgate dashboard: polls /admin/dashboard/data with the admin token and renders it.
//
// Every value from the gateway is written with textContent (route and upstream names come from the
// config, error messages from files); nothing is ever parsed as markup. The token lives in
// sessionStorage only and goes in the Authorization header, never in a URL.
"use strict";

(() => {
  const KEY = "tollgate-admin-token";
  const EVERY_MS = 1000;
  const $ = (id) => document.getElementById(id);
  let refreshes = 0;
  let timer = null;

  const dash = "\u2013";
  const fixed = (v, digits) => (v === null || v === undefined ? dash : v.toFixed(digits));
  const ms = (v) => (v === null || v === undefined ? dash : v < 10 ? v.toFixed(2) + " ms" : v.toFixed(1) + " ms");
  const pct = (v) => (v === null || v === undefined ? dash : (v * 100).toFixed(1) + " %");
  const time = (unix) => new Date(unix * 1000).toLocaleTimeString();

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function fill(tableId, rows, build) {
    const body = $(tableId).tBodies[0];
    const frag = document.createDocumentFragment();
    for (const r of rows) frag.appendChild(build(r));
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = cell(tr, "none", "muted");
      td.colSpan = $(tableId).tHead.rows[0].cells.length;
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
  }

  function routeRow(r) {
    const tr = document.createElement("tr");
    if (r.name === null) tr.className = "unrouted";
    tr.dataset.route = r.name === null ? "" : r.name;
    cell(tr, r.name === null ? "(no route matched)" : r.name, "name");
    cell(tr, r.upstream === null ? dash : r.upstream, "upstream");
    cell(tr, fixed(r.rps, 1), "n rps");
    cell(tr, fixed(r.rps_4xx, 1), "n rps4xx" + (r.rps_4xx > 0 ? " warn" : ""));
    cell(tr, fixed(r.rps_5xx, 1), "n rps5xx" + (r.rps_5xx > 0 ? " bad" : ""));
    cell(tr, pct(r.error_ratio), "n errors");
    cell(tr, ms(r.p50_ms), "n p50");
    cell(tr, ms(r.p99_ms), "n p99");
    cell(tr, r.requests, "n total");
    return tr;
  }

  function targetRows(upstreams) {
    const rows = [];
    for (const u of upstreams) for (const t of u.targets) rows.push({ upstream: u.name, t });
    return rows;
  }

  function targetRow({ upstream, t }) {
    const tr = document.createElement("tr");
    tr.dataset.upstream = upstream;
    tr.dataset.target = t.addr;
    tr.dataset.state = t.state;
    cell(tr, upstream, "upstream");
    cell(tr, t.addr, "target");
    let state = t.state;
    if (t.state === "ejected" && t.ejected_for_ms !== null) state += " (" + Math.ceil(t.ejected_for_ms / 1000) + " s left)";
    cell(tr, state, "state " + (t.state === "healthy" ? "ok" : "bad"));
    cell(tr, t.weight, "n");
    cell(tr, t.in_flight === null ? dash : t.in_flight, "n inflight");
    cell(tr, ms(t.latency_ewma_ms), "n");
    return tr;
  }

  function limitRow(l) {
    const tr = document.createElement("tr");
    tr.dataset.policy = l.policy;
    cell(tr, l.policy, "policy");
    cell(tr, fixed(l.per_s, 1), "n per-s" + (l.per_s > 0 ? " warn" : ""));
    cell(tr, l.rejections, "n rejections");
    return tr;
  }

  function reloadRow(v) {
    const tr = document.createElement("tr");
    tr.dataset.version = String(v.version);
    cell(tr, v.version + (v.current ? " (serving)" : ""), "n");
    cell(tr, time(v.at), "");
    cell(tr, v.trigger + (v.rollback_to ? " to " + v.rollback_to : ""), "");
    cell(tr, v.outcome, v.outcome === "applied" ? "ok" : "bad");
    const what = v.errors.length > 0 ? v.errors : v.changes;
    cell(tr, what.length > 0 ? what.join("; ") : dash, "wrap" + (v.errors.length > 0 ? " bad" : ""));
    return tr;
  }

  function render(d) {
    fill("routes", d.routes, routeRow);
    fill("targets", targetRows(d.upstreams), targetRow);
    fill("limits", d.rate_limits, limitRow);
    fill("reloads", d.reloads, reloadRow);
    $("window").textContent = d.window_s === null ? "(since start; rates from the next refresh)" : "(last " + d.window_s.toFixed(1) + " s)";
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
    $("updated").textContent = "updated " + new Date().toLocaleTimeString() + ", config version " + d.version;
  }

  function setStatus(text, cls) {
    $("status").textContent = text;
    $("status").className = cls;
  }

  function showLogin(message) {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    $("board").hidden = true;
    $("forget").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message;
    setStatus("signed out", "muted");
    $("token").focus();
  }

  async function refresh() {
    timer = null;
    const token = sessionStorage.getItem(KEY);
    if (!token) {
      showLogin("");
      return;
    }
    try {
      const r = await fetch("/admin/dashboard/data", {
        headers: { Authorization: "Bearer " + token },
        cache: "no-store",
        credentials: "omit",
      });
      if (r.status === 401 || r.status === 403) {
        sessionStorage.removeItem(KEY);
        showLogin(r.status === 403 ? "The admin endpoints are off (no server.admin.token)." : "The token was refused.");
        return;
      }
      if (!r.ok) throw new Error("HTTP " + r.status);
      render(await r.json());
      $("login").hidden = true;
      $("board").hidden = false;
      $("forget").hidden = false;
      setStatus("live", "ok");
    } catch (e) {
      setStatus("gateway unreachable: " + e.message, "bad");
    }
    timer = setTimeout(refresh, EVERY_MS);
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (token === "") return;
    sessionStorage.setItem(KEY, token);
    if (timer !== null) clearTimeout(timer);
    refresh();
  });

  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    showLogin("");
  });

  refresh();
})();
