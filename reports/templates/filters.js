// report page: the severity check boxes show / hide findings
document.querySelectorAll('.filters input').forEach(function (cb) {
  cb.addEventListener('change', function () {
    var on = {};
    document.querySelectorAll('.filters input').forEach(function (c) { on[c.dataset.sev] = c.checked; });
    document.querySelectorAll('.finding').forEach(function (f) { f.style.display = on[f.dataset.sev] ? '' : 'none'; });
  });
});
