// mq9fast dashboard: polls the side port's JSON API every 2 s.  No dependencies, no build step.
(function () {
  "use strict";
  var POLL_MS = 2000, HISTORY = 60;
  var history = [];            // {t, inRate, outRate, cmdRate}
  var last = null;             // previous overview sample
  var haveStoredStats = false; // the engine reports stored messages by priority
  var $ = function (id) { return document.getElementById(id); };

  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c];
    });
  }
  function fmtNum(n) {
    if (n == null || isNaN(n)) return "–";
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + "M";
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return (Math.round(n * 10) / 10).toLocaleString();
  }
  function fmtDur(s) {
    if (s == null || isNaN(s)) return "–";
    s = Math.max(0, s);
    if (s < 90) return Math.round(s) + "s";
    if (s < 5400) return Math.round(s / 60) + "m";
    if (s < 172800) return Math.round(s / 3600) + "h";
    return Math.round(s / 86400) + "d";
  }
  function getJSON(url) {
    return fetch(url, {cache: "no-store"}).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok) throw new Error(url + ": " + (body && body.error ? body.error : r.status));
        return body;
      });
    });
  }
  function sumCommands(cmds) {
    var n = 0;
    for (var k in (cmds || {})) n += cmds[k];
    return n;
  }

  function renderOverview(o) {
    $("server-name").textContent = o.server_name && o.server_name !== "mq9fast" ? "· " + o.server_name : "";
    $("version").textContent = "v" + (o.mq9fast_version || o.version || "?");
    $("uptime").textContent = "up " + fmtDur(o.uptime_s);
    var ready = o.ready && o.ready.status === "ready";
    var pill = $("ready");
    pill.textContent = ready ? "ready" : "not ready";
    pill.className = "pill " + (ready ? "pill-ready" : "pill-down");
    $("stat-connections").textContent = fmtNum(o.connections);
    var mb = o.mailbox || {}, reg = o.registry || {};
    $("stat-mailboxes").textContent = mb.mailboxes != null ? fmtNum(mb.mailboxes) : "–";
    var bp = mb.messages_by_priority || null;
    haveStoredStats = !!bp;
    if (bp) {
      var total = (bp.critical || 0) + (bp.urgent || 0) + (bp.normal || 0);
      $("stat-stored").textContent = fmtNum(total);
      $("stat-stored-split").innerHTML = '<span class="crit">' + fmtNum(bp.critical || 0) + '</span> crit · ' +
        '<span class="urg">' + fmtNum(bp.urgent || 0) + '</span> urg · ' + fmtNum(bp.normal || 0) + ' norm';
    }
    $("stat-agents").textContent = reg.agents != null ? fmtNum(reg.agents) : "–";
    $("stat-leases").textContent = mb.leases != null ? fmtNum(mb.leases) : "–";

    var now = o.now || Date.now() / 1000, cmds = sumCommands(o.commands);  // the server's clock
    if (last) {
      var dt = Math.max(0.001, now - last.t);
      var s = {t: now,
        inRate: Math.max(0, (o.total_in_msgs - last.inMsgs) / dt),
        outRate: Math.max(0, (o.total_out_msgs - last.outMsgs) / dt),
        cmdRate: Math.max(0, (cmds - last.cmds) / dt)};
      history.push(s);
      if (history.length > HISTORY) history.shift();
      $("stat-in-rate").textContent = fmtNum(s.inRate);
      $("stat-out-rate").textContent = fmtNum(s.outRate);
      $("stat-cmd-rate").textContent = fmtNum(s.cmdRate);
    }
    last = {t: now, inMsgs: o.total_in_msgs || 0, outMsgs: o.total_out_msgs || 0, cmds: cmds};
    drawChart();
  }

  function drawChart() {
    var c = $("chart"), ctx = c.getContext("2d");
    var w = c.clientWidth || 800, h = c.clientHeight || 140, dpr = window.devicePixelRatio || 1;
    c.width = w * dpr; c.height = h * dpr; ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    var max = 1;
    history.forEach(function (s) { max = Math.max(max, s.inRate, s.outRate, s.cmdRate); });
    ctx.strokeStyle = "#e2e5ea"; ctx.fillStyle = "#6b7385"; ctx.font = "11px sans-serif"; ctx.lineWidth = 1;
    for (var i = 0; i <= 2; i++) {
      var y = 8 + (h - 20) * i / 2;
      ctx.beginPath(); ctx.moveTo(40, y); ctx.lineTo(w, y); ctx.stroke();
      ctx.fillText(fmtNum(max * (1 - i / 2)), 2, y + 4);
    }
    function line(key, color) {
      if (history.length < 2) return;
      ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
      history.forEach(function (s, i) {
        var x = 40 + (w - 44) * (i + HISTORY - history.length) / (HISTORY - 1);
        var y = 8 + (h - 20) * (1 - s[key] / max);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
    line("cmdRate", "#8a5cd6"); line("outRate", "#3f8f5a"); line("inRate", "#2f6fde");
  }

  function cell(n, cls) {
    return '<td class="num ' + (n ? cls : "zero") + '">' + fmtNum(n || 0) + "</td>";
  }
  function renderMailboxes(r) {
    var rows = r.items || [], now = Date.now() / 1000;
    if (!haveStoredStats) {  // no engine statistics: add up the listed mailboxes
      var sums = {critical: 0, urgent: 0, normal: 0};
      rows.forEach(function (m) { var d = m.depth || {}; for (var p in sums) sums[p] += d[p] || 0; });
      var partial = r.total != null && r.total > rows.length ? "≥ " : "";
      $("stat-stored").textContent = partial + fmtNum(sums.critical + sums.urgent + sums.normal);
      $("stat-stored-split").innerHTML = '<span class="crit">' + fmtNum(sums.critical) + '</span> crit · ' +
        '<span class="urg">' + fmtNum(sums.urgent) + '</span> urg · ' + fmtNum(sums.normal) + ' norm';
    }
    $("mailboxes-count").textContent = "(" + (r.total != null ? r.total : rows.length) + ")";
    if (!rows.length) { $("mailboxes-body").innerHTML = '<tr><td colspan="7" class="muted">no mailboxes</td></tr>'; return; }
    var maxTotal = 1;
    rows.forEach(function (m) { maxTotal = Math.max(maxTotal, m.total || 0); });
    $("mailboxes-body").innerHTML = rows.map(function (m) {
      var d = m.depth || {}, total = m.total || 0;
      var exp = m.expire_at ? "in " + fmtDur(m.expire_at - now) : (m.ttl === 0 ? "never" : (m.ttl ? fmtDur(m.ttl) + " ttl" : "–"));
      var bar = '<div class="bar" title="' + total + ' messages">' + ["critical", "urgent", "normal"].map(function (p, i) {
        var pct = 100 * (d[p] || 0) / maxTotal;
        return '<span class="' + ["b-crit", "b-urg", "b-norm"][i] + '" style="width:' + pct + '%"></span>';
      }).join("") + "</div>";
      var groups = (m.groups || []).map(function (g) {
        var name = typeof g === "string" ? g : (g.name != null ? g.name : "?");
        var extra = (g && g.leased) ? " · " + g.leased + " leased" : "";
        return '<span class="group">' + esc(name === "" ? '""' : name) + esc(extra) + "</span>";
      }).join("") || '<span class="muted">–</span>';
      return '<tr><td class="addr">' + esc(m.address) + "</td><td>" + esc(exp) + "</td>" +
        cell(d.critical, "crit") + cell(d.urgent, "urg") + cell(d.normal, "") +
        "<td>" + bar + "</td><td>" + groups + "</td></tr>";
    }).join("");
  }
  function liveness(age) {
    if (age == null) return ["never", "no report yet"];
    if (age < 90) return ["live", "reported " + fmtDur(age) + " ago"];
    if (age < 600) return ["stale", "reported " + fmtDur(age) + " ago"];
    return ["silent", "silent for " + fmtDur(age)];
  }
  function renderAgents(r) {
    var rows = r.items || [];
    $("agents-count").textContent = "(" + (r.total != null ? r.total : rows.length) + ")";
    if (!rows.length) { $("agents-body").innerHTML = '<tr><td colspan="5" class="muted">no agents registered</td></tr>'; return; }
    $("agents-body").innerHTML = rows.map(function (a) {
      var l = liveness(a.last_report_age_s);
      return '<tr><td><span class="dot ' + l[0] + '" title="' + esc(l[1]) + '"></span></td>' +
        "<td><b>" + esc(a.name) + '</b></td><td class="mono">' + esc(a.mailbox || "–") + "</td>" +
        '<td class="desc" title="' + esc(a.description) + '">' + esc(a.description || "") + "</td>" +
        "<td>" + esc(l[1]) + "</td></tr>";
    }).join("");
  }

  function showError(msgs) {
    var b = $("error");
    if (msgs.length) { b.textContent = msgs.join(" · "); b.classList.remove("hidden"); }
    else b.classList.add("hidden");
  }

  function poll() {
    var errors = [];
    function failed(tbody, cols) {
      return function (e) {
        errors.push(e.message);
        $(tbody).innerHTML = '<tr><td colspan="' + cols + '" class="muted">unavailable: ' + esc(e.message) + "</td></tr>";
      };
    }
    var jobs = [
      getJSON("/api/overview").then(renderOverview).catch(function (e) { errors.push(e.message); }),
      getJSON("/api/mailboxes?limit=100").then(renderMailboxes).catch(failed("mailboxes-body", 7)),
      getJSON("/api/agents?limit=100").then(renderAgents).catch(failed("agents-body", 5))
    ];
    Promise.all(jobs).then(function () {
      showError(errors);
      document.body.setAttribute("data-loaded", "1");
      setTimeout(poll, POLL_MS);
    });
  }
  poll();
})();
