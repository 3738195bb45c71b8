// click a table header to sort by that column
document.querySelectorAll('table.sortable th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var tb = th.closest('table').querySelector('tbody');
    var rows = Array.prototype.slice.call(tb.rows);
    var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent, y = b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      return dir * ((!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y));
    });
    rows.forEach(function (r) { tb.appendChild(r); });
  });
});
