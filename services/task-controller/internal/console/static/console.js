// Berth console: a single page over the controller's /v1/ API. Plain JavaScript, no
// framework, no build step, nothing loaded from elsewhere. Pages are chosen by the URL's
// hash (#/deployments, #/deployments/<id>, #/services/<path>, #/hosts, #/names?service=);
// every page returns a function that stops its timers and streams when the page changes.
(function () {
  "use strict";

  var TOKEN_KEY = "berth.token";
  var RUN_STATES = ["pending", "queued", "running", "paused", "rolling_back", "succeeded", "failed", "aborted", "rolled_back"];
  var TERMINAL = { succeeded: 1, failed: 1, aborted: 1, rolled_back: 1 };
  var main = document.getElementById("main");
  var stopPage = null;

  // ---- DOM helpers --------------------------------------------------------------------

  // h builds an element: h("td", {class: "num", "data-label": "Hosts"}, "3", childNode).
  // Strings become text nodes, so data from the API is never parsed as HTML.
  function h(tag, attrs) {
    var el = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === undefined || v === null || v === false) return;
        if (k.slice(0, 2) === "on" && typeof v === "function") el[k] = v;
        else if (k === "style") el.style.cssText = v; // CSSOM, which the page's CSP allows
        else if (k === "text") el.textContent = v;
        else el.setAttribute(k, v === true ? "" : String(v));
      });
    }
    for (var i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }
  function append(el, c) {
    if (c === undefined || c === null || c === false) return;
    if (Array.isArray(c)) { c.forEach(function (x) { append(el, x); }); return; }
    el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  function $(id) { return document.getElementById(id); }

  // table makes a responsive table: cols are [label, className?]; rows are arrays of cells
  // (a cell is content or {v: content, cls, attrs}); rowAttrs(i) gives a row's attributes.
  function table(id, cols, rows, rowAttrs, empty) {
    var head = h("tr", null, cols.map(function (c) { return h("th", { class: c[1] }, c[0]); }));
    var body = h("tbody");
    rows.forEach(function (r, i) {
      var tr = h("tr", rowAttrs ? rowAttrs(i) : null);
      r.forEach(function (cell, j) {
        var c = cell && typeof cell === "object" && !(cell instanceof Node) && !Array.isArray(cell) ? cell : { v: cell };
        var attrs = Object.assign({ "data-label": cols[j][0], class: [cols[j][1], c.cls].filter(Boolean).join(" ") || null }, c.attrs || {});
        tr.appendChild(h("td", attrs, c.v));
      });
      body.appendChild(tr);
    });
    var t = h("table", { id: id, class: "rows" }, h("thead", null, head), body);
    return h("div", { class: "table-wrap" }, rows.length ? t : [t, h("div", { class: "empty" }, empty || "Nothing here.")]);
  }

  function badge(state) {
    var s = String(state || "unknown");
    var cls = { succeeded: "ok", running: "run", dispatched: "run", rolling_back: "warn", paused: "warn", queued: "", pending: "",
      failed: "bad", aborted: "bad", rolled_back: "warn", unreachable: "bad", timed_out: "bad", skipped: "",
      up: "ok", down: "bad", ready: "ok", draining: "warn", healthy: "ok", unhealthy: "bad", flapping: "warn", active: "ok" }[s.toLowerCase()];
    return h("span", { class: "badge state " + (cls || ""), "data-state": s }, s.replace(/_/g, " "));
  }

  function facts(pairs) {
    return h("dl", { class: "facts" }, pairs.filter(Boolean).map(function (p) {
      return h("div", null, h("dt", null, p[0]), h("dd", p[2] ? { id: p[2] } : null, p[1] === undefined || p[1] === null || p[1] === "" ? "—" : p[1]));
    }));
  }

  // ---- Formatting ---------------------------------------------------------------------

  function pad(n) { return n < 10 ? "0" + n : "" + n; }
  function fmtTime(iso) {
    if (!iso) return "";
    var d = new Date(iso);
    if (isNaN(d)) return iso;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function ago(iso) {
    if (!iso) return "";
    var s = (Date.now() - new Date(iso).getTime()) / 1000;
    if (isNaN(s)) return "";
    if (s < 0) return "in " + fmtSecs(-s);
    return fmtSecs(s) + " ago";
  }
  function fmtSecs(s) {
    if (s < 1) return Math.round(s * 1000) + "ms";
    if (s < 60) return (s < 10 ? s.toFixed(1) : Math.round(s)) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + pad(Math.round(s % 60)) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + pad(Math.floor((s % 3600) / 60)) + "m";
    return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
  }
  function span(from, to) {
    if (!from) return "";
    var a = new Date(from).getTime(), b = to ? new Date(to).getTime() : Date.now();
    return isNaN(a) || isNaN(b) ? "" : fmtSecs(Math.max(0, b - a) / 1000);
  }
  // took is a duration that is still growing (to is empty): the page's ticker updates it.
  function took(from, to) {
    if (!from || to) return span(from, to);
    return h("span", { "data-from": from }, span(from));
  }
  // Durations come as protojson ("30s", "1.5s").
  function fmtDur(d) {
    if (!d) return "";
    var n = parseFloat(d);
    return isNaN(n) ? String(d) : fmtSecs(n);
  }
  function bytes(n) {
    n = Number(n || 0);
    var u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i && n < 10 ? n.toFixed(1) : Math.round(n)) + " " + u[i];
  }
  function cores(m) { m = Number(m || 0); return (m / 1000).toFixed(m % 1000 ? 1 : 0) + " cores"; }
  function enumName(v, prefix) { return v ? String(v).replace(prefix, "").toLowerCase() : ""; }
  function short(s, n) { s = String(s || ""); return s.length > n ? s.slice(0, n) + "…" : s; }
  function jsonValue(v) {
    if (v === undefined || v === null) return "";
    if (typeof v === "string") return v;
    return JSON.stringify(v);
  }

  // ---- API ----------------------------------------------------------------------------

  function token() { try { return localStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; } }
  function headers(extra) {
    var hd = Object.assign({ Accept: "application/json" }, extra || {});
    var t = token();
    if (t) hd.Authorization = "Bearer " + t;
    return hd;
  }

  // ApiError carries the status and the JSON error body's message (the controller's
  // {code, message, field}; the name service's {error, field}).
  function ApiError(status, code, message, field) {
    this.status = status; this.code = code || ""; this.message = message; this.field = field || "";
  }
  ApiError.prototype.toString = function () {
    return (this.status ? this.status + " " : "") + (this.code ? this.code + ": " : "") + this.message + (this.field ? " (field " + this.field + ")" : "");
  };

  function api(method, path, body) {
    var init = { method: method, headers: headers(body !== undefined ? { "Content-Type": "application/json" } : null), cache: "no-store" };
    if (body !== undefined) init.body = JSON.stringify(body);
    return fetch(path, init).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
        if (!res.ok) {
          var msg = (data && (data.message || data.error)) || text || res.statusText;
          throw new ApiError(res.status, data && data.code, msg, data && data.field);
        }
        return data;
      });
    }, function (err) {
      throw new ApiError(0, "unreachable", "the controller did not answer: " + err.message);
    });
  }
  function get(path) { return api("GET", path); }
  function q(params) {
    var parts = [];
    Object.keys(params).forEach(function (k) {
      if (params[k] !== "" && params[k] !== undefined && params[k] !== null) parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(params[k]));
    });
    return parts.length ? "?" + parts.join("&") : "";
  }
  function svcPath(p) { return p.split("/").map(encodeURIComponent).join("/"); }

  // stream follows a Server-Sent Events endpoint with fetch (so that the token goes in the
  // Authorization header, which EventSource cannot send), reconnecting after a drop.
  // onEvent(name, data, id) gets each event; onState(true|false) the connection state.
  // It returns a function that stops it.
  function stream(path, onEvent, onState) {
    var stopped = false, ctl = null, timer = null, retry = 2000;
    function connect() {
      if (stopped) return;
      ctl = new AbortController();
      fetch(path, { headers: headers({ Accept: "text/event-stream" }), cache: "no-store", signal: ctl.signal }).then(function (res) {
        if (!res.ok || !res.body) {
          return res.text().then(function (t) {
            var m = t; try { var j = JSON.parse(t); m = j.message || j.error || t; } catch (e) { /* not JSON */ }
            throw new ApiError(res.status, "", m);
          });
        }
        onState(true);
        var reader = res.body.getReader(), dec = new TextDecoder(), buf = "";
        function pump() {
          return reader.read().then(function (r) {
            if (r.done) return;
            buf += dec.decode(r.value, { stream: true }).replace(/\r\n?/g, "\n");
            var at;
            while ((at = buf.indexOf("\n\n")) >= 0) {
              var block = buf.slice(0, at); buf = buf.slice(at + 2);
              var ev = "message", data = [], id = "";
              block.split("\n").forEach(function (line) {
                if (!line || line.charAt(0) === ":") return;
                var c = line.indexOf(":"), f = c < 0 ? line : line.slice(0, c), v = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
                if (f === "event") ev = v; else if (f === "data") data.push(v); else if (f === "id") id = v;
                else if (f === "retry" && /^\d+$/.test(v)) retry = Number(v);
              });
              if (data.length) {
                var parsed; try { parsed = JSON.parse(data.join("\n")); } catch (e) { continue; }
                onEvent(ev, parsed, id);
              }
            }
            return pump();
          });
        }
        return pump();
      }).catch(function (err) {
        if (stopped) return;
        if (err instanceof ApiError && err.status >= 400 && err.status < 500) { onState(false, err); stopped = true; return; }
      }).then(function () {
        if (stopped) return;
        onState(false);
        timer = setTimeout(connect, retry);
      });
    }
    connect();
    return function () { stopped = true; if (ctl) ctl.abort(); clearTimeout(timer); };
  }

  // every runs fn now and then every ms until stopped; fn's promise is awaited first.
  function every(ms, fn) {
    var stopped = false, timer = null;
    function tick() {
      if (stopped) return;
      Promise.resolve().then(fn).catch(function () { /* shown by fn */ }).then(function () {
        if (!stopped) timer = setTimeout(tick, ms);
      });
    }
    tick();
    return function () { stopped = true; clearTimeout(timer); };
  }

  function showError(el, err) { clear(el); el.className = "msg error"; el.textContent = String(err); }
  function showOK(el, text) { clear(el); el.className = "msg ok"; el.textContent = text; }

  // ---- Routing ------------------------------------------------------------------------

  function parseHash() {
    var hash = location.hash.replace(/^#\/?/, "");
    var qi = hash.indexOf("?"), query = {};
    if (qi >= 0) {
      hash.slice(qi + 1).split("&").forEach(function (kv) {
        if (!kv) return;
        var e = kv.indexOf("=");
        query[decodeURIComponent(e < 0 ? kv : kv.slice(0, e))] = e < 0 ? "" : decodeURIComponent(kv.slice(e + 1).replace(/\+/g, " "));
      });
      hash = hash.slice(0, qi);
    }
    var parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
    return { page: parts[0] || "deployments", rest: parts.slice(1), query: query };
  }

  function route() {
    if (stopPage) { stopPage(); stopPage = null; }
    var r = parseHash();
    Array.prototype.forEach.call(document.querySelectorAll("#nav a"), function (a) {
      a.classList.toggle("active", a.getAttribute("data-page") === r.page);
    });
    clear(main);
    var pages = { deployments: r.rest.length ? deploymentPage : deploymentsPage, services: servicesPage, hosts: hostsPage, names: namesPage };
    var page = pages[r.page];
    if (!page) {
      main.appendChild(h("h1", null, "Not found"));
      main.appendChild(h("p", null, "No page ", h("code", null, location.hash), ". ", h("a", { href: "#/deployments" }, "Deployments")));
      return;
    }
    stopPage = page(r) || null;
    window.scrollTo(0, 0);
  }

  // ---- Deployments --------------------------------------------------------------------

  function counts(d) {
    var c = (d.status && d.status.counts) || {};
    var total = c.total || (d.hosts ? d.hosts.length : 0) || (d.allocations ? d.allocations.length : 0) || 0;
    return { total: total, s: c.succeeded || 0, r: c.running || 0, f: (c.failed || 0) + (c.unreachable || 0), k: c.skipped || 0 };
  }
  function progressBar(c) {
    var pct = function (n) { return c.total ? (100 * n / c.total).toFixed(2) + "%" : "0"; };
    return h("div", { class: "progress" },
      h("div", { class: "bar", role: "img", "aria-label": c.s + " of " + c.total + " succeeded" },
        h("span", { class: "s", style: "width:" + pct(c.s) }), h("span", { class: "r", style: "width:" + pct(c.r) }),
        h("span", { class: "f", style: "width:" + pct(c.f) }), h("span", { class: "k", style: "width:" + pct(c.k) })),
      h("span", { class: "small nowrap" }, c.s + "/" + c.total));
  }

  function deploymentsPage(r) {
    var state = r.query.state || "", service = r.query.service || "";
    var stateSel = h("select", { id: "filter-state", onchange: apply }, h("option", { value: "" }, "any state"),
      RUN_STATES.map(function (s) { return h("option", { value: s, selected: s === state }, s.replace(/_/g, " ")); }));
    var svcIn = h("input", { id: "filter-service", list: "services-list", placeholder: "service (hotel/search)", value: service, size: 22 });
    var list = h("datalist", { id: "services-list" });
    var form = h("form", { class: "toolbar", onsubmit: function (e) { e.preventDefault(); apply(); } },
      h("label", null, "State", stateSel), h("label", null, "Service", svcIn), list,
      h("button", { type: "submit" }, "Filter"), h("span", { class: "spacer" }), h("span", { id: "updated", class: "live" }, ""));
    var msg = h("div", { class: "msg", id: "list-msg" });
    var holder = h("div", { id: "deployments-holder" });
    main.appendChild(h("h1", null, "Deployments"));
    main.appendChild(form); main.appendChild(msg); main.appendChild(holder);
    function apply() {
      location.hash = "#/deployments" + q({ state: stateSel.value, service: svcIn.value.trim() });
    }
    get("/v1/tree").then(function (t) {
      (t.nodes || []).forEach(function (n) { list.appendChild(h("option", { value: n.path })); });
    }).catch(function () { /* the filter still works by hand */ });
    return every(3000, function () {
      return get("/v1/deployments" + q({ state: state, service: service, limit: 200 })).then(function (res) {
        clear(msg); msg.className = "msg";
        var deps = res.deployments || [];
        clear(holder).appendChild(deploymentsTable("deployments", deps));
        var up = $("updated"); up.textContent = "updated " + fmtTime(new Date().toISOString()).slice(11); up.className = "live on";
      }, function (err) { showError(msg, err); $("updated").className = "live off"; });
    });
  }

  function deploymentsTable(id, deps) {
    return table(id, [["Deployment"], ["Service"], ["Version"], ["State"], ["Progress"], ["Batch"], ["Requested by"], ["Created"], ["Took"]],
      deps.map(function (d) {
        var st = d.status || {}, nb = (st.batches || []).length;
        return [
          h("a", { href: "#/deployments/" + encodeURIComponent(d.id), class: "mono" }, d.id),
          h("a", { href: "#/services/" + svcPath(d.service) }, d.service),
          { v: d.version, cls: "mono" },
          { v: [badge(st.state), st.pause_reason ? h("span", { class: "muted small" }, " " + st.pause_reason) : null], cls: "state" },
          progressBar(counts(d)),
          nb ? ((st.current_batch || 0) + 1) + "/" + nb : "",
          { v: d.requested_by, cls: "small" },
          { v: h("span", { title: fmtTime(st.created_at) }, ago(st.created_at)), cls: "nowrap" },
          span(st.started_at || st.created_at, st.ended_at)
        ];
      }), function (i) { return { "data-id": deps[i].id }; }, "No deployments match.");
  }

  function deploymentPage(r) {
    var id = r.rest[0];
    var dep = null, byHost = {}, live = false, openOut = {};
    var title = h("h1", null, "Deployment ", h("span", { class: "sub mono" }, id));
    var actions = h("div", { class: "toolbar", id: "actions" });
    var actionMsg = h("div", { class: "msg", id: "action-msg", role: "status" });
    var body = h("div", { id: "deployment" }, h("p", { class: "muted" }, "Loading…"));
    var liveEl = h("span", { id: "live", class: "live" }, "connecting");
    main.appendChild(h("p", { class: "small" }, h("a", { href: "#/deployments" }, "← Deployments")));
    main.appendChild(title); main.appendChild(actions); main.appendChild(actionMsg); main.appendChild(body);

    var buttons = {};
    [["pause", "Pause", ""], ["resume", "Resume", "primary"], ["abort", "Abort", "danger"], ["rollback", "Roll back", "danger"]].forEach(function (a) {
      var b = h("button", { type: "button", id: "act-" + a[0], class: a[2] || null, onclick: function () { act(a[0], b, a[1]); } }, a[1]);
      buttons[a[0]] = b; actions.appendChild(b);
    });
    actions.appendChild(h("span", { class: "spacer" }));
    actions.appendChild(liveEl);

    // act sends an operator request; abort and roll back ask for a second click first
    // (no browser dialog, so it works the same on a phone).
    function act(action, btn, label) {
      if ((action === "abort" || action === "rollback") && !btn.classList.contains("armed")) {
        btn.classList.add("armed"); btn.textContent = "Confirm " + label.toLowerCase();
        setTimeout(function () { btn.classList.remove("armed"); btn.textContent = label; }, 5000);
        return;
      }
      btn.classList.remove("armed"); btn.textContent = label;
      btn.disabled = true;
      api("POST", "/v1/deployments/" + encodeURIComponent(id) + "/" + action).then(function (d) {
        showOK(actionMsg, action + " requested; the leader applies it (state now " + ((d.status && d.status.state) || "?") + ").");
        if (!live) { setDeployment(d); }
      }, function (err) {
        showError(actionMsg, action + " refused: " + err);
      }).then(function () { btn.disabled = false; updateButtons(); });
    }
    function updateButtons() {
      var st = dep && dep.status ? dep.status.state : "";
      var ended = !!TERMINAL[st];
      buttons.pause.disabled = !dep || ended;
      buttons.resume.disabled = !dep || ended;
      buttons.abort.disabled = !dep || ended;
      // Roll back stays available: the controller says why it refuses an ended deployment.
      buttons.rollback.disabled = !dep;
    }
    updateButtons();

    function setDeployment(d) {
      dep = d; byHost = {};
      (d.targets || []).forEach(function (t) { byHost[tkey(t)] = t; });
      render();
    }
    // Events come in bursts (a batch starting touches every target): draw once per burst.
    var pending = null;
    function scheduleRender() {
      if (pending === null) pending = setTimeout(function () { pending = null; render(); }, 80);
    }
    function render() {
      if (!dep) return;
      if (pending !== null) { clearTimeout(pending); pending = null; }
      var d = dep, st = d.status || {}, s = d.strategy || {};
      clear(title).appendChild(document.createTextNode(d.service + " "));
      title.appendChild(h("span", { class: "mono" }, d.version));
      title.appendChild(h("span", { class: "sub mono" }, d.id));
      updateButtons();
      var targets = planned(d).map(function (p) { return byHost[tkey(p)] || p; });
      var c = { total: targets.length, s: 0, r: 0, f: 0, k: 0 };
      targets.forEach(function (t) {
        if (t.state === "succeeded") c.s++;
        else if (t.state === "running" || t.state === "dispatched") c.r++;
        else if (t.state === "failed" || t.state === "unreachable" || t.state === "timed_out") c.f++;
        else if (t.state === "skipped") c.k++;
      });
      var summary = h("div", { class: "panel" },
        h("div", { class: "toolbar" }, h("span", { id: "dep-state" }, badge(st.state)),
          st.pause_reason ? h("span", { class: "muted", id: "dep-pause" }, "pause: " + st.pause_reason + (st.pause_until ? " until " + fmtTime(st.pause_until) : "")) : null,
          st.draining ? h("span", { class: "badge warn" }, "draining: steps still out") : null,
          h("span", { id: "dep-message" }, st.message || "")),
        progressBar(c),
        h("div", { style: "height:.6rem" }),
        facts([
          ["Service", h("a", { href: "#/services/" + svcPath(d.service) }, d.service)],
          ["Version", d.version], ["Mode", d.mode],
          ["Batch", (st.batches || []).length ? ((st.current_batch || 0) + 1) + " of " + st.batches.length : "", "dep-batch"],
          ["Requested by", d.requested_by],
          ["Created", fmtTime(st.created_at)], ["Started", fmtTime(st.started_at)], ["Ended", fmtTime(st.ended_at)],
          ["Took", took(st.started_at, st.ended_at)],
          st.progress_deadline_at ? ["Progress deadline", fmtTime(st.progress_deadline_at) + " (" + ago(st.progress_deadline_at) + ")"] : null,
          st.failure_class ? ["Failure class", st.failure_class] : null,
          ["Artifact", h("span", { class: "mono small" }, d.artifact ? d.artifact.url : "")],
          d.placement ? ["Placement", h("span", { class: "mono small" }, (d.placement.replicas || 0) + " replicas, " + (d.placement.cpu_millis || 0) + " millicpu, " +
            bytes(d.placement.memory_bytes) + (d.placement.spread ? ", spread by " + d.placement.spread : "") + (d.placement.constraints ? ", " + d.placement.constraints : ""))] : null,
          d.image && d.image.reference ? ["Image", h("span", { class: "mono small", title: d.image.digest || "" }, d.image.reference + (d.image.cached ? " (cached)" : " (built)"))] : null,
          ["sha256", h("span", { class: "mono small", title: d.artifact ? d.artifact.sha256 : "" }, short(d.artifact && d.artifact.sha256, 16))],
          ["Leader token", st.leader_token], ["Revision", d.revision, "dep-revision"]
        ]));
      var strategy = h("div", { class: "panel" }, h("strong", null, "Strategy "), h("span", { class: "muted small" }, "(inherited down the service tree, then the request)"),
        h("div", { style: "height:.4rem" }),
        facts([
          ["Batches", (s.batches || []).join(", ")], ["Max parallel", s.max_parallel ? s.max_parallel : "whole batch"],
          ["Pause", s.pause || "none"], ["Max failures", s.max_failures || "0"],
          ["Health deadline", fmtDur(s.health_gate && s.health_gate.deadline)],
          ["Min healthy time", fmtDur(s.health_gate && s.health_gate.min_healthy_time)],
          ["Progress deadline", fmtDur(s.progress_deadline)], ["Auto rollback", s.auto_rollback ? "yes" : "no"],
          ["Step timeout", fmtDur(s.step_timeout)], ["Infra retries", s.infra_retries]
        ]));
      var batches = (st.batches || []).map(function (b, i) {
        var state = b.completed_at ? "completed" : b.started_at ? (st.state === "paused" ? "paused" : "running") : "pending";
        if (!b.completed_at && TERMINAL[st.state]) state = b.started_at ? "stopped" : "skipped";
        var hosts = planned(d).slice(b.start || 0, b.end || 0).map(tlabel);
        return [i + 1, ((b.start || 0) + 1) + "–" + (b.end || 0),
          { v: hosts.join(", "), cls: "mono small" },
          { v: badge(state === "completed" ? "succeeded" : state === "stopped" ? "aborted" : state), cls: "state" },
          fmtTime(b.started_at), fmtTime(b.completed_at), TERMINAL[st.state] ? span(b.started_at, b.completed_at || st.ended_at) : took(b.started_at, b.completed_at)];
      });
      var rows = targets.map(function (t) {
        var step = t.step || {};
        var out = t.output || [];
        return [
          { v: tlabel(t) + (t.retire ? " (retired)" : ""), cls: "mono" },
          t.batch !== undefined && t.state !== "pending" ? (t.batch || 0) + 1 : (batchOf(d, tkey(t)) || ""),
          { v: [badge(t.state), t.rollback ? h("div", { class: "small" }, "rollback: ", badge(t.rollback)) : null], cls: "state" },
          { v: t.attempts || 0, cls: "num attempts" },
          { v: step.id ? h("span", { class: "mono small" }, step.id + " #" + (step.attempt || 1) + (step.retries ? " (" + step.retries + " retries)" : "") +
              (step.exit_code ? " exit " + step.exit_code : "")) : "" },
          { v: fmtTime(t.started_at), cls: "nowrap small" },
          { v: fmtTime(t.ended_at), cls: "nowrap small" },
          t.ended_at || TERMINAL[st.state] ? span(t.started_at, t.ended_at) : took(t.started_at, t.ended_at),
          { v: [t.failure_class ? h("span", { class: "badge bad" }, t.failure_class) : null, " ", t.message || "",
              t.rollback_message ? h("div", { class: "small muted" }, t.rollback_message) : null,
              out.length ? h("details", { open: openOut[tkey(t)] !== undefined ? openOut[tkey(t)] : t.state === "failed", "data-host": t.host,
                ontoggle: function (e) { openOut[tkey(t)] = e.target.open; } }, h("summary", null, "last " + out.length + " output line" + (out.length > 1 ? "s" : "")),
                h("pre", { class: "out" }, out.join("\n"))) : null], cls: "message" }
        ];
      });
      clear(body);
      body.appendChild(summary);
      body.appendChild(h("h2", null, "Batches"));
      body.appendChild(table("batches", [["#"], ["Targets"], ["Hosts"], ["State"], ["Started"], ["Completed"], ["Took"]], batches, null, "Not planned yet."));
      body.appendChild(h("h2", null, "Targets", h("span", { class: "sub" }, c.s + " succeeded, " + c.r + " running, " + c.f + " failed of " + c.total)));
      body.appendChild(table("targets", [["Host"], ["Batch"], ["State"], ["Attempts", "num"], ["Step"], ["Started"], ["Ended"], ["Took"], ["Message and output"]],
        rows, function (i) { return { "data-host": targets[i].host, "data-state": targets[i].state }; }, "No targets."));
      body.appendChild(strategy);
    }
    // A target's key is its allocation in container mode (a host may hold several), else
    // its host; planned lists a deployment's targets in rollout order as pending records.
    function tkey(t) { return t.allocation || t.host; }
    function tlabel(t) { return t.allocation ? t.host + " " + (t.ip || "") + " (" + short(t.allocation, 8) + ")" : t.host; }
    function planned(d) {
      if (d.mode === "container") {
        var p = [];
        (d.allocations || []).forEach(function (a) { p.push({ host: a.host, allocation: a.id, ip: a.ip, state: "pending" }); });
        (d.retire || []).forEach(function (a) { p.push({ host: a.host, allocation: a.id, ip: a.ip, state: "pending", retire: true }); });
        return p;
      }
      return (d.hosts || []).map(function (host) { return { host: host, state: "pending" }; });
    }
    function batchOf(d, key) {
      var i = planned(d).map(tkey).indexOf(key), bs = (d.status && d.status.batches) || [];
      for (var j = 0; j < bs.length; j++) if (i >= (bs[j].start || 0) && i < (bs[j].end || 0)) return j + 1;
      return 0;
    }

    var stopStream = stream("/v1/deployments/" + encodeURIComponent(id) + "/events", function (ev, data) {
      if (ev === "snapshot") setDeployment(data);
      else if (ev === "deployment" && dep) {
        var targetsKept = dep.targets; dep = data; dep.targets = targetsKept; scheduleRender();
      } else if (ev === "target" && dep) { byHost[tkey(data)] = data; scheduleRender(); }
      else if (ev === "removed") { showError(actionMsg, "deployment " + id + " was deleted"); }
    }, function (on, err) {
      live = on;
      liveEl.className = "live " + (on ? "on" : "off");
      liveEl.textContent = on ? "live" : err ? "not live: " + err : "reconnecting…";
      if (err && !dep) { clear(body).appendChild(h("div", { class: "msg error" }, String(err))); }
    });
    // Durations of what still runs grow without events: update them every second.
    var tick = setInterval(function () {
      Array.prototype.forEach.call(body.querySelectorAll("[data-from]"), function (el) { el.textContent = span(el.getAttribute("data-from")); });
    }, 1000);
    return function () { stopStream(); clearInterval(tick); clearTimeout(pending); };
  }

  // ---- Services -----------------------------------------------------------------------

  function servicesPage(r) {
    var path = r.rest.join("/");
    var treeEl = h("nav", { class: "tree", id: "tree", "aria-label": "Service tree" }, h("span", { class: "muted" }, "Loading…"));
    var detail = h("section", { id: "svc-detail" });
    main.appendChild(h("h1", null, "Services"));
    main.appendChild(h("div", { class: "split" }, treeEl, detail));
    var stops = [];
    get("/v1/tree").then(function (t) {
      var nodes = t.nodes || [];
      clear(treeEl).appendChild(buildTree(nodes, path));
      if (!path) {
        detail.appendChild(h("p", { class: "muted" }, nodes.length ? "Choose a service in the tree." : "The service tree is empty: berth tree set hotel/search --host h-1"));
        if (nodes.length && window.matchMedia("(min-width: 761px)").matches) location.replace("#/services/" + svcPath(nodes[0].path));
      }
    }, function (err) { clear(treeEl).appendChild(h("div", { class: "msg error" }, String(err))); });
    if (path) stops.push(serviceDetail(detail, path));
    return function () { stops.forEach(function (f) { f(); }); };
  }

  // buildTree nests the tree's nodes by path; parents that are not nodes themselves are
  // shown in italics.
  function buildTree(nodes, selected) {
    var root = { kids: {}, node: null };
    nodes.forEach(function (n) {
      var cur = root;
      n.path.split("/").forEach(function (seg) { cur = cur.kids[seg] = cur.kids[seg] || { kids: {}, node: null }; });
      cur.node = n;
    });
    function list(t, prefix) {
      var keys = Object.keys(t.kids).sort();
      if (!keys.length) return null;
      return h("ul", null, keys.map(function (k) {
        var p = prefix ? prefix + "/" + k : k, c = t.kids[k];
        return h("li", null, h("a", { href: "#/services/" + svcPath(p), class: [p === selected ? "active" : "", c.node ? "" : "implicit"].join(" ").trim() || null, "data-path": p }, k),
          list(c, p));
      }));
    }
    return list(root, "") || h("span", { class: "muted" }, "No services yet.");
  }

  function serviceDetail(el, path) {
    el.appendChild(h("h2", { style: "margin-top:0" }, path));
    var msg = h("div", { class: "msg" });
    var meta = h("div", { id: "svc-meta" }), pol = h("div", { id: "policy-holder" }), inst = h("div", { id: "instances-holder" }), deps = h("div", { id: "svc-deployments-holder" });
    el.appendChild(msg); el.appendChild(meta);
    el.appendChild(h("h2", null, "Effective policy", h("span", { class: "sub" }, "each value and the node it comes from")));
    el.appendChild(pol);
    el.appendChild(h("h2", null, "Instances", h("span", { class: "sub", id: "instances-summary" }), " ",
      h("a", { href: "#/names" + q({ service: path }), class: "small" }, "resolve")));
    el.appendChild(inst);
    el.appendChild(h("h2", null, "Deployments", " ", h("a", { href: "#/deployments" + q({ service: path }), class: "small" }, "all")));
    el.appendChild(deps);
    get("/v1/tree/" + svcPath(path) + "?effective=true").then(function (res) {
      var n = res.node || {};
      var labels = Object.keys(n.labels || {}).sort().map(function (k) { return h("span", { class: "chip" }, k + "=" + n.labels[k]); });
      meta.appendChild(h("div", { class: "panel" }, facts([
        ["Description", n.description], ["Owners", (n.owners || []).join(", ")], ["Labels", labels.length ? labels : ""],
        ["Bound hosts", (n.hosts || []).length ? h("span", { class: "mono small" }, n.hosts.join(", ")) : ""],
        ["Created", fmtTime(n.created_at)], ["Updated", fmtTime(n.updated_at)]])));
      var values = (res.effective && res.effective.values) || [];
      pol.appendChild(table("policy", [["Field"], ["Value"], ["From"]], values.map(function (v) {
        var src = v.source || "default";
        return [{ v: v.field, cls: "mono" }, { v: jsonValue(v.value), cls: "mono" },
          src === "default" ? { v: "default", cls: "muted source" } :
            { v: h("a", { href: "#/services/" + svcPath(src) }, src === path ? src + " (this node)" : src), cls: "source" }];
      }), function (i) { return { "data-field": values[i].field }; }, "No policy values."));
    }, function (err) {
      showError(msg, err.status === 404 ? path + " is not a node of the service tree (it only groups the services below it)." : err);
    });
    var stopInst = every(5000, function () {
      return get("/v1/instances/" + svcPath(path)).then(function (res) {
        var list = res.instances || [];
        var healthy = list.filter(function (i) { var hl = enumName(i.health, "HEALTH_"); return (!hl || hl === "healthy") && enumName(i.state, "INSTANCE_STATE_") !== "draining"; }).length;
        $("instances-summary").textContent = list.length + " registered, " + healthy + " healthy";
        clear(inst).appendChild(table("instances", [["Instance"], ["Host"], ["Address"], ["DC"], ["Version"], ["Weight", "num"], ["State"], ["Health"], ["Registered"]],
          list.map(function (i) {
            return [{ v: i.id, cls: "mono small" }, { v: i.host, cls: "mono" }, { v: i.ip + (i.port ? ":" + i.port : ""), cls: "mono" }, i.dc, { v: i.version, cls: "mono" },
              i.weight || 100, badge(enumName(i.state, "INSTANCE_STATE_") || "active"), badge(enumName(i.health, "HEALTH_") || "healthy"),
              h("span", { title: fmtTime(i.registered_at) }, ago(i.registered_at))];
          }), function (i) { return { "data-instance": list[i].id }; }, "No instance is registered for " + path + "."));
      }, function (err) { clear(inst).appendChild(h("div", { class: "msg error" }, String(err))); });
    });
    var stopDeps = every(5000, function () {
      return get("/v1/deployments" + q({ service: path, limit: 10 })).then(function (res) {
        clear(deps).appendChild(deploymentsTable("svc-deployments", res.deployments || []));
      }, function (err) { clear(deps).appendChild(h("div", { class: "msg error" }, String(err))); });
    });
    return function () { stopInst(); stopDeps(); };
  }

  // ---- Hosts --------------------------------------------------------------------------

  function hostsPage(r) {
    var dc = r.query.dc || "";
    var dcSel = h("select", { id: "filter-dc", onchange: function () { location.hash = "#/hosts" + q({ dc: dcSel.value }); } }, h("option", { value: "" }, "every DC"));
    var summary = h("div", { class: "cards", id: "hosts-summary" });
    var msg = h("div", { class: "msg" });
    var holder = h("div", { id: "hosts-holder" });
    main.appendChild(h("h1", null, "Hosts"));
    main.appendChild(h("div", { class: "toolbar" }, h("label", null, "Datacenter", dcSel), h("span", { class: "spacer" }), h("span", { id: "updated", class: "live" })));
    main.appendChild(msg); main.appendChild(summary); main.appendChild(holder);
    var dcsShown = false;
    return every(5000, function () {
      return get("/v1/hosts").then(function (res) {
        clear(msg); msg.className = "msg";
        var all = res.hosts || [];
        if (!dcsShown) {
          (res.dcs || []).forEach(function (d) { dcSel.appendChild(h("option", { value: d, selected: d === dc }, d)); });
          dcsShown = true;
        }
        var hosts = all.filter(function (x) { return !dc || hostDC(x) === dc; });
        var up = 0, down = 0, draining = 0, free = 0;
        hosts.forEach(function (x) {
          if (x.alive) up++; else down++;
          if (x.host && enumName(x.host.state, "HOST_STATE_") === "draining") draining++;
          free += x.free_containers || 0;
        });
        clear(summary);
        [[hosts.length, "hosts"], [up, "agents up"], [down, "agents down"], [draining, "draining"], [free, "free container slots"]].forEach(function (c) {
          summary.appendChild(h("div", { class: "card" }, h("b", null, c[0]), h("span", null, c[1])));
        });
        clear(holder).appendChild(table("hosts", [["Host"], ["DC"], ["Rack"], ["IP"], ["State"], ["Agent"], ["Allocations", "num"], ["CPU free", "num"], ["Memory free", "num"], ["Disk free", "num"], ["Labels"]],
          hosts.map(function (x) {
            var rec = x.host || {}, ag = x.agent || {};
            var state = x.in_inventory ? enumName(rec.state, "HOST_STATE_") || "unknown" : "not in inventory";
            var labels = Object.keys(rec.labels || {}).sort().map(function (k) { return h("span", { class: "chip" }, k + "=" + rec.labels[k]); });
            return [
              { v: [h("span", { class: "mono" }, x.id), rec.drain_reason ? h("div", { class: "small muted" }, rec.drain_reason) : null, rec.mismatch ? h("div", { class: "small muted" }, rec.mismatch) : null] },
              rec.dc || ag.dc || "", rec.rack || "", { v: rec.ip || "", cls: "mono" },
              { v: badge(state), cls: "state" },
              { v: [badge(x.alive ? "up" : "down"), ag.agent_version ? h("div", { class: "small muted" }, ag.agent_version) : null], cls: "liveness" },
              x.allocations + " / " + x.max_containers,
              x.in_inventory && Number(rec.cpu_millis) ? cores(x.free.cpu_millis) + " of " + cores(rec.cpu_millis) : "—",
              x.in_inventory && Number(rec.memory_bytes) ? bytes(x.free.memory_bytes) + " of " + bytes(rec.memory_bytes) : (ag.memory_bytes ? bytes(ag.memory_bytes) + " (agent)" : "—"),
              x.in_inventory && Number(rec.disk_bytes) ? bytes(x.free.disk_bytes) + " of " + bytes(rec.disk_bytes) : (ag.disk_free_bytes ? bytes(ag.disk_free_bytes) + " free (agent)" : "—"),
              labels.length ? labels : ""
            ];
          }), function (i) { return { "data-host": hosts[i].id }; }, "No hosts: the inventory is empty and no agent is alive."));
        var u = $("updated"); u.textContent = "updated " + fmtTime(new Date().toISOString()).slice(11); u.className = "live on";
      }, function (err) { showError(msg, err); $("updated").className = "live off"; });
    });
  }
  function hostDC(x) { return (x.host && x.host.dc) || (x.agent && x.agent.dc) || ""; }

  // ---- Names --------------------------------------------------------------------------

  function namesPage(r) {
    var svcIn = h("input", { id: "names-service", list: "names-services", placeholder: "hotel/search", value: r.query.service || "", required: true, size: 24 });
    var dcSel = h("select", { id: "names-dc" }, h("option", { value: "" }, "by the client's address"));
    var explain = h("input", { id: "names-explain", type: "checkbox", checked: r.query.explain !== "false" });
    var list = h("datalist", { id: "names-services" });
    var msg = h("div", { class: "msg", id: "names-msg" });
    var out = h("div", { id: "resolution" });
    var form = h("form", { class: "toolbar", id: "names-form", onsubmit: function (e) {
      e.preventDefault();
      location.hash = "#/names" + q({ service: svcIn.value.trim(), dc: dcSel.value, explain: explain.checked ? "" : "false" });
    } }, h("label", null, "Service", svcIn), list, h("label", null, "Client DC", dcSel), h("label", null, explain, "explain"),
      h("button", { type: "submit", class: "primary", id: "resolve" }, "Resolve"));
    main.appendChild(h("h1", null, "Names"));
    main.appendChild(h("p", { class: "muted" }, "The DNS answer a client in the chosen datacenter gets for a service, with the traffic policy's reasons (from the name service)."));
    main.appendChild(form); main.appendChild(msg); main.appendChild(out);
    get("/v1/tree").then(function (t) { (t.nodes || []).forEach(function (n) { list.appendChild(h("option", { value: n.path })); }); }, function () { /* typed by hand */ });
    get("/v1/names/dcs").then(function (res) {
      var dcs = (res.dcs || []).slice();
      if (r.query.dc && dcs.indexOf(r.query.dc) < 0) dcs.push(r.query.dc); // asked for by the link; the name service judges it
      dcs.forEach(function (d) { dcSel.appendChild(h("option", { value: d, selected: d === r.query.dc }, d)); });
    }, function (err) { showError(msg, "datacenters: " + err); });
    if (!r.query.service) return null;
    return every(5000, function () {
      return get("/v1/names/resolve/" + svcPath(r.query.service) + q({ dc: r.query.dc || "", explain: r.query.explain === "false" ? "false" : "true" })).then(function (res) {
        clear(msg); msg.className = "msg";
        clear(out);
        out.appendChild(h("div", { class: "panel" }, facts([
          ["Service", res.service], ["Client DC", (res.client_dc || "unknown") + (res.dc_source ? " (" + res.dc_source + ")" : "")],
          ["Answered from DC", res.target_dc || "every DC"], ["TTL", res.ttl_seconds + "s"], ["Revision", res.revision],
          ["Panic", res.panic ? h("span", { class: "badge bad" }, "panic: last known good set") : "no"],
          ["Rules", (res.rules || []).length ? (res.rules || []).map(function (x) { return h("span", { class: "chip" }, x); }) : "none"]])));
        if ((res.explain || []).length) {
          out.appendChild(h("h2", null, "Why"));
          out.appendChild(h("ol", { id: "explain" }, res.explain.map(function (x) { return h("li", null, x); })));
        }
        out.appendChild(h("h2", null, "Answer", h("span", { class: "sub" }, (res.instances || []).length + " instance(s), in answer order")));
        out.appendChild(table("answer", [["#"], ["Instance"], ["Address"], ["DC"], ["Host"], ["Version"], ["Weight", "num"], ["Health"], ["State"]],
          (res.instances || []).map(function (i, n) {
            return [n + 1, { v: i.id, cls: "mono small" }, { v: i.addr || i.ip, cls: "mono" }, i.dc, { v: i.host, cls: "mono" }, { v: i.version, cls: "mono" }, i.weight,
              badge(enumName(i.health, "HEALTH_") || "healthy"), badge(enumName(i.state, "INSTANCE_STATE_") || "active")];
          }), null, "The answer is empty: no selectable instance."));
      }, function (err) { clear(out); showError(msg, err); });
    });
  }

  // ---- Shell --------------------------------------------------------------------------

  function initToken() {
    var input = $("token"), stateEl = $("token-state");
    input.value = token();
    stateEl.textContent = token() ? "set" : "";
    $("token-form").onsubmit = function (e) {
      e.preventDefault();
      try {
        if (input.value) localStorage.setItem(TOKEN_KEY, input.value); else localStorage.removeItem(TOKEN_KEY);
        stateEl.textContent = input.value ? "saved" : "cleared";
      } catch (err) { stateEl.textContent = "not saved: " + err.message; }
    };
  }
  function leader() {
    return get("/v1/leader").then(function (l) { $("leader").textContent = l.replica + " (token " + l.token + ")"; },
      function (err) { $("leader").textContent = "none: " + err.message; });
  }

  initToken();
  every(10000, leader);
  window.addEventListener("hashchange", route);
  if (!location.hash) history.replaceState(null, "", "#/deployments");
  route();
})();
