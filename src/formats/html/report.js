// gilscope's HTML report: draws the summary, the thread table, GIL latency, the timeline,
// the flamegraphs and the findings from the JSON document embedded in the page. Nothing is
// fetched: the page works offline, from a file copied off a production host.
"use strict";
window.gilscopeErrors = [];
window.addEventListener("error", function (e) { window.gilscopeErrors.push(String(e.message)); });
(function () {
  var consoleError = console.error;
  console.error = function () {
    window.gilscopeErrors.push(Array.prototype.join.call(arguments, " "));
    consoleError.apply(console, arguments);
  };
})();

(function () {
  var started = performance.now();
  var DATA = JSON.parse(document.getElementById("gilscope-data").textContent);
  var P = null; // the process shown
  var view = { sortKey: "default", sortUp: false, thread: null, flame: null, search: "",
               focus: null, t0: 0, t1: 1 };

  // ---- helpers -------------------------------------------------------------------------
  function esc(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function el(tag, attrs) {
    var node = document.createElement(tag);
    for (var key in attrs || {}) {
      if (key === "text") node.textContent = attrs[key];
      else if (key === "html") node.innerHTML = attrs[key];
      else if (key.slice(0, 2) === "on") node.addEventListener(key.slice(2), attrs[key]);
      else node.setAttribute(key, attrs[key]);
    }
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child == null) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }
  function pct(x) { return x == null ? "n/a" : (100 * x).toFixed(1) + "%"; }
  function pp(x) { return x == null ? "" : "\u00b1" + (100 * x).toFixed(1); }
  function ms(x) {
    if (x == null) return "-";
    if (x >= 1000) return (x / 1000).toFixed(2) + " s";
    if (x >= 100) return x.toFixed(0) + " ms";
    if (x >= 10) return x.toFixed(1) + " ms";
    return x.toFixed(2) + " ms";
  }
  function seconds(s) {
    var span = view.t1 - view.t0;
    var digits = span < 0.05 ? 4 : span < 0.5 ? 3 : span < 5 ? 2 : 1;
    return s.toFixed(digits) + " s";
  }
  function stateName(letter) { return P.stateNames[letter] || letter; }
  function colour(letter) { return P.colours[letter] || "#999"; }
  function inkOn(hex) {
    var r = parseInt(hex.substr(1, 2), 16), g = parseInt(hex.substr(3, 2), 16),
        b = parseInt(hex.substr(5, 2), 16);
    return (0.299 * r + 0.587 * g + 0.114 * b) > 150 ? "#1d1d1f" : "#ffffff";
  }
  function frameLabel(i) {
    var f = P.frames[i];
    if (!f) return "?";
    if (f[1] === "") return f[0];
    return f[2] ? f[0] + " (" + f[1] + ":" + f[2] + ")" : f[0] + " (" + f[1] + ")";
  }
  function frameFull(i) {
    var f = P.frames[i];
    if (!f || f[3] === "") return frameLabel(i);
    return f[0] + " (" + f[3] + (f[2] ? ":" + f[2] : "") + ")";
  }
  function leafOf(stack) {
    var frames = P.stacks[stack];
    return frames && frames.length ? frames[frames.length - 1] : null;
  }
  function threadName(i) { var t = P.threads[i]; return t.name + " (" + t.tid + ")"; }
  function threadIndexOfTid(tid) {
    for (var i = 0; i < P.threads.length; i++) if (P.threads[i].tid === tid) return i;
    return -1;
  }
  var tip = null;
  function showTip(event, text) {
    tip.textContent = text;
    tip.style.display = "block";
    var x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    var y = event.clientY + 16;
    if (y + tip.offsetHeight > window.innerHeight) y = event.clientY - tip.offsetHeight - 8;
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function hideTip() { tip.style.display = "none"; }
  function legend(letters) {
    var box = el("span", { class: "legend" });
    letters.forEach(function (s) {
      box.appendChild(el("span", {}, el("i", { class: "swatch", style: "background:" + colour(s) }),
                         stateName(s)));
    });
    return box;
  }

  // ---- page ----------------------------------------------------------------------------
  function build() {
    var app = document.getElementById("app");
    app.innerHTML = "";
    tip = el("div", { id: "tip" });
    document.body.appendChild(tip);
    var title = DATA.processes.length > 1
      ? "gilscope: " + DATA.processes.length + " Python processes"
      : "gilscope: process " + P.pid + " (Python " + P.python + ")";
    app.appendChild(el("header", {},
      el("h1", { text: title }),
      el("div", { class: "meta", text: (P.command || P.binary) }),
      el("div", { class: "meta", text: "recorded " + P.duration.toFixed(2) + " s at " + P.rate +
        " Hz: " + P.samples + " samples, one every " + P.tickMs.toFixed(2) + " ms; " +
        P.sampler.errors + " errors, " + P.sampler.lateTicks + " late ticks; " +
        DATA.generator })));
    var nav = el("nav", {});
    [["summary", "Summary"], ["findings", "Findings"], ["threads", "Threads"],
     ["latency", "GIL latency"], ["timeline", "Timeline"], ["flame", "Flamegraph"]]
      .forEach(function (s) { nav.appendChild(el("a", { href: "#" + s[0], text: s[1] })); });
    if (DATA.processes.length > 1) {
      var select = el("select", { id: "process", onchange: function (e) {
        P = DATA.processes[+e.target.value]; decoded = null; reset(); build(); } });
      DATA.processes.forEach(function (p, i) {
        var option = el("option", { value: i, text: "pid " + p.pid + ": " + p.command.slice(0, 60) });
        if (p === P) option.selected = true;
        select.appendChild(option);
      });
      nav.appendChild(select);
    }
    app.appendChild(nav);
    var main = el("main", {});
    app.appendChild(main);
    main.appendChild(summarySection());
    main.appendChild(findingsSection());
    main.appendChild(threadsSection());
    main.appendChild(latencySection());
    main.appendChild(timelineSection());
    main.appendChild(flameSection());
    main.appendChild(el("footer", { text: "Shares are of each thread's samples; \u00b1 is the " +
      "95% sampling margin, and the classification error is at most " +
      (100 * P.classifierError).toFixed(0) + " points (docs/ACCURACY.md). File names are " +
      "relative to the sys.path entry they were imported from; tooltips give the full path." }));
    main.appendChild(el("pre", { id: "selftest" }));
    drawThreadRows();
    drawLatency();
    drawTimeline();
    drawFlame();
    bindTimeline();
    bindFlame();
  }

  var resizeBound = false;
  function onResize() { drawTimeline(); drawFlame(); }

  function reset() {
    view.thread = null; view.focus = null; view.search = "";
    view.flame = P.waitMeasured && P.states.indexOf("w") >= 0 ? "w" : P.states[0];
    view.t0 = 0; view.t1 = 1;
    var waiters = P.threads.map(function (t, i) { return [t.latency ? t.latency.waits : 0, i]; })
      .filter(function (x) { return x[0] > 0; })
      .sort(function (a, b) { return P.threads[b[1]].shares[1] - P.threads[a[1]].shares[1]; });
    view.latencyThread = waiters.length ? waiters[0][1] : null;
  }

  // ---- summary -------------------------------------------------------------------------
  function errorBar(value, margin) {
    // A 0-100% bar with the value, its 95% sampling margin as whiskers and the classifier's
    // bound as a lighter band.
    var w = 320, h = 18, x = function (v) { return 4 + Math.max(0, Math.min(1, v)) * (w - 8); };
    var m = margin || 0, c = P.classifierError;
    var svg = '<svg width="' + w + '" height="' + h + '" role="img">' +
      '<rect x="4" y="3" width="' + (w - 8) + '" height="12" fill="#eceff1"/>' +
      '<rect x="4" y="3" width="' + (x(value) - 4) + '" height="12" fill="#5f6368"/>' +
      '<rect x="' + x(value - m - c) + '" y="1" width="' + (x(value + m + c) - x(value - m - c)) +
      '" height="16" fill="#0b57d0" opacity=".18"/>' +
      '<line x1="' + x(value - m) + '" x2="' + x(value + m) + '" y1="9" y2="9" stroke="#0b57d0" stroke-width="2"/>' +
      '<line x1="' + x(value - m) + '" x2="' + x(value - m) + '" y1="4" y2="14" stroke="#0b57d0" stroke-width="2"/>' +
      '<line x1="' + x(value + m) + '" x2="' + x(value + m) + '" y1="4" y2="14" stroke="#0b57d0" stroke-width="2"/>' +
      '</svg>';
    return el("span", { html: svg, title: pct(value) + " " + pp(margin) + " points (95%), " +
      "classification \u2264 " + (100 * c).toFixed(0) + " points" });
  }
  function summarySection() {
    var g = P.gil;
    var section = el("section", { id: "summary" }, el("h2", { text: "The GIL" }));
    section.appendChild(el("p", { class: "help", text: "How much of the time some thread held " +
      "the GIL, and how much of the time at least one thread waited for it. The dark bar is " +
      "the figure, the whiskers its 95% sampling margin, the light band adds the classifier's " +
      "error bound." }));
    var box = el("div", { class: "summary" });
    var bars = el("dl", { class: "figures" });
    function row(label, node) { bars.appendChild(el("dt", { text: label })); bars.appendChild(el("dd", {}, node)); }
    if (P.noGil) {
      row("GIL", document.createTextNode("none: this free-threaded build ran without one"));
    } else {
      var held = el("span", {}, errorBar(g.held, g.heldMargin), " " + pct(g.held) + " " + pp(g.heldMargin));
      row("held", held);
      if (P.waitMeasured) {
        row("contended", el("span", {}, errorBar(g.contended, g.contendedMargin), " " +
          pct(g.contended) + " " + pp(g.contendedMargin)));
        row("threads waiting (mean)", document.createTextNode(g.meanWaiting.toFixed(2)));
      }
      row("hand-overs", document.createTextNode(g.switches == null ? "n/a" : g.switches.toFixed(0) + " /s"));
      row("switch interval", document.createTextNode(g.intervalMs == null ? "n/a" : g.intervalMs + " ms"));
      if (P.latency && P.latency.waits) {
        row("each wait (all threads)", document.createTextNode(P.latency.waits + " waits: p50 " +
          ms(P.latency.p50) + ", p90 " + ms(P.latency.p90) + ", p99 " + ms(P.latency.p99) +
          ", max " + ms(P.latency.max)));
      }
    }
    box.appendChild(bars);
    var side = el("div", {});
    side.appendChild(legend(P.states));
    if (!P.waitMeasured && !P.noGil) {
      side.appendChild(el("div", { class: "note", text: "Waiting for the GIL cannot be measured " +
        "on this interpreter: wait figures are n/a (docs/COMPATIBILITY.md)." }));
    }
    if (P.sampler.hostSteal != null && P.sampler.hostSteal > 0.05) {
      side.appendChild(el("div", { class: "note", text: "The hypervisor took " +
        (100 * P.sampler.hostSteal).toFixed(0) + "% of this machine's CPU time: figures are " +
        "less certain than stated." }));
    }
    box.appendChild(side);
    section.appendChild(box);
    return section;
  }

  // ---- findings ------------------------------------------------------------------------
  function selectThread(i, scroll) {
    view.thread = i;
    if (i != null && P.threads[i].latency && P.threads[i].latency.waits) view.latencyThread = i;
    drawThreadRows();
    drawLatency();
    drawTimeline();
    view.focus = null;
    drawFlame();
    if (scroll && i != null) {
      var row = document.getElementById("thread-" + P.threads[i].tid);
      if (row) {
        row.scrollIntoView({ block: "center" });
        row.classList.remove("flash"); void row.offsetWidth; row.classList.add("flash");
      }
    }
  }
  function showCode(frame, state) {
    view.flame = state === "w" && P.blame.length ? "blame" : (state || view.flame);
    view.thread = null;
    view.focus = null;
    view.search = P.frames[frame][0];
    var input = document.getElementById("flame-search");
    if (input) input.value = view.search;
    drawThreadRows();
    drawFlame();
    document.getElementById("flame").scrollIntoView();
  }
  function findingsSection() {
    var section = el("section", { id: "findings" }, el("h2", { text: "Findings" }));
    if (!P.findings.length) {
      section.appendChild(el("p", { class: "empty", text: "Nothing stands out: no finding " +
        "is made unless the figures clearly support it." }));
      return section;
    }
    var list = el("ul", { class: "findings" });
    P.findings.forEach(function (f) {
      var item = el("li", {}, f.text + " ");
      f.threads.forEach(function (tid) {
        var i = threadIndexOfTid(tid);
        if (i < 0) return;
        item.appendChild(el("a", { class: "link", text: "[" + threadName(i) + "]",
          onclick: function () { selectThread(i, true); } }));
        item.appendChild(document.createTextNode(" "));
      });
      if (f.frame != null) {
        item.appendChild(el("a", { class: "link", text: "[code: " + frameLabel(f.frame) + "]",
          title: frameFull(f.frame), onclick: function () { showCode(f.frame, f.state); } }));
      }
      list.appendChild(item);
    });
    section.appendChild(list);
    return section;
  }

  // ---- threads -------------------------------------------------------------------------
  function threadsSection() {
    var section = el("section", { id: "threads" }, el("h2", { text: "Threads" }));
    section.appendChild(el("p", { class: "help", text: "Each thread's share of its samples in " +
      "each state, and its waits for the GIL: how many, and how long each took (from its first " +
      "waiting sample to the GIL; \u00b1 one sample, " + P.tickMs.toFixed(1) + " ms). \"Waited " +
      "mostly on\" names the thread that held the GIL and its code. Click a heading to sort, a " +
      "row to follow that thread below." }));
    var table = el("table", { id: "thread-table" });
    var head = el("tr", {});
    var columns = [["name", "thread", "name"], ["samples", "samples"], ["bar", "states"]];
    P.states.forEach(function (s, i) { columns.push(["s" + i, stateName(s)]); });
    columns.push(["margin", "\u00b1 pp"]);
    if (P.waitMeasured) {
      columns.push(["waits", "waits"], ["p50", "p50"], ["p90", "p90"], ["p99", "p99"],
                   ["max", "max"], ["on", "waited mostly on", "on"]);
    }
    columns.forEach(function (c) {
      var th = el("th", { class: (c[2] || "") + (view.sortKey === c[0] ? " sorted" + (view.sortUp ? " up" : "") : ""),
        text: c[1], "data-key": c[0], onclick: function () {
          if (view.sortKey === c[0]) view.sortUp = !view.sortUp;
          else { view.sortKey = c[0]; view.sortUp = c[0] === "name"; }
          table.querySelectorAll("th").forEach(function (h) { h.className = h.className.replace(/ ?sorted| ?up/g, ""); });
          th.className += " sorted" + (view.sortUp ? " up" : "");
          drawThreadRows();
        } });
      head.appendChild(th);
    });
    table.appendChild(el("thead", {}, head));
    table.appendChild(el("tbody", { id: "thread-rows" }));
    section.appendChild(el("div", { class: "tablewrap" }, table));
    return section;
  }
  function sortValue(i, key) {
    var t = P.threads[i], l = t.latency || {};
    if (key === "name") return t.name.toLowerCase();
    if (key === "samples") return t.samples;
    if (key === "bar") return t.shares[0] + (t.shares[1] || 0);
    if (key[0] === "s" && key !== "samples") return t.shares[+key.slice(1)];
    if (key === "margin") return t.margin || 0;
    if (key === "on") { var w = P.waitedOn[i]; return w ? w[2] : -1; }
    return l[key] == null ? -1 : l[key];
  }
  function drawThreadRows() {
    var body = document.getElementById("thread-rows");
    if (!body) return;
    var order = P.threads.map(function (_, i) { return i; });
    if (view.sortKey !== "default") {
      order.sort(function (a, b) {
        var x = sortValue(a, view.sortKey), y = sortValue(b, view.sortKey);
        var c = x < y ? -1 : x > y ? 1 : 0;
        return (view.sortUp ? c : -c) || a - b;
      });
    }
    body.innerHTML = "";
    order.forEach(function (i) {
      var t = P.threads[i];
      var row = el("tr", { id: "thread-" + t.tid, "data-index": i, class: view.thread === i ? "selected" : "",
        onclick: function () { selectThread(view.thread === i ? null : i, false); } });
      row.appendChild(el("td", { class: "name", title: t.name + " (os name " + t.osName + ")" +
        (t.python ? "" : "; no Python thread state"), text: t.name + " (" + t.tid + ")" }));
      row.appendChild(el("td", { text: t.samples }));
      var bar = el("span", { class: "bar", title: P.states.map(function (s, k) {
        return stateName(s) + " " + pct(t.shares[k]); }).join(", ") });
      P.states.forEach(function (s, k) {
        if (t.shares[k] > 0) bar.appendChild(el("i", { style: "width:" + (100 * t.shares[k]) + "%;background:" + colour(s) }));
      });
      row.appendChild(el("td", {}, bar));
      P.states.forEach(function (s, k) {
        row.appendChild(el("td", { text: s === "w" && !P.waitMeasured ? "n/a" : pct(t.shares[k]) }));
      });
      row.appendChild(el("td", { text: t.margin == null ? "" : (100 * t.margin).toFixed(1) }));
      if (P.waitMeasured) {
        var l = t.latency || {};
        row.appendChild(el("td", { text: l.waits || "" }));
        ["p50", "p90", "p99", "max"].forEach(function (k) {
          row.appendChild(el("td", { text: l.waits ? ms(l[k]) : "" }));
        });
        var on = P.waitedOn[i];
        var cell = el("td", { class: "on" });
        if (on) {
          // Two lines, so that the table fits a laptop's width: whom, then in which code.
          var leaf = on[1] >= 0 ? leafOf(on[1]) : null;
          cell.appendChild(el("div", { text: threadName(on[0]) + ", " + pct(on[2]) + " of its waits" }));
          if (leaf != null) cell.appendChild(el("div", { class: "where", text: "in " + frameLabel(leaf) }));
          cell.title = leaf != null ? frameFull(leaf) : "";
        }
        row.appendChild(cell);
      }
      body.appendChild(row);
    });
  }

  // ---- latency -------------------------------------------------------------------------
  function bucketStart(i) { return Math.pow(2, (i - 80) / 8); } // ms
  function latencySection() {
    var section = el("section", { id: "latency" }, el("h2", { text: "GIL latency" }));
    section.appendChild(el("p", { class: "help", text: "How long each wait for the GIL took, " +
      "for one thread (choose it in the table; the thread waiting most is shown first): waits " +
      "by length, on a log scale. A thread that waits a switch interval or more after each " +
      "wake-up (the convoy effect) shows a hump at or past " + (P.gil.intervalMs || 5) + " ms." }));
    section.appendChild(el("div", { id: "latency-chart" }));
    return section;
  }
  function drawLatency() {
    var box = document.getElementById("latency-chart");
    if (!box) return;
    box.innerHTML = "";
    var i = view.latencyThread;
    var l = i != null ? P.threads[i].latency : null;
    if (!P.waitMeasured) { box.appendChild(el("p", { class: "empty", text: "Waits are not measured on this interpreter." })); return; }
    if (!l || !l.waits) { box.appendChild(el("p", { class: "empty", text: "No thread waited for the GIL." })); return; }
    var first = l.buckets[0][0], last = l.buckets[l.buckets.length - 1][0];
    first = Math.min(first, 80 - 8); last = Math.max(last, first + 40);
    var w = 760, h = 200, left = 46, bottom = 30, top = 24;
    var most = Math.max.apply(null, l.buckets.map(function (b) { return b[1]; }));
    var x = function (b) { return left + (b - first) / (last + 1 - first) * (w - left - 10); };
    var y = function (n) { return top + (h - top - bottom) * (1 - n / most); };
    var svg = '<svg width="' + w + '" height="' + h + '" role="img" id="latency-svg">';
    svg += '<text x="' + left + '" y="14" font-size="13">' + esc(threadName(i)) + ": " + l.waits +
      " waits; p50 " + ms(l.p50) + ", p90 " + ms(l.p90) + ", p99 " + ms(l.p99) + ", max " + ms(l.max) + "</text>";
    for (var b = Math.ceil(first / 8) * 8; b <= last + 1; b += 8) {
      svg += '<line x1="' + x(b) + '" x2="' + x(b) + '" y1="' + top + '" y2="' + (h - bottom) + '" stroke="#eee"/>';
      svg += '<text x="' + x(b) + '" y="' + (h - bottom + 14) + '" font-size="11" text-anchor="middle" fill="#5f6368">' + ms(bucketStart(b)) + "</text>";
    }
    svg += '<text x="' + (w / 2) + '" y="' + (h - 2) + '" font-size="11" text-anchor="middle" fill="#5f6368">length of each wait (log scale)</text>';
    svg += '<text x="4" y="' + (top + 8) + '" font-size="11" fill="#5f6368">' + most + "</text>" +
      '<text x="4" y="' + (top + 21) + '" font-size="11" fill="#5f6368">waits</text>';
    // The switch interval: where the convoy effect's waits gather.
    if (P.gil.intervalMs) {
      var si = 80 + 8 * Math.log2(P.gil.intervalMs);
      if (si >= first && si <= last + 1) {
        svg += '<line x1="' + x(si) + '" x2="' + x(si) + '" y1="' + top + '" y2="' + (h - bottom) +
          '" stroke="#0072b2" stroke-dasharray="1 3"/><text x="' + (x(si) - 3) + '" y="' + (h - bottom - 4) +
          '" font-size="10" fill="#0072b2" text-anchor="end">switch interval</text>';
      }
    }
    l.buckets.forEach(function (bk) {
      svg += '<rect x="' + x(bk[0]) + '" y="' + y(bk[1]) + '" width="' + Math.max(1, x(bk[0] + 1) - x(bk[0]) - 1) +
        '" height="' + (h - bottom - y(bk[1])) + '" fill="' + colour("w") + '" stroke="#8a7600" stroke-width=".5">' +
        "<title>" + bk[1] + " waits of " + ms(bucketStart(bk[0])) + " to " + ms(bucketStart(bk[0] + 1)) + "</title></rect>";
    });
    // Quantile labels on rows of their own, so that close quantiles do not overprint, and
    // turned left near the right edge, so that none is cut.
    [["p50", l.p50], ["p90", l.p90], ["p99", l.p99]].forEach(function (q, k) {
      var b = 80 + 8 * Math.log2(q[1]);
      var right = x(b) > w - 40;
      svg += '<line x1="' + x(b) + '" x2="' + x(b) + '" y1="' + top + '" y2="' + (h - bottom) + '" stroke="#1d1d1f" stroke-dasharray="3 2"/>' +
        '<text x="' + (right ? x(b) - 3 : x(b) + 3) + '" y="' + (top + 10 + 12 * k) + '" font-size="11"' +
        (right ? ' text-anchor="end"' : "") + ">" + q[0] + "</text>";
    });
    svg += "</svg>";
    box.innerHTML = svg;
  }

  // ---- timeline ------------------------------------------------------------------------
  var ROW = 16, LABELS = 210, AXIS = 22;
  var decoded = null;
  // Each row's runs as typed arrays (first column, columns, state letter's code): a long
  // recording of many threads has hundreds of thousands of runs, and small arrays per run
  // cost more to make and to walk than the runs themselves.
  function decodeTimeline() {
    if (decoded || !P.timeline) return decoded;
    decoded = P.timeline.rows.map(function (text) {
      var count = 0, i;
      for (i = 0; i < text.length; i++) {
        var c = text.charCodeAt(i);
        if (c === 45 || (c >= 97 && c <= 122)) count++;
      }
      var runs = { start: new Float64Array(count), length: new Float64Array(count),
                   state: new Uint8Array(count), count: 0 };
      var at = 0, letter = 0, n = -1;
      function close() {
        if (n < 0) return;
        if (letter !== 45) {
          runs.start[runs.count] = at; runs.length[runs.count] = n; runs.state[runs.count] = letter;
          runs.count++;
        }
        at += n;
      }
      for (i = 0; i < text.length; i++) {
        var d = text.charCodeAt(i);
        if (d >= 48 && d <= 57) { n = (n < 0 ? 0 : n) * 10 + (d - 48); continue; }
        close();
        letter = d; n = -1;
      }
      close();
      return runs;
    });
    return decoded;
  }
  function timelineSection() {
    var section = el("section", { id: "timeline" }, el("h2", { text: "Timeline" }));
    section.appendChild(el("p", { class: "help", text: "Each thread's state over time, a row per " +
      "thread in the table's first order. Drag across to zoom in, scroll to zoom around the " +
      "pointer, double-click to see it all; hover for what a thread was doing." }));
    section.appendChild(el("div", { class: "controls" }, legend(P.states),
      el("button", { text: "whole recording", onclick: function () { view.t0 = 0; view.t1 = 1; drawTimeline(); } }),
      el("span", { id: "timeline-range", class: "help" })));
    if (!P.timeline) {
      section.appendChild(el("p", { class: "empty", text: "No timeline was kept." }));
      return section;
    }
    var box = el("div", { id: "timeline-box" }, el("canvas", { id: "timeline-canvas" }));
    section.appendChild(box);
    return section;
  }
  function hexRgb(hex) {
    return [parseInt(hex.substr(1, 2), 16), parseInt(hex.substr(3, 2), 16), parseInt(hex.substr(5, 2), 16)];
  }
  function drawTimeline() {
    var canvas = document.getElementById("timeline-canvas");
    if (!canvas || !P.timeline) return;
    var rows = decodeTimeline();
    var width = Math.max(400, canvas.parentNode.clientWidth - 2);
    var height = AXIS + rows.length * ROW + 4;
    var ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio);
    canvas.style.width = width + "px"; canvas.style.height = height + "px";
    var g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.fillStyle = "#fff"; g.fillRect(0, 0, width, height);
    var plot = width - LABELS - 8, columns = P.timeline.columns;
    var c0 = view.t0 * columns, c1 = view.t1 * columns;
    var total = P.duration;
    document.getElementById("timeline-range").textContent = "showing " + seconds(view.t0 * total) +
      " to " + seconds(view.t1 * total) + " of " + total.toFixed(2) + " s; one column = " +
      P.timeline.msPerColumn.toFixed(2) + " ms";
    g.font = "11px system-ui, sans-serif"; g.textBaseline = "middle";
    rows.forEach(function (runs, r) {
      var y = AXIS + r * ROW;
      if (view.thread === r) { g.fillStyle = "#e8f0fe"; g.fillRect(0, y, width, ROW); }
      else if (r % 2) { g.fillStyle = "#f7f7f7"; g.fillRect(0, y, width, ROW); }
      g.fillStyle = "#1d1d1f";
      var label = threadName(r);
      if (label.length > 32) label = label.slice(0, 31) + "\u2026";
      g.fillText(label, 6, y + ROW / 2);
    });
    // time axis
    var span = (view.t1 - view.t0) * total, step = Math.pow(10, Math.floor(Math.log10(span / 8)));
    [1, 2, 5, 10].some(function (m) { if (span / (step * m) <= 10) { step *= m; return true; } return false; });
    g.fillStyle = "#5f6368"; g.strokeStyle = "#e0e0e0";
    for (var s = Math.ceil(view.t0 * total / step) * step; s <= view.t1 * total + 1e-9; s += step) {
      var x = LABELS + (s / total - view.t0) / (view.t1 - view.t0) * plot;
      g.beginPath(); g.moveTo(x, AXIS - 4); g.lineTo(x, height); g.stroke();
      g.fillText(seconds(s), x + 2, 9);
    }
    // The runs, drawn pixel by pixel: each device pixel of a row takes the states' colours
    // in proportion to the time each covers in it (what drawing every run antialiased would
    // show), so that the work grows with the picture's size, not with the number of runs.
    var px0 = Math.round(LABELS * ratio), pw = Math.max(1, Math.round(plot * ratio));
    var scale = pw / (c1 - c0);
    var rgb = {};
    P.states.concat(P.shownStates).forEach(function (l) { rgb[l.charCodeAt(0)] = hexRgb(colour(l)); });
    var red = new Float32Array(pw), green = new Float32Array(pw), blue = new Float32Array(pw),
        cover = new Float32Array(pw);
    var image = g.createImageData(pw, Math.max(1, Math.round(rows.length * ROW * ratio)));
    var pixels = new Uint32Array(image.data.buffer);
    function add(p, weight, c) {
      cover[p] += weight; red[p] += weight * c[0]; green[p] += weight * c[1]; blue[p] += weight * c[2];
    }
    rows.forEach(function (runs, r) {
      red.fill(0); green.fill(0); blue.fill(0); cover.fill(0);
      for (var k = 0; k < runs.count; k++) {
        var a0 = runs.start[k], a1 = a0 + runs.length[k];
        if (a1 <= c0 || a0 >= c1) continue;
        var c = rgb[runs.state[k]];
        if (!c) continue;
        var x0 = Math.max(0, (a0 - c0) * scale), x1 = Math.min(pw, (a1 - c0) * scale);
        var p0 = Math.floor(x0), p1 = Math.floor(x1);
        if (p0 === p1) { if (p0 < pw) add(p0, x1 - x0, c); continue; }
        add(p0, p0 + 1 - x0, c);
        for (var p = p0 + 1; p < p1; p++) add(p, 1, c);
        if (p1 < pw && x1 > p1) add(p1, x1 - p1, c);
      }
      var top = Math.round((r * ROW + 2) * ratio), bottom = Math.round((r * ROW + ROW - 2) * ratio);
      for (var q = 0; q < pw; q++) {
        var w = cover[q];
        if (w <= 0) continue;
        var alpha = Math.min(1, w);
        // Little-endian RGBA in one word.
        var word = ((Math.round(255 * alpha) << 24) | (Math.round(blue[q] / w) << 16) |
                    (Math.round(green[q] / w) << 8) | Math.round(red[q] / w)) >>> 0;
        for (var yy = top; yy < bottom; yy++) pixels[yy * pw + q] = word;
      }
    });
    // Through a canvas of its own, so that the runs go over the stripes and the grid rather
    // than replace them (putImageData replaces pixels, drawImage blends them).
    var layer = document.createElement("canvas");
    layer.width = image.width; layer.height = image.height;
    layer.getContext("2d").putImageData(image, 0, 0);
    g.setTransform(1, 0, 0, 1, 0, 0);
    g.drawImage(layer, px0, Math.round(AXIS * ratio));
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    canvas.dataset.rows = rows.length;
  }
  function timelineAt(event) {
    var canvas = document.getElementById("timeline-canvas");
    var rect = canvas.getBoundingClientRect();
    var plot = rect.width - LABELS - 8;
    var fx = (event.clientX - rect.left - LABELS) / plot;
    var row = Math.floor((event.clientY - rect.top - AXIS) / ROW);
    return { f: view.t0 + Math.max(0, Math.min(1, fx)) * (view.t1 - view.t0), inPlot: fx >= 0 && fx <= 1, row: row, x: event.clientX - rect.left };
  }
  function bindTimeline() {
    var canvas = document.getElementById("timeline-canvas");
    if (!canvas) return;
    var dragFrom = null;
    canvas.addEventListener("mousedown", function (e) { var a = timelineAt(e); if (a.inPlot) dragFrom = a; });
    window.addEventListener("mouseup", function (e) {
      if (!dragFrom || !canvas.isConnected) return;
      var a = timelineAt(e), from = dragFrom; dragFrom = null;
      if (Math.abs(a.x - from.x) > 4) {
        view.t0 = Math.min(a.f, from.f); view.t1 = Math.max(a.f, from.f);
        if (view.t1 - view.t0 < 1e-6) view.t1 = view.t0 + 1e-6;
        drawTimeline();
      } else if (from.row >= 0 && from.row < P.threads.length) {
        selectThread(view.thread === from.row ? null : from.row, false);
      }
    });
    canvas.addEventListener("dblclick", function () { view.t0 = 0; view.t1 = 1; drawTimeline(); });
    canvas.addEventListener("wheel", function (e) {
      var a = timelineAt(e);
      if (!a.inPlot) return;
      e.preventDefault();
      var factor = e.deltaY > 0 ? 1.25 : 0.8, span = Math.min(1, (view.t1 - view.t0) * factor);
      var at = (a.f - view.t0) / (view.t1 - view.t0);
      view.t0 = Math.max(0, a.f - at * span); view.t1 = Math.min(1, view.t0 + span);
      view.t0 = Math.max(0, view.t1 - span);
      drawTimeline();
    }, { passive: false });
    canvas.addEventListener("mousemove", function (e) {
      var a = timelineAt(e), rows = decodeTimeline();
      if (!a.inPlot || a.row < 0 || a.row >= rows.length) { hideTip(); return; }
      var column = a.f * P.timeline.columns, runs = rows[a.row];
      var run = null;
      for (var k = 0; k < runs.count; k++) {
        if (runs.start[k] <= column && column < runs.start[k] + runs.length[k]) {
          run = [runs.start[k], runs.length[k], String.fromCharCode(runs.state[k])];
          break;
        }
      }
      var t = a.f * P.duration;
      var text = threadName(a.row) + " at " + seconds(t);
      if (run) {
        var per = P.timeline.msPerColumn / 1000;
        text += ": " + stateName(run[2]) + " from " + seconds(run[0] * per) + " to " + seconds((run[0] + run[1]) * per) +
          " (" + ms(run[1] * P.timeline.msPerColumn) + ")";
      }
      showTip(e, text);
    });
    canvas.addEventListener("mouseleave", hideTip);
    if (!resizeBound) { window.addEventListener("resize", onResize); resizeBound = true; }
  }

  // ---- flamegraph ----------------------------------------------------------------------
  function flameSection() {
    var section = el("section", { id: "flame" }, el("h2", { text: "Flamegraph" }));
    section.appendChild(el("p", { class: "help", text: "Where the threads were, by state: " +
      "each box is a frame, as wide as the samples under it, callers above callees. \"Blame\" " +
      "shows what the GIL holder ran while others waited, weighted by the number of waiters. " +
      "Click a box to zoom in, the top box to zoom out; search highlights matching frames." }));
    var controls = el("div", { class: "controls", id: "flame-controls" });
    section.appendChild(controls);
    var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("id", "flame-svg");
    section.appendChild(svg);
    return section;
  }
  function flameViews() {
    var views = P.states.map(function (s) { return [s, stateName(s)]; });
    views.push(["all", "all states"]);
    if (P.waitMeasured) views.push(["blame", "blame (who made them wait)"]);
    return views;
  }
  function drawFlameControls() {
    var controls = document.getElementById("flame-controls");
    controls.innerHTML = "";
    flameViews().forEach(function (v) {
      var b = el("button", { "data-view": v[0], class: view.flame === v[0] ? "active" : "", onclick: function () {
        view.flame = v[0]; view.focus = null; drawFlame(); } });
      if (P.colours[v[0]]) b.appendChild(el("i", { class: "swatch", style: "background:" + colour(v[0]) + ";margin-right:5px" }));
      b.appendChild(document.createTextNode(v[1]));
      controls.appendChild(b);
    });
    var input = el("input", { id: "flame-search", placeholder: "search frames", value: view.search });
    input.addEventListener("input", function () { view.search = input.value; drawFlame(); });
    controls.appendChild(input);
    if (view.thread != null && view.flame !== "blame") {
      controls.appendChild(el("span", { class: "chip" }, "thread " + threadName(view.thread),
        el("button", { text: "\u2715", title: "all threads", onclick: function () { selectThread(null, false); } })));
    }
  }
  function flameTree() {
    var root = { name: "all", value: 0, children: {}, list: null, kind: "root" };
    function child(node, key, make) {
      var c = node.children[key];
      if (!c) { c = make(); c.children = {}; c.value = 0; node.children[key] = c; }
      return c;
    }
    function addStack(node, stack, n) {
      if (stack < 0) {
        var unknown = child(node, "?", function () { return { name: "(stack not read)", kind: "marker" }; });
        unknown.value += n;
        return;
      }
      P.stacks[stack].forEach(function (f) {
        node = child(node, "f" + f, function () { return { name: frameLabel(f), full: frameFull(f), frame: f, kind: "frame" }; });
        node.value += n;
      });
    }
    if (view.flame === "blame") {
      P.blame.forEach(function (b) {
        root.value += b[2];
        var holder = child(root, "t" + b[0], function () { return { name: threadName(b[0]), kind: "thread" }; });
        holder.value += b[2];
        addStack(holder, b[1], b[2]);
      });
      if (P.blameUnheld) {
        root.value += P.blameUnheld;
        child(root, "unheld", function () { return { name: "[GIL not held: hand-off]", kind: "state", state: "w" }; }).value += P.blameUnheld;
      }
    } else {
      P.samplesByStack.forEach(function (e) {
        var t = e[0], s = e[1], stack = e[2], n = e[3];
        if (view.thread != null && t !== view.thread) return;
        if (view.flame !== "all" && s !== view.flame) return;
        root.value += n;
        var node = child(root, "t" + t, function () { return { name: threadName(t), kind: "thread" }; });
        node.value += n;
        if (view.flame === "all") {
          node = child(node, "s" + s, function () { return { name: "[" + stateName(s) + "]", kind: "state", state: s }; });
          node.value += n;
        }
        addStack(node, stack, n);
      });
    }
    return root;
  }
  function drawFlame() {
    var svg = document.getElementById("flame-svg");
    if (!svg) return;
    drawFlameControls();
    var root = flameTree();
    var width = Math.max(400, svg.parentNode.clientWidth - 2), H = 17;
    var items = [];
    var unit = view.flame === "blame" ? "waiter-samples" : "samples";
    // lay out: x in fractions of the whole; the focus (if any) fills the width.
    var focusPath = view.focus ? view.focus.split("/") : [];
    function layout(node, key, x, depth, path) {
      items.push({ node: node, x: x, depth: depth, key: key });
      var kids = Object.keys(node.children).map(function (k) { return [k, node.children[k]]; });
      kids.sort(function (a, b) { return b[1].value - a[1].value || (a[1].name < b[1].name ? -1 : 1); });
      var at = x;
      kids.forEach(function (kc) {
        layout(kc[1], key + "/" + kc[0], at, depth + 1);
        at += kc[1].value / Math.max(1, root.value);
      });
    }
    layout(root, "", 0, 0);
    var fx0 = 0, fx1 = 1, focusDepth = 0;
    if (view.focus) {
      var found = items.filter(function (it) { return it.key === view.focus; })[0];
      if (found) { fx0 = found.x; fx1 = found.x + found.node.value / Math.max(1, root.value); focusDepth = found.depth; }
      else view.focus = null;
    }
    var query = view.search.trim().toLowerCase(), matched = 0;
    var depthMax = 0, parts = [], drawn = 0;
    var px = function (f) { return (f - fx0) / (fx1 - fx0) * width; };
    items.forEach(function (it) {
      var w0 = it.node.value / Math.max(1, root.value);
      var onPath = view.focus && (view.focus === it.key || view.focus.indexOf(it.key + "/") === 0 || it.key === "");
      var x0, x1;
      if (onPath && it.depth <= focusDepth) { x0 = 0; x1 = width; }
      else {
        if (it.x + w0 <= fx0 + 1e-12 || it.x >= fx1 - 1e-12) return;
        x0 = Math.max(0, px(it.x)); x1 = Math.min(width, px(it.x + w0));
      }
      if (x1 - x0 < 0.5) return;
      var n = it.node;
      var fill = n.kind === "state" ? colour(n.state) : n.kind === "frame" ? P.originColours[P.frames[n.frame][4]] :
        n.kind === "root" ? "#d0d4da" : "#e2e2e2";
      var isMatch = query && n.kind === "frame" && n.name.toLowerCase().indexOf(query) >= 0;
      if (isMatch) matched = Math.max(matched, 0);
      depthMax = Math.max(depthMax, it.depth);
      var y = it.depth * H;
      var label = n.kind === "root" ? (view.flame === "blame" ? "all waiting" : "all") + " (" + root.value + " " + unit + ")" : n.name;
      var share = (100 * n.value / Math.max(1, root.value)).toFixed(2);
      var title = (n.full || n.name) + "\n" + n.value + " " + unit + ", " + share + "%";
      var chars = Math.floor((x1 - x0 - 6) / 6.6);
      var text = chars >= 3 ? (label.length > chars ? label.slice(0, chars - 1) + "\u2026" : label) : "";
      parts.push('<g data-key="' + esc(it.key) + '"><title>' + esc(title) + '</title><rect x="' + x0.toFixed(1) +
        '" y="' + y + '" width="' + (x1 - x0).toFixed(1) + '" height="' + (H - 1) + '" fill="' + fill + '"' +
        (isMatch ? ' class="match"' : "") + '/>' + (text ? '<text x="' + (x0 + 3).toFixed(1) + '" y="' + (y + 12) +
        '" fill="' + inkOn(fill) + '">' + esc(text) + "</text>" : "") + "</g>");
      drawn++;
    });
    var height = (depthMax + 1) * H + 2;
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("data-view", view.flame);
    svg.setAttribute("data-total", root.value);
    svg.setAttribute("data-boxes", drawn);
    svg.innerHTML = root.value ? parts.join("") :
      '<text x="10" y="14">no samples in this view</text>';
    if (!root.value) { svg.setAttribute("height", 24); }
  }
  function bindFlame() {
    var svg = document.getElementById("flame-svg");
    if (!svg) return;
    svg.addEventListener("click", function (e) {
      var g = e.target.closest ? e.target.closest("g") : null;
      if (!g) return;
      var key = g.getAttribute("data-key");
      view.focus = key === "" || key === view.focus ? null : key;
      drawFlame();
    });
    if (!resizeBound) { window.addEventListener("resize", onResize); resizeBound = true; }
  }

  // ---- start ---------------------------------------------------------------------------
  function selftest() {
    var result = { errors: window.gilscopeErrors, threads: P.threads.length,
      rows: document.querySelectorAll("#thread-rows tr").length, renderMs: window.gilscopeRenderMs,
      timelineRows: +((document.getElementById("timeline-canvas") || { dataset: {} }).dataset.rows || 0),
      views: {} };
    var svg = document.getElementById("flame-svg");
    flameViews().forEach(function (v) {
      view.flame = v[0]; view.focus = null; drawFlame();
      var labels = Array.prototype.map.call(svg.querySelectorAll("g"), function (g) { return g.getAttribute("data-key"); });
      result.views[v[0]] = { total: +svg.getAttribute("data-total"), boxes: +svg.getAttribute("data-boxes"),
        active: document.querySelector("#flame-controls button.active").getAttribute("data-view"),
        keys: labels.slice(0, 400).join("|").length + ":" + labels.length };
    });
    reset(); drawFlame();
    result.errors = window.gilscopeErrors;
    document.getElementById("selftest").textContent = JSON.stringify(result);
  }
  try {
    P = DATA.processes[0];
    reset();
    build();
    window.gilscopeRenderMs = performance.now() - started;
    window.gilscopeReady = true;
    if (location.hash === "#selftest") selftest();
  } catch (error) {
    window.gilscopeErrors.push(String(error && error.stack || error));
    var out = document.getElementById("selftest") || document.body.appendChild(el("pre", { id: "selftest" }));
    out.textContent = JSON.stringify({ errors: window.gilscopeErrors });
    throw error;
  }
})();
