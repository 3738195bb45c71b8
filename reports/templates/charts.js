// report pages: interactive charts, drawn with uPlot (inlined above) from the page's JSON
// block #chart-data. Drag across a chart to zoom, double-click to zoom back out, hover
// for the step and every series' value, click a legend entry to hide or show a series.
(function () {
  'use strict';
  var node = document.getElementById('chart-data');
  if (!node || typeof uPlot !== 'function') { return; }
  var data = JSON.parse(node.textContent);
  var api = {charts: {}, states: {}};
  window.lorascope = api;

  function fmt(v) {
    if (v == null || !isFinite(v)) { return '—'; }
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) { return v.toExponential(3); }
    return String(+v.toPrecision(5));
  }
  function tickText(u, ticks) {            // (a log axis leaves its minor ticks unlabelled: null)
    return ticks.map(function (v) { return v == null ? '' : fmt(v); });
  }
  function rgba(hex, alpha) {
    if (alpha == null || alpha >= 1) { return hex; }
    var n = parseInt(hex.slice(1), 16);
    return 'rgba(' + (n >> 16) + ',' + ((n >> 8) & 255) + ',' + (n & 255) + ',' + alpha + ')';
  }
  var STEP_INCRS = [];                       // whole steps only on a step axis
  for (var e = 0; e < 10; e++) { [1, 2, 5].forEach(function (m) { STEP_INCRS.push(m * Math.pow(10, e)); }); }
  function make(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text != null) { e.textContent = text; }
    return e;
  }
  function checkbox(tools, text, checked, onChange) {
    var lab = make('label'), cb = make('input');
    cb.type = 'checkbox'; cb.checked = !!checked;
    cb.addEventListener('change', function () { onChange(cb.checked); });
    lab.appendChild(cb); lab.appendChild(document.createTextNode(' ' + text));
    tools.appendChild(lab);
    return cb;
  }
  function button(tools, text, onClick) {
    var b = make('button', null, text);
    b.type = 'button';
    b.addEventListener('click', onClick);
    tools.appendChild(b);
    return b;
  }

  // -- markers: the diagnosed step and range, change points, NaNs, epochs, checkpoints --
  var MARKS = [
    ['diag', 'diagnosed step'], ['change_points', 'change point'], ['nonfinite', 'non-finite value'],
    ['epochs', 'epoch boundary'], ['checkpoints', 'checkpoint']
  ];
  function markList(m, key) {
    if (key === 'diag') { return m.diag ? [m.diag.step] : []; }
    return m[key] || [];
  }
  function drawMarks(m, under) {
    return function (u) {
      var ctx = u.ctx, b = u.bbox, r = uPlot.pxRatio || 1;
      var lo = u.scales.x.min, hi = u.scales.x.max;
      function X(v) { return Math.round(u.valToPos(v, 'x', true)) + 0.5; }
      function vline(v, color, w, dash) {
        if (v < lo || v > hi) { return; }
        ctx.strokeStyle = color; ctx.lineWidth = w * r; ctx.setLineDash(dash.map(function (d) { return d * r; }));
        ctx.beginPath(); ctx.moveTo(X(v), b.top); ctx.lineTo(X(v), b.top + b.height); ctx.stroke();
      }
      ctx.save();
      ctx.beginPath(); ctx.rect(b.left, b.top, b.width, b.height); ctx.clip();
      if (under) {
        if (m.diag) {
          var a = X(Math.max(m.diag.from, lo)), z = X(Math.min(m.diag.to, hi));
          if (m.diag.to >= lo && m.diag.from <= hi) {
            ctx.fillStyle = 'rgba(254,202,202,0.55)';
            ctx.fillRect(Math.min(a, z - 2 * r), b.top, Math.max(z - a, 4 * r), b.height);
          }
        }
      } else {
        (m.epochs || []).forEach(function (v) { vline(v, '#9ca3af', 1, [2, 3]); });
        (m.change_points || []).forEach(function (v) { vline(v, '#7c3aed', 1, [6, 4]); });
        var nf = m.nonfinite || [];
        if (nf.length) { vline(nf[0], '#dc2626', 1.2, []); }
        ctx.setLineDash([]);
        ctx.strokeStyle = '#dc2626'; ctx.lineWidth = 1.5 * r;
        nf.forEach(function (v) {
          if (v < lo || v > hi) { return; }
          var x = X(v), y = b.top + b.height - 6 * r, s = 3.5 * r;
          ctx.beginPath(); ctx.moveTo(x - s, y - s); ctx.lineTo(x + s, y + s);
          ctx.moveTo(x - s, y + s); ctx.lineTo(x + s, y - s); ctx.stroke();
        });
        ctx.fillStyle = '#059669';
        (m.checkpoints || []).forEach(function (v) {
          if (v < lo || v > hi) { return; }
          var x = X(v), y = b.top + 2 * r, s = 5 * r;
          ctx.beginPath(); ctx.moveTo(x - s, y); ctx.lineTo(x + s, y); ctx.lineTo(x, y + 1.6 * s); ctx.closePath(); ctx.fill();
        });
        if (m.diag) { vline(m.diag.step, '#dc2626', 2, []); }
      }
      ctx.restore();
    };
  }
  function nearMarks(u, m, left) {
    var out = [];
    MARKS.forEach(function (k) {
      markList(m, k[0]).forEach(function (v) {
        if (v >= u.scales.x.min && v <= u.scales.x.max && Math.abs(u.valToPos(v, 'x') - left) <= 4) {
          out.push(k[1] + ' at step ' + v);
        }
      });
    });
    return out.slice(0, 4).join(' · ');
  }

  // -- one chart --------------------------------------------------------------------------
  function columns(spec, st) {
    // [x, y] per series, transformed for the chart's options; nulls (non-finite) stay gaps
    return spec.series.map(function (s) {
      var x = s.x, y = s.y;
      if (st.pct && s.last) { x = x.map(function (v) { return 100 * v / s.last; }); }
      if (st.norm) {
        var lo = s.lo, span = s.hi - s.lo;
        y = y.map(function (v) { return v == null ? null : (span > 0 ? (v - lo) / span : undefined); });
      }
      if (st.log && (s.scale || 'y') === 'y') { y = y.map(function (v) { return v != null && v <= 0 ? undefined : v; }); }
      return [x, y];
    });
  }
  function build(group, spec, st) {
    var box = document.getElementById('chart-' + spec.id);
    var cols = columns(spec, st);
    var aligned = cols.length === 1 ? cols[0] : uPlot.join(cols);
    var xlabel = st.pct ? '% of the run' : (spec.xlabel || 'optimizer step');
    var opts = {
      width: Math.max(320, box.clientWidth), height: spec.height || 300,
      cursor: {drag: {x: true, y: false}, sync: {key: group.key}},
      scales: {x: {time: false}, y: st.log ? {distr: 3, log: 10} : {}},
      axes: [
        {label: xlabel, grid: {stroke: '#f1f5f9'}, ticks: {stroke: '#e5e7eb'}, incrs: st.pct ? undefined : STEP_INCRS},
        {label: st.norm ? spec.ylabel + ' (normalised)' : spec.ylabel, scale: 'y', size: 64,
         grid: {stroke: '#f1f5f9'}, ticks: {stroke: '#e5e7eb'},
         values: tickText}
      ],
      series: [{label: st.pct ? '% of run' : (spec.xlabel || 'step'),
                value: function (u, v) { return v == null ? '—' : (st.pct ? v.toFixed(1) + '%' : String(v)); }}],
      legend: {live: true},
      hooks: {setScale: [function (u, key) { if (key === 'x') { syncX(group, u); } }],
              setCursor: [function (u) { readout(group, spec, u); }]}
    };
    spec.series.forEach(function (s, i) {
      opts.series.push({
        label: s.label, stroke: rgba(s.color, s.alpha), width: s.width || 1.2, dash: s.dash,
        scale: s.scale || 'y', spanGaps: false, points: {show: !!s.points, size: 5, fill: s.color},
        show: st.show ? st.show[i] !== false : true,
        value: function (u, v) { return fmt(v); }
      });
    });
    if (spec.lr) {
      opts.scales.lr = {};
      opts.axes.push({scale: 'lr', side: 1, label: 'learning rate', size: 70, grid: {show: false},
                      values: tickText});
    }
    if (group.markers && !st.pct) {
      opts.hooks.drawClear = [drawMarks(group.markers, true)];
      opts.hooks.draw = [drawMarks(group.markers, false)];
    }
    box.replaceChildren();
    box.classList.add('live');
    var u = new uPlot(opts, aligned, box);
    var ro = make('div', 'readout');
    box.appendChild(ro);
    if (st.range) { u.setScale('x', st.range); }
    api.charts[spec.id] = u;
    return u;
  }
  function syncX(group, src) {
    if (group.syncing) { return; }
    group.syncing = true;
    var x = src.scales.x;
    group.specs.forEach(function (spec) {
      var u = api.charts[spec.id];
      if (u && u !== src && !group.states[spec.id].pct && (u.scales.x.min !== x.min || u.scales.x.max !== x.max)) {
        u.setScale('x', {min: x.min, max: x.max});
      }
    });
    group.syncing = false;
  }
  function readout(group, spec, u) {
    var ro = u.root.parentNode.querySelector('.readout');
    if (!ro || !group.markers || group.states[spec.id].pct) { return; }
    var left = u.cursor.left;
    ro.textContent = left == null || left < 0 ? '' : nearMarks(u, group.markers, left);
  }
  function rebuild(group, spec) {
    var st = group.states[spec.id], u = api.charts[spec.id];
    if (u) {
      st.show = u.series.slice(1).map(function (s) { return s.show; });
      var x = u.scales.x, full = u.data[0];
      var zoomed = full.length && (x.min > full[0] || x.max < full[full.length - 1]);
      st.range = zoomed && !st.pctChanged ? {min: x.min, max: x.max} : null;
      u.destroy();
    }
    st.pctChanged = false;
    build(group, spec, st);
  }
  function tools(group, spec) {
    var box = document.getElementById('chart-' + spec.id);
    var bar = make('div', 'chart-tools');
    var st = group.states[spec.id];
    if (spec.log !== undefined) {
      checkbox(bar, 'log scale', st.log, function (on) { st.log = on; rebuild(group, spec); }).dataset.role = 'log';
    }
    if (spec.sweep) {
      checkbox(bar, 'normalised (each run\'s 2nd–98th percentile → 0–1)', st.norm, function (on) { st.norm = on; rebuild(group, spec); }).dataset.role = 'norm';
      checkbox(bar, 'step as % of the run', st.pct, function (on) { st.pct = on; st.pctChanged = true; rebuild(group, spec); }).dataset.role = 'pct';
      var show = function (pred) {
        return function () {
          var u = api.charts[spec.id];
          spec.series.forEach(function (s, i) { u.setSeries(i + 1, {show: pred(s)}); });
        };
      };
      button(bar, 'failed only', show(function (s) { return s.verdict === 'failed'; })).dataset.role = 'failed';
      button(bar, 'all', show(function () { return true; })).dataset.role = 'all';
      button(bar, 'none', show(function () { return false; })).dataset.role = 'none';
    }
    bar.appendChild(make('span', 'muted', 'drag to zoom · double-click to zoom out · click a legend entry to hide it'));
    box.parentNode.insertBefore(bar, box);
  }

  (data.groups || []).forEach(function (g, gi) {
    var group = {key: 'g' + gi, specs: g.charts, markers: g.markers || null, states: {}, syncing: false};
    g.charts.forEach(function (spec) {
      if (!document.getElementById('chart-' + spec.id)) { return; }
      group.states[spec.id] = {log: !!spec.log, norm: !!spec.norm, pct: !!spec.pct, show: null, range: null};
      api.states[spec.id] = group.states[spec.id];
      tools(group, spec);
      build(group, spec, group.states[spec.id]);
    });
  });
  var pending = null;
  window.addEventListener('resize', function () {
    clearTimeout(pending);
    pending = setTimeout(function () {
      Object.keys(api.charts).forEach(function (id) {
        var u = api.charts[id], box = document.getElementById('chart-' + id);
        u.setSize({width: Math.max(320, box.clientWidth), height: u.height});
      });
    }, 150);
  });
})();
