// tables with class "sortable": click a column's header to sort by it (again: reverse);
// a row of filter boxes under the headers keeps the rows whose cell contains the text
// typed (case-insensitive), or, in a number column, ">1e-4", "<=8", "=16"
(function () {
  'use strict';
  function key(cell) {
    var v = cell.getAttribute('data-v');
    return v !== null ? v : cell.textContent.trim();
  }
  function num(s) {
    return /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(s) ? parseFloat(s) : NaN;
  }
  function missing(s) { return s === '' || s === '—' || s === 'unset'; }
  function matches(text, f) {
    var m = /^(<=|>=|<|>|=)\s*(.+)$/.exec(f);
    if (m && !isNaN(num(m[2]))) {
      var x = num(text), y = num(m[2]);
      if (isNaN(x)) { return false; }
      return {'<': x < y, '<=': x <= y, '>': x > y, '>=': x >= y, '=': x === y}[m[1]];
    }
    return text.toLowerCase().indexOf(f.toLowerCase()) >= 0;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var head = table.tHead && table.tHead.rows[0];
    var tb = table.tBodies[0];
    if (!head || !tb) { return; }
    var filters = [];
    function apply() {
      Array.prototype.forEach.call(tb.rows, function (r) {
        var ok = filters.every(function (f, i) {
          return !f.value.trim() || (r.cells[i] && matches(r.cells[i].textContent.trim(), f.value.trim()));
        });
        r.style.display = ok ? '' : 'none';
      });
    }
    var frow = document.createElement('tr');
    frow.className = 'filter-row';
    Array.prototype.forEach.call(head.cells, function (th, col) {
      th.title = 'click to sort';
      th.addEventListener('click', function () {
        var dir = th.dataset.dir === 'asc' ? -1 : 1;
        Array.prototype.forEach.call(head.cells, function (h) { delete h.dataset.dir; });
        th.dataset.dir = dir === 1 ? 'asc' : 'desc';
        var rows = Array.prototype.slice.call(tb.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (missing(x) || missing(y)) { return missing(x) - missing(y); }   // blanks last
          var nx = num(x), ny = num(y);
          return dir * ((!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y));
        });
        rows.forEach(function (r) { tb.appendChild(r); });
      });
      var td = document.createElement('th'), box = document.createElement('input');
      box.type = 'search'; box.placeholder = 'filter'; box.setAttribute('aria-label', 'filter ' + th.textContent);
      box.addEventListener('input', apply);
      td.appendChild(box); frow.appendChild(td); filters.push(box);
    });
    table.tHead.appendChild(frow);
  });
})();
